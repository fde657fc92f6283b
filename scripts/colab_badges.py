"""Write "Open in Colab" badges into docs/real_data.md (its Colab section) and the top of every numbered notebook.

Colab opens a notebook from its GitHub address, so the badges need the repository's public name:

    python scripts/colab_badges.py OWNER/REPO [--branch main]

Run it once where the repository is published (and again if it moves); it replaces the badges it
wrote before, so a second run changes nothing.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
BADGE = "[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{github}/blob/{branch}/notebooks/{name})"
BADGE_LINE = re.compile(r"^\[!\[Open in Colab\]\(.*\)\]\(.*\)\n*", re.MULTILINE)
BADGE_PAGE = "docs/real_data.md"  # the Colab section
BADGE_BLOCK = re.compile(r"<!-- colab-badges -->.*?<!-- /colab-badges -->", re.DOTALL)


def badge(github: str, branch: str, notebook: str) -> str:
    return BADGE.format(github=github, branch=branch, name=notebook)


def add_badges(repo: Path, github: str, branch: str = "main") -> list[Path]:
    """Badge the first markdown cell of each notebook and the ``colab-badges`` block of ``BADGE_PAGE``; the files changed."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", github):
        raise SystemExit(f"expected OWNER/REPO, got {github!r}")
    notebooks = sorted((repo / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    changed = []
    for path in notebooks:
        nb = nbformat.read(str(path), as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "markdown")
        source = badge(github, branch, path.name) + "\n\n" + BADGE_LINE.sub("", first.source)
        if source != first.source:
            first.source = source
            nbformat.write(nb, str(path))
            changed.append(path)
    page = repo / BADGE_PAGE
    block = "<!-- colab-badges -->\n" + "\n".join(f"{badge(github, branch, p.name)} `{p.name}`  " for p in notebooks) + "\n<!-- /colab-badges -->"
    text = page.read_text()
    if not BADGE_BLOCK.search(text):
        raise SystemExit(f"{page}: no '<!-- colab-badges --><!-- /colab-badges -->' block to fill")
    updated = BADGE_BLOCK.sub(lambda _: block, text)
    if updated != text:
        page.write_text(updated)
        changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("github", help="OWNER/REPO on GitHub")
    parser.add_argument("--branch", default="main")
    args = parser.parse_args(argv)
    changed = add_badges(REPO, args.github, args.branch)
    print("\n".join(f"updated {p.relative_to(REPO)}" for p in changed) or "badges already up to date")


if __name__ == "__main__":
    main()

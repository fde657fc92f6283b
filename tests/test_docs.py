"""The README and docs: every published number rendered from a committed artefact, links that resolve, a short README."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO

README_MAX_LINES = 250
# numbers outside the rendered blocks that are settings or definitions, not results
ALLOWED_NUMBERS = {
    "0.91", "0.31", "0.70",  # the quiz's targets
    "0.73",  # the quiz's median in-plane spacing, mm
    "0.999",  # the Dice agreement the tests require between modes
    "0.05",  # the temperature's lower bound
    "0.15",  # the phantom test's margin of the probe over the mean-HU rule
    "0.01",  # ml (the smallest real lesions); the non-inferiority margin
}


def _render():
    spec = importlib.util.spec_from_file_location("render_docs", REPO / "scripts" / "render_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_rendered_block_matches_its_artefact(capsys: pytest.CaptureFixture[str]) -> None:
    render = _render()
    assert render.main(["--check"]) == 0, capsys.readouterr().out
    blocks = [m.group("kind") for page in _pages() for m in render.BLOCK.finditer(page.read_text())]
    assert {"targets", "details", "times", "train", "benchmark", "heads-chance", "profiles"} <= set(blocks)


def test_a_changed_artefact_or_an_edited_number_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    render = _render()
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copytree(REPO / "benchmarks" / "results", tmp_path / "results")
    monkeypatch.setattr(render, "REPO", tmp_path)
    monkeypatch.setattr(render, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(render, "RUNS", tmp_path / "results" / "runs")
    assert render.main(["--check"]) == 0
    (run,) = re.search(r"<!-- render:targets (\S+) test -->", (tmp_path / "README.md").read_text()).groups()
    metrics_file = tmp_path / "results" / "runs" / run / "evaluation" / "test" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["targets"]["dsc_pancreas"]["value"] += 0.01234
    metrics_file.write_text(json.dumps(metrics))
    assert render.main(["--check"]) == 1 and "README.md" in capsys.readouterr().out
    assert render.main([]) == 0 and render.main(["--check"]) == 0  # rendering mends it
    readme = (tmp_path / "README.md").read_text()
    value = f"{metrics['targets']['dsc_pancreas']['value']:.3f}"
    (tmp_path / "README.md").write_text(readme.replace(f"| {value} |", "| 0.999 |", 1))  # a hand-edited number inside a block
    assert render.main(["--check"]) == 1


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_short_and_every_link_resolves() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert readme.startswith("# ") and "./run_all.sh" in readme.split("\n\n")[1] and "./run_tests.sh" in readme.split("\n\n")[1]  # the two commands first
    linked = set()
    for page in _pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.name}: link to missing {target}"
            linked.add(file)
            if anchor and file.suffix == ".md":
                headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)}
                assert anchor in headings, f"{page.name}: no heading #{anchor} in {file.name}"
    assert {p.resolve() for p in _pages()[1:]} <= linked  # every docs page is reachable


def _outside_blocks(text: str) -> str:
    text = _render().BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code
    return re.sub(r"`[^`\n]*`", "", text)


def test_no_result_number_outside_the_rendered_blocks() -> None:
    """Scores, shares and speedups in prose would drift from the artefacts; they live in rendered blocks."""
    for page in _pages():
        text = _outside_blocks(page.read_text())
        scores = set(re.findall(r"(?<![\w.])0\.\d{2,}\b", text)) - ALLOWED_NUMBERS
        speedups = re.findall(r"\d+(?:\.\d+)?\s?×(?!\s?\d)", text)
        assert not scores and not speedups, f"{page.name}: {sorted(scores)} {speedups} outside a rendered block"

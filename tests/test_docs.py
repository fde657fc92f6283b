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
    shutil.copy(REPO / "data_manifest.yaml", tmp_path / "data_manifest.yaml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copytree(REPO / "notebooks" / "params", tmp_path / "notebooks" / "params")
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


def test_a_marker_without_its_partner_is_an_error() -> None:
    render = _render()
    with pytest.raises(ValueError, match="1 opening render marker"):
        render.render_text("<!-- render:heads-chance -->\ntext\n<!-- /render:heads-chance-typo -->\n", "x.md")
    assert render.render_text("quoted in prose: `<!-- render:… -->`\n") == "quoted in prose: `<!-- render:… -->`\n"


def test_publishing_a_run_makes_paths_relative_and_refuses_records_of_another_run(tmp_path: Path) -> None:
    import datetime
    import os

    spec = importlib.util.spec_from_file_location("publish_run", REPO / "scripts" / "publish_run.py")
    publish = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(publish)
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "data_manifest.yaml", root / "data_manifest.yaml")
    run = root / "reports" / "runs" / "20260101-000000-smoke"
    (run / "evaluation" / "test").mkdir(parents=True)
    now = datetime.datetime.now()
    record = {"run_id": run.name, "profile": "smoke", "status": "ok", "parameters": {"plans": "p", "run_dir": str(run)},
              "started": (now - datetime.timedelta(minutes=5)).isoformat(timespec="seconds"), "finished": (now + datetime.timedelta(minutes=1)).isoformat(timespec="seconds")}
    (run / "run.json").write_text(json.dumps(record))
    shared = tmp_path / "shared" / "data" / "quiz_0_001.nii.gz"
    (run / "evaluation" / "test" / "metrics.json").write_text(json.dumps({"sources": {"ground_truth": f"{shared} (masks: {root / 'work' / 'x'})"}, "url": "https://example.org/a/b"}))
    (run / "evaluation" / "test" / "per_case.csv").write_text(f"case,gt_file\nquiz_0_001,{shared}\n")
    for stage in ("prepare", "train", "inference"):
        (root / "work" / "smoke").mkdir(parents=True, exist_ok=True)
        (root / "work" / "smoke" / f"{stage}.json").write_text(json.dumps({"model_folder": str(root / "work" / "smoke" / "m")}))
    out = publish.publish(run, root / "published", root)
    text = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert str(tmp_path) not in text and "../shared/data/quiz_0_001.nii.gz" in text and "work/x" in text and "https://example.org/a/b" in text
    assert json.loads((out / "run.json").read_text())["parameters"]["run_dir"] == "reports/runs/20260101-000000-smoke"
    later = (now + datetime.timedelta(hours=1)).timestamp()
    os.utime(root / "work" / "smoke" / "train.json", (later, later))  # a later run's record in the same work folder
    with pytest.raises(SystemExit, match="train.json: not written by run 20260101-000000-smoke"):
        publish.publish(run, root / "published", root)


def test_a_resumable_benchmark_is_stamped_with_its_latest_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    render = _render()
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    runs = [{"date": "2026-01-01 10:00", "git_revision": "a" * 40}, {"date": "2026-01-02 11:00", "git_revision": "b" * 40}]
    (tmp_path / "x.json").write_text(json.dumps({"runs": runs}))
    (tmp_path / "x.md").write_text("| table |\n")
    assert render.render_benchmark("x").startswith(f"`benchmarks/results/x.json` (2026-01-02 11:00, revision `{'b' * 12}`)")
    (tmp_path / "x.json").write_text(json.dumps({"runs": runs[::-1]}))  # a run taken over from another result comes last
    assert render.render_benchmark("x").startswith(f"`benchmarks/results/x.json` (2026-01-02 11:00, revision `{'b' * 12}`)")
    (tmp_path / "x.json").write_text(json.dumps({}))
    assert "date and revision not recorded" in render.render_benchmark("x")

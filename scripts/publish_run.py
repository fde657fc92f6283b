"""Commit a run's small outputs as the artefact that the README and the docs quote.

    python scripts/publish_run.py reports/runs/<run_id> [--dest benchmarks/results/runs]

Writes ``<dest>/<run_id>/``: the run record (``run.json``: profile, parameters, git revision, library
versions, each notebook's status and seconds), per evaluated split ``evaluation/<split>/metrics.json`` and
``per_case.csv``, and from the profile's work folder the stage records (``prepare.json``, ``train.json``,
``inference.json``, each checked to be written during this run) and the fold's small files (per-epoch metrics, the case-level answers, the estimator
check, the temperature, the postprocessing and its cases, the settings). No image, mask or checkpoint.
Every absolute path in them is made relative to the repository (``../shared/...`` for the shared data), so
no machine's path is committed. ``scripts/render_docs.py`` renders the published numbers into the docs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

RECORDS = ("prepare", "train", "inference")
FOLD_FILES = ("training_metrics.csv", "case_validation.json", "estimator_agreement.json", "subtype_calibration.json", "postprocessing.json",
              "postprocessing_cases.json", "multitask_settings.json", "training_done.json")
ABSOLUTE = re.compile(r"(?<![\w.:/])/(?:[^\s'\",;:()\[\]{}<>|]+/)*[^\s'\",;:()\[\]{}<>|]+")


def relative(text: str, root: Path = REPO) -> str:
    """Every absolute path in ``text`` as a path relative to ``root``."""
    return ABSOLUTE.sub(lambda m: os.path.relpath(m.group(0), root), text)


def copy_relative(source: Path, target: Path, root: Path = REPO) -> None:
    """``source`` copied to ``target`` with its absolute paths made relative (JSON, CSV and other text)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(relative(source.read_text(), root))


def publish(run_dir: Path, dest: Path, root: Path = REPO) -> Path:
    """Copy the run's artefact to ``dest/<run_id>``, replacing an earlier copy; returns that folder."""
    from pancreas_multitask.workspace import Workspace

    record = json.loads((run_dir / "run.json").read_text())
    if record.get("status") != "ok":
        raise SystemExit(f"{run_dir / 'run.json'}: the run's status is {record.get('status')!r}; publish finished runs only")
    out = dest / record["run_id"]
    tmp = dest / f".{record['run_id']}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    copy_relative(run_dir / "run.json", tmp / "run.json", root)
    for split_dir in sorted((run_dir / "evaluation").glob("*")):
        for name in ("metrics.json", "per_case.csv"):
            copy_relative(split_dir / name, tmp / "evaluation" / split_dir.name / name, root)
    params = record["parameters"]
    workspace = Workspace.create(root / "data_manifest.yaml", record["profile"], params)
    started, finished = (datetime.datetime.fromisoformat(record[key]).timestamp() for key in ("started", "finished"))
    for stage in RECORDS:  # the stage records this run wrote: not an earlier run's, nor a later one's in the same work folder
        path = workspace.record(stage)
        if not path.is_file() or not started <= path.stat().st_mtime <= finished + 1:
            raise SystemExit(f"{path}: not written by run {record['run_id']} (between {record['started']} and {record['finished']}); "
                             "publish a run of all five notebooks, right after it, from the work folder it used")
        copy_relative(path, tmp / f"{stage}.json", root)
    for name in FOLD_FILES:
        if (workspace.fold_folder / name).is_file():
            copy_relative(workspace.fold_folder / name, tmp / "fold" / name, root)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="reports/runs/<run_id> of a finished run_all.sh")
    parser.add_argument("--dest", type=Path, default=REPO / "benchmarks" / "results" / "runs")
    args = parser.parse_args(argv)
    out = publish(args.run_dir.resolve(), args.dest.resolve())
    print(f"published {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()

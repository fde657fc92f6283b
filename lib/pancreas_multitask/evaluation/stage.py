"""The evaluation stage's entry: each split with ground truth and predictions scored, one HTML report per split.

``04_evaluate`` calls ``evaluate(workspace, params, report_dir, provenance)``. The ground truth of a split is
what the scan recorded (``Workspace.ground_truth``: the case table's masks, the answer key for the test
split), so the cases the scan left out are scored nowhere; ``ground_truth`` (a quiz-layout folder or an
answer-key CSV) replaces it. Writes ``<report_dir>/evaluation/<split>/{metrics.json,per_case.csv}``, the reports
and ``evaluation.json`` in the work folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..io import write_json
from ..model.folders import METRICS_FILE, SUBTYPE_CSV
from ..workspace import UNPROCESSED
from ..workspace import Workspace
from .evaluate import METRICS_JSON, EvaluationResult, evaluate_folder
from ..dataset.scan import read_scan_problems
from ..dataset.ground_truth import ANSWER_KEY_MASKS, GroundTruthCase, read_answer_key, read_quiz_layout
from .report import write_report


@dataclass
class Job:
    """One split to score: its ground truth, where it comes from, the predictions, and the answer-key CSV its subtypes come from (if any)."""

    cases: list[GroundTruthCase]
    source: str
    predictions: Path
    label_file: Path | None = None


@dataclass
class EvaluationRecord:
    jobs: dict[str, Job]
    results: dict[str, EvaluationResult]
    main_split: str
    reports: dict[str, Path]
    record_file: Path


def evaluation_jobs(workspace: Workspace, params: Mapping[str, Any]) -> tuple[dict[str, Job], list[str]]:
    """The splits to score, and a line for each split of ``input_splits`` that is left out and why."""
    prediction_root = Path(params["predictions"]) if params.get("predictions") else workspace.predictions_root
    test_split = workspace.manifest.layout.test_split
    if params.get("ground_truth"):  # one given source; its predictions are the predictions folder itself
        source = Path(params["ground_truth"])
        if source.suffix == ".csv":
            cases, split = read_answer_key(source, source.parent / ANSWER_KEY_MASKS, workspace.paths.raw / test_split), test_split
        else:
            cases, split = read_quiz_layout(source, workspace.manifest), source.name
        return {split: Job(cases, str(source), prediction_root if params.get("predictions") else prediction_root / split, source if source.suffix == ".csv" else None)}, []
    jobs, skipped = {}, []
    for split in params.get("input_splits") or ():
        truth = workspace.ground_truth(split)
        if truth is None:
            skipped.append(f"{split}: no ground truth (no answer key), skipped")
        elif not (prediction_root / split).is_dir():
            skipped.append(f"{split}: no predictions in {prediction_root / split} (run 03_inference), skipped")
        else:
            jobs[split] = Job(truth[0], truth[1], prediction_root / split, Path(truth[1]) if split == test_split else None)
    if not jobs:
        raise RuntimeError(f"nothing to evaluate: no split of {list(params.get('input_splits') or ())} has both ground truth and predictions in {prediction_root}")
    return jobs, skipped


def data_note(folder: Path) -> str:
    """The report's first-screen warning when ``folder`` (a raw quiz folder, a split in it, or an answer-key folder)
    holds the synthetic phantom: the phantom stamps its raw and answer folders."""
    from ..dataset.phantom import STAMP

    if not any((f / STAMP).is_file() for f in (folder, folder.parent)):
        return ""
    return ("Synthetic phantom data (the demo): these numbers show that the pipeline works end to end, "
            "not how well it segments or classifies real CT. Real-CT numbers: the realct profile (docs/real_data.md).")


LEARNABILITY_RESULTS = Path("benchmarks") / "results" / "classification_learnability_cpu.json"


def phantom_study_note(repo: Path) -> str:
    """The learnability study's headline (``learnability.headline``) from the repository's committed results, with
    where it comes from; empty when the repository does not hold them (an installed package)."""
    from .learnability import headline

    path = repo / LEARNABILITY_RESULTS
    if not path.is_file():
        return ""
    text = headline(json.loads(path.read_text()))
    return f"{text} ({LEARNABILITY_RESULTS.as_posix()}; docs/benchmarks.md explains the study)" if text else ""


def evaluate(workspace: Workspace, params: Mapping[str, Any], report_dir: Path, provenance: Mapping[str, Any] | None = None, benchmark: Path | None = None) -> EvaluationRecord:
    """Score every job and write its report; the main report (``evaluation.html``) is the test split's when it
    has ground truth (held out from training and every choice), otherwise the first split's."""
    jobs, skipped = evaluation_jobs(workspace, params)
    for line in skipped:
        print(line, flush=True)
    checkpoint_split = params.get("checkpoint_split") or workspace.selection_split()
    results = {}
    for split, job in jobs.items():
        csv = Path(params["prediction_csv"]) if params.get("prediction_csv") else job.predictions / SUBTYPE_CSV
        unprocessed = job.predictions / UNPROCESSED
        results[split] = evaluate_folder(
            job.cases, job.predictions, csv, report_dir / "evaluation" / split, ground_truth_source=job.source,
            unprocessed_folder=unprocessed if unprocessed.is_dir() else None, selection_split=checkpoint_split, evaluated_split=split, label_file=job.label_file,
            training_split=workspace.manifest.layout.labeled_splits[0], class_names=workspace.manifest.subtypes,
        )
    test_split = workspace.manifest.layout.test_split
    main_split = test_split if test_split in results else next(iter(results))
    training_metrics = workspace.fold_folder / METRICS_FILE
    reports = {
        split: write_report(
            result, report_dir / ("evaluation.html" if split == main_split else f"evaluation_{split}.html"),
            training_metrics=training_metrics if training_metrics.is_file() else None,
            inference=workspace.record("inference"), benchmark=benchmark if benchmark is not None and benchmark.is_file() else None,
            provenance=provenance, worst_n=int(params.get("worst_n", 3)), display_roots=(workspace.manifest.path.parent,), data_note=data_note(workspace.paths.raw),
            scan_problems=read_scan_problems(workspace.case_table),
            study_note=phantom_study_note(workspace.manifest.path.parent) if data_note(workspace.paths.raw) else "",
        )
        for split, result in results.items()
    }
    record = workspace.record("evaluation")
    write_json(record, {split: {"report": str(path), "metrics": str(report_dir / "evaluation" / split / METRICS_JSON)} for split, path in reports.items()})
    return EvaluationRecord(jobs, results, main_split, reports, record)

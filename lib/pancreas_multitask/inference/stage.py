"""The inference stage's entry: the profile's splits (or a folder) through one predictor, and ``inference.json``.

``03_inference`` calls ``predict(workspace, params, device)``; the raw cases of a split come from the scan's
case table (``Workspace.cases``), so a case the scan left out (``on_bad_case: skip``) is not predicted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..io import write_json
from ..postprocessing import describe
from ..workspace import Workspace
from .model_sharing import resolve_model
from .predictor import MODES, MultitaskPredictor, PredictionReport, case_records, input_cases, make_predictor, predict_cases


@dataclass
class InferenceRecord:
    """The predictor, each job's output folder and report, and ``inference.json``."""

    model: Path
    predictor: MultitaskPredictor
    outputs: dict[str, Path]
    jobs: dict[str, list[tuple[str, Path]]]
    reports: dict[str, PredictionReport] = field(default_factory=dict)
    record_file: Path | None = None

    @property
    def failures(self) -> list[str]:
        return [f for report in self.reports.values() for f in report.failed]


def predict(workspace: Workspace, params: Mapping[str, Any], device: str) -> InferenceRecord:
    """Predict ``input_splits`` (or ``input_folder``) with the trained model (or ``model_folder``: a folder or zip).

    Parameters as in 03_inference: ``model_folder``, ``folds``, ``checkpoint``, ``mode``, ``engine``, ``postprocessing``,
    ``input_splits``, ``input_folder``, ``output_folder``, ``num_parts``, ``part_id``, ``overwrite``.
    """
    ending = workspace.manifest.file_ending
    model = resolve_model(params["model_folder"], workspace.paths.work / "models") if params.get("model_folder") else workspace.model
    mode = params.get("mode", "fast")
    folds = list(params.get("folds") or [workspace.fold])
    checkpoint = params.get("checkpoint") or "checkpoint_best.pth"
    predictor = make_predictor(model, mode, device, folds, checkpoint, bool(params.get("postprocessing", True)), engine=params.get("engine") or "auto")
    out_root = Path(params["output_folder"]) if params.get("output_folder") else workspace.predictions_root
    if params.get("input_folder"):
        jobs = {"input": input_cases(params["input_folder"], ending)}
    else:
        jobs = {split: [(c.case_id, c.image) for c in workspace.cases(split)] for split in params.get("input_splits") or ()}
    record = InferenceRecord(model, predictor, {name: out_root / name for name in jobs}, jobs)
    for name, cases in jobs.items():
        record.reports[name] = predict_cases(predictor, cases, out_root / name, bool(params.get("overwrite")), int(params.get("num_parts") or 1), int(params.get("part_id") or 0), ending)
    seconds = [r["seconds"] for name in jobs for r in case_records(out_root / name)]
    record.record_file = workspace.record("inference")
    write_json(record.record_file, {
        "model": str(model), "mode": mode, "mode_settings": predictor.describe(), "engine": predictor.engine_record(), "rule_compliant": MODES[mode].rule_compliant, "device": device,
        "folds": folds, "checkpoint": checkpoint,
        "postprocessing": describe(predictor.postprocessing), "postprocessing_file": str(predictor.postprocessing_source or ""),
        "calibration": {f"fold {fold}": asdict(c) for fold, c in zip(folds, predictor.calibrations)},
        "outputs": {name: str(folder) for name, folder in record.outputs.items()},
        "counts": {name: {"predicted": len(r.predicted), "skipped": len(r.skipped), "failed": len(r.failed)} for name, r in record.reports.items()},
        "failed": record.failures,
        "median_seconds_per_case": float(np.median(seconds)) if seconds else None,
    })
    return record

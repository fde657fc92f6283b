"""Evaluate a prediction folder and its subtype CSV against ground truth: per-case table and summary.

Matching is by case id. A ground-truth case without a predicted mask or CSV row is listed in
``missing_predictions``, a prediction without ground truth in ``unexpected_predictions``; both are
printed, and the metrics use the cases that have what they need (Dice: both masks; classification:
a true and a predicted subtype); no target passes then. A mask that is not on its ground truth's grid
stops the evaluation, with every such file named. Targets pass when the point estimate reaches the
threshold. An output folder holds one evaluation: a new one first removes the previous outputs, so an
interrupted run leaves none rather than a mix of old and new.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..io import remove_stale_temporaries, write_json, write_text
from ..model.folders import PROB_PREFIX, UNCALIBRATED_PREFIX
from ..runtime import progress
from ..dataset.ground_truth import FILE_ENDING, GroundTruthCase, case_id, read_names_csv
from .metrics import NSD_TOLERANCE_MM, bootstrap_ci, classification_metrics, evaluate_case, macro_f1_ci, mean_ci

TARGETS = {"dsc_pancreas": 0.91, "dsc_lesion": 0.31, "macro_f1": 0.70}
TARGET_LABELS = {"dsc_pancreas": "whole-pancreas DSC", "dsc_lesion": "lesion DSC", "macro_f1": "subtype macro-F1"}
DSC_KEYS = ("dsc_pancreas", "dsc_lesion")
SURFACE_KEYS = ("nsd_pancreas", "nsd_lesion", "hd95_pancreas", "hd95_lesion")
PER_CASE_COLUMNS = ["case", "mask_file", "image_file", "gt_file", "pred_file", "subtype_true", "subtype_pred", "prob_pred", "prob_pred_uncalibrated",
                    *DSC_KEYS, *SURFACE_KEYS, "lesion_detected"]
NO_PP_SUFFIX = "_no_postprocessing"  # per-case columns of the masks before nnU-Net's postprocessing
METRICS_JSON, PER_CASE_CSV = "metrics.json", "per_case.csv"


@dataclass(frozen=True)
class EvaluationResult:
    """``summary`` is what ``metrics.json`` holds; ``per_case`` what ``per_case.csv`` holds."""

    summary: dict[str, Any]
    per_case: pd.DataFrame
    class_names: list[str]


def predicted_masks(prediction_folder: Path) -> dict[str, Path]:
    """``case id -> file`` for the masks in a prediction folder (hidden temporaries left out)."""
    if not prediction_folder.is_dir():
        raise FileNotFoundError(f"{prediction_folder}: prediction folder not found")
    return {case_id(p.name): p for p in sorted(prediction_folder.glob(f"*{FILE_ENDING}")) if not p.name.startswith(".")}


def _class_names(frame: pd.DataFrame, ground_truth: Sequence[GroundTruthCase], given: Sequence[str] | None) -> list[str]:
    if given is not None:
        return list(given)
    probs = [c.removeprefix(PROB_PREFIX) for c in frame.columns if c.startswith(PROB_PREFIX)]
    if probs:
        return probs
    top = max([c.subtype for c in ground_truth] + frame["Subtype"].tolist())
    return [f"subtype{k}" for k in range(top + 1)]


def _check_labels(values: Sequence[int], num_classes: int, where: str) -> None:
    bad = sorted({int(v) for v in values if not 0 <= int(v) < num_classes})
    if bad:
        raise ValueError(f"{where}: subtype(s) {bad} outside the {num_classes} classes 0..{num_classes - 1}")


def match_cases(ground_truth: Sequence[GroundTruthCase], masks: dict[str, Path], rows: dict[str, pd.Series], prediction_folder: Path, csv_file: Path) -> tuple[list[dict], list[dict]]:
    """(missing, unexpected): each a list of ``{"case", "kind": "mask" | "csv_row", "file"}``.

    ``file`` is the expected mask path or the CSV for a missing prediction, the file found for an unexpected one.
    """
    truth = {c.case for c in ground_truth}
    missing, unexpected = [], []
    for c in ground_truth:
        if c.case not in masks:
            missing.append({"case": c.case, "kind": "mask", "file": str(prediction_folder / c.mask_file)})
        if c.case not in rows:
            missing.append({"case": c.case, "kind": "csv_row", "file": str(csv_file)})
    unexpected += [{"case": case, "kind": "mask", "file": str(path)} for case, path in masks.items() if case not in truth]
    unexpected += [{"case": case, "kind": "csv_row", "file": str(csv_file)} for case in rows if case not in truth]
    return missing, unexpected


def per_case_table(ground_truth: Sequence[GroundTruthCase], masks: dict[str, Path], rows: dict[str, pd.Series], prob_columns: Sequence[str]) -> pd.DataFrame:
    """One row per ground-truth case (``PER_CASE_COLUMNS``); absent predictions leave empty cells."""
    records, mismatched = [], []
    for c in progress(ground_truth, "evaluate", unit="case"):
        pred_file, row = masks.get(c.case), rows.get(c.case)
        dsc = dict.fromkeys((*DSC_KEYS, *SURFACE_KEYS, "lesion_detected"), math.nan)
        if pred_file is not None:
            try:
                dsc = evaluate_case(c.gt_file, pred_file)
            except ValueError as exc:  # another grid, or an unreadable file: all of them are named below
                mismatched.append(str(exc))
        subtype_pred = int(row["Subtype"]) if row is not None else None
        prob = float(row[prob_columns[subtype_pred]]) if row is not None and subtype_pred < len(prob_columns) else math.nan
        uncalibrated = f"{UNCALIBRATED_PREFIX}{prob_columns[subtype_pred].removeprefix(PROB_PREFIX)}" if row is not None and subtype_pred < len(prob_columns) else None
        records.append({
            "case": c.case, "mask_file": c.mask_file, "image_file": str(c.image_file or ""), "gt_file": str(c.gt_file),
            "pred_file": str(pred_file or ""), "subtype_true": c.subtype, "subtype_pred": subtype_pred, "prob_pred": prob,
            "prob_pred_uncalibrated": float(row[uncalibrated]) if uncalibrated is not None and uncalibrated in row.index else math.nan, **dsc,
        })
    if mismatched:
        raise ValueError(f"{len(mismatched)} predicted mask(s) cannot be scored against their ground truth:\n" + "\n".join(mismatched))
    frame = pd.DataFrame.from_records(records, columns=PER_CASE_COLUMNS)
    frame["subtype_pred"] = frame["subtype_pred"].astype("Int64")
    return frame


def segmentation_summary(values: pd.Series, resamples: int, seed: int) -> dict[str, Any]:
    """n, mean, median and the bootstrap 95 % CI of the mean of one per-case Dice column."""
    values = values.dropna().to_numpy(dtype=float)
    if len(values) == 0:
        return {"n": 0, "mean": None, "median": None, "ci95": None}
    return {"n": len(values), "mean": float(values.mean()), "median": float(np.median(values)), "ci95": list(mean_ci(values, resamples=resamples, seed=seed))}


def detection_summary(detected: pd.Series, resamples: int, seed: int) -> dict[str, Any]:
    """Share of the cases with a true lesion whose predicted lesion overlaps it (at least one voxel), with its bootstrap CI."""
    values = detected.dropna().to_numpy(dtype=float)
    base = {"definition": "predicted lesion overlaps the true lesion by at least one voxel; cases without a true lesion left out", "n": len(values)}
    if len(values) == 0:
        return {**base, "detected": 0, "rate": None, "ci95": None}
    return {**base, "detected": int(values.sum()), "rate": float(values.mean()), "ci95": list(mean_ci(values, resamples=resamples, seed=seed))}


def classification_not_assessable(frame: pd.DataFrame, class_names: Sequence[str]) -> str | None:
    """Why the split cannot measure classification (no predicted subtype, or fewer than two true classes), else None.

    On a one-class set every always-that-class classifier scores macro-F1 1.00: such a number says
    nothing about telling subtypes apart, so it is not reported.
    """
    known = frame.dropna(subset=["subtype_pred"])
    if known.empty:
        return "no case has both a true and a predicted subtype"
    present = sorted({int(k) for k in known["subtype_true"]})
    if len(present) < 2:
        return (f"all {len(known)} cases are {class_names[present[0]]}: a one-class set cannot measure subtype "
                "classification (any classifier that always answers that class would score macro-F1 1.00)")
    return None


def classification_summary(frame: pd.DataFrame, class_names: Sequence[str], resamples: int, seed: int) -> dict[str, Any] | None:
    """Classification metrics with the macro-F1's bootstrap CI, over the cases with a predicted subtype.

    None when ``classification_not_assessable`` gives a reason.
    """
    if classification_not_assessable(frame, class_names) is not None:
        return None
    known = frame.dropna(subset=["subtype_pred"])
    y_true, y_pred = known["subtype_true"].to_numpy(dtype=int), known["subtype_pred"].to_numpy(dtype=int)
    metrics = classification_metrics(y_true, y_pred, len(class_names))
    for entry in metrics["per_class"]:
        entry["name"] = class_names[entry["label"]]
    return {"n": len(known), **metrics, "macro_f1_ci95": list(macro_f1_ci(y_true, y_pred, len(class_names), resamples=resamples, seed=seed)), "class_names": list(class_names)}


def calibration_summary(ground_truth: Sequence[GroundTruthCase], rows: dict[str, pd.Series], class_names: Sequence[str], resamples: int, seed: int) -> dict[str, Any] | None:
    """Top-label ECE (with a bootstrap CI) and reliability bins of the CSV's probabilities, and of the uncalibrated ones
    beside them when the CSV has them (``uncalibrated_prob_*``); None without probability columns."""
    from ..model.calibration import ECE_BINS, reliability_bins, top_label_ece

    labelled = [(c.subtype, rows[c.case]) for c in ground_truth if c.case in rows]
    out: dict[str, Any] = {"bins": ECE_BINS, "n": len(labelled), "ece": "top-label expected calibration error, equal-width confidence bins"}
    for key, prefix in (("calibrated", PROB_PREFIX), ("uncalibrated", UNCALIBRATED_PREFIX)):
        columns = [f"{prefix}{name}" for name in class_names]
        if not labelled or any(col not in row.index for _, row in labelled for col in columns):
            continue
        probabilities = np.array([[float(row[col]) for col in columns] for _, row in labelled])
        truth = np.array([t for t, _ in labelled])
        confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == truth
        out[key] = {
            "ece": float(top_label_ece(confidence[None], correct[None])[0]),
            "ece_ci95": list(bootstrap_ci(lambda idx: top_label_ece(confidence[idx], correct[idx]), len(truth), resamples=resamples, seed=seed)),
            "reliability": reliability_bins(probabilities, truth),
        }
    return out if "calibrated" in out else None


def target_table(segmentation: dict[str, dict], classification: dict | None, complete: bool = True) -> dict[str, dict[str, Any]]:
    """Each target's threshold, value (point estimate), CI and pass/fail (None when not available).

    With cases missing a mask or a CSV row (``complete`` False) no target passes: the means leave
    those cases out and would flatter the run.
    """
    values = {
        "dsc_pancreas": (segmentation["dsc_pancreas"]["mean"], segmentation["dsc_pancreas"]["ci95"]),
        "dsc_lesion": (segmentation["dsc_lesion"]["mean"], segmentation["dsc_lesion"]["ci95"]),
        "macro_f1": (classification["macro_f1"], classification["macro_f1_ci95"]) if classification else (None, None),
    }
    return {
        key: {"label": TARGET_LABELS[key], "threshold": threshold, "value": values[key][0], "ci95": values[key][1],
              "passed": None if values[key][0] is None else bool(complete and values[key][0] >= threshold)}
        for key, threshold in TARGETS.items()
    }


def evaluate_folder(
    ground_truth: Sequence[GroundTruthCase],
    prediction_folder: str | os.PathLike[str],
    prediction_csv: str | os.PathLike[str],
    output_folder: str | os.PathLike[str] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    resamples: int = 2000,
    seed: int = 0,
    ground_truth_source: str = "",
    unprocessed_folder: str | os.PathLike[str] | None = None,
    postprocessing_chosen_on: str = "validation",
) -> EvaluationResult:
    """Score predicted masks and subtypes against ``ground_truth``; write ``metrics.json`` and ``per_case.csv`` to ``output_folder``.

    ``class_names`` default: the CSV's ``prob_*`` columns, else ``subtypeK`` up to the largest label.
    ``ground_truth_source`` (e.g. the quiz folder or the answer-key CSV) is recorded in the summary.
    ``unprocessed_folder``: the same predictions before nnU-Net's postprocessing (what ``predict_cases``
    writes to ``no_postprocessing/``); their Dice goes beside the postprocessed one (``summary["postprocessing"]``).
    """
    prediction_folder, prediction_csv = Path(prediction_folder), Path(prediction_csv)
    if not ground_truth:
        raise ValueError("no ground-truth cases to evaluate")
    if output_folder is not None:
        clear_outputs(output_folder)
    masks = predicted_masks(prediction_folder)
    frame = read_names_csv(prediction_csv)
    names = _class_names(frame, ground_truth, class_names)
    _check_labels([c.subtype for c in ground_truth], len(names), "ground truth")
    _check_labels(frame["Subtype"], len(names), str(prediction_csv))
    rows = {case_id(row["Names"]): row for _, row in frame.iterrows()}
    missing, unexpected = match_cases(ground_truth, masks, rows, prediction_folder, prediction_csv)
    for entry in missing:
        print(f"missing prediction: {entry['case']} has no {entry['kind'].replace('_', ' ')} ({entry['file']})", flush=True)
    for entry in unexpected:
        print(f"unexpected prediction: {entry['case']} ({entry['kind'].replace('_', ' ')} in {entry['file']}) has no ground truth", flush=True)

    per_case = per_case_table(ground_truth, masks, rows, [c for c in frame.columns if c.startswith(PROB_PREFIX)])
    segmentation = {key: segmentation_summary(per_case[key], resamples, seed) for key in DSC_KEYS}
    surface = {key: segmentation_summary(per_case[key], resamples, seed) for key in SURFACE_KEYS}
    postprocessing = None
    if unprocessed_folder is not None:
        per_case, postprocessing = compare_postprocessing(per_case, ground_truth, Path(unprocessed_folder), resamples, seed)
        postprocessing["chosen_on"] = postprocessing_chosen_on
    classification = classification_summary(per_case, names, resamples, seed)
    if classification is not None:
        classification["calibration"] = calibration_summary(ground_truth, rows, names, resamples, seed)
    summary = {
        "sources": {"ground_truth": ground_truth_source, "prediction_folder": str(prediction_folder), "prediction_csv": str(prediction_csv)},
        "n_ground_truth_cases": len(ground_truth),
        "segmentation": segmentation,
        "surface": {**surface, "nsd_tolerance_mm": NSD_TOLERANCE_MM, "source": "monai.metrics (compute_surface_dice, compute_hausdorff_distance), voxel spacing in mm"},
        "lesion_detection": detection_summary(per_case["lesion_detected"], resamples, seed),
        "classification": classification,
        "classification_not_assessable": classification_not_assessable(per_case, names),
        "targets": target_table(segmentation, classification, complete=not missing),
        "postprocessing": postprocessing,
        "missing_predictions": missing,
        "unexpected_predictions": unexpected,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "method": "percentile, cases resampled with replacement"},
        "dice_convention": "both masks empty -> 1.0, exactly one empty -> 0.0",
        "surface_convention": "both masks empty -> NSD 1.0, HD95 0 mm; exactly one empty -> NSD 0.0, HD95 = the image diagonal in mm",
    }
    result = EvaluationResult(summary=summary, per_case=per_case, class_names=names)
    if output_folder is not None:
        write_outputs(result, output_folder)
    return result


def compare_postprocessing(per_case: pd.DataFrame, ground_truth: Sequence[GroundTruthCase], unprocessed_folder: Path, resamples: int, seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Dice of the masks before postprocessing, per case (``*_no_postprocessing`` columns) and summarised beside the final ones."""
    unprocessed = predicted_masks(unprocessed_folder)
    by_case = {c.case: c for c in ground_truth}
    values: dict[str, list[float]] = {f"{key}{NO_PP_SUFFIX}": [] for key in DSC_KEYS}
    for case in per_case["case"]:
        dsc = evaluate_case(by_case[case].gt_file, unprocessed[case], surface=False) if case in unprocessed else dict.fromkeys(DSC_KEYS, math.nan)
        for key in DSC_KEYS:
            values[f"{key}{NO_PP_SUFFIX}"].append(dsc[key])
    per_case = per_case.assign(**values)
    summary = {
        "unprocessed_folder": str(unprocessed_folder),
        **{key: {"without": segmentation_summary(per_case[f"{key}{NO_PP_SUFFIX}"], resamples, seed), "with": segmentation_summary(per_case[key], resamples, seed)} for key in DSC_KEYS},
    }
    return per_case, summary


def clear_outputs(output_folder: str | os.PathLike[str], names: Sequence[str] = (METRICS_JSON, PER_CASE_CSV)) -> None:
    """Remove a previous evaluation's ``names`` and the unfinished temporaries of a killed one from ``output_folder``."""
    folder = Path(output_folder)
    if folder.is_dir():
        remove_stale_temporaries(folder, older_than_s=0)  # the folder is one evaluation's: nothing else writes there
        for name in names:
            (folder / name).unlink(missing_ok=True)


def write_outputs(result: EvaluationResult, output_folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``metrics.json`` and ``per_case.csv`` in ``output_folder``, each written atomically."""
    output_folder = Path(output_folder)
    buffer = io.StringIO()
    result.per_case.to_csv(buffer, index=False, na_rep="", lineterminator="\n")
    write_text(output_folder / PER_CASE_CSV, buffer.getvalue())
    write_json(output_folder / METRICS_JSON, result.summary)
    return output_folder / METRICS_JSON, output_folder / PER_CASE_CSV


def worst_first(per_case: pd.DataFrame) -> pd.DataFrame:
    """Cases ordered worst first by the lower of their two DSCs (ties: whole-pancreas DSC); cases without a predicted mask lead."""
    key = per_case[["dsc_pancreas", "dsc_lesion"]].min(axis=1, skipna=False)
    return per_case.assign(_key=key).sort_values(["_key", "dsc_pancreas", "case"], na_position="first", kind="stable").drop(columns="_key")

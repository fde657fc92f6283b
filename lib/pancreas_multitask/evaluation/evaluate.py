"""Evaluate a prediction folder and its subtype CSV against ground truth: per-case table and summary.

Matching is by case id. A ground-truth case without a predicted mask or CSV row is listed in
``missing_predictions``, a prediction without ground truth in ``unexpected_predictions``; both are
printed, and the metrics use the cases that have what they need (Dice: both masks; classification:
a true and a predicted subtype); no target is met then. A mask that is not on its ground truth's grid
stops the evaluation, with every such file named. Each target gets a three-state verdict on its 95 % CI
(``verdict``: met, not met, undecided). When the evaluated split is the one that chose the checkpoint,
the postprocessing and the temperature, every target's label says so. An output folder holds one
evaluation: a new one first removes the previous outputs, so an interrupted run leaves none rather than a
mix of old and new.
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
from .chance import chance_line, collapse_warnings, label_check, prediction_histogram
from .metrics import DETECTION_MIN_DICE, NSD_TOLERANCE_MM, bootstrap_ci, classification_ci, classification_metrics, count_rate_ci, evaluate_case, mean_ci, proportion_ci
from .verdict import judge

TARGETS = {"dsc_pancreas": 0.91, "dsc_lesion": 0.31, "macro_f1": 0.70}
TARGET_LABELS = {"dsc_pancreas": "whole-pancreas DSC", "dsc_lesion": "lesion DSC", "macro_f1": "subtype macro-F1"}
DSC_KEYS = ("dsc_pancreas", "dsc_lesion")
SURFACE_KEYS = ("nsd_pancreas", "nsd_lesion", "hd95_pancreas", "hd95_lesion")
DETECTION_KEYS = ("lesion_detected", "lesion_components", "lesion_components_detected", "lesion_fp_components")
PER_CASE_COLUMNS = ["case", "mask_file", "image_file", "gt_file", "pred_file", "subtype_true", "subtype_pred", "prob_pred", "prob_pred_uncalibrated",
                    *DSC_KEYS, *SURFACE_KEYS, *DETECTION_KEYS]
CHOSEN_HERE = "chosen on these cases"  # added to a target's label when the evaluated split is the selection split
TRAINED_HERE = "trained on these cases"  # ... when it is the training split
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


def _class_names(frame: pd.DataFrame, ground_truth: Sequence[GroundTruthCase], given: Sequence[str] | None, csv_file: Path) -> list[str]:
    probs = [c.removeprefix(PROB_PREFIX) for c in frame.columns if c.startswith(PROB_PREFIX)]
    if given is not None:
        if probs and len(probs) != len(given):
            raise ValueError(f"{csv_file}: probabilities for {len(probs)} classes ({', '.join(probs)}), but the manifest has {len(given)} ({', '.join(given)})")
        return list(given)
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
        dsc = dict.fromkeys((*DSC_KEYS, *SURFACE_KEYS, *DETECTION_KEYS), math.nan)
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


def detection_summary(per_case: pd.DataFrame) -> dict[str, Any]:
    """Lesion-wise detection (``metrics.lesion_components``): the share of cases whose lesion is found and of all true
    lesion components (Wilson intervals), and the false-positive lesion components per case (exact Poisson interval)."""
    base = {"definition": (f"a true lesion component is found when its Dice with the predicted lesion components touching it is at least "
                           f"{DETECTION_MIN_DICE:g}; a case's lesion is found when one of its components is; a false-positive component "
                           "touches no true lesion voxel"),
            "min_dice": DETECTION_MIN_DICE}
    cases = per_case.dropna(subset=["lesion_detected"])
    scored = per_case.dropna(subset=["lesion_fp_components"])
    fp = scored["lesion_fp_components"].to_numpy(dtype=float)
    out = {**base, "n": len(cases), "detected": int(cases["lesion_detected"].sum()), "rate": None, "ci95": None,
           "components": int(cases["lesion_components"].sum()), "components_detected": int(cases["lesion_components_detected"].sum()),
           "component_sensitivity": None, "component_sensitivity_ci95": None,
           "fp_components_per_case": float(fp.mean()) if len(fp) else None, "fp_components_ci95": list(count_rate_ci(int(fp.sum()), len(fp))) if len(fp) else None,
           "fp_components_total": int(fp.sum()), "fp_cases": len(fp),
           "intervals": "Wilson score for the shares (components counted as independent), exact Poisson for the false positives per case"}
    if len(cases):
        out["rate"] = float(cases["lesion_detected"].mean())
        out["ci95"] = list(proportion_ci(out["detected"], out["n"]))
        out["component_sensitivity"] = out["components_detected"] / out["components"]
        out["component_sensitivity_ci95"] = list(proportion_ci(out["components_detected"], out["components"]))
    return out


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


def classification_summary(frame: pd.DataFrame, class_names: Sequence[str], resamples: int, seed: int, prediction_csv: Path | None = None,
                           label_file: Path | None = None) -> dict[str, Any] | None:
    """Classification metrics with bootstrap CIs (macro-F1, balanced accuracy, MCC) over the cases with a predicted
    subtype, the chance line, the prediction histogram, the collapse warnings and the label check (``chance``).

    None when ``classification_not_assessable`` gives a reason.
    """
    if classification_not_assessable(frame, class_names) is not None:
        return None
    known = frame.dropna(subset=["subtype_pred"])
    y_true, y_pred = known["subtype_true"].to_numpy(dtype=int), known["subtype_pred"].to_numpy(dtype=int)
    k = len(class_names)
    metrics = classification_metrics(y_true, y_pred, k)
    for entry in metrics["per_class"]:
        entry["name"] = class_names[entry["label"]]
    cis = {f"{name}_ci95": list(classification_ci(y_true, y_pred, k, name, resamples=resamples, seed=seed)) for name in ("macro_f1", "balanced_accuracy", "mcc")}
    scored = metrics["scored_classes"]
    return {
        "n": len(known), **metrics, **cis, "class_names": list(class_names),
        "f1_over": f"over {len(scored)} of {k} classes" + (f" ({', '.join(class_names[c] for c in metrics['classes_absent'])} absent from the truth)" if len(scored) < k else ""),
        "chance": chance_line(y_true, y_pred, k, cis["macro_f1_ci95"], resamples=resamples, seed=seed),
        "prediction_histogram": prediction_histogram(y_true, y_pred, k),
        "collapse_warnings": collapse_warnings(y_true, y_pred, class_names),
        "label_warning": label_check(label_file, prediction_csv, y_true, y_pred) if prediction_csv is not None else None,
    }


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


def target_table(segmentation: dict[str, dict], classification: dict | None, missing: int = 0, not_assessable: str | None = None,
                 chosen_here: bool = False, trained_here: bool = False) -> dict[str, dict[str, Any]]:
    """Each target's label, threshold, value (point estimate), CI, number of cases and three-state verdict (``verdict.judge``).

    With ``missing`` cases lacking a mask or a CSV row no target is decided: the means leave those cases out
    and would flatter the run. A macro-F1 over fewer than all of the manifest's classes decides nothing either.
    ``chosen_here``: the evaluated split chose the checkpoint, postprocessing and temperature; ``trained_here``: the
    model was trained on it (then nothing is decided). Every label says so.
    """
    blockers = [f"{missing} case(s) lack a prediction"] if missing else []
    if trained_here:
        blockers.append(f"the model was {TRAINED_HERE}")
    values = {key: (segmentation[key]["mean"], segmentation[key]["ci95"], segmentation[key]["n"], blockers) for key in DSC_KEYS}
    if classification:
        absent = [f"the F1 is {classification['f1_over']}"] if classification["classes_absent"] else []
        values["macro_f1"] = (classification["macro_f1"], classification["macro_f1_ci95"], classification["n"], blockers + absent)
    else:
        values["macro_f1"] = (None, None, 0, blockers)
    table = {}
    for key, threshold in TARGETS.items():
        value, ci, n, reasons = values[key]
        label = TARGET_LABELS[key] + (f" ({TRAINED_HERE})" if trained_here else f" ({CHOSEN_HERE})" if chosen_here else "")
        why_none = (not_assessable or "no case has both a true and a predicted subtype") if key == "macro_f1" else "no case has a predicted mask"
        verdict = judge(value, ci, threshold, n, blockers=reasons, not_assessable=why_none)
        table[key] = {"label": label, "threshold": threshold, "value": value, "ci95": ci, "n": n, **verdict.to_dict()}
    return table


def same_split(selection_split: str, evaluated_split: str) -> bool:
    """Whether the evaluated split is (or, for ``train (the held-out cases of fold K ...)``, holds) the split that chose: first words compared."""
    first = [text.strip().lower().split()[0] if text.strip() else "" for text in (selection_split, evaluated_split)]
    return bool(first[0]) and first[0] == first[1]


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
    selection_split: str = "validation",
    evaluated_split: str = "",
    label_file: str | os.PathLike[str] | None = None,
    training_split: str = "train",
) -> EvaluationResult:
    """Score predicted masks and subtypes against ``ground_truth``; write ``metrics.json`` and ``per_case.csv`` to ``output_folder``.

    ``class_names``: the manifest's subtypes, so that a macro-F1 is over every class the task has, not only those a
    split happens to contain (default: the CSV's ``prob_*`` columns, else ``subtypeK`` up to the largest label).
    ``ground_truth_source`` (e.g. the quiz folder or the answer-key CSV) is recorded in the summary.
    ``unprocessed_folder``: the same predictions before nnU-Net's postprocessing (what ``predict_cases``
    writes to ``no_postprocessing/``); their Dice goes beside the postprocessed one (``summary["postprocessing"]``).
    ``selection_split`` chose the checkpoint, the postprocessing and the temperature; ``evaluated_split`` is scored
    here (``summary["splits"]``; when they are the same, every target's label says so, as it does when the evaluated split
    is ``training_split``). ``label_file``: the answer-key CSV the true subtypes come from, if any (checked against the
    prediction CSV before anything is scored).
    """
    prediction_folder, prediction_csv = Path(prediction_folder), Path(prediction_csv)
    if not ground_truth:
        raise ValueError("no ground-truth cases to evaluate")
    label_check(label_file, prediction_csv, [], [])  # the labels must not be read from the prediction CSV itself
    if output_folder is not None:
        clear_outputs(output_folder)
    masks = predicted_masks(prediction_folder)
    frame = read_names_csv(prediction_csv)
    names = _class_names(frame, ground_truth, class_names, prediction_csv)
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
        postprocessing["chosen_on"] = selection_split
    classification = classification_summary(per_case, names, resamples, seed, prediction_csv, Path(label_file) if label_file is not None else None)
    if classification is not None:
        classification["calibration"] = calibration_summary(ground_truth, rows, names, resamples, seed)
    not_assessable = classification_not_assessable(per_case, names)
    chosen_here, trained_here = same_split(selection_split, evaluated_split), same_split(training_split, evaluated_split)
    summary = {
        "sources": {"ground_truth": ground_truth_source, "prediction_folder": str(prediction_folder), "prediction_csv": str(prediction_csv)},
        "n_ground_truth_cases": len(ground_truth),
        "splits": {"selection": selection_split, "evaluated": evaluated_split, "evaluated_is_selection": chosen_here,
                   "training": training_split, "evaluated_is_training": trained_here,
                   "chose": "checkpoint, nnU-Net's postprocessing and the subtype temperature"},
        "segmentation": segmentation,
        "surface": {**surface, "nsd_tolerance_mm": NSD_TOLERANCE_MM, "source": "monai.metrics (compute_surface_dice, compute_hausdorff_distance), voxel spacing in mm"},
        "lesion_detection": detection_summary(per_case),
        "classification": classification,
        "classification_not_assessable": not_assessable,
        "targets": target_table(segmentation, classification, len({m["case"] for m in missing}), not_assessable, chosen_here, trained_here),
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

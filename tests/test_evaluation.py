"""Evaluation: Dice convention, classification metrics, bootstrap CIs, geometry checks, case matching,
agreement with nnU-Net's evaluator, and the seed-compatible CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, matthews_corrcoef, precision_recall_fscore_support

from conftest import MANIFEST, snapshot
from pancreas_multitask.evaluation.evaluate import PER_CASE_COLUMNS, evaluate_folder, target_table, worst_first
from pancreas_multitask.dataset.ground_truth import read_answer_key, read_quiz_layout
from pancreas_multitask.evaluation.metrics import (
    NSD_TOLERANCE_MM, bootstrap_ci, classification_batch, classification_metrics, dice, evaluate_case, lesion_components, macro_f1, macro_f1_batch,
    classification_ci, mean_ci, region_dices, surface_metrics,
)
from pancreas_multitask.evaluation.verdict import MET, MIN_CASES_FOR_VERDICT, NOT_MET, UNDECIDED, judge

SHAPE = (8, 10, 12)
AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])
QUIRK = 1.0000152587890625


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE, dtype: type = np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def reference_labels() -> np.ndarray:
    """8 pancreas voxels and 4 lesion voxels (12 foreground)."""
    labels = np.zeros(SHAPE, dtype=np.float32)
    labels[0:2, 0:2, 0:2] = 1
    labels[2:3, 0:2, 0:2] = 2
    return labels


def write_csv(path: Path, rows: list[tuple[str, int, tuple[float, float, float]]]) -> Path:
    lines = ["Names,Subtype,prob_subtype0,prob_subtype1,prob_subtype2"]
    lines += [f"{name},{subtype},{p[0]:.6f},{p[1]:.6f},{p[2]:.6f}" for name, subtype, p in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- Dice


def test_dice_on_hand_made_masks() -> None:
    gt = np.zeros(SHAPE, dtype=bool)
    gt[0:2, 0:2, 0:2] = True  # 8 voxels
    inside = np.zeros(SHAPE, dtype=bool)
    inside[0:1, 0:2, 0:2] = True  # 4 voxels, all inside
    assert dice(inside, gt) == pytest.approx(2 * 4 / (4 + 8))
    shifted = np.zeros(SHAPE, dtype=bool)
    shifted[1:3, 0:2, 0:2] = True  # 8 voxels, 4 of them overlap
    assert dice(shifted, gt) == pytest.approx(2 * 4 / 16)
    assert dice(gt, gt) == 1.0
    empty = np.zeros(SHAPE, dtype=bool)
    assert dice(empty, empty) == 1.0  # nothing to find, nothing predicted
    assert dice(empty, gt) == 0.0 and dice(gt, empty) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice(gt, gt[:-1])


def test_whole_pancreas_counts_the_lesion_and_lesion_is_label_2() -> None:
    gt = reference_labels().astype(int)
    all_pancreas = np.where(gt > 0, 1, 0)  # the lesion predicted as pancreas
    assert region_dices(all_pancreas, gt) == {"dsc_pancreas": 1.0, "dsc_lesion": 0.0}
    all_lesion = np.where(gt > 0, 2, 0)
    assert region_dices(all_lesion, gt) == {"dsc_pancreas": 1.0, "dsc_lesion": pytest.approx(2 * 4 / (4 + 12))}


def test_float_ground_truth_is_rounded(tmp_path: Path) -> None:
    clean = reference_labels()
    quirky = np.where(clean == 1, QUIRK, np.where(clean == 2, 2 - 1.52587890625e-05, clean)).astype(np.float32)
    assert (quirky != clean).any()
    pred = save(tmp_path / "pred.nii.gz", clean, dtype=np.uint8)
    result = evaluate_case(save(tmp_path / "gt.nii.gz", quirky), pred)
    assert result == {"dsc_pancreas": 1.0, "dsc_lesion": 1.0, "nsd_pancreas": 1.0, "nsd_lesion": 1.0, "hd95_pancreas": 0.0, "hd95_lesion": 0.0, "lesion_detected": 1.0,
                      "lesion_components": 1.0, "lesion_components_detected": 1.0, "lesion_fp_components": 0.0}


def _surface_by_brute_force(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], tolerance: float) -> tuple[float, float]:
    """NSD and symmetric HD95 from every pair of boundary voxels (mask minus its 6-connected erosion), in mm."""
    from scipy import ndimage
    from scipy.spatial.distance import cdist

    boundary = lambda m: np.argwhere(m & ~ndimage.binary_erosion(m)) * np.asarray(spacing)  # noqa: E731
    distances = cdist(boundary(pred), boundary(gt))
    pred_to_gt, gt_to_pred = distances.min(axis=1), distances.min(axis=0)
    nsd = ((pred_to_gt <= tolerance).sum() + (gt_to_pred <= tolerance).sum()) / (len(pred_to_gt) + len(gt_to_pred))
    return float(nsd), float(max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95)))


@pytest.mark.parametrize("seed", range(4))
def test_monai_surface_metrics_equal_a_brute_force_computation(seed: int) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    spacing = (2.0, 0.7, 0.9)  # anisotropic, like the quiz's CT
    blob = lambda: ndimage.binary_opening(ndimage.gaussian_filter(rng.random((12, 14, 16)), 1.5) > 0.5)  # noqa: E731
    gt, pred = blob(), blob()
    gt[3:9, 4:10, 4:12] = pred[4:9, 5:11, 3:12] = True  # overlapping, not equal
    nsd, hd95 = _surface_by_brute_force(pred, gt, spacing, NSD_TOLERANCE_MM)
    ours = surface_metrics(pred, gt, spacing)
    assert 0 < nsd < 1 and ours["nsd"] == pytest.approx(nsd, abs=1e-6)
    assert hd95 > 0 and ours["hd95"] == pytest.approx(hd95, rel=1e-5)
    assert surface_metrics(pred, gt, spacing, tolerance_mm=100)["nsd"] == pytest.approx(1.0)


def test_surface_metrics_and_detection_of_empty_masks() -> None:
    empty, some = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    some[1:3, 1:3, 1:3] = True
    assert surface_metrics(empty, empty, (1, 1, 1)) == {"nsd": 1.0, "hd95": 0.0}  # nothing to find, nothing found
    diagonal = float(np.linalg.norm([4 * 2.0, 5 * 1.0, 6 * 1.0]))
    assert surface_metrics(empty, some, (2, 1, 1)) == {"nsd": 0.0, "hd95": pytest.approx(diagonal)} == surface_metrics(some, empty, (2, 1, 1))
    labels = np.where(some, 2, 0)
    assert lesion_components(labels, labels)["lesion_detected"] == 1.0 and lesion_components(np.zeros_like(labels), labels)["lesion_detected"] == 0.0
    one_voxel = np.zeros_like(labels)
    one_voxel[2, 2, 2] = 2  # Dice 2/9 with the 8-voxel lesion: above 0.1, a hit
    assert lesion_components(one_voxel, labels)["lesion_detected"] == 1.0
    nothing = lesion_components(labels, np.zeros_like(labels))  # no true lesion: no detection value, one false-positive component
    assert np.isnan(nothing["lesion_detected"]) and nothing["lesion_fp_components"] == 1 and nothing["lesion_components"] == 0


def test_over_segmentation_does_not_count_as_detection_and_false_positive_components_are_counted() -> None:
    """The demo's typical failure: most of the gland called lesion. One voxel of overlap used to count as a hit."""
    gt = np.zeros((20, 20, 20), dtype=np.int16)
    gt[2:18, 2:18, 2:18] = 1  # the gland, 4096 voxels
    gt[4:6, 4:6, 4:6] = 2  # a small lesion, 8 voxels
    gt[14:16, 14:16, 14:16] = 2  # a second one, 8 voxels
    over = np.where(gt > 0, 2, 0)  # the whole gland predicted as lesion: one component touching both
    found = lesion_components(over, gt)
    assert found == {"lesion_components": 2, "lesion_components_detected": 0, "lesion_fp_components": 0, "lesion_detected": 0.0}
    good = np.where(gt > 0, 1, 0)
    good[4:6, 4:6, 4:7] = 2  # the first lesion, slightly too big: Dice 16/20
    good[10, 10, 10] = 2  # two blobs far from any true lesion
    good[2:4, 16:18, 2:4] = 2
    found = lesion_components(good, gt)
    assert found == {"lesion_components": 2, "lesion_components_detected": 1, "lesion_fp_components": 2, "lesion_detected": 1.0}
    touching = good.copy()
    touching[14, 14, 14] = 2  # one voxel of the second lesion: Dice 2/9, a hit
    assert lesion_components(touching, gt)["lesion_components_detected"] == 2


def test_geometry_mismatch_names_both_files(tmp_path: Path) -> None:
    gt = save(tmp_path / "truth" / "case.nii.gz", reference_labels())
    small = save(tmp_path / "pred_shape" / "case.nii.gz", reference_labels()[:, :, :-1], dtype=np.uint8)
    with pytest.raises(ValueError, match="shape") as info:
        evaluate_case(gt, small)
    assert str(gt) in str(info.value) and str(small) in str(info.value)
    moved = AFFINE.copy()
    moved[0, 3] = 1.0  # origin 1 mm away
    shifted = save(tmp_path / "pred_affine" / "case.nii.gz", reference_labels(), moved, dtype=np.uint8)
    with pytest.raises(ValueError, match="affine") as info:
        evaluate_case(gt, shifted)
    assert str(gt) in str(info.value) and str(shifted) in str(info.value)
    rounding = AFFINE.copy()
    rounding[0, 3] = 1e-5  # float noise of a writer is not a mismatch
    assert evaluate_case(gt, save(tmp_path / "pred_ok" / "case.nii.gz", reference_labels(), rounding, dtype=np.uint8))["dsc_pancreas"] == 1.0


# ---------------------------------------------------------------- classification and bootstrap


Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 2, 2, 2, 2, 0]


def test_classification_metrics_equal_sklearn_and_hand_values() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, 3)
    # by hand: F1 = 2tp / (2tp + fp + fn) -> class 0: 4/6, class 1: 2/4, class 2: 6/8
    assert [c["f1"] for c in m["per_class"]] == pytest.approx([2 / 3, 1 / 2, 3 / 4])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    precision, recall, f1, support = precision_recall_fscore_support(Y_TRUE, Y_PRED, labels=[0, 1, 2])
    assert [c["precision"] for c in m["per_class"]] == pytest.approx(precision.tolist())
    assert [c["recall"] for c in m["per_class"]] == pytest.approx(recall.tolist())
    assert [c["support"] for c in m["per_class"]] == support.tolist() == [3, 2, 4]
    assert m["macro_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert m["accuracy"] == accuracy_score(Y_TRUE, Y_PRED)
    assert m["confusion_matrix"] == confusion_matrix(Y_TRUE, Y_PRED, labels=[0, 1, 2]).tolist()


def test_confusion_matrix_keeps_the_label_order_when_a_class_is_absent() -> None:
    m = classification_metrics([0, 0, 1], [0, 1, 1], 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert m["per_class"][2] == {"label": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2) and m["scored_classes"] == [0, 1] and m["classes_absent"] == [2]


def test_a_class_never_predicted_scores_zero_in_the_macro_f1() -> None:
    """All three classes in the truth, class 2 never answered: its F1 of 0 is in the mean (sklearn's union of
    labels would agree here; the trainer's F1 is the same function, tests/test_trainer.py)."""
    y_true, y_pred = [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1]
    m = classification_metrics(y_true, y_pred, 3)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3) == macro_f1(y_true, y_pred, 3)
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0) / 3) and m["classes_absent"] == []


def test_a_class_absent_from_the_truth_is_named_and_not_averaged_in() -> None:
    """Truth without class 2, one answer of class 2: that answer is class 0's error; the F1 is over 2 of 3 classes."""
    y_true, y_pred = [0, 0, 0, 1, 1, 1], [0, 0, 2, 1, 1, 1]
    m = classification_metrics(y_true, y_pred, 3)
    assert m["scored_classes"] == [0, 1] and m["classes_absent"] == [2]
    assert m["macro_f1"] == pytest.approx((0.8 + 1.0) / 2) == f1_score(y_true, y_pred, labels=[0, 1], average="macro")
    assert f1_score(y_true, y_pred, average="macro") == pytest.approx((0.8 + 1.0 + 0.0) / 3)  # sklearn's default: the union of labels
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2) and m["mcc"] == pytest.approx(matthews_corrcoef(y_true, y_pred))


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # sklearn's MCC on rows of one label (it returns 0, as ours does)
def test_vectorised_classification_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 3, size=(200, 7)), rng.integers(0, 3, size=(200, 7))
    y_pred[:20] = 0  # rows where some classes occur in neither array, or only in the predictions
    y_true[:20] = 0
    y_true[20:40] = rng.integers(0, 2, size=(20, 7))
    y_pred[40:50] = y_true[40:50]
    labels = [sorted(set(t)) for t in y_true]
    assert macro_f1_batch(y_true, y_pred, 3) == pytest.approx([f1_score(t, p, labels=k, average="macro", zero_division=0) for t, p, k in zip(y_true, y_pred, labels)])
    assert macro_f1_batch(y_true, y_pred, 3) == pytest.approx([macro_f1(t, p, 3) for t, p in zip(y_true, y_pred)])
    with pytest.warns(UserWarning):  # sklearn warns when a predicted class is absent from the truth, and averages the truth's classes
        balanced = [balanced_accuracy_score(t, p) for t, p in zip(y_true, y_pred)]
    assert classification_batch(y_true, y_pred, 3, "balanced_accuracy") == pytest.approx(balanced)
    assert classification_batch(y_true, y_pred, 3, "mcc") == pytest.approx([matthews_corrcoef(t, p) for t, p in zip(y_true, y_pred)])
    assert [classification_metrics(t, p, 3)["balanced_accuracy"] for t, p in zip(y_true[:60], y_pred[:60])] == pytest.approx(balanced[:60])


def test_bootstrap_ci_contains_the_estimate_and_is_deterministic() -> None:
    values = np.array([0.2, 0.5, 0.6, 0.7, 0.9, 0.95, 0.4])
    low, high = mean_ci(values, seed=1)
    assert low < values.mean() < high
    assert mean_ci(values, seed=1) == (low, high)
    assert mean_ci(values, seed=2) != (low, high)
    assert mean_ci(np.full(6, 0.8)) == pytest.approx((0.8, 0.8))
    f1 = f1_score(Y_TRUE, Y_PRED, average="macro")
    f1_low, f1_high = classification_ci(Y_TRUE, Y_PRED, 3, seed=0)
    assert f1_low <= f1 <= f1_high and f1_low < f1_high
    assert classification_ci([1, 1, 2], [1, 1, 2], 3) == (1.0, 1.0)
    # the percentile interval of the statistic over resampled indices
    low, high = bootstrap_ci(lambda idx: values[idx].max(axis=1), len(values), resamples=500, seed=0, level=0.9)
    assert values.min() <= low <= high == values.max()


# ---------------------------------------------------------------- verdicts


def _segmentation(values: np.ndarray) -> dict:
    from pancreas_multitask.evaluation.evaluate import segmentation_summary

    summary = segmentation_summary(pd.Series(values), 2000, 0)
    return {"dsc_pancreas": summary, "dsc_lesion": summary}


@pytest.mark.parametrize("n", [3, 12, 36])
def test_three_state_verdicts_respect_the_interval(n: int) -> None:
    """Met only when the whole CI reaches the target, not met only when it lies below, undecided in between;
    below MIN_CASES_FOR_VERDICT cases nothing is decided, however far the estimate is from the target."""
    rng = np.random.default_rng(n)
    for centre, expected in ((0.97, MET), (0.80, NOT_MET), (0.91, UNDECIDED)):
        values = rng.normal(0, 0.03, n)
        values = values - values.mean() + centre  # the mean exactly at the centre
        target = target_table(_segmentation(values), None)["dsc_pancreas"]
        low, high = target["ci95"]
        assert target["value"] == pytest.approx(centre) and target["n"] == n
        if n < MIN_CASES_FOR_VERDICT:
            assert target["verdict"] == UNDECIDED and f"{n} cases: a verdict needs at least {MIN_CASES_FOR_VERDICT}" in target["reason"]
        else:
            assert target["verdict"] == expected, (centre, low, high)
            assert (low >= 0.91) == (expected == MET) and (high < 0.91) == (expected == NOT_MET)
    assert target_table(_segmentation(np.full(36, 0.95)), None)["macro_f1"]["verdict"] == "not assessable"


def test_verdict_boundaries() -> None:
    assert judge(0.95, (0.91, 0.99), 0.91, 12).state == MET  # the lower bound exactly at the target
    assert judge(0.85, (0.80, 0.9099), 0.91, 12).state == NOT_MET
    assert judge(0.92, (0.90, 0.94), 0.91, 12).state == UNDECIDED and "contains it" in judge(0.92, (0.90, 0.94), 0.91, 12).reason
    assert judge(0.99, (0.98, 1.0), 0.91, 36, blockers=["2 case(s) lack a prediction"]).state == UNDECIDED
    assert judge(None, None, 0.7, 0, not_assessable="one class").to_dict() == {"verdict": "not assessable", "reason": "one class"}


def test_scores_on_the_training_split_are_labelled_and_decide_nothing(tmp_path: Path) -> None:
    quiz = make_quiz(tmp_path)
    result = evaluate_folder(read_quiz_layout(quiz["gt"], MANIFEST), quiz["pred"], quiz["csv"], resamples=100, selection_split="validation", evaluated_split="train")
    splits, targets = result.summary["splits"], result.summary["targets"]
    assert splits["evaluated_is_training"] and not splits["evaluated_is_selection"]
    assert all(t["label"].endswith("(trained on these cases)") and t["verdict"] == UNDECIDED and "trained on these cases" in t["reason"] for t in targets.values())
    cv5 = evaluate_folder(read_quiz_layout(quiz["gt"], MANIFEST), quiz["pred"], quiz["csv"], resamples=100, selection_split="train (the held-out cases of fold 0)",
                          evaluated_split="validation")
    assert not cv5.summary["splits"]["evaluated_is_training"] and not cv5.summary["splits"]["evaluated_is_selection"]
    assert cv5.summary["targets"]["dsc_pancreas"]["label"] == "whole-pancreas DSC"


def test_detection_intervals_do_not_collapse_when_every_lesion_is_found() -> None:
    from pancreas_multitask.evaluation.evaluate import detection_summary
    from pancreas_multitask.evaluation.metrics import count_rate_ci, proportion_ci

    frame = pd.DataFrame({"lesion_detected": [1.0] * 12, "lesion_components": [1.0] * 11 + [2.0], "lesion_components_detected": [1.0] * 12,
                          "lesion_fp_components": [0.0] * 12})
    detection = detection_summary(frame)
    assert detection["rate"] == 1.0 and detection["ci95"] == pytest.approx([12 / (12 + 1.959964**2), 1.0], abs=1e-4)  # Wilson, not [1, 1]
    assert detection["component_sensitivity"] == pytest.approx(12 / 13) and detection["component_sensitivity_ci95"][1] < 1.0
    assert detection["fp_components_per_case"] == 0.0 and detection["fp_components_ci95"] == pytest.approx([0.0, 3.6889 / 12], abs=1e-3)  # exact Poisson
    low, high = proportion_ci(6, 8)
    assert low < 0.75 < high and count_rate_ci(3, 10)[0] > 0


def test_macro_f1_with_a_class_absent_from_the_truth_decides_nothing() -> None:
    from pancreas_multitask.evaluation.evaluate import classification_summary

    frame = pd.DataFrame({"subtype_true": [0, 1] * 18, "subtype_pred": pd.array([0, 1] * 18, dtype="Int64")})  # perfect, on 2 of 3 classes
    classification = classification_summary(frame, ["subtype0", "subtype1", "subtype2"], 500, 0)
    assert classification["macro_f1"] == 1.0 and classification["macro_f1_ci95"] == [1.0, 1.0]
    assert classification["f1_over"] == "over 2 of 3 classes (subtype2 absent from the truth)"
    target = target_table(_segmentation(np.full(36, 0.95)), classification)["macro_f1"]
    assert target["verdict"] == UNDECIDED and "over 2 of 3 classes" in target["reason"]
    full = pd.DataFrame({"subtype_true": [0, 1, 2] * 12, "subtype_pred": pd.array([0, 1, 2] * 12, dtype="Int64")})
    assert target_table(_segmentation(np.full(36, 0.95)), classification_summary(full, ["a", "b", "c"], 500, 0))["macro_f1"]["verdict"] == MET


# ---------------------------------------------------------------- ground truth and matching


def make_quiz(root: Path) -> dict[str, Path]:
    """Ground truth in the quiz layout (two subtype folders), predictions and a CSV, with known DSCs.

    case        true  pred  predicted mask           DSC pancreas  DSC lesion
    quiz_0_001  0     0     exact                    1             1
    quiz_0_002  0     1     lesion missing           2*8/20 = 0.8  0
    quiz_1_003  1     1     all foreground lesion    1             2*4/16 = 0.5
    quiz_1_004  1     1     empty                    0             0
    """
    gt, pred = root / "validation", root / "pred"
    labels = reference_labels()
    rng = np.random.default_rng(0)
    masks = {"quiz_0_001": labels, "quiz_0_002": np.where(labels == 2, 0, labels), "quiz_1_003": np.where(labels > 0, 2, 0), "quiz_1_004": np.zeros(SHAPE)}
    for case, predicted in masks.items():
        folder = gt / f"subtype{case[5]}"
        save(folder / f"{case}.nii.gz", np.where(labels == 1, QUIRK, labels))
        if case != "quiz_1_004":  # one case without its image
            save(folder / f"{case}_0000.nii.gz", rng.normal(40, 60, SHAPE), dtype=np.int16)
        save(pred / f"{case}.nii.gz", predicted, dtype=np.uint8)
    csv = write_csv(pred / "subtype_results.csv", [
        ("quiz_0_001.nii.gz", 0, (0.7, 0.2, 0.1)), ("quiz_0_002.nii.gz", 1, (0.3, 0.6, 0.1)),
        ("quiz_1_003.nii.gz", 1, (0.1, 0.8, 0.1)), ("quiz_1_004.nii.gz", 1, (0.2, 0.5, 0.3)),
    ])
    return {"gt": gt, "pred": pred, "csv": csv}


def test_quiz_layout_gives_masks_classes_and_images(tmp_path: Path) -> None:
    quiz = make_quiz(tmp_path)
    cases = read_quiz_layout(quiz["gt"], MANIFEST)
    assert [(c.case, c.mask_file, c.subtype) for c in cases] == [
        ("quiz_0_001", "quiz_0_001.nii.gz", 0), ("quiz_0_002", "quiz_0_002.nii.gz", 0),
        ("quiz_1_003", "quiz_1_003.nii.gz", 1), ("quiz_1_004", "quiz_1_004.nii.gz", 1),
    ]
    assert cases[0].image_file == quiz["gt"] / "subtype0" / "quiz_0_001_0000.nii.gz" and cases[3].image_file is None
    with pytest.raises(ValueError, match="expected subtype folders"):  # the scan's own message, naming the file
        read_quiz_layout(quiz["pred"], MANIFEST)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_quiz_layout(tmp_path / "nowhere", MANIFEST)


def test_answer_key_of_the_phantom(tiny_phantom: Path, tmp_path: Path) -> None:
    answers = tiny_phantom / "test_answers"
    key = pd.read_csv(answers / "subtype_labels.csv")
    cases = read_answer_key(answers / "subtype_labels.csv", answers / "masks", tiny_phantom / "quiz" / "test")
    assert [(c.mask_file, c.subtype) for c in cases] == list(zip(key["Names"], key["Subtype"]))
    assert all(c.gt_file.is_file() and c.image_file == tiny_phantom / "quiz" / "test" / f"{c.case}_0000.nii.gz" for c in cases)
    assert all(c.image_file is None for c in read_answer_key(answers / "subtype_labels.csv", answers / "masks"))
    broken = tmp_path / "key.csv"
    broken.write_text("Names,Subtype\nquiz_999.nii.gz,1\n")
    with pytest.raises(ValueError, match="quiz_999.nii.gz"):
        read_answer_key(broken, answers / "masks")
    broken.write_text("Names,Label\nquiz_999.nii.gz,1\n")
    with pytest.raises(ValueError, match="missing column"):
        read_answer_key(broken, answers / "masks")


def test_missing_and_unexpected_cases_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quiz = make_quiz(tmp_path)
    (quiz["pred"] / "quiz_0_002.nii.gz").unlink()
    save(quiz["pred"] / "quiz_2_999.nii.gz", reference_labels(), dtype=np.uint8)
    write_csv(quiz["csv"], [("quiz_0_001.nii.gz", 0, (1, 0, 0)), ("quiz_0_002.nii.gz", 0, (1, 0, 0)), ("quiz_1_004.nii.gz", 1, (0, 1, 0)), ("quiz_2_777.nii.gz", 2, (0, 0, 1))])
    result = evaluate_folder(read_quiz_layout(quiz["gt"], MANIFEST), quiz["pred"], quiz["csv"], resamples=200)
    summary = result.summary
    assert [(m["case"], m["kind"]) for m in summary["missing_predictions"]] == [("quiz_0_002", "mask"), ("quiz_1_003", "csv_row")]
    assert summary["missing_predictions"][0]["file"] == str(quiz["pred"] / "quiz_0_002.nii.gz")
    assert [(m["case"], m["kind"]) for m in summary["unexpected_predictions"]] == [("quiz_2_999", "mask"), ("quiz_2_777", "csv_row")]
    printed = capsys.readouterr().out
    assert all(case in printed for case in ("quiz_0_002", "quiz_1_003", "quiz_2_999", "quiz_2_777"))
    table = result.per_case.set_index("case")
    assert len(table) == 4 and np.isnan(table.loc["quiz_0_002", "dsc_pancreas"]) and pd.isna(table.loc["quiz_1_003", "subtype_pred"])
    assert summary["n_ground_truth_cases"] == 4 and summary["segmentation"]["dsc_pancreas"]["n"] == 3 and summary["classification"]["n"] == 3
    assert summary["segmentation"]["dsc_pancreas"]["mean"] == pytest.approx((1 + 1 + 0) / 3)
    lesion = summary["targets"]["dsc_lesion"]
    assert lesion["value"] >= lesion["threshold"] and lesion["verdict"] == UNDECIDED and "2 case(s) lack a prediction" in lesion["reason"]  # incomplete: nothing decided
    assert list(worst_first(result.per_case)["case"]) == ["quiz_0_002", "quiz_1_004", "quiz_1_003", "quiz_0_001"]


# ---------------------------------------------------------------- nnU-Net's evaluator


def test_per_case_dsc_equals_nnunet_evaluator(tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path / name))
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    # realistic files: the phantom's float masks (1.0000152587890625, LPS/RAS/LAS, anisotropic spacing)
    cases = read_quiz_layout(tiny_phantom / "quiz" / "train", MANIFEST) + read_quiz_layout(tiny_phantom / "quiz" / "validation", MANIFEST)
    pred_dir, rounded_dir = tmp_path / "pred", tmp_path / "rounded"
    rows = []
    for i, case in enumerate(cases):
        img = nib.load(str(case.gt_file))
        labels = np.rint(img.get_fdata()).astype(np.uint8)
        save(rounded_dir / case.mask_file, labels, img.affine, np.uint8)  # nnU-Net compares exact values
        variants = [np.roll(labels, 2, axis=0), np.where(labels == 2, 1, labels), np.zeros_like(labels), labels, np.where(labels > 0, 2, 0)]
        save(pred_dir / case.mask_file, variants[i % len(variants)], img.affine, np.uint8)
        rows.append((case.mask_file, case.subtype, (1 / 3, 1 / 3, 1 / 3)))
    # hand-made cases for the empty conventions: no lesion in either, no lesion in the ground truth only
    no_lesion = np.where(reference_labels() == 2, 1, reference_labels())
    for name, predicted in (("quiz_0_900", no_lesion), ("quiz_0_901", reference_labels())):
        gt_file = save(tmp_path / "extra" / "subtype0" / f"{name}.nii.gz", no_lesion)
        save(rounded_dir / f"{name}.nii.gz", no_lesion, dtype=np.uint8)
        save(pred_dir / f"{name}.nii.gz", predicted, dtype=np.uint8)
        rows.append((f"{name}.nii.gz", 0, (1 / 3, 1 / 3, 1 / 3)))
    cases += read_quiz_layout(tmp_path / "extra", MANIFEST)
    result = evaluate_folder(cases, pred_dir, write_csv(tmp_path / "subtypes.csv", rows), resamples=100)

    compared_nan = 0
    for _, row in result.per_case.iterrows():
        theirs = compute_metrics(str(rounded_dir / row["mask_file"]), row["pred_file"], SimpleITKIO(), [(1, 2), (2,)])["metrics"]
        for column, region in (("dsc_pancreas", (1, 2)), ("dsc_lesion", (2,))):
            if np.isnan(theirs[region]["Dice"]):  # nnU-Net: NaN when both are empty; ours: 1.0
                compared_nan += 1
                assert row[column] == 1.0
            else:
                assert row[column] == pytest.approx(theirs[region]["Dice"], abs=1e-12)
    assert compared_nan == 1
    assert {0.0, 1.0} <= set(result.per_case["dsc_lesion"]) and result.per_case["dsc_pancreas"].between(0.01, 0.99).any()


# ---------------------------------------------------------------- CLI


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pancreas_multitask.evaluation", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_on_a_quiz_layout_folder(tmp_path: Path) -> None:
    quiz = make_quiz(tmp_path)
    out = tmp_path / "out"
    done = run_cli("--validation_data", quiz["gt"], "--prediction_folder", quiz["pred"], "--prediction_csv", quiz["csv"], "--output_folder", out, "--resamples", 300)
    assert done.returncode == 0, done.stderr
    assert "whole-pancreas DSC (chosen on these cases): 0.700" in done.stdout and "UNDECIDED: 4 cases: a verdict needs at least 10" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    seg, cls = metrics["segmentation"], metrics["classification"]
    assert metrics["n_ground_truth_cases"] == 4  # the _0000 images are not ground truth
    assert seg["dsc_pancreas"]["mean"] == pytest.approx((1 + 0.8 + 1 + 0) / 4) and seg["dsc_pancreas"]["median"] == pytest.approx(0.9)
    assert seg["dsc_lesion"]["mean"] == pytest.approx((1 + 0 + 0.5 + 0) / 4) and seg["dsc_lesion"]["median"] == pytest.approx(0.25)
    low, high = seg["dsc_pancreas"]["ci95"]
    assert 0 <= low < 0.7 < high <= 1
    # true [0, 0, 1, 1], predicted [0, 1, 1, 1]: F1 class 0 = 2/3, class 1 = 4/5; class 2 occurs in neither
    assert cls["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2) and cls["accuracy"] == 0.75
    assert cls["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]] and cls["class_names"] == ["subtype0", "subtype1", "subtype2"]
    assert {k: t["verdict"] for k, t in metrics["targets"].items()} == dict.fromkeys(("dsc_pancreas", "dsc_lesion", "macro_f1"), UNDECIDED)  # 4 cases decide nothing
    assert metrics["missing_predictions"] == [] and metrics["unexpected_predictions"] == []

    per_case = pd.read_csv(out / "per_case.csv", keep_default_na=False)
    assert list(per_case.columns) == PER_CASE_COLUMNS
    assert per_case["dsc_pancreas"].tolist() == pytest.approx([1, 0.8, 1, 0]) and per_case["dsc_lesion"].tolist() == pytest.approx([1, 0, 0.5, 0])
    assert per_case["prob_pred"].tolist() == pytest.approx([0.7, 0.6, 0.8, 0.5])
    assert per_case["image_file"].tolist()[3] == "" and per_case["image_file"].tolist()[0].endswith("quiz_0_001_0000.nii.gz")
    # exact / lesion missing / all lesion / empty: the lesion is found in cases 1 and 3; the empty one scores the worst distance
    # all-foreground-lesion in case 3 still has Dice 0.5 with its lesion (a hit); nothing was predicted as lesion elsewhere
    assert per_case["lesion_detected"].tolist() == [1, 0, 1, 0] and per_case["nsd_lesion"].tolist()[:2] == [1, 0]
    assert per_case["lesion_fp_components"].tolist() == [0, 0, 0, 0] and per_case["lesion_components"].tolist() == [1, 1, 1, 1]
    diagonal = float(np.linalg.norm(np.asarray(SHAPE) * np.diag(AFFINE)[:3]))
    assert per_case["nsd_pancreas"].tolist()[3] == 0 and per_case["hd95_pancreas"].tolist()[3] == pytest.approx(diagonal)
    detection, surface = metrics["lesion_detection"], metrics["surface"]
    assert (detection["rate"], detection["detected"], detection["n"]) == (0.5, 2, 4) and detection["ci95"][0] <= 0.5 <= detection["ci95"][1]
    assert surface["nsd_pancreas"]["mean"] == pytest.approx(per_case["nsd_pancreas"].mean()) and surface["nsd_tolerance_mm"] == NSD_TOLERANCE_MM
    assert (out / "evaluation.html").stat().st_size > 10_000


def test_the_prediction_csv_given_as_the_answer_key_is_refused(tmp_path: Path) -> None:
    """Labels read from the predictions would score any classifier perfect: refused before anything is scored."""
    quiz = make_quiz(tmp_path)
    with pytest.raises(ValueError, match="the true subtypes would be read from the prediction CSV itself"):
        evaluate_folder(read_quiz_layout(quiz["gt"], MANIFEST), quiz["pred"], quiz["csv"], tmp_path / "out", resamples=50, label_file=quiz["csv"])
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_seed_format_csv_is_scored_over_the_manifests_classes(tmp_path: Path) -> None:
    """Names and Subtype only, on a split without subtype 2: the macro-F1 is over 2 of the manifest's 3 classes, not 2 of 2."""
    quiz = make_quiz(tmp_path)
    seed_csv = tmp_path / "seed_format.csv"
    seed_csv.write_text("Names,Subtype\nquiz_0_001.nii.gz,0\nquiz_0_002.nii.gz,1\nquiz_1_003.nii.gz,1\nquiz_1_004.nii.gz,1\n")
    done = run_cli("--validation_data", quiz["gt"], "--prediction_folder", quiz["pred"], "--prediction_csv", seed_csv, "--output_folder", tmp_path / "out", "--resamples", 100)
    assert done.returncode == 0, done.stderr
    cls = json.loads((tmp_path / "out" / "metrics.json").read_text())["classification"]
    assert cls["class_names"] == ["subtype0", "subtype1", "subtype2"] and cls["f1_over"] == "over 2 of 3 classes (subtype2 absent from the truth)"
    two = tmp_path / "two_classes.csv"
    two.write_text("Names,Subtype,prob_a,prob_b\n" + "".join(f"{c}.nii.gz,0,0.5,0.5\n" for c in ("quiz_0_001", "quiz_0_002", "quiz_1_003", "quiz_1_004")))
    refused = run_cli("--validation_data", quiz["gt"], "--prediction_folder", quiz["pred"], "--prediction_csv", two, "--output_folder", tmp_path / "out2")
    assert refused.returncode != 0 and f"{two}: probabilities for 2 classes (a, b), but the manifest has 3" in refused.stderr


def test_a_ci_straddling_the_target_is_undecided_in_the_cli_the_metrics_and_the_report(tmp_path: Path) -> None:
    """12 cases, whole-pancreas Dice alternating 1.0 and 0.8: mean 0.9, a CI around the 0.91 target."""
    gt, pred = tmp_path / "validation", tmp_path / "pred"
    labels = reference_labels()
    shrunk = labels.copy()
    shrunk[0:1, 0:2, 0:2] = 0  # 4 of the 12 foreground voxels missed: Dice 16/20
    rows = []
    for i in range(12):
        case = f"quiz_{i % 3}_{i:03d}"
        save(gt / f"subtype{i % 3}" / f"{case}.nii.gz", labels)
        save(pred / f"{case}.nii.gz", labels if i % 2 else shrunk, dtype=np.uint8)
        rows.append((f"{case}.nii.gz", 0, (0.8, 0.1, 0.1)))  # every answer subtype0
    csv = write_csv(pred / "subtype_results.csv", rows)
    out = tmp_path / "out"
    done = run_cli("--validation_data", gt, "--prediction_folder", pred, "--prediction_csv", csv, "--output_folder", out, "--checkpoint_split", "train (the held-out cases of fold 0)")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    target = metrics["targets"]["dsc_pancreas"]
    low, high = target["ci95"]
    assert target["value"] == pytest.approx((1 + 0.8) / 2) and low < 0.91 < high and target["n"] == 12
    assert target["verdict"] == UNDECIDED and "the interval contains it" in target["reason"] and target["label"] == "whole-pancreas DSC"
    assert metrics["targets"]["dsc_lesion"]["verdict"] == MET  # every lesion exact
    assert f"whole-pancreas DSC: {target['value']:.3f} [{low:.3f}, {high:.3f}] (target >= 0.91, 12 cases) UNDECIDED" in done.stdout
    assert "lesion DSC: 1.000 [1.000, 1.000] (target >= 0.31, 12 cases) MET" in done.stdout
    # every answer subtype0: collapsed, and no better than always answering it
    assert "WARNING: collapsed subtype answers: subtype0 is 12 of the 12 answers" in done.stdout, done.stdout
    assert "cannot be told from chance" in done.stdout
    summary = (out / "evaluation.html").read_text()
    row = re.search(r"<tr><td>whole-pancreas DSC</td>.*?</tr>", summary).group(0)
    assert '<span class="undecided">undecided</span>' in row and "chosen on these cases" not in summary


def test_cli_fails_clearly_on_bad_input(tmp_path: Path) -> None:
    quiz = make_quiz(tmp_path)
    save(quiz["pred"] / "quiz_0_001.nii.gz", reference_labels()[:, :, :-1], dtype=np.uint8)
    done = run_cli("--validation_data", quiz["gt"], "--prediction_folder", quiz["pred"], "--prediction_csv", quiz["csv"], "--output_folder", tmp_path / "out")
    assert done.returncode != 0
    assert "geometry mismatch" in done.stderr and str(quiz["pred"] / "quiz_0_001.nii.gz") in done.stderr and str(quiz["gt"] / "subtype0" / "quiz_0_001.nii.gz") in done.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()
    done = run_cli("--validation_data", tmp_path / "absent", "--prediction_folder", quiz["pred"], "--prediction_csv", quiz["csv"], "--output_folder", tmp_path / "out")
    assert done.returncode != 0 and "absent" in done.stderr and "Traceback" not in done.stderr


def test_every_mismatched_mask_is_named_and_none_is_dropped_from_a_mean(tmp_path: Path) -> None:
    quiz = make_quiz(tmp_path)
    save(quiz["pred"] / "quiz_0_001.nii.gz", reference_labels()[:, :, :-1], dtype=np.uint8)  # another shape
    save(quiz["pred"] / "quiz_1_003.nii.gz", reference_labels(), affine=np.diag([1.5, 1.0, 3.0, 1.0]), dtype=np.uint8)  # another spacing
    with pytest.raises(ValueError) as error:
        evaluate_folder(read_quiz_layout(quiz["gt"], MANIFEST), quiz["pred"], quiz["csv"], tmp_path / "out")
    message = str(error.value)
    assert message.startswith("2 predicted mask(s) cannot be scored")
    assert str(quiz["pred"] / "quiz_0_001.nii.gz") in message and str(quiz["pred"] / "quiz_1_003.nii.gz") in message
    assert not (tmp_path / "out" / "metrics.json").exists()  # no mean over the cases that happened to fit


KILLED_EVALUATION = """
import os, signal, sys
from pancreas_multitask.evaluation.__main__ import main

replace = os.replace

def replace_or_die(source, target):
    if str(target).endswith(sys.argv[1]):  # the temporary is written in full; the kill lands before its rename
        os.kill(os.getpid(), signal.SIGKILL)
    replace(source, target)

if __name__ == "__main__":
    os.replace = replace_or_die
    sys.exit(main(sys.argv[2:]))
"""


def test_evaluation_killed_while_writing_leaves_no_partial_or_stale_output(tmp_path: Path) -> None:
    """SIGKILL between writing metrics.json's temporary and renaming it, after per_case.csv was written."""
    quiz = make_quiz(tmp_path)
    out = tmp_path / "out"
    args = ["--validation_data", quiz["gt"], "--prediction_folder", quiz["pred"], "--prediction_csv", quiz["csv"], "--output_folder", out, "--resamples", 100]
    assert run_cli(*args).returncode == 0
    before = snapshot(quiz["gt"])
    save(quiz["pred"] / "quiz_1_004.nii.gz", reference_labels(), dtype=np.uint8)  # a new prediction: the next scores differ
    script = tmp_path / "killed.py"
    script.write_text(KILLED_EVALUATION)
    killed = subprocess.run([sys.executable, str(script), "metrics.json", *map(str, args)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "metrics.json").exists() and not (out / "evaluation.html").exists()  # the old ones are gone, not mixed with the new CSV
    assert [p.name for p in out.glob(".tmp.*")], "the kill should leave metrics.json's temporary"

    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert not list(out.glob(".tmp.*"))
    metrics, per_case = json.loads((out / "metrics.json").read_text()), pd.read_csv(out / "per_case.csv")
    assert per_case.set_index("case").loc["quiz_1_004", "dsc_pancreas"] == 1.0  # the new prediction, in both files
    assert metrics["segmentation"]["dsc_pancreas"]["mean"] == pytest.approx(per_case["dsc_pancreas"].mean())
    assert (out / "evaluation.html").stat().st_size > 10_000
    assert snapshot(quiz["gt"]) == before


def test_cli_with_the_phantom_answer_key_folder(tiny_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pancreas_multitask.evaluation.__main__ import main

    answers = tiny_phantom / "test_answers"
    key = pd.read_csv(answers / "subtype_labels.csv")
    pred = tmp_path / "pred"
    for name in key["Names"]:  # perfect masks, as the prediction writes them (uint8 on the same grid)
        img = nib.load(str(answers / "masks" / name))
        save(pred / name, np.rint(img.get_fdata()), img.affine, np.uint8)
    rows = [(name, int(k), tuple(0.9 if j == k else 0.05 for j in range(3))) for name, k in zip(key["Names"], key["Subtype"])]
    csv = write_csv(tmp_path / "subtypes.csv", rows)
    out = tmp_path / "out"
    assert main(["--answer_key", str(answers), "--images", str(tiny_phantom / "quiz" / "test"), "--prediction_folder", str(pred), "--prediction_csv", str(csv), "--output_folder", str(out), "--resamples", "100"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_ground_truth_cases"] == len(key) == 2
    assert metrics["segmentation"]["dsc_pancreas"]["mean"] == 1.0 and metrics["segmentation"]["dsc_lesion"]["ci95"] == [1.0, 1.0]
    assert metrics["classification"]["accuracy"] == 1.0 and all(t["verdict"] == UNDECIDED for t in metrics["targets"].values())  # 2 cases decide nothing
    assert "equals its prediction" in metrics["classification"]["label_warning"] and str(answers / "subtype_labels.csv") in metrics["classification"]["label_warning"]
    assert "Synthetic phantom data" in (out / "evaluation.html").read_text()  # perfect phantom numbers are flagged as no CT result
    assert metrics["sources"]["ground_truth"].startswith(str(answers / "subtype_labels.csv"))
    per_case = pd.read_csv(out / "per_case.csv")
    assert per_case["image_file"].map(lambda f: Path(f).is_file()).all() and per_case["prob_pred"].tolist() == [0.9, 0.9]
    printed = capsys.readouterr().out
    assert "Evaluated split: test." in (out / "evaluation.html").read_text() and "UNDECIDED" in printed and "WARNING: every one of the 2 true subtypes" in printed

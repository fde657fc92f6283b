"""Per-case Dice, surface metrics and lesion detection, case-level classification metrics and bootstrap CIs.

Surface metrics come from MONAI (``monai.metrics.compute_surface_dice``, ``compute_hausdorff_distance``)
with the voxel spacing in mm: the normalized surface Dice (NSD) at ``NSD_TOLERANCE_MM`` (2 mm, FLARE's
tolerance for organs) and the 95th-percentile Hausdorff distance (HD95, symmetric: the larger of the
two directed 95th percentiles), both over the boundary voxels of each mask.

Empty masks, as for the Dice: when neither the ground truth nor the prediction holds the structure,
Dice and NSD are 1.0 and HD95 is 0 mm (nothing to find, nothing predicted); when exactly one of them is
empty, Dice and NSD are 0.0 and HD95 is the image's diagonal in mm (the worst distance possible on that
grid, so a miss is never left out of a mean). nnU-Net's ``compute_metrics`` returns NaN for the both-empty
Dice instead; every other Dice is the same. A lesion counts as **detected** when the predicted lesion
overlaps the ground-truth lesion by at least one voxel (cases without a true lesion have no detection value).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from ..io import load_volume

AFFINE_RTOL, AFFINE_ATOL = 1e-5, 1e-3  # the raw-data scan's tolerance for "same grid"
LESION = 2
NSD_TOLERANCE_MM = 2.0
HD_PERCENTILE = 95


def dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty, 0.0 when exactly one is."""
    pred_mask, gt_mask = np.asarray(pred_mask, dtype=bool), np.asarray(gt_mask, dtype=bool)
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"dice: shapes differ, {pred_mask.shape} vs {gt_mask.shape}")
    total = int(pred_mask.sum()) + int(gt_mask.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred_mask, gt_mask).sum()) / total


def region_dices(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Whole-pancreas Dice (label > 0) and lesion Dice (label == 2) of two integer label maps."""
    return {"dsc_pancreas": dice(pred > 0, gt > 0), "dsc_lesion": dice(pred == LESION, gt == LESION)}


def surface_metrics(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float], tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[str, float]:
    """NSD at ``tolerance_mm`` and HD95 (mm) of two boolean masks on a grid of ``spacing`` mm, from MONAI (empty masks: module doc)."""
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    pred_mask, gt_mask = np.asarray(pred_mask, dtype=bool), np.asarray(gt_mask, dtype=bool)
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"surface metrics: shapes differ, {pred_mask.shape} vs {gt_mask.shape}")
    spacing = [float(s) for s in spacing]
    pred_any, gt_any = bool(pred_mask.any()), bool(gt_mask.any())
    if not pred_any and not gt_any:
        return {"nsd": 1.0, "hd95": 0.0}
    if pred_any != gt_any:
        return {"nsd": 0.0, "hd95": float(np.linalg.norm(np.asarray(pred_mask.shape) * np.asarray(spacing)))}
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None])  # noqa: E731  (batch, background + structure, ...)
    with warnings.catch_warnings():  # MONAI's deprecation notes about its own arguments
        warnings.simplefilter("ignore")
        nsd = compute_surface_dice(one_hot(pred_mask), one_hot(gt_mask), [tolerance_mm], include_background=False, spacing=spacing)
        hd95 = compute_hausdorff_distance(one_hot(pred_mask), one_hot(gt_mask), include_background=False, percentile=HD_PERCENTILE, spacing=spacing)
    return {"nsd": float(nsd.flatten()[0]), "hd95": float(hd95.flatten()[0])}


def lesion_detected(pred: np.ndarray, gt: np.ndarray) -> float:
    """1.0 when the predicted lesion overlaps the true one, 0.0 when not, NaN when the case has no true lesion."""
    truth = gt == LESION
    if not truth.any():
        return float("nan")
    return float(np.logical_and(pred == LESION, truth).any())


def read_label_map(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """A mask as integer labels (float masks such as 1.0000152587890625 are rounded) and its affine."""
    volume = load_volume(path)
    return np.rint(volume.data).astype(np.int16), volume.affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the stored axes."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def check_same_grid(gt_file: str | os.PathLike[str], pred_file: str | os.PathLike[str], gt_shape: tuple[int, ...], pred_shape: tuple[int, ...], gt_affine: np.ndarray, pred_affine: np.ndarray) -> None:
    """ValueError naming both files when the prediction is not on the ground truth's grid (no resampling)."""
    if gt_shape != pred_shape:
        raise ValueError(f"geometry mismatch: ground truth {gt_file} has shape {gt_shape} but prediction {pred_file} has shape {pred_shape}")
    if not np.allclose(gt_affine, pred_affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
        raise ValueError(f"geometry mismatch: the affine of prediction {pred_file} differs from that of ground truth {gt_file}:\n{pred_affine}\nvs\n{gt_affine}")


def evaluate_case(gt_file: str | os.PathLike[str], pred_file: str | os.PathLike[str], surface: bool = True) -> dict[str, float]:
    """Whole-pancreas and lesion Dice of one predicted mask against its ground truth; with ``surface`` also their
    NSD and HD95 (``nsd_*``, ``hd95_*``) and whether the lesion was detected (``lesion_detected``)."""
    gt, gt_affine = read_label_map(gt_file)
    pred, pred_affine = read_label_map(pred_file)
    check_same_grid(gt_file, pred_file, gt.shape, pred.shape, gt_affine, pred_affine)
    values = region_dices(pred, gt)
    if surface:
        spacing = spacing_of(gt_affine)
        for name, (p, g) in (("pancreas", (pred > 0, gt > 0)), ("lesion", (pred == LESION, gt == LESION))):
            metrics = surface_metrics(p, g, spacing)
            values[f"nsd_{name}"], values[f"hd95_{name}"] = metrics["nsd"], metrics["hd95"]
        values["lesion_detected"] = lesion_detected(pred, gt)
    return values


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict:
    """Macro-F1, accuracy, per-class precision/recall/F1/support and the confusion matrix (scikit-learn).

    Per-class values and the confusion matrix use the fixed label order ``0 .. num_classes-1``
    (rows: true class, columns: predicted class). Macro-F1 is scikit-learn's default: the mean F1
    over the classes that occur in the ground truth or the predictions (a class absent from both is
    left out, not scored 0 or 1).
    """
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if len(y_true) == 0:
        raise ValueError("classification metrics need at least one case with a true and a predicted subtype")
    labels = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "labels": labels,
        "per_class": [
            {"label": k, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for k, p, r, f, s in zip(labels, precision, recall, f1, support)
        ],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def macro_f1_batch(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of each row of (resamples, cases) label arrays, as ``classification_metrics`` defines it."""
    y_true, y_pred = np.atleast_2d(y_true), np.atleast_2d(y_pred)
    rows = np.arange(y_true.shape[0])[:, None]
    cells = (rows * num_classes + y_true) * num_classes + y_pred
    confusion = np.bincount(cells.ravel(), minlength=y_true.shape[0] * num_classes**2).reshape(-1, num_classes, num_classes)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(axis=2) + confusion.sum(axis=1)  # 2tp + fn + fp
    present = denominator > 0
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=present)
    return f1.sum(axis=1) / present.sum(axis=1)


def bootstrap_ci(statistic: Callable[[np.ndarray], np.ndarray], n_cases: int, *, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over case resamples drawn with replacement.

    ``statistic`` receives a (resamples, n_cases) array of case indices and returns one value per row.
    """
    if n_cases == 0:
        return (float("nan"), float("nan"))
    indices = np.random.default_rng(seed).integers(0, n_cases, size=(resamples, n_cases))
    values = np.asarray(statistic(indices), dtype=float)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def mean_ci(values: Sequence[float], **kwargs) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-case values."""
    values = np.asarray(values, dtype=float)
    return bootstrap_ci(lambda idx: values[idx].mean(axis=1), len(values), **kwargs)


def macro_f1_ci(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int, **kwargs) -> tuple[float, float]:
    """Bootstrap interval of the macro-F1, resampling cases (true and predicted label together)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    return bootstrap_ci(lambda idx: macro_f1_batch(y_true[idx], y_pred[idx], num_classes), len(y_true), **kwargs)

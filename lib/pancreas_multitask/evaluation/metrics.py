"""Per-case Dice, surface metrics and lesion detection, case-level classification metrics and bootstrap CIs.

Surface metrics come from MONAI (``monai.metrics.compute_surface_dice``, ``compute_hausdorff_distance``)
with the voxel spacing in mm: the normalized surface Dice (NSD) at ``NSD_TOLERANCE_MM`` (2 mm, FLARE's
tolerance for organs) and the 95th-percentile Hausdorff distance (HD95, symmetric: the larger of the
two directed 95th percentiles), both over the boundary voxels of each mask.

Empty masks, as for the Dice: when neither the ground truth nor the prediction holds the structure,
Dice and NSD are 1.0 and HD95 is 0 mm (nothing to find, nothing predicted); when exactly one of them is
empty, Dice and NSD are 0.0 and HD95 is the image's diagonal in mm (the worst distance possible on that
grid, so a miss is never left out of a mean). nnU-Net's ``compute_metrics`` returns NaN for the both-empty
Dice instead; every other Dice is the same.

**Lesion detection** is lesion-wise, so that over-segmentation cannot game it: each connected component
(26-connectivity) of the true lesion counts as found when its Dice with the predicted lesion components
that touch it reaches ``DETECTION_MIN_DICE`` (0.1, not at any overlap). A predicted
lesion component that touches no true lesion voxel is a **false-positive component**. A case's lesion
counts as detected when at least one of its true components is found (cases without a true lesion have
no detection value).

**Classification.** Macro-F1, balanced accuracy and MCC are over the manifest's classes that occur in the
truth (``scored_classes``): a class that is never predicted scores F1 0, a predicted class absent from the
truth counts as the true class's error. When a manifest class is absent from the truth, the F1 is over
K of N classes and says so (``classes_absent``).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, matthews_corrcoef, precision_recall_fscore_support

from ..io import load_volume

AFFINE_RTOL, AFFINE_ATOL = 1e-5, 1e-3  # the raw-data scan's tolerance for "same grid"
LESION = 2
NSD_TOLERANCE_MM = 2.0
HD_PERCENTILE = 95
DETECTION_MIN_DICE = 0.1  # lesion-wise detection: a true lesion component counts as found at this Dice or more


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


def lesion_components(pred: np.ndarray, gt: np.ndarray, min_dice: float = DETECTION_MIN_DICE) -> dict[str, float]:
    """Lesion-wise detection of one case (module doc): ``lesion_components`` (true components),
    ``lesion_components_detected``, ``lesion_fp_components`` (predicted components touching no true lesion) and
    ``lesion_detected`` (1.0 when a true component is found, 0.0 when none is, NaN without a true lesion)."""
    structure = ndimage.generate_binary_structure(3, 3)
    truth, predicted = gt == LESION, pred == LESION
    true_labels, n_true = ndimage.label(truth, structure)
    pred_labels, n_pred = ndimage.label(predicted, structure)
    detected = 0
    for k in range(1, n_true + 1):
        component = true_labels == k
        touching = np.unique(pred_labels[component & predicted])
        detected += int(dice(np.isin(pred_labels, touching[touching > 0]), component) >= min_dice) if touching.size else 0
    touching_truth = set(np.unique(pred_labels[truth]).tolist()) - {0}
    return {
        "lesion_components": float(n_true),
        "lesion_components_detected": float(detected),
        "lesion_fp_components": float(n_pred - len(touching_truth)),
        "lesion_detected": float(detected > 0) if n_true else float("nan"),
    }


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
    NSD and HD95 (``nsd_*``, ``hd95_*``) and the lesion-wise detection (``lesion_components``)."""
    gt, gt_affine = read_label_map(gt_file)
    pred, pred_affine = read_label_map(pred_file)
    check_same_grid(gt_file, pred_file, gt.shape, pred.shape, gt_affine, pred_affine)
    values = region_dices(pred, gt)
    if surface:
        spacing = spacing_of(gt_affine)
        for name, (p, g) in (("pancreas", (pred > 0, gt > 0)), ("lesion", (pred == LESION, gt == LESION))):
            metrics = surface_metrics(p, g, spacing)
            values[f"nsd_{name}"], values[f"hd95_{name}"] = metrics["nsd"], metrics["hd95"]
        values.update(lesion_components(pred, gt))
    return values


def scored_classes(y_true: Sequence[int], num_classes: int) -> list[int]:
    """The manifest's classes (``0 .. num_classes-1``) that occur in the truth: what macro-F1, balanced accuracy and MCC average over."""
    present = set(np.asarray(y_true, dtype=int).tolist())
    return [k for k in range(num_classes) if k in present]


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """Macro-F1 over the manifest's classes present in the truth (module doc); the one definition that evaluation and training share."""
    labels = scored_classes(y_true, num_classes)
    if not labels:
        raise ValueError("macro-F1 needs at least one case with a true subtype")
    return float(f1_score(np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int), labels=labels, average="macro", zero_division=0))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict:
    """Macro-F1, accuracy, balanced accuracy, MCC, per-class precision/recall/F1/support and the confusion matrix (scikit-learn).

    Per-class values and the confusion matrix use the fixed label order ``0 .. num_classes-1`` (rows: true
    class, columns: predicted class). Macro-F1 and balanced accuracy average over ``scored_classes``; the
    classes of the manifest absent from the truth are listed in ``classes_absent``.
    """
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if len(y_true) == 0:
        raise ValueError("classification metrics need at least one case with a true and a predicted subtype")
    labels = list(range(num_classes))
    scored = scored_classes(y_true, num_classes)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "macro_f1": macro_f1(y_true, y_pred, num_classes),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _quiet(balanced_accuracy_score, y_true, y_pred),
        "mcc": _quiet(matthews_corrcoef, y_true, y_pred),
        "labels": labels,
        "scored_classes": scored,
        "classes_absent": [k for k in labels if k not in scored],
        "per_class": [
            {"label": k, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for k, p, r, f, s in zip(labels, precision, recall, f1, support)
        ],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def _quiet(metric: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """A scikit-learn metric without its warnings about a predicted class absent from the truth or a single label
    (balanced accuracy then averages the truth's classes, MCC is 0 without variation, as they should)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(metric(y_true, y_pred))


def confusion_batch(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(rows, K, K) confusion matrices of each row of (rows, cases) label arrays (rows: true class)."""
    y_true, y_pred = np.atleast_2d(y_true), np.atleast_2d(y_pred)
    rows = np.arange(y_true.shape[0])[:, None]
    cells = (rows * num_classes + y_true) * num_classes + y_pred
    return np.bincount(cells.ravel(), minlength=y_true.shape[0] * num_classes**2).reshape(-1, num_classes, num_classes)


def _batch_statistics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Macro-F1, balanced accuracy and MCC of each confusion matrix, as ``classification_metrics`` defines them on
    that matrix: a bootstrap resample is scored over the subtypes present in its own truth."""
    confusion = confusion.astype(np.float64)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    true_counts, pred_counts = confusion.sum(axis=2), confusion.sum(axis=1)
    scored = true_counts > 0
    f1 = np.divide(2 * tp, true_counts + pred_counts, out=np.zeros(tp.shape), where=scored)
    recall = np.divide(tp, true_counts, out=np.zeros(tp.shape), where=scored)
    n = confusion.sum(axis=(1, 2))
    covariance = tp.sum(axis=1) * n - (true_counts * pred_counts).sum(axis=1)
    denominator = np.sqrt((n**2 - (pred_counts**2).sum(axis=1)) * (n**2 - (true_counts**2).sum(axis=1)))
    return {
        "macro_f1": f1.sum(axis=1) / scored.sum(axis=1),
        "balanced_accuracy": recall.sum(axis=1) / scored.sum(axis=1),
        "mcc": np.divide(covariance, denominator, out=np.zeros(n.shape), where=denominator > 0),
    }


def classification_batch(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, statistic: str = "macro_f1") -> np.ndarray:
    """``statistic`` (macro_f1, balanced_accuracy or mcc) of each row of (rows, cases) label arrays, vectorised."""
    return _batch_statistics(confusion_batch(y_true, y_pred, num_classes))[statistic]


def macro_f1_batch(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of each row of (rows, cases) label arrays, as ``macro_f1`` defines it."""
    return classification_batch(y_true, y_pred, num_classes, "macro_f1")


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


def classification_ci(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int, statistic: str = "macro_f1", **kwargs) -> tuple[float, float]:
    """Bootstrap interval of ``statistic`` (macro_f1, balanced_accuracy or mcc; ``classification_batch``), resampling cases (true and predicted label together)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    return bootstrap_ci(lambda idx: classification_batch(y_true[idx], y_pred[idx], num_classes, statistic), len(y_true), **kwargs)


def proportion_ci(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a share (scipy's ``binomtest``): unlike a bootstrap it does not collapse to a point
    at 0 % or 100 % (12 of 12 found is not certainty)."""
    from scipy.stats import binomtest

    if trials == 0:
        return (float("nan"), float("nan"))
    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return (float(interval.low), float(interval.high))


def count_rate_ci(total: int, cases: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) Poisson interval of a count per case, e.g. false-positive components: not a point at 0."""
    from scipy.stats import chi2

    if cases == 0:
        return (float("nan"), float("nan"))
    tail = (1.0 - level) / 2
    low = 0.0 if total == 0 else chi2.ppf(tail, 2 * total) / 2
    return (float(low / cases), float(chi2.ppf(1 - tail, 2 * total + 2) / 2 / cases))

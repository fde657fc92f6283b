"""Evaluation figures: error overlays in any plane, worst-case montage, confusion heatmap, DSC per subtype.

Volumes are canonical RAS (x, y, z) arrays as ``visualization.load_canonical`` returns them; slices
are drawn in radiological view (patient right on the viewer's left; anterior up in axial, superior
up in coronal and sagittal, anterior on the left in sagittal), with the aspect from the spacing.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..visualization import CT_WINDOW, ct_slice, label_overlay, lesion_slice, load_canonical, plane
from .evaluate import TARGETS

# one colour per voxel outcome; 0 = background in both (transparent)
ERROR_CLASSES = (
    ("pancreas, both", (0.1, 0.8, 0.2)),
    ("lesion, both", (0.95, 0.15, 0.1)),
    ("false positive (background in GT)", (1.0, 0.85, 0.0)),
    ("false negative (predicted background)", (0.1, 0.45, 1.0)),
    ("false lesion (pancreas in GT)", (1.0, 0.0, 1.0)),
    ("missed lesion (predicted pancreas)", (0.0, 0.95, 0.95)),
)
ERROR_COLORS = ListedColormap([(0, 0, 0, 0)] + [(*rgb, 1.0) for _, rgb in ERROR_CLASSES])


def error_labels(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Voxel outcome codes 0..6 in ``ERROR_CLASSES`` order (0: background in both)."""
    gt, pred = np.rint(gt).astype(np.int16), np.rint(pred).astype(np.int16)
    codes = np.zeros(gt.shape, dtype=np.uint8)
    codes[(gt == 1) & (pred == 1)] = 1
    codes[(gt == 2) & (pred == 2)] = 2
    codes[(gt == 0) & (pred > 0)] = 3
    codes[(gt > 0) & (pred == 0)] = 4
    codes[(gt == 1) & (pred == 2)] = 5
    codes[(gt == 2) & (pred == 1)] = 6
    return codes


def error_overlay(ax: plt.Axes, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float], z: int, axis: str = "axial", *, alpha: float = 0.6, level: float = CT_WINDOW[0], width: float = CT_WINDOW[1], legend: bool = False) -> None:
    """CT slice with every voxel's outcome coloured: agreement, false positives and false negatives (``ERROR_CLASSES``)."""
    aspect = ct_slice(ax, image, spacing, z, axis, level, width)
    codes = plane(error_labels(gt, pred), spacing, z, axis)[0]
    ax.imshow(codes, cmap=ERROR_COLORS, vmin=0, vmax=len(ERROR_CLASSES), alpha=alpha, origin="lower", aspect=aspect, interpolation="nearest")
    if legend:
        ax.legend(handles=error_legend(), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def error_legend() -> list[Patch]:
    """Legend handles for ``error_overlay``'s colours."""
    return [Patch(color=rgb, label=name) for name, rgb in ERROR_CLASSES]


def worst_case_montage(cases: pd.DataFrame, class_names: Sequence[str]) -> Figure:
    """One row per case of ``per_case``: ground truth, prediction and errors at the largest ground-truth lesion slice (W400/L40)."""
    fig, axes = plt.subplots(len(cases), 3, figsize=(12, 4 * len(cases)), squeeze=False)
    for row_axes, (_, case) in zip(axes, cases.iterrows()):
        gt, spacing = load_canonical(case["gt_file"])
        pred, _ = load_canonical(case["pred_file"])
        gt, pred = np.rint(gt), np.rint(pred)
        image = load_canonical(case["image_file"])[0] if case["image_file"] else np.zeros_like(gt)
        z = lesion_slice(gt)
        label_overlay(row_axes[0], image, gt, spacing, z)
        label_overlay(row_axes[1], image, pred, spacing, z)
        error_overlay(row_axes[2], image, gt, pred, spacing, z)
        true_name = class_names[int(case["subtype_true"])]
        pred_name = "no CSV row" if pd.isna(case["subtype_pred"]) else class_names[int(case["subtype_pred"])]
        row_axes[0].set_title(f"{case['case']}: ground truth ({true_name}), axial {z}" + ("" if case["image_file"] else ", no image"), fontsize=9)
        row_axes[1].set_title(f"prediction ({pred_name})", fontsize=9)
        row_axes[2].set_title(f"errors: DSC pancreas {case['dsc_pancreas']:.3f}, lesion {case['dsc_lesion']:.3f}", fontsize=9)
    fig.legend(handles=error_legend(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 / len(cases), 1, 1))
    return fig


def confusion_heatmap(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> Figure:
    """Counts of true (rows) vs predicted (columns) subtypes."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.1 * len(class_names) + 2.2, 1.0 * len(class_names) + 1.2))
    sns.heatmap(np.asarray(confusion), annot=True, fmt="d", cmap="Blues", cbar=False, square=True, xticklabels=class_names, yticklabels=class_names, ax=ax)
    ax.tick_params(axis="y", rotation=0)
    ax.set_xlabel("predicted subtype")
    ax.set_ylabel("true subtype")
    fig.tight_layout()
    return fig


def prediction_histogram(histogram: Mapping[str, Sequence[int]], class_names: Sequence[str], collapse_share: float) -> Figure:
    """Cases per subtype in the truth beside how often each subtype was predicted (``metrics.json``'s
    ``classification.prediction_histogram``), with the count above which the answers count as collapsed."""
    true, predicted = np.asarray(histogram["true"]), np.asarray(histogram["predicted"])
    x = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(1.4 * len(class_names) + 2.6, 3.6))
    ax.bar(x - 0.2, true, width=0.4, color="#9db7d5", label="true subtype")
    ax.bar(x + 0.2, predicted, width=0.4, color="#1f4e79", label="predicted subtype")
    for xs, counts in ((x - 0.2, true), (x + 0.2, predicted)):
        for xi, c in zip(xs, counts):
            ax.text(xi, c, str(int(c)), ha="center", va="bottom", fontsize=8)
    ax.axhline(collapse_share * predicted.sum(), color="#c0392b", linestyle="--", linewidth=1, label=f"{collapse_share:.0%} of the answers (collapse)")
    ax.set_xticks(x, list(class_names))
    ax.set_ylabel("cases")
    ax.set_title("how often each subtype is true and predicted")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def dsc_by_subtype(per_case: pd.DataFrame, class_names: Sequence[str]) -> Figure:
    """Box and strip plots of the whole-pancreas and lesion DSC per true subtype, with the target lines."""
    import seaborn as sns

    frame = per_case.assign(subtype=[class_names[int(k)] for k in per_case["subtype_true"]])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (column, title) in zip(axes, (("dsc_pancreas", "whole-pancreas DSC"), ("dsc_lesion", "lesion DSC"))):
        data = frame.dropna(subset=[column])
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated ``vert``
            warnings.filterwarnings("ignore", message="vert: bool", category=DeprecationWarning)
            sns.boxplot(data=data, x="subtype", y=column, order=list(class_names), color="#d9e6f2", showfliers=False, ax=ax)
        sns.stripplot(data=data, x="subtype", y=column, order=list(class_names), color="#1f4e79", size=5, jitter=0.15, ax=ax)
        ax.axhline(TARGETS[column], color="#c0392b", linestyle="--", linewidth=1, label=f"target {TARGETS[column]:.2f}")
        ax.set_title(title)
        ax.set_xlabel("true subtype")
        ax.set_ylabel("DSC")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def reliability_diagram(calibration: Mapping[str, Any]) -> Figure:
    """Accuracy against mean top-label confidence per confidence bin, before and after temperature scaling
    (``calibration``: ``metrics.json``'s ``classification.calibration``); marker area grows with the bin's cases."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="#888888", linestyle="--", linewidth=1, label="perfect calibration")
    styles = {"uncalibrated": ("#c0392b", "s", "before (uncalibrated)"), "calibrated": ("#1f4e79", "o", "after temperature scaling")}
    if "uncalibrated" not in calibration:
        styles["calibrated"] = ("#1f4e79", "o", "the CSV's probabilities")
    for key, (colour, marker, label) in styles.items():
        if key not in calibration:
            continue
        bins = calibration[key]["reliability"]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], color=colour, linewidth=1)
        ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], s=[20 + 12 * b["count"] for b in bins], color=colour, marker=marker,
                   label=f"{label}: ECE {calibration[key]['ece']:.3f}", alpha=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean confidence of the predicted subtype (bin)")
    ax.set_ylabel("accuracy (bin)")
    ax.set_title(f"reliability, {calibration['n']} cases, {calibration['bins']} bins")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig

"""Figures shared by the notebooks, the report and the viewer: CT slices in any plane (radiological view, aspect from the spacing) with mask overlays."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from .dataset.scan import Case

CT_WINDOW = (40.0, 400.0)  # level, width (abdominal soft tissue)
LABEL_COLORS = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 1.0), (0.95, 0.15, 0.1, 1.0)])


def load_canonical(path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Volume reoriented to RAS (x, y, z), scaled, with its spacing."""
    img = nib.as_closest_canonical(nib.load(path))
    return img.get_fdata(dtype=np.float32), tuple(float(z) for z in img.header.get_zooms()[:3])  # type: ignore[return-value]


def window(image: np.ndarray, level: float = CT_WINDOW[0], width: float = CT_WINDOW[1]) -> np.ndarray:
    """Map HU to [0, 1] for display."""
    return np.clip((image - (level - width / 2)) / width, 0.0, 1.0)


AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def plane(volume: np.ndarray, spacing: Sequence[float], index: int, axis: str = "axial") -> tuple[np.ndarray, float]:
    """One slice of a RAS volume, oriented for ``imshow(..., origin="lower")``, and its pixel aspect."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {sorted(AXES)}, got {axis!r}")
    if axis == "axial":  # rows: posterior -> anterior (up), columns: right -> left
        return volume[::-1, :, index].T, spacing[1] / spacing[0]
    if axis == "coronal":  # rows: inferior -> superior, columns: right -> left
        return volume[::-1, index, :].T, spacing[2] / spacing[0]
    return volume[index, ::-1, :].T, spacing[2] / spacing[1]  # sagittal, columns: anterior -> posterior


def lesion_slice(labels: np.ndarray, axis: str = "axial") -> int:
    """The slice along ``axis`` with the most lesion voxels (or foreground, or the middle); float masks are fine."""
    along = AXES[axis]
    others = tuple(a for a in range(3) if a != along)
    for value in (2, 1):
        counts = (labels >= value - 0.5).sum(axis=others)
        if counts.any():
            return int(np.argmax(counts))
    return labels.shape[along] // 2


def ct_slice(ax: plt.Axes, image: np.ndarray, spacing: Sequence[float], z: int, axis: str, level: float, width: float) -> float:
    """A windowed CT slice in radiological view; returns its pixel aspect."""
    slice_2d, aspect = plane(image, spacing, z, axis)
    ax.imshow(window(slice_2d, level, width), cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect, interpolation="nearest")
    ax.set_axis_off()
    return aspect


def label_overlay(ax: plt.Axes, image: np.ndarray, labels: np.ndarray, spacing: Sequence[float], z: int, axis: str = "axial", *, alpha: float = 0.4, level: float = CT_WINDOW[0], width: float = CT_WINDOW[1]) -> None:
    """CT slice with a label map (green pancreas, red lesion)."""
    aspect = ct_slice(ax, image, spacing, z, axis, level, width)
    ax.imshow(np.rint(plane(labels, spacing, z, axis)[0]), cmap=LABEL_COLORS, vmin=0, vmax=2, alpha=alpha, origin="lower", aspect=aspect, interpolation="nearest")


def subtype_examples(cases: Sequence[Case], subtypes: Sequence[str]) -> Figure:
    """One labelled case per subtype: the slice with the largest lesion, mask overlaid."""
    fig, axes = plt.subplots(1, len(subtypes), figsize=(4 * len(subtypes), 4), squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[0], subtypes)):
        case = next((c for c in cases if c.subtype == k and c.mask is not None), None)
        if case is None:
            ax.set_title(f"{name}: no case")
            ax.set_axis_off()
            continue
        image, spacing = load_canonical(str(case.image))
        labels, _ = load_canonical(str(case.mask))
        label_overlay(ax, image, labels, spacing, lesion_slice(labels))
        ax.set_title(f"{name}: {case.case_id}")
    fig.suptitle("green: pancreas, red: lesion (W400/L40)")
    fig.tight_layout()
    return fig


def geometry_summary(cases: Sequence[Case]) -> pd.DataFrame:
    """Median/min/max voxel counts and spacing (mm) per stored axis."""
    rows = {}
    for name, values in (("shape", np.array([c.shape for c in cases])), ("spacing mm", np.array([c.spacing for c in cases]))):
        for stat, fn in (("median", np.median), ("min", np.min), ("max", np.max)):
            rows[f"{name} {stat}"] = fn(values, axis=0)
    return pd.DataFrame(rows, index=["axis 0", "axis 1", "axis 2"]).T.round(3)


def preprocessed_example(preprocessed_folder: str, case_id: str, raw_image: str, raw_mask: str, patch_size: Sequence[int]) -> Figure:
    """Raw CT slice with its mask next to one preprocessed patch (normalised, resampled) with its segmentation.

    The patch is cut around the lesion's centre, at the plan's patch size, from nnU-Net's own
    preprocessed arrays (read with nnU-Net's dataset class).
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    data, seg, _, _ = infer_dataset_class(preprocessed_folder)(preprocessed_folder, [case_id]).load_case(case_id)
    data, seg = np.asarray(data[0]), np.asarray(seg[0])
    lesion = np.argwhere(seg == 2)
    centre = lesion.mean(axis=0).round().astype(int) if len(lesion) else np.array(seg.shape) // 2
    lo = [int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, p, s in zip(centre, patch_size, seg.shape)]
    box = tuple(slice(l, l + p) for l, p in zip(lo, patch_size))
    patch, patch_seg = data[box], seg[box]
    z = int(np.argmax((patch_seg == 2).sum(axis=(1, 2)))) if (patch_seg == 2).any() else patch.shape[0] // 2

    image, spacing = load_canonical(raw_image)
    labels, _ = load_canonical(raw_mask)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    label_overlay(axes[0], image, labels, spacing, lesion_slice(labels))
    axes[0].set_title(f"raw {case_id} (HU, W400/L40)\nshape {image.shape}, spacing {tuple(round(s, 2) for s in spacing)}", fontsize=9)
    axes[1].imshow(patch[z], cmap="gray", interpolation="nearest")
    axes[1].set_title(f"preprocessed patch {tuple(patch.shape)} (z-scored)", fontsize=9)
    axes[2].imshow(patch[z], cmap="gray", interpolation="nearest")
    axes[2].imshow(np.where(patch_seg[z] < 0, 0, patch_seg[z]), cmap=LABEL_COLORS, vmin=0, vmax=2, alpha=0.45, interpolation="nearest")
    axes[2].set_title("preprocessed segmentation (green pancreas, red lesion)", fontsize=9)
    for ax in axes[1:]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def training_curves(frame: pd.DataFrame) -> Figure:
    """Per-epoch curves from the trainer's ``training_metrics.csv``: losses, pseudo-Dice, F1/accuracy, loss weights, lr."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 5, figsize=(24, 4.2))
    panels = [
        ("loss", {"train_losses": "total (train)", "train_seg_losses": "segmentation (train)", "train_cls_losses": "classification (train)", "val_losses": "segmentation (val)"}),
        ("pseudo-Dice (val patches)", {c: c.removeprefix("pseudo_dice_") for c in frame.columns if c.startswith("pseudo_dice_")} | {"ema_fg_dice": "EMA mean"}),
        ("case-level subtype (val cases)", {"val_macro_f1": "macro-F1", "val_accuracy": "accuracy", "val_criterion": "criterion"}),
        ("loss weights", {"w_seg": "w_seg", "w_cls": "w_cls"}),
        ("learning rate", {"lrs": "lr"}),
    ]
    for ax, (title, columns) in zip(axes, panels):
        for column, label in columns.items():
            measured = frame[["epoch", column]].dropna()  # the case-level values exist only at the epochs of a case-level pass
            ax.plot(measured["epoch"], measured[column], label=label, marker="o" if len(measured) < len(frame) else None, markersize=4)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def prediction_examples(cases: Sequence[tuple[str, str]], output_folder: str, n: int = 3) -> Figure:
    """The first ``n`` predicted cases: CT (W400/L40) with the predicted mask, at its largest-lesion slice."""
    chosen = list(cases)[:n]
    fig, axes = plt.subplots(1, max(len(chosen), 1), figsize=(4 * max(len(chosen), 1), 4), squeeze=False)
    for ax, (case_id, image_file) in zip(axes[0], chosen):
        image, spacing = load_canonical(image_file)
        labels, _ = load_canonical(f"{output_folder}/{case_id}.nii.gz")
        label_overlay(ax, image, labels, spacing, lesion_slice(labels))
        ax.set_title(f"{case_id} (predicted)")
    fig.tight_layout()
    return fig

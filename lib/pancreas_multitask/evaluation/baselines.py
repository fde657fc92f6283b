"""Reference classifiers of the lesion subtype from hand-made lesion features (scikit-learn).

They say how hard a data set's subtypes are, independent of the network:

* ``mean_hu_baseline``: one threshold rule on the mean lesion HU (a depth-2 decision tree, which
  places two thresholds), the trivial classifier that the old phantom let reach macro-F1 1.00;
* ``lesion_probe``: a linear model (standardised logistic regression) on intensity-distribution and
  texture features of the lesion's interior, relative to the case's own parenchyma.

Both are scored by stratified cross-validation (macro-F1 of the pooled out-of-fold predictions).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from .metrics import macro_f1

PANCREAS, LESION = 1, 2
MIN_CORE = 30  # voxels; a smaller eroded interior falls back to the whole structure


def interior(mask: np.ndarray) -> np.ndarray:
    """The mask without its boundary voxels (partial volume), or the mask itself when that leaves too little."""
    core = ndimage.binary_erosion(mask)
    return core if core.sum() >= MIN_CORE else mask


def mean_lesion_hu(image: np.ndarray, labels: np.ndarray) -> float:
    return float(image[labels == LESION].mean())


def lesion_features(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean, spread and percentiles of the lesion interior (lightly smoothed against noise), its contrast to
    the parenchyma's interior, and the contrast of a 2-voxel ring around it (rim or capsule)."""
    lesion, pancreas = labels == LESION, labels == PANCREAS
    if not lesion.any() or not pancreas.any():
        raise ValueError("lesion features need a lesion and some pancreas in the mask")
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0)
    values = smooth[interior(lesion)]
    parenchyma = float(np.median(image[interior(pancreas)]))
    ring = ndimage.binary_dilation(lesion, iterations=2) & ~lesion
    contrast = values.mean() - parenchyma
    return np.array([values.mean(), values.std(), *np.percentile(values, [5, 25, 50, 75, 95]), contrast,
                     smooth[ring].mean() - parenchyma, values.std() / (abs(contrast) + 10.0)])


def _cv_macro_f1(model, features: np.ndarray, labels: Sequence[int], folds: int, seed: int) -> float:
    labels = np.asarray(labels)
    predicted = cross_val_predict(model, features, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return macro_f1(labels, predicted, int(labels.max()) + 1)


def mean_hu_baseline(mean_hu: Sequence[float], labels: Sequence[int], folds: int = 5, seed: int = 0) -> float:
    """Cross-validated macro-F1 of thresholds on the mean lesion HU."""
    return _cv_macro_f1(DecisionTreeClassifier(max_depth=2, random_state=seed), np.asarray(mean_hu, dtype=float).reshape(-1, 1), labels, folds, seed)


def lesion_probe(features: np.ndarray, labels: Sequence[int], folds: int = 5, seed: int = 0) -> float:
    """Cross-validated macro-F1 of a linear probe on ``lesion_features``."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return _cv_macro_f1(model, np.asarray(features, dtype=float), labels, folds, seed)

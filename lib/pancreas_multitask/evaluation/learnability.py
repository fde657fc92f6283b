"""The subtype learnability study's analysis (``benchmarks/classification_learnability.py``).

* **Features**: the generator's latent look of each lesion (``latent_features``: what appearance allows at
  best) and image features of the *true* lesion (``image_features``: first-order statistics from
  ``baselines.lesion_features`` plus grey-level co-occurrence texture from scikit-image).
* **Reference classifiers** fitted on train and scored on test (``fit_predict``).
* **Summaries over seeds** (``seed_summary``): test macro-F1 and accuracy averaged over seeds, with a 95 %
  bootstrap CI over test cases (each resample scores every seed), the per-seed values, the label-permutation
  null of each seed's answers, the prediction histograms and collapse warnings, and optionally the paired
  difference to a reference on the same resamples.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage
from skimage.feature import graycomatrix, graycoprops
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..dataset.phantom import LOOK_FIELDS
from .baselines import LESION, interior, lesion_features
from .chance import collapse_warnings, permutation_null, prediction_histogram
from .metrics import bootstrap_ci, macro_f1, macro_f1_batch

LATENT_NAMES = (*LOOK_FIELDS, "has_rim")


def latent_features(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(cases, ``LATENT_NAMES``) from ``phantom.read_generator_truth`` rows: every look field, ``rim`` 0 and
    ``has_rim`` 0 where the lesion has no rim."""
    out = []
    for row in rows:
        rim = float(row["rim"])
        out.append([*(0.0 if k == "rim" and np.isnan(rim) else float(row[k]) for k in LOOK_FIELDS), float(not np.isnan(rim))])
    return np.asarray(out, dtype=float)


GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
GLCM_RANGE = (-150.0, 250.0)  # HU quantised into GLCM_LEVELS grey levels
GLCM_LEVELS = 32


def glcm_features(image: np.ndarray, labels: np.ndarray, levels: int = GLCM_LEVELS, hu_range: tuple[float, float] = GLCM_RANGE) -> np.ndarray:
    """Grey-level co-occurrence statistics (``GLCM_PROPERTIES``) of the true lesion's interior, in-plane.

    The co-occurrences of every slice (last stored axis) at distance 1 in four directions are summed, counting
    only pairs of voxels that are both inside the lesion: the grey levels run 1..``levels`` there and 0 outside,
    and the level-0 row and column are dropped before normalising.
    """
    lesion = interior(labels == LESION)
    if not lesion.any():
        raise ValueError("GLCM features need a lesion in the mask")
    scaled = (np.asarray(image, dtype=np.float64) - hu_range[0]) / (hu_range[1] - hu_range[0])
    grey = np.where(lesion, np.clip(np.floor(scaled * levels), 0, levels - 1) + 1, 0).astype(np.uint8)
    total = np.zeros((levels, levels, 1, 4))
    for k in np.flatnonzero(lesion.any(axis=(0, 1))):
        matrix = graycomatrix(grey[..., k], distances=[1], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=levels + 1)
        total += matrix[1:, 1:].sum(axis=3, keepdims=True)
    if total.sum() == 0:  # a lesion one voxel thick in-plane: no pair inside it
        return np.zeros(len(GLCM_PROPERTIES))
    normalised = total / total.sum()
    return np.array([float(graycoprops(normalised, p)[0, 0]) for p in GLCM_PROPERTIES])


def image_features(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """First-order lesion statistics (``baselines.lesion_features``) followed by ``glcm_features``."""
    return np.concatenate([lesion_features(image, labels), glcm_features(ndimage.gaussian_filter(image.astype(np.float32), 0.5), labels)])


CLASSIFIERS = {
    "logistic": "standardised multinomial logistic regression",
    "boosting": "histogram gradient boosting (scikit-learn defaults)",
}


def fit_predict(name: str, x_train: np.ndarray, y_train: Sequence[int], x_test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Fit ``CLASSIFIERS[name]`` on train, predict test (class-balanced, as the trainer weights its loss)."""
    if name == "logistic":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))
    elif name == "boosting":
        model = HistGradientBoostingClassifier(random_state=seed, class_weight="balanced")
    else:
        raise ValueError(f"unknown classifier {name!r}; known: {sorted(CLASSIFIERS)}")
    return model.fit(np.asarray(x_train, dtype=float), np.asarray(y_train)).predict(np.asarray(x_test, dtype=float))


def _seed_mean_f1(truth: np.ndarray, predicted: np.ndarray, num_classes: int, idx: np.ndarray) -> np.ndarray:
    """(B,) macro-F1 averaged over seeds (rows of ``predicted``) for each row of resampled case indices ``idx``."""
    return np.mean([macro_f1_batch(truth[idx], p[idx], num_classes) for p in predicted], axis=0)


def seed_summary(truth: Sequence[int], predicted_per_seed: Sequence[Sequence[int]], num_classes: int,
                 reference: Sequence[Sequence[int]] | None = None, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Test macro-F1 and accuracy over seeds with bootstrap CIs, per-seed values, the permutation null of each seed's
    answers (``indistinguishable_from_chance``: the CI's lower end at or below the mean of their 95th percentiles),
    prediction histograms, each seed's recall per class, collapse warnings; with ``reference`` the paired difference to it."""
    truth = np.asarray(truth, dtype=int)
    predicted = np.asarray(predicted_per_seed, dtype=int).reshape(-1, len(truth))
    names = list(class_names or [f"subtype{k}" for k in range(num_classes)])
    f1 = [macro_f1(truth, p, num_classes) for p in predicted]
    nulls = [permutation_null(truth, p, num_classes) for p in predicted]
    ci = bootstrap_ci(lambda idx: _seed_mean_f1(truth, predicted, num_classes, idx), len(truth))
    null_p95 = float(np.mean([n["p95"] for n in nulls]))
    row: dict[str, Any] = {
        "seeds": len(predicted), "cases": len(truth), "macro_f1": float(np.mean(f1)), "macro_f1_per_seed": f1, "macro_f1_ci95": list(ci),
        "accuracy": float(np.mean(predicted == truth)), "accuracy_per_seed": [float(np.mean(p == truth)) for p in predicted],
        "accuracy_ci95": list(bootstrap_ci(lambda idx: np.mean([(p[idx] == truth[idx]).mean(axis=1) for p in predicted], axis=0), len(truth))),
        "chance": {"permutation_null_mean": float(np.mean([n["mean"] for n in nulls])), "permutation_null_p95": null_p95,
                   "indistinguishable_from_chance": bool(ci[0] <= null_p95)},
        "predicted_histogram": [prediction_histogram(truth, p, num_classes)["predicted"] for p in predicted],
        "recall_per_seed": [[float(np.mean(p[truth == k] == k)) if np.any(truth == k) else None for k in range(num_classes)] for p in predicted],
        "collapse_warnings": sorted({w for p in predicted for w in collapse_warnings(truth, p, names)}),
    }
    if reference is not None:
        ref = np.asarray(reference, dtype=int).reshape(-1, len(truth))
        row["delta_macro_f1"] = row["macro_f1"] - float(np.mean([macro_f1(truth, p, num_classes) for p in ref]))
        row["delta_macro_f1_ci95"] = list(bootstrap_ci(
            lambda idx: _seed_mean_f1(truth, predicted, num_classes, idx) - _seed_mean_f1(truth, ref, num_classes, idx), len(truth)))
    return row


def _f1_text(row: Mapping[str, Any]) -> str:
    low, high = row["macro_f1_ci95"]
    chance = ", indistinguishable from chance" if row["chance"]["indistinguishable_from_chance"] else ""
    return f"{row['macro_f1']:.3f} [{low:.3f}, {high:.3f}]{chance}"


def headline(result: Mapping[str, Any], demo_iterations: int = 600, variant: str = "default") -> str | None:
    """What the study's results say about ``variant`` in one paragraph: test macro-F1 as deployed and with the true
    lesion at the demo's budget and at the largest budget tried (all train cases), beside the chance line and the
    best true-mask image baseline. None before any run of ``variant`` has finished."""
    rows = [r for r in result.get("summary", []) if r["variant"] == variant]
    if not rows:
        return None
    cases = max(r["train_cases"] for r in rows)
    rows = sorted((r for r in rows if r["train_cases"] == cases), key=lambda r: r["iterations"])
    test_cases = rows[0]["predicted_pooling"]["cases"]

    def sentence(row: Mapping[str, Any]) -> str:
        deployed = row["predicted_pooling"]
        low, high = deployed["macro_f1_ci95"]
        null = deployed["chance"]["permutation_null_p95"]
        chance = (f"indistinguishable from chance: its answers shuffled over the cases reach {null:.3f} at the 95th percentile"
                  if deployed["chance"]["indistinguishable_from_chance"] else f"above chance: its answers shuffled reach {null:.3f} at the 95th percentile")
        return (f"at {row['iterations']} training iterations ({len(row['seeds'])} seed{'s' if len(row['seeds']) != 1 else ''}) the "
                f"{variant} head reaches test macro-F1 {deployed['macro_f1']:.3f} [{low:.3f}, {high:.3f}] as deployed ({chance}), and "
                f"{_f1_text(row['oracle_pooling'])} when it pools over the true lesion; its lesion Dice is {row['lesion_dice']:.3f}")

    parts = [sentence(r) for r in rows if r["iterations"] == demo_iterations]
    if rows[-1]["iterations"] != demo_iterations or not parts:
        parts.append(sentence(rows[-1]) + (" (the largest budget tried)" if len(rows) > 1 else ""))
    references = result.get("references", {}).get("rows", {})
    image = [r for k, r in references.items() if k.startswith("true-mask-image")]
    best = max(image, key=lambda r: r["macro_f1"]) if image else None
    text = (f"On the learnability study's phantom ({cases} train cases, {test_cases} test cases that chose nothing): " + "; ".join(parts) + ".")
    if best is not None:
        text += f" Features of the true lesion's image allow {_f1_text(best)} ({best['description']})."
    return text

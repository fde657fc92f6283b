"""The chance line beside every macro-F1, the prediction histogram, the collapse warning and the label check.

What answers that know nothing about the image score on the same truth:

* **the best constant answer**: always the same subtype (the one that scores best on this truth), with
  its bootstrap 95 % CI over cases;
* **the label-permutation null**: the model's own answers shuffled over the cases, which keeps how often
  it names each subtype and breaks their link to the image; its mean, central 95 % interval and 95th
  percentile over ``PERMUTATIONS`` shuffles, and the permutation p-value of the observed F1.

An F1 whose CI's lower end is at or below the null's 95th percentile is not shown to be above chance (``chance_note``
says whether it cannot be told from chance or lies below it). A classifier that
names one subtype for more than ``COLLAPSE_SHARE`` of the cases, or never names a subtype that is in the
truth, has collapsed: its F1 says little whatever its value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .metrics import bootstrap_ci, macro_f1, macro_f1_batch

PERMUTATIONS = 2000
COLLAPSE_SHARE = 0.8


def constant_answer(y_true: Sequence[int], num_classes: int, *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The constant answer with the best macro-F1 on this truth, its F1 and the F1's bootstrap CI."""
    y_true = np.asarray(y_true, dtype=int)
    scores = [macro_f1(y_true, np.full_like(y_true, k), num_classes) for k in range(num_classes)]
    best = int(np.argmax(scores))
    ci = bootstrap_ci(lambda idx: macro_f1_batch(y_true[idx], np.full(idx.shape, best), num_classes), len(y_true), resamples=resamples, seed=seed)
    return {"subtype": best, "macro_f1": float(scores[best]), "ci95": list(ci)}


def permutation_null(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int, *, permutations: int = PERMUTATIONS, seed: int = 0) -> dict[str, Any]:
    """Macro-F1 of the predictions shuffled over the cases: mean, central 95 % interval, 95th percentile, and the
    permutation p-value of the observed macro-F1 (``(1 + #null >= observed) / (1 + permutations)``)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(y_pred) for _ in range(permutations)])
    null = macro_f1_batch(np.broadcast_to(y_true, shuffled.shape), shuffled, num_classes)
    observed = macro_f1(y_true, y_pred, num_classes)
    return {
        "permutations": permutations, "seed": seed,
        "mean": float(null.mean()), "interval95": [float(v) for v in np.percentile(null, [2.5, 97.5])], "p95": float(np.percentile(null, 95)),
        "p_value": float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + permutations)),
    }


def chance_line(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int, f1_ci: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Both chance references and whether the F1 (with its 95 % ``f1_ci``) can be told from them."""
    constant = constant_answer(y_true, num_classes, resamples=resamples, seed=seed)
    null = permutation_null(y_true, y_pred, num_classes, seed=seed)
    return {
        "constant_answer": constant,
        "permutation_null": null,
        "indistinguishable_from_chance": bool(f1_ci[0] <= null["p95"]),
        "definition": ("constant answer: always the subtype that scores best on this truth; permutation null: the model's answers "
                       "shuffled over the cases; an F1 whose 95 % CI does not clear the null's 95th percentile (its lower end at or below it) cannot be told from chance"),
    }


def describe(chance: Mapping[str, Any], class_names: Sequence[str]) -> str:
    """``chance_line``'s result in words: the best constant answer and the permutation null, with their intervals."""
    constant, null = chance["constant_answer"], chance["permutation_null"]
    interval = lambda ci: f"[{ci[0]:.3f}, {ci[1]:.3f}]"  # noqa: E731
    return (f"always {class_names[constant['subtype']]}: {constant['macro_f1']:.3f} {interval(constant['ci95'])}; answers shuffled: mean "
            f"{null['mean']:.3f}, 95 % of shuffles in {interval(null['interval95'])}, 95th percentile {null['p95']:.3f}")


def chance_note(classification: Mapping[str, Any]) -> str | None:
    """The warning for a macro-F1 not shown above chance (``classification_summary``'s result), or None.

    Below chance when the whole CI lies under the central 95 % of the shuffled answers; otherwise it cannot be told from chance.
    """
    if not classification["chance"]["indistinguishable_from_chance"]:
        return None
    low, high = classification["macro_f1_ci95"]
    shuffled = classification["chance"]["permutation_null"]["interval95"]
    if high < shuffled[0]:
        return (f"the macro-F1 is below chance: its whole CI [{low:.3f}, {high:.3f}] lies under what 95 % of the same answers shuffled over "
                f"the cases score ([{shuffled[0]:.3f}, {shuffled[1]:.3f}]); the answers are anti-correlated with the truth")
    return "the macro-F1 cannot be told from chance: its CI does not clear the 95th percentile of the same answers shuffled over the cases"


def prediction_histogram(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict[str, list[int]]:
    """How many cases each subtype has in the truth and how often it was predicted."""
    return {"true": np.bincount(np.asarray(y_true, dtype=int), minlength=num_classes).tolist(),
            "predicted": np.bincount(np.asarray(y_pred, dtype=int), minlength=num_classes).tolist()}


def collapse_warnings(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str], share: float = COLLAPSE_SHARE) -> list[str]:
    """A line for each sign of a collapsed classifier: one subtype takes more than ``share`` of the answers, or a
    subtype that is in the truth is never predicted."""
    counts = prediction_histogram(y_true, y_pred, len(class_names))
    n = len(y_pred)
    warnings = [f"{class_names[k]} is {c} of the {n} answers ({c / n:.0%}, more than {share:.0%})" for k, c in enumerate(counts["predicted"]) if n and c / n > share]
    warnings += [f"{class_names[k]} is never predicted, though {t} case(s) have it" for k, (t, c) in enumerate(zip(counts["true"], counts["predicted"])) if t and not c]
    return warnings


def label_check(label_file: str | os.PathLike[str] | None, prediction_csv: str | os.PathLike[str], y_true: Sequence[int], y_pred: Sequence[int]) -> str | None:
    """ValueError when the true subtypes are read from the prediction CSV itself; a warning when every true subtype
    equals its prediction (a perfect classifier, or labels copied from the predictions), else None."""
    if label_file is not None and Path(label_file).resolve() == Path(prediction_csv).resolve():
        raise ValueError(f"{label_file}: the true subtypes would be read from the prediction CSV itself; give the answer key instead")
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if len(y_true) and np.array_equal(y_true, y_pred):
        source = f"the answer key {label_file}" if label_file is not None else "the ground truth"
        return (f"every one of the {len(y_true)} true subtypes equals its prediction: a perfect classifier, or {source} was written from the "
                f"predictions ({prediction_csv}); check where the labels come from")
    return None

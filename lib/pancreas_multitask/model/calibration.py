"""Temperature scaling of the case-level subtype probabilities, and how well probabilities are calibrated.

The case's probabilities are an average of tile softmaxes, not a softmax of logits, so the temperature
acts on their logarithm: ``softmax(log p / T)``. It keeps every argmax (so macro-F1 and accuracy),
and is fitted by minimising the negative log-likelihood on the split that selected the checkpoint
(Guo et al. 2017). Stored per fold as ``subtype_calibration.json``; a model without one is uncalibrated
(``T = 1``). ECE is the top-label expected calibration error over equal-width confidence bins.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from ..io import write_json

CALIBRATION_FILE = "subtype_calibration.json"
ECE_BINS = 10
TEMPERATURE_RANGE = (0.05, 20.0)
EPSILON = 1e-7  # probabilities are clipped here before the logarithm


@dataclass(frozen=True)
class Calibration:
    """A fold's temperature, where it was fitted and what it did there (in-sample: the fitting split's own numbers)."""

    temperature: float = 1.0
    fitted_on: str = "not fitted"
    cases: int = 0
    nll_before: float | None = None
    nll_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None

    @property
    def warning(self) -> str | None:
        """Why these calibrated probabilities deserve no trust (``temperature_warning``)."""
        return temperature_warning(self.temperature, self.cases)

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """(..., K) probabilities -> the calibrated ones."""
        return apply_temperature(probabilities, self.temperature)

    def save(self, folder: Path) -> Path:
        write_json(Path(folder) / CALIBRATION_FILE, asdict(self))
        return Path(folder) / CALIBRATION_FILE

    @classmethod
    def load(cls, folder: Path) -> "Calibration":
        """The fold's calibration; the identity for a fold without the file (a model from before calibration)."""
        path = Path(folder) / CALIBRATION_FILE
        if not path.is_file():
            return cls(fitted_on=f"not fitted ({CALIBRATION_FILE} missing)")
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a subtype calibration ({exc})") from exc


def temperature_bound(temperature: float, cases: int) -> str | None:
    """``"top"`` or ``"bottom"`` when a temperature fitted on ``cases`` cases sits at that bound of ``TEMPERATURE_RANGE``."""
    low, high = TEMPERATURE_RANGE
    if cases and temperature >= high * 0.99:
        return "top"
    if cases and temperature <= low * 1.01:
        return "bottom"
    return None


def temperature_warning(temperature: float, cases: int) -> str | None:
    """What a temperature at a bound of its range means for the calibrated probabilities; None inside the range."""
    bound = temperature_bound(temperature, cases)
    if bound == "top":
        return (f"the temperature is at the top of its range ({TEMPERATURE_RANGE[1]:g}): on the {cases} fitting cases the "
                "probabilities carried almost no information on the subtype, so the calibrated ones are close to uniform")
    if bound == "bottom":
        return (f"the temperature is at the bottom of its range ({TEMPERATURE_RANGE[0]:g}): all or nearly all of the {cases} "
                "fitting cases were classified right, so the calibrated probabilities are close to 0 or 1")
    return None


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0))
    return softmax(logp / float(temperature), axis=-1)


def negative_log_likelihood(probabilities: np.ndarray, labels: Sequence[int], temperature: float = 1.0) -> float:
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0))
    scaled = log_softmax(logp / float(temperature), axis=-1)
    return float(-scaled[np.arange(len(labels)), np.asarray(labels, dtype=int)].mean())


def fit_temperature(probabilities: np.ndarray, labels: Sequence[int], fitted_on: str) -> Calibration:
    """The temperature in ``TEMPERATURE_RANGE`` that minimises the NLL of ``labels`` (searched on log T)."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("temperature scaling needs at least one case")
    low, high = np.log(TEMPERATURE_RANGE)
    best = minimize_scalar(lambda log_t: negative_log_likelihood(probabilities, labels, float(np.exp(log_t))), bounds=(low, high), method="bounded")
    temperature = float(np.exp(best.x))
    return Calibration(
        temperature=temperature, fitted_on=fitted_on, cases=int(len(labels)),
        nll_before=negative_log_likelihood(probabilities, labels), nll_after=negative_log_likelihood(probabilities, labels, temperature),
        ece_before=expected_calibration_error(probabilities, labels), ece_after=expected_calibration_error(apply_temperature(probabilities, temperature), labels),
    )


def reliability_bins(probabilities: np.ndarray, labels: Sequence[int], bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per equal-width bin of top-label confidence: its range, case count, mean confidence and accuracy (empty bins left out)."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=int)
    confidence, correct = probabilities.max(axis=1), (probabilities.argmax(axis=1) == labels)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            rows.append({"low": b / bins, "high": (b + 1) / bins, "count": int(inside.sum()),
                         "confidence": float(confidence[inside].mean()), "accuracy": float(correct[inside].mean())})
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: Sequence[int], bins: int = ECE_BINS) -> float:
    """Σ over bins of (cases in bin / all cases) x |accuracy − mean confidence|."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(labels) == 0:
        return float("nan")
    return float(top_label_ece(probabilities.max(axis=1)[None], (probabilities.argmax(axis=1) == labels)[None], bins)[0])


def top_label_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """ECE of each row of (R, n) top-label confidences and hits (vectorised for bootstrap resamples): (R,)."""
    confidence, correct = np.atleast_2d(confidence).astype(np.float64), np.atleast_2d(correct).astype(np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = np.zeros((confidence.shape[0], bins))
    np.add.at(gaps, (np.arange(confidence.shape[0])[:, None], index), correct - confidence)
    return np.abs(gaps).sum(axis=1) / confidence.shape[1]

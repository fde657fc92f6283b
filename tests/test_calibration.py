"""Temperature scaling and ECE (``model/calibration.py``), and their place in the evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from pancreas_multitask.model.calibration import (
    CALIBRATION_FILE, Calibration, apply_temperature, expected_calibration_error, fit_temperature, negative_log_likelihood, reliability_bins, top_label_ece,
)


def _cases(scale: float, n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits); probabilities softmax(scale * logits): over-confident for scale > 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits, axis=1)])
    return softmax(scale * logits, axis=1), labels


@pytest.mark.parametrize(("scale", "expected"), [(3.0, 3.0), (0.4, 0.4)], ids=["over-confident", "under-confident"])
def test_the_temperature_undoes_a_known_miscalibration(scale, expected) -> None:
    probabilities, labels = _cases(scale)
    calibration = fit_temperature(probabilities, labels, "synthetic")
    assert calibration.temperature == pytest.approx(expected, rel=0.25)  # log p = scale * logits + c: T = scale restores the truth
    assert calibration.nll_after < calibration.nll_before and calibration.ece_after < calibration.ece_before
    calibrated = calibration.apply(probabilities)
    assert np.array_equal(calibrated.argmax(axis=1), probabilities.argmax(axis=1))  # every predicted subtype kept
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    assert negative_log_likelihood(calibrated, labels) == pytest.approx(calibration.nll_after, rel=1e-9)


def test_a_temperature_at_its_bound_is_flagged(tmp_path: Path) -> None:
    """Labels that the probabilities do not predict (a head at chance) drive the fit to the top bound, cases all classified
    right to the bottom one: both flagged, and the report's calibration section says so; a useful head's fit is not."""
    rng = np.random.default_rng(1)
    confident = softmax(rng.normal(0, 3, size=(30, 3)), axis=1)
    at_chance = fit_temperature(confident, rng.integers(0, 3, size=30), "validation")
    assert at_chance.temperature > 19 and "top of its range" in at_chance.warning and "close to uniform" in at_chance.warning
    all_right = fit_temperature(confident, confident.argmax(axis=1), "validation")
    assert all_right.temperature < 0.06 and "bottom of its range" in all_right.warning
    assert fit_temperature(*_cases(2.0, n=60), fitted_on="validation").warning is None
    assert Calibration(temperature=20.0).warning is None  # not fitted (no cases): nothing to warn about
    assert Calibration(temperature=20.0, cases=5).warning is not None
    from dataclasses import asdict

    from pancreas_multitask.evaluation.report import _temperatures

    folds = _temperatures({"calibration": {"fold 0": asdict(at_chance), "fold 1": {"temperature": 1.3, "fitted_on": "x", "cases": 9, "new_key": 1}}})
    assert folds[0]["text"].startswith("fold 0: temperature ") and "top of its range" in folds[0]["warning"]
    assert folds[1] == {"fold": "fold 1", "text": "fold 1: temperature 1.300, x", "warning": None}
    from pancreas_multitask.training.train import _temperature

    at_chance.save(tmp_path)  # what train.json (and 02_train's table) says of the fold
    assert _temperature(tmp_path).startswith(f"{at_chance.temperature:.3f} (validation)") and "; warning: the temperature is at the top" in _temperature(tmp_path)


def test_ece_by_hand() -> None:
    probabilities = np.array([[0.95, 0.05, 0.0], [0.9, 0.1, 0.0], [0.35, 0.6, 0.05], [0.3, 0.3, 0.4]])
    labels = np.array([0, 1, 1, 2])
    # bins: 0.95 and 0.9 in [0.9, 1.0): accuracy 0.5, confidence 0.925; 0.6 in [0.6, 0.7): 1 vs 0.6; 0.4 in [0.4, 0.5): 1 vs 0.4
    expected = 2 / 4 * abs(0.5 - 0.925) + 1 / 4 * 0.4 + 1 / 4 * 0.6
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected)
    assert [b["count"] for b in reliability_bins(probabilities, labels)] == [1, 1, 2]
    rows = np.array([[0, 1, 2, 3], [0, 0, 0, 0]])  # a bootstrap-style batch: each row a resample
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    batch = top_label_ece(confidence[rows], correct[rows])
    assert batch[0] == pytest.approx(expected) and batch[1] == pytest.approx(0.05)  # four times the 0.95-confident hit


def test_a_fold_without_calibration_is_uncalibrated_and_files_round_trip(tmp_path: Path) -> None:
    assert Calibration.load(tmp_path).temperature == 1.0 and "missing" in Calibration.load(tmp_path).fitted_on
    p = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(Calibration().apply(p), p)
    fitted = fit_temperature(*_cases(2.0, n=60), fitted_on="fold 0 validation cases")
    fitted.save(tmp_path)
    assert Calibration.load(tmp_path) == fitted
    (tmp_path / CALIBRATION_FILE).write_text('{"temperatur": 2}')
    with pytest.raises(ValueError, match=CALIBRATION_FILE):
        Calibration.load(tmp_path)
    np.testing.assert_allclose(apply_temperature(p, 1e9), [1 / 3] * 3, atol=1e-6)  # a huge temperature: uniform


def test_evaluation_reports_ece_before_and_after_from_the_csv(tmp_path: Path) -> None:
    from test_evaluation import MANIFEST, make_quiz

    from pancreas_multitask.dataset.ground_truth import read_quiz_layout
    from pancreas_multitask.evaluation.evaluate import evaluate_folder

    quiz = make_quiz(tmp_path)  # true 0, 0, 1, 1; predicted 0, 1, 1, 1
    calibrated = [(0.7, 0.2, 0.1), (0.3, 0.6, 0.1), (0.1, 0.8, 0.1), (0.2, 0.5, 0.3)]
    uncalibrated = [(0.97, 0.02, 0.01), (0.01, 0.98, 0.01), (0.01, 0.98, 0.01), (0.05, 0.9, 0.05)]
    header = ",".join(["Names", "Subtype", *(f"prob_subtype{k}" for k in range(3)), *(f"uncalibrated_prob_subtype{k}" for k in range(3))])
    rows = [f"{c}.nii.gz,{int(np.argmax(p))}," + ",".join(f"{v}" for v in (*p, *u))
            for c, p, u in zip(("quiz_0_001", "quiz_0_002", "quiz_1_003", "quiz_1_004"), calibrated, uncalibrated)]
    quiz["csv"].write_text("\n".join([header, *rows]) + "\n")
    result = evaluate_folder(read_quiz_layout(quiz["gt"], MANIFEST), quiz["pred"], quiz["csv"], tmp_path / "out", resamples=200)
    calibration = result.summary["classification"]["calibration"]
    truth = np.array([0, 0, 1, 1])
    assert calibration["calibrated"]["ece"] == pytest.approx(expected_calibration_error(np.array(calibrated), truth))
    assert calibration["uncalibrated"]["ece"] == pytest.approx(expected_calibration_error(np.array(uncalibrated), truth))
    low, high = calibration["calibrated"]["ece_ci95"]
    assert low <= calibration["calibrated"]["ece"] <= high
    per_case = result.per_case.set_index("case")
    assert per_case.loc["quiz_0_002", "prob_pred"] == pytest.approx(0.6) and per_case.loc["quiz_0_002", "prob_pred_uncalibrated"] == pytest.approx(0.98)

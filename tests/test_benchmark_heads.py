"""The classification-heads benchmark's choice and summary rules (``benchmarks/classification_heads.py``), on made-up runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_script(REPO / "benchmarks" / "classification_heads.py")


def runs(*f1: float) -> list[dict]:
    return [{"validation_macro_f1": v} for v in f1]


def test_choose_keeps_the_incumbent_within_the_seeds_spread(bench):
    records = {bench.INCUMBENT: runs(0.30, 0.40, 0.50), "other": runs(0.35, 0.45, 0.55)}
    val = {k: float(np.mean([r["validation_macro_f1"] for r in v])) for k, v in records.items()}
    chosen, why = bench.choose(records, val)
    assert chosen == bench.INCUMBENT and "kept" in why and "other leads it on validation by only 0.050" in why


def test_choose_takes_a_clear_leader(bench):
    records = {bench.INCUMBENT: runs(0.30, 0.31, 0.32), "other": runs(0.60, 0.61, 0.62)}
    val = {k: float(np.mean([r["validation_macro_f1"] for r in v])) for k, v in records.items()}
    chosen, why = bench.choose(records, val)
    assert chosen == "other" and "more than the seeds' spread" in why


def test_summarise_pairs_the_difference_on_the_same_resamples(bench):
    truth = np.array([0, 1, 2] * 10)
    perfect, constant = [truth.copy()], [np.zeros_like(truth)]
    same = bench.summarise("same", truth, constant, 3, reference=constant)
    assert same["delta_macro_f1_vs_seed_variant"] == 0 and same["delta_macro_f1_ci95"] == [0.0, 0.0]
    better = bench.summarise("better", truth, perfect, 3, reference=constant)
    assert better["macro_f1"] == 1.0 and better["accuracy"] == 1.0
    assert better["delta_macro_f1_ci95"][0] > 0.5  # 1.0 against a constant answer's 1/6, on every resample


def result_of(bench, chosen: str, delta_ci: tuple[float, float] | None, seeds=(0, 1, 2), calibration=None) -> dict:
    """A finished benchmark's result, as ``main`` builds it, with made-up rows."""
    row = {"variant": chosen, "description": "bottleneck · lesion · mean", "validation_macro_f1": 0.3, "macro_f1": 0.45, "macro_f1_ci95": [0.35, 0.55],
           "macro_f1_per_seed": [0.44, 0.45, 0.46], "accuracy": 0.6, "accuracy_ci95": [0.5, 0.7]}
    if delta_ci is not None:
        row.update(delta_macro_f1_vs_seed_variant=sum(delta_ci) / 2, delta_macro_f1_ci95=list(delta_ci))
    result = {"seeds": list(seeds), "chosen": chosen, "choice": f"{chosen} (the best mean validation macro-F1)", "rows": [row],
              "budget": {"epochs": 8, "iterations_per_epoch": 10}, "test_cases": 45, "validation_cases": 15, "device": "cpu",
              "backbone": {"settings": {"num_epochs": 60}, "pseudo_dice_lesion": 0.25}, "calibration": calibration}
    result["verdict"] = bench.verdict(result)
    return result


def test_verdict_says_beyond_or_within_noise_from_the_paired_ci(bench):
    beyond = result_of(bench, bench.INCUMBENT, (0.13, 0.31))["verdict"]
    assert "beyond noise (the paired CI excludes 0)" in beyond and "+0.220 macro-F1 [+0.130, +0.310]" in beyond
    within = result_of(bench, bench.INCUMBENT, (-0.05, 0.2))["verdict"]
    assert "within noise" in within and "not shown better than the original head" in within
    assert "the original head itself" in result_of(bench, bench.SEED_VARIANT, None)["verdict"]
    assert "No run of the original head" in result_of(bench, bench.INCUMBENT, None)["verdict"]  # --variants without it


def test_verdict_chooses_nothing_from_too_few_seeds(bench):
    result = result_of(bench, "x", None, seeds=(0,))
    assert result["verdict"].startswith("Partial run: 1 of the 3 seeds")
    assert bench.markdown(result).startswith("**Partial run: 1 of 3 seeds.**") and "(chosen)" not in bench.markdown(result)


def test_markdown_marks_the_choice_and_a_temperature_at_its_bound(bench):
    assert "temperature" not in bench.markdown(result_of(bench, bench.INCUMBENT, (0.1, 0.3))).lower()  # no calibration recorded
    calibration = {"seeds": 3, "seeds_at_top": 3, "seeds_at_bottom": 0, "temperature": 20.0, "ece_before": 0.15, "ece_after": 0.26}
    text = bench.markdown(result_of(bench, bench.INCUMBENT, (0.1, 0.3), calibration=calibration))
    assert f"| {bench.INCUMBENT} **(chosen)** |" in text and "| 0.450 [0.350, 0.550] | 0.44, 0.45, 0.46 |" in text
    assert "In 3 of 3 seeds the temperature is at the top of its range" in text and "made the test ECE worse" in text
    assert "bottom of its range" not in text


def test_calibration_summary_counts_each_bound(bench):
    from scipy.special import softmax

    rng = np.random.default_rng(1)  # as in test_calibration: confident probabilities, labels they do not predict
    confident = softmax(rng.normal(0, 3, size=(30, 3)), axis=1)
    at_chance = {"seed": 0, "validation_probabilities": confident.tolist(), "validation_labels": rng.integers(0, 3, size=30).tolist(),
                 "test_probabilities": confident.tolist()}
    all_right = {**at_chance, "seed": 1, "validation_labels": confident.argmax(axis=1).tolist()}
    summary = bench.calibration_summary([at_chance, all_right, {"seed": 2}], confident.argmax(axis=1))
    assert summary["seeds"] == 2 and summary["seeds_at_top"] == 1 and summary["seeds_at_bottom"] == 1  # the run without probabilities left out

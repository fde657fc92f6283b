"""The classification-heads benchmark's choice and summary rules (``benchmarks/classification_heads.py``), on made-up runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("classification_heads", REPO / "benchmarks" / "classification_heads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs(*f1: float) -> list[dict]:
    return [{"validation_macro_f1": v} for v in f1]


def test_choose_keeps_the_incumbent_within_the_seeds_spread(bench):
    records = {bench.INCUMBENT: runs(0.30, 0.40, 0.50), "other": runs(0.35, 0.45, 0.55)}
    val = {k: float(np.mean([r["validation_macro_f1"] for r in v])) for k, v in records.items()}
    chosen, why = bench.choose(records, val)
    assert chosen == bench.INCUMBENT and "kept" in why and "other" in why


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


def test_verdict_chooses_nothing_from_too_few_seeds(bench):
    result = {"seeds": [0], "choice": "x: the best mean validation macro-F1", "rows": [], "chosen": "x"}
    assert bench.verdict(result).startswith("Partial run: 1 of the 3 seeds")

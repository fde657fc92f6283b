"""The real-CT benchmark (``benchmarks/real_ct.py``): its plain row is the multitask trainer without the subtype loss and
nothing else, the paired differences over cases and seeds, and the resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script
from pancreas_multitask.model.settings import settings_from_parameters
from pancreas_multitask.profiles import load_parameters
from pancreas_multitask.training.schedule import loss_weights

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_ct():
    return load_script(REPO / "benchmarks" / "real_ct.py")


@pytest.mark.parametrize("profile", ["realct", "demo"])
def test_plain_differs_from_multitask_only_in_the_subtype_loss(real_ct, profile: str) -> None:
    settings = settings_from_parameters(load_parameters(REPO / "notebooks" / "params", profile), 3)
    plain = real_ct.row_settings(settings, "plain")
    assert real_ct.row_settings(settings, "multitask") == settings
    assert real_ct.differing(plain.to_dict(), settings.to_dict()) == ["schedule.end.1", "schedule.start.1"]
    for epoch in range(settings.num_epochs + 80):  # through the ramp and past it
        (seg_plain, cls_plain), (seg, cls) = loss_weights(epoch, plain.schedule), loss_weights(epoch, settings.schedule)
        assert cls_plain == 0.0 and seg_plain == pytest.approx(seg) and cls > 0


def _run(row: str, seed: int, pancreas: list[float], lesion: list[float]) -> dict:
    return {"row": row, "seed": seed, "seconds_training": 60.0,
            "per_case": {f"case{i}": {"dsc_pancreas": p, "dsc_lesion": q} for i, (p, q) in enumerate(zip(pancreas, lesion))}}


def test_the_paired_difference_is_over_the_same_cases_and_seeds(real_ct) -> None:
    runs = [_run("plain", 0, [0.6, 0.7, 0.8], [0.1, 0.2, 0.3]), _run("plain", 1, [0.6, 0.6, 0.6], [0.0, 0.0, 0.0]),
            _run("multitask", 0, [0.7, 0.7, 0.8], [0.3, 0.4, 0.5]), _run("multitask", 1, [0.6, 0.6, 0.9], [0.2, 0.2, 0.2])]
    summary = real_ct.summarise(runs, resamples=200)
    assert summary["plain"]["pancreas"]["per_seed"] == pytest.approx([0.7, 0.6]) and "vs_baseline" not in summary["plain"]
    versus = summary["multitask"]["vs_baseline"]
    assert versus["seeds"] == [0, 1]
    assert versus["lesion"]["mean"] == pytest.approx(0.2) and versus["lesion"]["per_seed"] == pytest.approx([0.2, 0.2])
    assert versus["pancreas"]["per_seed"] == pytest.approx([0.1 / 3, 0.1]) and versus["lesion"]["ci95"] == pytest.approx([0.2, 0.2])
    low, high = versus["pancreas"]["ci95"]
    assert low <= versus["pancreas"]["mean"] <= high and high > low  # the cases differ: a real interval
    result = {"profile": "realct", "budget": {"epochs": 30, "iterations": 25}, "cases": 3, "device": "cpu", "summary": summary, "runs": runs,
              "settings_differ": ["schedule.end.1", "schedule.start.1"]}
    text = real_ct.markdown(result)
    assert "| multitask |" in text and "+0.200 [+0.200, +0.200]; +0.200, +0.200" in text and "differ only in: schedule.end.1, schedule.start.1" in text


def test_a_rerun_keeps_the_runs_of_the_same_budget_only(real_ct, tmp_path: Path) -> None:
    out = tmp_path / "real_ct_cpu.json"
    budget = {"epochs": 30, "iterations": 25, "val_iterations": 4}
    assert real_ct.load_runs(out, "realct", budget) == []
    out.write_text(json.dumps({"profile": "realct", "budget": budget, "runs": [_run("plain", 0, [0.5], [0.1])]}))
    assert [(r["row"], r["seed"]) for r in real_ct.load_runs(out, "realct", budget)] == [("plain", 0)]
    assert real_ct.load_runs(out, "realct", {**budget, "epochs": 16}) == [] and real_ct.load_runs(out, "demo", budget) == []
    assert np.isfinite(real_ct.summarise(real_ct.load_runs(out, "realct", budget))["plain"]["lesion"]["mean"])


def test_the_learning_curve_is_ordered_by_budget_with_minutes(real_ct) -> None:
    runs = [{**_run("multitask", 0, [0.7, 0.8], [0.3, 0.5]), "budget": {"epochs": 60, "iterations": 25}, "seconds_training": 3000.0},
            {**_run("multitask", 0, [0.5, 0.6], [0.0, 0.2]), "budget": {"epochs": 15, "iterations": 25}, "seconds_training": 750.0}]
    curve = real_ct.curve_summary(runs, resamples=200)
    assert [(p["epochs"], p["iterations"], p["minutes"]) for p in curve] == [(15, 375, 12.5), (60, 1500, 50.0)]
    assert curve[0]["lesion"]["mean"] == pytest.approx(0.1) and curve[1]["pancreas"]["mean"] == pytest.approx(0.75)
    result = {"profile": "realct", "iterations_per_epoch": 25, "seed": 0, "cases": 2, "machine": {"cpus": 2}, "device": "cpu", "profile_epochs": 30, "curve": curve}
    text = real_ct.curve_markdown(result)
    assert "| 0.5 | 15 | 375 | 12.5 | 2.00 | – | 0.550" in text and "| 2 | 60 | 1500 | 50.0 | 2.00 | – | 0.750" in text
    assert text.count("not recorded |") == 2  # runs without a subtype-loss trace
    traced = real_ct.curve_summary([{**runs[1], "subtype_loss_per_epoch": [1.1, 0.5, 0.2, 0.1, 0.05, 0.01, 0.002]}], resamples=200)
    assert "| 1.100 → 0.050 → 0.002 |" in real_ct.curve_markdown({**result, "curve": traced})
    traced = real_ct.curve_summary([{**runs[1], "budget": {"epochs": 8, "iterations": 25}, "subtype_loss_per_epoch": [1.1, 0.5, 0.2, 0.1, 0.05, 0.0],
                                     "subtype_patches_per_epoch": [50, 49, 48, 47, 46, 45]}], resamples=200)
    text = real_ct.curve_markdown({**result, "curve": traced})
    assert "| 0.27 | 8 | 200 |" in text and "| 1.100 (50) → 0.050 (46) → 0.000 (45) |" in text  # 8 of 30 epochs; the patches beside the loss


def test_the_headline_states_a_direction_only_when_the_interval_excludes_zero(real_ct) -> None:
    runs = [_run("plain", s, [0.70, 0.60, 0.80, 0.65], [0.10, 0.20, 0.00, 0.15]) for s in (0, 1)]
    runs += [_run("multitask", 0, [0.72, 0.58, 0.81, 0.64], [0.40, 0.45, 0.30, 0.35]),
             _run("multitask", 1, [0.72, 0.58, 0.81, 0.64], [0.35, 0.50, 0.25, 0.40])]
    result = {"profile": "realct", "budget": {"epochs": 30, "iterations": 25}, "cases": 4, "summary": real_ct.summarise(runs, resamples=500)}
    text = real_ct.headline(result)
    assert "on the lesion it raises it by +0.2" in text  # every case gains: the interval is above 0
    assert "on the whole pancreas it changes it by" in text and "includes 0" in text  # gains and losses: no direction claimed
    assert "2 seed(s)" in text and "One seed" not in text and "neither trainer learnt" not in text
    unlearnt = runs + [_run("plain", 2, [0.6, 0.6, 0.6, 0.6], [0.0, 0.0, 0.01, 0.0]), _run("multitask", 2, [0.6, 0.6, 0.6, 0.6], [0.0, 0.02, 0.0, 0.0])]
    text = real_ct.headline({**result, "summary": real_ct.summarise(unlearnt, resamples=200)})
    assert "With seed 2 (0.003 without the head's loss, 0.005 with it) neither trainer learnt the lesion" in text
    assert "raises it by" in text and "seed matters more than the head" not in text  # a clear effect: no such comparison
    flat = [_run(row, seed, [0.6, 0.7, 0.8, 0.7], [lesion] * 4) for row in ("plain", "multitask") for seed, lesion in ((1, 0.0), (2, 0.4))]
    flat += [_run("plain", 0, [0.6, 0.7, 0.8, 0.7], [0.4, 0.3, 0.5, 0.4])]  # a seed multitask lacks: seed 1 is plain's second, multitask's first
    text = real_ct.headline({**result, "summary": real_ct.summarise(flat, resamples=200)})
    assert "With seed 1 (0.000 without the head's loss, 0.000 with it)" in text and "for the lesion the seed matters more than the head" in text
    lowered = {"mean": -0.1, "ci95": [-0.2, -0.05], "per_seed": [-0.1]}
    assert real_ct.effect_words(lowered).startswith("lowers it by -0.100")
    assert real_ct.headline({**result, "summary": {"plain": result["summary"]["plain"]}}) == ""  # nothing paired yet


def test_the_curve_headline_names_minutes_and_both_regions(real_ct) -> None:
    runs = [{**_run("multitask", 0, [0.5, 0.6], [0.1, 0.2]), "budget": {"epochs": e, "iterations": 25}, "seconds_training": 60.0 * m}
            for e, m in ((8, 7), (30, 26))]
    result = {"profile": "realct", "machine": {"cpus": 2}, "cases": 2, "curve": real_ct.curve_summary(runs, resamples=200)}
    text = real_ct.curve_headline(result)
    assert "7 min (8 epochs): whole pancreas 0.550" in text and "26 min (30 epochs)" in text and "lesion 0.150" in text


def test_the_curve_takes_the_seeded_studys_identical_run_and_says_so(real_ct) -> None:
    budget = {"epochs": 30, "iterations": 25, "val_iterations": 4}
    settings = {"schedule": {"start": (1.0, 0.5)}, "seed": 0}  # a tuple, as to_dict() gives; the JSON holds a list
    seeded = [{**_run(row, seed, [0.7, 0.8], [0.3, 0.5]), "budget": budget, "settings": json.loads(json.dumps(settings)), "seconds_training": 1800.0}
              for row in ("plain", "multitask") for seed in (0, 1)]
    same = real_ct.identical_run(seeded, 0, budget, settings)
    assert same is not None and (same["row"], same["seed"]) == ("multitask", 0)
    assert real_ct.identical_run(seeded, 2, budget, settings) is None  # no such seed
    assert real_ct.identical_run(seeded, 0, {**budget, "epochs": 60}, settings) is None  # another budget
    assert real_ct.identical_run(seeded, 0, budget, {**settings, "schedule": {"start": (1.0, 0.0)}}) is None  # another recipe (plain's)
    curve = real_ct.curve_summary([{**same, "source": "real_ct_cpu.json"}], resamples=200)
    result = {"profile": "realct", "iterations_per_epoch": 25, "seed": 0, "cases": 2, "machine": {"cpus": 2}, "device": "cpu", "profile_epochs": 30, "curve": curve}
    assert "The point at 30 epochs is the seeded study's `multitask` run with seed 0 (`real_ct_cpu.json`)" in real_ct.curve_markdown(result)


def test_the_subtype_loss_and_patch_traces_come_from_the_trainers_metrics_file(real_ct, tmp_path: Path) -> None:
    from pancreas_multitask.model.folders import METRICS_FILE

    assert real_ct.metrics_trace(tmp_path, "train_cls_losses") is None  # nnU-Net's own trainer writes no metrics file
    (tmp_path / METRICS_FILE).write_text("epoch,train_losses,train_cls_losses,train_cls_patches\n0,0.5,1.0986,48\n1,0.2,0.01234567,0\n")
    assert real_ct.metrics_trace(tmp_path, "train_cls_losses") == [1.0986, 0.0123]
    assert real_ct.metrics_trace(tmp_path, "train_cls_patches") == [48, 0]

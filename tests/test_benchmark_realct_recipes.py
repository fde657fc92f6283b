"""The `realct` recipe benchmark (``benchmarks/realct_recipes.py``): recipes are the profile with whole keys replaced,
compared paired on the same cases, and the table names the split that chose."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import load_script
from pancreas_multitask.profiles import load_parameters

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipes():
    sys.path.insert(0, str(REPO / "benchmarks"))
    return load_script(REPO / "benchmarks" / "realct_recipes.py")


def test_every_recipe_is_the_profile_with_whole_keys_replaced(recipes) -> None:
    profile = load_parameters(REPO / "notebooks" / "params", "realct")
    assert recipes.RECIPES[recipes.BASELINE][1] == {}
    for name, (_, overlay) in recipes.RECIPES.items():
        params = recipes.recipe_parameters(profile, overlay)
        assert {k for k in params if params[k] != profile.get(k)} == {k for k in overlay if overlay[k] != profile.get(k)}, name
        assert set(params) >= set(profile)
        for key, value in overlay.items():  # a replaced dict (the plan, trainer_extra) keeps every field the profile's has
            if isinstance(profile.get(key), dict):
                assert set(value) >= set(profile[key]) and all(value[k] == v for k, v in profile[key].items() if k not in ("spacing", "batch_size")), (name, key)


def _run(name: str, selection: list[float], validation: list[float], seed: int = 12345) -> dict:
    def cases(values: list[float], prefix: str) -> dict:
        return {f"{prefix}{i}": {"dsc_pancreas": v, "dsc_lesion": v / 2} for i, v in enumerate(values)}

    return {"recipe": name, "seed": seed, "description": name, "seconds_training": 1500.0,
            "selection": {"per_case": cases(selection, "s")}, "validation": {"per_case": cases(validation, "v")}}


def test_recipes_are_paired_against_the_profile_on_the_same_cases(recipes) -> None:
    runs = [_run("profile", [0.6, 0.7, 0.8], [0.5, 0.6]), _run("lr_5e-3", [0.7, 0.8, 0.9], [0.5, 0.7])]
    summary = recipes.summarise(runs, resamples=200)
    assert "vs_baseline" not in summary["profile"]["selection"]
    selection = summary["lr_5e-3"]["selection"]["vs_baseline"]
    assert selection["pancreas"]["mean"] == pytest.approx(0.1) and selection["pancreas"]["ci95"] == pytest.approx([0.1, 0.1])
    assert selection["lesion"]["mean"] == pytest.approx(0.05)
    assert summary["lr_5e-3"]["validation"]["vs_baseline"]["pancreas"]["mean"] == pytest.approx(0.05)
    text = recipes.markdown({"device": "cpu", "summary": summary, "runs": runs})
    assert "**Chosen on** the selection cases" in text and "validation cases chose nothing" in text
    assert "| lr_5e-3 | lr_5e-3 | 12345 | 25.0 | 0.800 [" in text and "+0.100 [+0.100, +0.100] / +0.050 [+0.050, +0.050]" in text


def test_recipes_are_paired_over_the_seeds_both_have_and_each_seed_is_shown(recipes) -> None:
    from pancreas_multitask.model.settings import settings_from_parameters

    assert recipes.SEED == settings_from_parameters(load_parameters(REPO / "notebooks" / "params", "realct"), 3).seed  # the first seed is the profile's own
    runs = [_run("profile", [0.6, 0.7], [0.5], seed=1), _run("profile", [0.2, 0.3], [0.4], seed=2),
            _run("lr_5e-3", [0.7, 0.8], [0.6], seed=1), _run("lr_5e-3", [0.7, 0.8], [0.6], seed=2), _run("lr_5e-3", [0.0, 0.0], [0.0], seed=3)]
    summary = recipes.summarise(runs, resamples=200)
    lr = summary["lr_5e-3"]
    assert lr["seeds"] == [1, 2, 3] and lr["selection"]["pancreas"]["per_seed"] == pytest.approx([0.75, 0.75, 0.0])
    assert lr["selection"]["pancreas"]["mean"] == pytest.approx(0.5)  # over cases and all three seeds
    versus = lr["selection"]["vs_baseline"]  # seed 3 has no profile run: not paired
    assert versus["seeds"] == [1, 2] and versus["pancreas"]["per_seed"] == pytest.approx([0.1, 0.5]) and versus["pancreas"]["mean"] == pytest.approx(0.3)
    text = recipes.markdown({"device": "cpu", "summary": summary, "runs": runs})
    assert "| lr_5e-3 | lr_5e-3 | 1, 2, 3 | 25.0 | 0.500 [" in text and "; 0.750, 0.750, 0.000 |" in text and "; +0.100, +0.500 /" in text and "(paired over seeds 1, 2)" in text

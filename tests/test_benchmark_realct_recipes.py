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


def _run(name: str, selection: list[float], validation: list[float]) -> dict:
    def cases(values: list[float], prefix: str) -> dict:
        return {f"{prefix}{i}": {"dsc_pancreas": v, "dsc_lesion": v / 2} for i, v in enumerate(values)}

    return {"recipe": name, "description": name, "seconds_training": 1500.0,
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
    assert "| lr_5e-3 | lr_5e-3 | 25.0 | 0.800 [" in text and "+0.100 [+0.100, +0.100] / +0.050 [+0.050, +0.050]" in text

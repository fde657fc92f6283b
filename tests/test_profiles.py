"""Layered parameter profiles: one root (demo), bases, the GPU recipe written once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pancreas_multitask.model.settings import MultitaskSettings, settings_from_parameters
from pancreas_multitask.profiles import load_parameters, profile_layers

from conftest import REPO

PARAMS = REPO / "notebooks" / "params"


def test_every_profile_builds_on_the_demo_root() -> None:
    for path in sorted(PARAMS.glob("*.yaml")):
        assert profile_layers(PARAMS, path.stem)[0].name == "demo.yaml", path.name
    assert [p.stem for p in profile_layers(PARAMS, "colab")] == ["demo", "local", "colab"]


def test_colab_is_local_plus_resume() -> None:
    local, colab = load_parameters(PARAMS, "local"), load_parameters(PARAMS, "colab")
    differing = {k for k in local.keys() | colab.keys() if local.get(k) != colab.get(k)}
    assert differing == {"resume", "profile"} and colab["resume"] is True


def test_the_gpu_recipe_is_the_trainers_own_defaults() -> None:
    """local.yaml writes the recipe once; its training values are MultitaskSettings' defaults, so neither drifts."""
    recipe = settings_from_parameters(load_parameters(PARAMS, "local"), num_classes=3)
    defaults = MultitaskSettings()
    for name in ("num_epochs", "iterations_per_epoch", "val_iterations_per_epoch", "initial_lr", "patience", "case_val_every", "head_lr_factor",
                 "final_validation_mirroring", "deployed_check_cases", "schedule", "head"):
        assert getattr(recipe, name) == getattr(defaults, name), name


def test_a_base_is_replaced_key_by_key_and_loops_are_named(tmp_path: Path) -> None:
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump({"epochs": 60, "trainer_extra": {"a": 1, "b": 2}, "mode": "fast"}))
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"base": "demo", "epochs": 5, "trainer_extra": {"a": 3}}))
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"mode": "accurate"}))
    assert load_parameters(tmp_path, "mine", extra) == {"epochs": 5, "trainer_extra": {"a": 3}, "mode": "accurate", "profile": "mine"}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump({"base": "mine"}))
    with pytest.raises(SystemExit, match="loop: mine -> demo -> mine"):
        load_parameters(tmp_path, "mine")
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"base": "absent"}))
    with pytest.raises(SystemExit, match="unknown profile 'absent'.*the base of mine"):
        load_parameters(tmp_path, "mine")

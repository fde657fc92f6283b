"""House rules for notebooks: one literal `parameters` cell, no stored outputs, known profile keys."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from pancreas_multitask.profiles import load_parameters
from pancreas_multitask.runner import discover_notebooks

from conftest import REPO

NOTEBOOKS = discover_notebooks(REPO / "notebooks")


def test_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS][:1] == ["00_setup.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exactly_one_literal_parameters_cell(path: Path) -> None:
    nb = nbformat.read(str(path), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    assert tagged[0].cell_type == "code"
    names = set()
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign), f"{path.name}: parameters cell may only assign literals"
        ast.literal_eval(node.value)  # raises on anything but a literal
        names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    # papermill must see every parameter (a comment holding '=' or ':' can hide one from it)
    assert set(pm.inspect_notebook(str(path))) == names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_stored_outputs(path: Path) -> None:
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.parametrize("profile", sorted(p.stem for p in (REPO / "notebooks" / "params").glob("*.yaml")))
def test_profile_keys_are_declared_by_a_notebook(profile: str) -> None:
    declared = set().union(*(pm.inspect_notebook(str(p)) for p in NOTEBOOKS))
    keys = set(load_parameters(REPO / "notebooks" / "params", profile)) - {"profile"}
    assert keys <= declared, f"{profile}.yaml sets parameters no notebook declares: {sorted(keys - declared)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_defaults_are_the_demo_profile(path: Path) -> None:
    """What ``runner.profile_parameters`` relies on to apply another profile by hand."""
    demo = yaml.safe_load((REPO / "notebooks" / "params" / "demo.yaml").read_text())
    defaults = {name: value["default"] for name, value in pm.inspect_notebook(str(path)).items()}
    differing = {k: (ast.literal_eval(v), demo[k]) for k, v in defaults.items() if k in demo and ast.literal_eval(v) != demo[k]}
    assert not differing, f"{path.name}: defaults differ from demo.yaml: {differing}"

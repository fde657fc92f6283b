"""Shared fixtures: the repo's manifest, tiny phantoms, the real case, file snapshots."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from pancreas_multitask.dataset.phantom import PhantomConfig, ensure_phantom
from pancreas_multitask.manifest import Manifest, ProfilePaths, load_manifest
from pancreas_multitask.profiles import load_parameters

REPO = Path(__file__).resolve().parents[1]
# nnU-Net reads these when its modules are imported; tests that run nnU-Net set the folders themselves
os.environ.setdefault("nnUNet_def_n_proc", "2")
os.environ.setdefault("nnUNet_n_proc_DA", "1")
os.environ.setdefault("nnUNet_compile", "f")
MANIFEST = load_manifest(REPO / "data_manifest.yaml")
TINY = PhantomConfig(train=(2, 2, 2), validation=(1, 1, 1), test=2, shape=(16, 28, 32), spacing=(3.0, 2.0, 2.0), seed=7)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return MANIFEST


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny phantom (read-only by convention): ROOT/quiz and ROOT/test_answers."""
    root = tmp_path_factory.mktemp("tiny_phantom")
    ensure_phantom(root / "quiz", root / "test_answers", TINY)
    return root


@pytest.fixture()
def raw_copy(tiny_phantom: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny phantom's quiz folder, free to break."""
    target = tmp_path / "quiz"
    shutil.copytree(tiny_phantom / "quiz", target)
    return target


@pytest.fixture(scope="session")
def real_case_dir() -> Path:
    """The one real quiz case in ../shared/data/real_case (PANCREAS_REAL_CASE_DIR overrides)."""
    folder = Path(os.environ.get("PANCREAS_REAL_CASE_DIR", REPO.parent / "shared" / "data" / "real_case"))
    if not (folder / "quiz_0_324_0000.nii.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real case not found in {folder}; CI must test the real file's quirks")
        pytest.skip(f"real case not found in {folder}")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, to prove a step wrote nothing there."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_manifest(tmp_path: Path, **profiles: dict[str, str]) -> Path:
    """A copy of the repo's manifest whose profiles are replaced by ``profiles``."""
    data = yaml.safe_load((REPO / "data_manifest.yaml").read_text())
    data["profiles"] = profiles
    path = tmp_path / "data_manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


SMOKE = load_parameters(REPO / "notebooks" / "params", "smoke")


def fake_repo(tmp_path: Path, notebooks: tuple[str, ...] = ("00_setup.ipynb",), extra_cells: dict[str, str] | None = None) -> Path:
    """A repo copy with some notebooks, whose manifest sends the smoke profile to tmp folders."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    for name in notebooks:
        shutil.copy(REPO / "notebooks" / name, repo / "notebooks")
    shutil.copytree(REPO / "notebooks" / "params", repo / "notebooks" / "params")
    write_manifest(repo, smoke={"raw": "data/quiz", "test_answers": "data/answers", "work": "work"})
    for name, source in (extra_cells or {}).items():
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
        nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(source)]
        nbformat.write(nb, str(repo / "notebooks" / name))
    return repo


@pytest.fixture(scope="session")
def tiny_prepared(tiny_phantom: Path, manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> ProfilePaths:
    """The tiny phantom converted, planned (reduced CPU plans) and preprocessed, with fold-0 splits."""
    from pancreas_multitask.experiment_planning.plans import CPU_PLANS
    from pancreas_multitask.workspace import Workspace
    from pancreas_multitask.experiment_planning.prepare import prepare
    from pancreas_multitask.runtime import configure_nnunet

    paths = ProfilePaths(raw=tiny_phantom / "quiz", work=tmp_path_factory.mktemp("tiny_work"), test_answers=tiny_phantom / "test_answers")
    configure_nnunet(paths, "cpu")
    os.environ["nnUNet_n_proc_DA"] = "1"  # configure_nnunet sizes it to the cores; one worker is enough here
    prepare(Workspace(manifest, paths, CPU_PLANS), {"cpu_plan": {"patch_size": [16, 32, 32], "max_features": 32}, "num_processes": 2})
    return paths


@pytest.fixture(scope="session")
def tiny_trained_model(tiny_prepared: ProfilePaths, manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder trained for one tiny epoch (lesion pooling), with nnU-Net's final validation, which an export needs.

    Shared by the session (predicting with it may add its OpenVINO cache): a test that changes its files works on a copy."""
    from dataclasses import replace

    from pancreas_multitask.experiment_planning.plans import CPU_PLANS
    from pancreas_multitask.model.settings import HeadConfig, MultitaskSettings
    from pancreas_multitask.runtime import configured_nnunet
    from pancreas_multitask.training.train import train
    from pancreas_multitask.workspace import Workspace

    paths = replace(tiny_prepared, results=tmp_path_factory.mktemp("predictor_results"))
    settings = MultitaskSettings(num_epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, head=HeadConfig(pooling="lesion"),
                                 final_validation_mirroring=False, deployed_check_cases=0)
    with configured_nnunet(paths, "cpu"):
        result = train(Workspace(manifest, paths, CPU_PLANS), settings, device="cpu")
    return result.output_folder.parent


def assert_logits_agree(actual, expected) -> None:
    """Two engines' (or two batchings') logits: equal up to float rounding. A misplaced tile or flip changes many voxels by
    far more; kernels that round differently move at most a few voxels by more than 0.01."""
    import numpy as np

    difference = np.abs(np.asarray(actual, dtype=np.float32) - np.asarray(expected, dtype=np.float32))
    assert float(np.asarray(expected, dtype=np.float32).std()) > 0, "trivial logits compare nothing"
    assert difference.max() < 0.1 and np.count_nonzero(difference > 0.01) <= max(1, 1e-4 * difference.size), (difference.max(), np.count_nonzero(difference > 0.01))


def assert_masks_agree(actual, expected, where: object = "") -> None:
    """Label maps from two engines or batchings: Dice >= 0.999 on the whole pancreas and on the lesion. A barely
    trained test model leaves voxels whose logits sit within float rounding of the threshold, so on a region too
    small for 0.999 to allow any difference (under 2000 voxels) up to 2 voxels may differ instead."""
    import numpy as np

    from pancreas_multitask.evaluation.metrics import dice

    for region in ((1, 2), (2,)):
        a, b = np.isin(actual, region), np.isin(expected, region)
        differing = int(np.count_nonzero(a != b))
        if a.any() or b.any():
            assert dice(a, b) >= 0.999 or (max(a.sum(), b.sum()) < 2000 and differing <= 2), (where, region, dice(a, b), differing)


def break_spacing(path: Path, where: str = "pixdim", axis: int = 2) -> None:
    """Write ``path`` back with stored axis ``axis`` given no spacing, byte-exactly (nibabel's writer would repair it):
    ``pixdim``: pixdim[axis + 1] = 0 with qform_code = sform_code = 0, as some exporters write it; ``sform``: the sform's
    column ``axis`` zeroed (sform_code kept)."""
    import gzip
    import struct

    data = bytearray(gzip.decompress(path.read_bytes()))
    assert struct.unpack("<i", data[0:4])[0] == 348, "a little-endian NIfTI-1 header"
    if where == "pixdim":
        struct.pack_into("<f", data, 76 + 4 * (axis + 1), 0.0)
        struct.pack_into("<hh", data, 252, 0, 0)  # qform_code, sform_code
    else:
        for row in (280, 296, 312):  # srow_x, srow_y, srow_z
            struct.pack_into("<f", data, row + 4 * axis, 0.0)
    path.write_bytes(gzip.compress(bytes(data)))


def load_script(path: Path):
    """A script of the repository (``benchmarks/``, ``scripts/``), which is not a package, imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

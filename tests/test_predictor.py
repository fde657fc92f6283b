"""The multitask predictor: geometry, subtype CSV, resume, bad input, sharding (tiny model, CPU)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pancreas_multitask.experiment_planning.plans import CPU_PLANS
from pancreas_multitask.inference.predictor import CSV_NAME, MultitaskPredictor, input_cases, predict_cases
from pancreas_multitask.training.run import train
from pancreas_multitask.training.settings import HeadConfig, MultitaskSettings


@pytest.fixture(scope="module")
def model(tiny_prepared, manifest, tmp_path_factory) -> Path:
    import os

    results = tmp_path_factory.mktemp("predictor_results")
    previous = os.environ["nnUNet_results"]
    os.environ["nnUNet_results"] = str(results)
    try:
        settings = MultitaskSettings(num_epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, head=HeadConfig(pooling="lesion"))
        result = train(manifest, tiny_prepared, CPU_PLANS, settings, fold=0, device="cpu", final_validation=False)
    finally:
        os.environ["nnUNet_results"] = previous
    return result.output_folder.parent


@pytest.fixture()
def predictor(model) -> MultitaskPredictor:
    p = MultitaskPredictor(tile_step_size=0.5, use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_model_folder(model, folds=(0,))
    return p


def _images(tiny_phantom: Path) -> list[tuple[str, Path]]:
    return input_cases(tiny_phantom / "quiz" / "test") + input_cases(tiny_phantom / "quiz" / "validation" / "subtype0")


def test_masks_keep_the_input_geometry_and_the_csv_fits_the_quiz(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    cases = _images(tiny_phantom)
    report = predict_cases(predictor, cases, tmp_path)
    assert sorted(report.predicted) == sorted(c for c, _ in cases) and not report.failed
    for case_id, image in cases:
        source, mask = nib.load(str(image)), nib.load(str(tmp_path / f"{case_id}.nii.gz"))
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-4)
        assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(source.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2} and mask.get_data_dtype() == np.uint8
    rows = list(csv.DictReader((tmp_path / CSV_NAME).open()))
    assert list(rows[0]) == ["Names", "Subtype", "prob_subtype0", "prob_subtype1", "prob_subtype2"]
    assert sorted(r["Names"] for r in rows) == sorted(f"{c}.nii.gz" for c, _ in cases)
    for row in rows:
        probs = [float(row[f"prob_subtype{k}"]) for k in range(3)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and int(row["Subtype"]) == int(np.argmax(probs))


def test_real_case_comes_back_in_its_own_geometry(predictor, real_case_dir: Path, tmp_path: Path) -> None:
    predictor.use_mirroring = False
    report = predict_cases(predictor, [("quiz_0_324", real_case_dir / "quiz_0_324_0000.nii.gz")], tmp_path)
    assert report.predicted == ["quiz_0_324"]
    source, mask = nib.load(str(real_case_dir / "quiz_0_324_0000.nii.gz")), nib.load(str(tmp_path / "quiz_0_324.nii.gz"))
    assert mask.shape == (187, 95, 49) and np.allclose(mask.affine, source.affine, atol=1e-4)
    assert "".join(nib.aff2axcodes(mask.affine)) == "LPS"


def test_rerun_skips_and_bad_input_is_named(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    predictor.use_mirroring = False
    folder = tmp_path / "in"
    shutil.copytree(tiny_phantom / "quiz" / "test", folder)
    bad = folder / "quiz_999_0000.nii.gz"
    bad.write_bytes(b"corrupt")
    report = predict_cases(predictor, input_cases(folder), tmp_path / "out")
    assert len(report.failed) == 1 and str(bad) in report.failed[0]
    assert not (tmp_path / "out" / "quiz_999.nii.gz").exists()
    assert len(report.predicted) == len(input_cases(folder)) - 1
    again = predict_cases(predictor, input_cases(folder), tmp_path / "out")
    assert sorted(again.skipped) == sorted(report.predicted) and not again.predicted


def test_two_parts_cover_every_case_once(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    predictor.use_mirroring = False
    cases = _images(tiny_phantom)
    first = predict_cases(predictor, cases, tmp_path, num_parts=2, part_id=0)
    second = predict_cases(predictor, cases, tmp_path, num_parts=2, part_id=1)
    assert not set(first.predicted) & set(second.predicted)
    assert sorted(first.predicted + second.predicted) == sorted(c for c, _ in cases)
    assert len(list(csv.DictReader((tmp_path / CSV_NAME).open()))) == len(cases)

"""Real CT through the whole chain: prepare, train, postprocessing, inference and evaluation on real quiz cases.

Uses a few of the 40 real subtype-2 cases in ../shared/data/real_ct (linked, never copied into the
project, never written to), with a tiny budget: it proves that real files, real geometry and a
one-class set go through every stage, not how well the model does (see benchmarks/real_ct.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pancreas_multitask.evaluation.evaluate import evaluate_folder
from pancreas_multitask.experiment_planning.plans import CPU_PLANS
from pancreas_multitask.experiment_planning.prepare import prepare
from pancreas_multitask.workspace import Workspace
from pancreas_multitask.manifest import ProfilePaths
from pancreas_multitask.postprocessing import PP_JSON, PP_PICKLE
from pancreas_multitask.runtime import nnunet_environment
from pancreas_multitask.training.train import train
from pancreas_multitask.model.settings import HeadConfig, LossSchedule, MultitaskSettings

from conftest import REPO, snapshot

REAL_CT = Path(os.environ.get("PANCREAS_REAL_CT_DIR", REPO.parent / "shared" / "data" / "real_ct"))


@pytest.fixture(scope="module")
def real_quiz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small quiz-layout folder of links to real cases: 3 train, 1 validation, 1 test image."""
    if not (REAL_CT / "train" / "subtype2").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real CT not found in {REAL_CT}; CI must train and infer on a real case")
        pytest.skip(f"real CT not found in {REAL_CT}")
    root = tmp_path_factory.mktemp("real_quiz")
    picks = {"train": sorted((REAL_CT / "train" / "subtype2").glob("*_0000.nii.gz"))[:3], "validation": sorted((REAL_CT / "validation" / "subtype2").glob("*_0000.nii.gz"))[:1]}
    for split, images in picks.items():
        folder = root / split / "subtype2"
        folder.mkdir(parents=True)
        for image in images:
            mask = image.with_name(image.name.replace("_0000.nii.gz", ".nii.gz"))
            (folder / image.name).symlink_to(image)
            (folder / mask.name).symlink_to(mask)
    (root / "test").mkdir()
    test_image = sorted((REAL_CT / "test").glob("*_0000.nii.gz"))[0]
    (root / "test" / test_image.name).symlink_to(test_image)
    return root


def test_real_cases_train_predict_and_evaluate(real_quiz: Path, manifest, tmp_path: Path, monkeypatch) -> None:
    before = snapshot(REAL_CT)
    paths = ProfilePaths(raw=real_quiz, work=tmp_path / "work", test_answers=None)
    for key, value in nnunet_environment(paths, "cpu").items():  # monkeypatch restores what other tests set
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    workspace = Workspace(manifest, paths, CPU_PLANS)
    preprocessing = prepare(workspace, {"cpu_plan": {"patch_size": [16, 32, 32], "max_features": 32, "spacing": [3.0, 2.0, 2.0]}, "num_processes": 2}).preprocessing
    assert preprocessing.summary["spacing"] == [3.0, 2.0, 2.0] and preprocessing.summary["data_identifier"] == f"{CPU_PLANS}_3d_fullres"

    settings = MultitaskSettings(num_epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1, initial_lr=1e-3, case_val_every=1,
                                 final_validation_mirroring=False, schedule=LossSchedule(phase1_epochs=1, ramp_epochs=1), head=HeadConfig(pooling="lesion"),
                                 deployed_check_cases=0)  # one subtype: the estimator check compares nothing here
    result = train(workspace, settings, device="cpu")
    metrics = pd.read_csv(result.metrics_file)
    # one subtype only: no macro-F1 (NaN, not a flattering 1.0), and the criterion is the segmentation alone
    assert metrics["val_macro_f1"].isna().all()
    assert np.allclose(metrics["val_criterion"], metrics["ema_fg_dice"])
    assert (result.output_folder / PP_PICKLE).is_file() and result.postprocessing == result.output_folder / PP_JSON

    from pancreas_multitask.inference.predictor import CSV_NAME, UNPROCESSED, make_predictor, predict_cases

    predictor = make_predictor(result.output_folder.parent, "fast", "cpu")
    assert predictor.postprocessing_source == result.output_folder / PP_PICKLE
    for split in ("validation", "test"):
        out = tmp_path / "predictions" / split
        (case,) = workspace.cases(split)
        case_id, image = case.case_id, case.image
        report = predict_cases(predictor, [(case_id, image)], out)
        assert len(report.predicted) == 1 and not report.failed
        source, mask = nib.load(str(image)), nib.load(str(out / f"{case_id}.nii.gz"))
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-3)  # the input's own geometry
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
        assert (out / UNPROCESSED / f"{case_id}.nii.gz").is_file()  # kept for the before/after Dice
        assert len(pd.read_csv(out / CSV_NAME)) == 1

    validation = tmp_path / "predictions" / "validation"
    evaluated = evaluate_folder(workspace.ground_truth("validation")[0], validation, validation / CSV_NAME, tmp_path / "eval", unprocessed_folder=validation / UNPROCESSED)
    summary = evaluated.summary
    assert summary["classification"] is None and "one-class set" in summary["classification_not_assessable"]
    assert summary["targets"]["macro_f1"]["value"] is None and summary["targets"]["macro_f1"]["verdict"] == "not assessable"
    assert summary["targets"]["dsc_pancreas"]["verdict"] == "undecided"  # one validation case decides nothing
    assert not math.isnan(summary["segmentation"]["dsc_pancreas"]["mean"])
    assert set(summary["postprocessing"]["dsc_pancreas"]) == {"with", "without"}
    assert snapshot(REAL_CT) == before  # the shared real data is only read

"""A short CPU training on a small phantom really learns: losses fall, case-level F1 beats chance."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from pancreas_multitask.dataset.phantom import PhantomConfig, ensure_phantom
from pancreas_multitask.experiment_planning.plans import CPU_PLANS
from pancreas_multitask.experiment_planning.prepare import prepare
from pancreas_multitask.workspace import Workspace
from pancreas_multitask.manifest import ProfilePaths
from pancreas_multitask.runtime import nnunet_environment
from pancreas_multitask.training.train import train
from pancreas_multitask.model.settings import HeadConfig, LossSchedule, MultitaskSettings

# subtypes at well-separated contrasts: this checks that the machinery learns a strong signal in minutes,
# not how hard the calibrated phantom is (the demo measures that, README)
SMALL = PhantomConfig(train=(8, 8, 8), validation=(5, 5, 5), test=0, shape=(20, 36, 44), spacing=(3.0, 2.0, 2.0), seed=3, separable_subtypes=True)


def test_short_training_learns(manifest, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "phantom"
    ensure_phantom(root / "quiz", root / "answers", SMALL)
    paths = ProfilePaths(raw=root / "quiz", work=tmp_path / "work", test_answers=root / "answers")
    for key, value in nnunet_environment(paths, "cpu").items():  # monkeypatch restores what other tests set
        monkeypatch.setenv(key, value)
    prepare(Workspace(manifest, paths, CPU_PLANS), {"cpu_plan": {"patch_size": [16, 32, 32], "max_features": 32}, "num_processes": 2})
    # after planning (nnU-Net sizes its thread pool from this): augmentation in this process, seeded by the trainer,
    # so the run is the same on every machine instead of depending on worker scheduling
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    settings = MultitaskSettings(
        num_epochs=36, iterations_per_epoch=8, val_iterations_per_epoch=2, initial_lr=2e-3, head_lr_factor=2.0, cls_patches_showing_structure=False,
        case_val_every=3, patience=100, schedule=LossSchedule(phase1_epochs=5, ramp_epochs=10), head=HeadConfig(pooling="lesion", dropout=0.0),
        deployed_check_cases=0, calibrate=False,  # tests/test_trainer.py checks the estimator agreement and the calibration
    )
    result = train(Workspace(manifest, paths, CPU_PLANS), settings, device="cpu", final_validation=False)
    frame = pd.read_csv(result.metrics_file)
    first, last = frame.head(3), frame.tail(10)
    assert last["train_seg_losses"].mean() < first["train_seg_losses"].mean() - 0.2  # Dice+BCE starts near 0.6
    assert last["train_cls_losses"].mean() < 0.7 * math.log(3)  # cross-entropy of a uniform guess is ln 3
    evaluations = frame.loc[frame["epoch"] % settings.case_val_every == 0, "val_macro_f1"]
    assert evaluations.tail(3).mean() >= 0.45  # one class for all scores 0.17, random guessing about 0.33
    assert last["pseudo_dice_whole_pancreas"].mean() > 0.4  # from about 0.2 after the first epoch

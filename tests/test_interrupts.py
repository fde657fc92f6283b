"""Hard interrupts (SIGKILL, as a preempted node or the OOM killer does it) in the middle of a stage, then the
same stage again: it finishes, leaves no half-written file, and the raw folder stays byte-identical.

Here: conversion (killed inside a file copy), preprocessing, training (resumed from checkpoint_latest).
Inference and evaluation have theirs beside their other tests (tests/test_predictor.py, tests/test_evaluation.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from pancreas_multitask.dataset.phantom import PhantomConfig, ensure_phantom
from pancreas_multitask.experiment_planning.plans import CPU_PLANS
from pancreas_multitask.model.folders import fold_folder, model_folder
from pancreas_multitask.runtime import nnunet_environment

from conftest import MANIFEST, REPO, snapshot

CONVERT = """
import os, shutil, signal, sys
from pathlib import Path
from pancreas_multitask.dataset.scan import scan_raw
from pancreas_multitask.experiment_planning.dataset_conversion import convert_dataset
from pancreas_multitask.manifest import load_manifest

copyfile, copies = shutil.copyfile, []

def copy_half_then_die(source, target, **kwargs):
    copies.append(source)
    if len(copies) == int(sys.argv[4]):  # half of this image's bytes are on disk when the process dies
        data = Path(source).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return copyfile(source, target, **kwargs)

if __name__ == "__main__":
    raw, out, manifest = Path(sys.argv[1]), Path(sys.argv[2]), load_manifest(Path(sys.argv[3]))
    if int(sys.argv[4]):
        shutil.copyfile = copy_half_then_die
    print(convert_dataset(scan_raw(raw, manifest).cases, manifest, out).summary(), flush=True)
"""


def test_conversion_killed_inside_a_copy_finishes_on_the_rerun(tiny_phantom: Path, tmp_path: Path) -> None:
    raw, out = tiny_phantom / "quiz", tmp_path / "nnUNet_raw"
    before = snapshot(raw)
    script = tmp_path / "convert.py"
    script.write_text(CONVERT)
    command = [sys.executable, str(script), str(raw), str(out), str(REPO / "data_manifest.yaml")]
    killed = subprocess.run([*command, "4"], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    dataset = out / "Dataset501_PancreasQuiz"
    assert list(dataset.rglob(".tmp.*")), "the kill should leave a half-written temporary"
    assert not (dataset / "conversion.json").exists()

    done = subprocess.run([*command, "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sources = sorted(raw.rglob("*_0000.nii.gz"))
    assert f"converted {len(sources)}," in done.stdout
    assert not list(dataset.rglob(".*")), "leftover temporaries (nnU-Net would read them as cases)"
    for source in sources:
        split_folder = "imagesTs" if source.parent.name == "test" else "imagesTr"
        assert (dataset / split_folder / source.name).read_bytes() == source.read_bytes()
    for label in (dataset / "labelsTr").glob("*.nii.gz"):
        nib.load(str(label)).get_fdata()  # whole
    assert len(list((dataset / "labelsTr").glob("*.nii.gz"))) == len(list((dataset / "imagesTr").glob("*.nii.gz")))
    assert snapshot(raw) == before


TRAIN = """
import sys
from pathlib import Path
from pancreas_multitask.experiment_planning.plans import CPU_PLANS
from pancreas_multitask.manifest import ProfilePaths, load_manifest
from pancreas_multitask.model.settings import MultitaskSettings
from pancreas_multitask.training.train import train
from pancreas_multitask.workspace import Workspace

if __name__ == "__main__":
    paths = ProfilePaths(raw=Path(sys.argv[1]), work=Path(sys.argv[2]), test_answers=None, results=Path(sys.argv[4]))
    settings = MultitaskSettings(num_epochs=6, save_every=1, iterations_per_epoch=2, val_iterations_per_epoch=1, case_val_every=2, initial_lr=1e-3, deployed_check_cases=0)
    result = train(Workspace(load_manifest(Path(sys.argv[3])), paths, CPU_PLANS), settings, device="cpu", resume=True, final_validation=False)
    print("trained:", result.stop_reason, flush=True)
"""


def test_training_killed_mid_epoch_resumes_from_checkpoint_latest(tiny_prepared, tmp_path: Path) -> None:
    """02_train's call (resume=True), killed after a few epochs, then the same call: it goes on, nothing repeated or lost."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    results = tmp_path / "results"
    env = {**os.environ, **nnunet_environment(tiny_prepared, "cpu"), "nnUNet_results": str(results), "nnUNet_n_proc_DA": "0"}
    command = [sys.executable, str(script), str(tiny_prepared.raw), str(tiny_prepared.work), str(REPO / "data_manifest.yaml"), str(results)]
    fold = fold_folder(model_folder(results, MANIFEST.dataset_name, CPU_PLANS), 0)
    metrics = fold / "training_metrics.csv"
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while first.poll() is None and time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) > 3):
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "training finished before the kill"
    assert (fold / "checkpoint_latest.pth").is_file() and not (fold / "checkpoint_final.pth").exists()
    done_before = pd.read_csv(metrics)
    (fold / ".tmp.checkpoint_latest.pth.killed.pth").write_bytes(b"half a checkpoint")  # what a kill during a checkpoint write leaves

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "trained:" in again.stdout, again.stderr[-3000:]
    frame = pd.read_csv(metrics)
    assert frame["epoch"].tolist() == list(range(6))  # every epoch once
    kept = min(len(done_before), 3)
    assert frame["train_losses"].iloc[:kept].tolist() == pytest.approx(done_before["train_losses"].iloc[:kept].tolist())
    logs = sorted(fold.glob("training_log_*.txt"))
    assert len(logs) == 2 and "Epoch 0\n" not in logs[1].read_text()  # the re-run resumed, it did not start over
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "training_done.json").is_file()
    assert not list(fold.glob(".tmp.*"))

PREPARE = """
import os, sys
from pathlib import Path
from pancreas_multitask.experiment_planning.plans import CPU_PLANS
from pancreas_multitask.experiment_planning.prepare import prepare
from pancreas_multitask.workspace import Workspace
from pancreas_multitask.manifest import ProfilePaths, load_manifest
from pancreas_multitask.experiment_planning.plans import CPU_PLANS
from pancreas_multitask.model.folders import fold_folder, model_folder
from pancreas_multitask.runtime import nnunet_environment

if __name__ == "__main__":
    raw, work, manifest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    paths = ProfilePaths(raw=raw, work=work, test_answers=None)
    os.environ.update(nnunet_environment(paths, "cpu"))
    prepare(Workspace(load_manifest(manifest), paths, CPU_PLANS), {"cpu_plan": {"patch_size": [16, 32, 32], "max_features": 32}, "num_processes": 1})
    print("prepared", flush=True)
"""


SMALL = PhantomConfig(train=(2, 2, 2), validation=(1, 1, 1), test=1, shape=(16, 28, 32), spacing=(3.0, 2.0, 2.0), seed=5)


def test_prepare_killed_during_preprocessing_resumes_there(tmp_path: Path) -> None:
    """SIGKILL while nnU-Net preprocesses: the re-run keeps the plans it made and preprocesses again, every case once."""
    ensure_phantom(tmp_path / "phantom" / "quiz", tmp_path / "phantom" / "answers", SMALL)
    raw, work = tmp_path / "phantom" / "quiz", tmp_path / "work"
    before = snapshot(raw)
    script = tmp_path / "prepare_case.py"
    script.write_text(PREPARE)
    command = [sys.executable, str(script), str(raw), str(work), str(REPO / "data_manifest.yaml")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "lib"), os.environ.get("PYTHONPATH", "")])}
    preprocessed = work / "nnUNet_preprocessed" / "Dataset501_PancreasQuiz"
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while first.poll() is None and time.monotonic() < deadline and not list(preprocessed.glob("nnUNetPlans_3d_fullres*/*.pkl")):
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # the stage and nnU-Net's worker processes
    first.wait()
    assert first.returncode == -signal.SIGKILL, "prepare finished before the kill"
    plans = preprocessed / "nnUNetResEncUNetMPlans_cpu.json"
    planned = plans.stat().st_mtime_ns
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "prepared" in again.stdout, again.stderr[-2000:]
    cases = sorted(p.name.removesuffix("_0000.nii.gz") for p in (work / "nnUNet_raw" / "Dataset501_PancreasQuiz" / "imagesTr").glob("*_0000.nii.gz"))
    for folder in preprocessed.glob("nnUNetPlans_3d_fullres*"):
        assert sorted(p.stem for p in folder.glob("*.pkl")) == cases, folder  # every case preprocessed, none twice
    assert plans.stat().st_mtime_ns == planned  # resumed at preprocessing: fingerprint and planning not redone
    leftovers = [p for p in (work / "nnUNet_raw").rglob(".tmp.*")]
    assert not leftovers and snapshot(raw) == before

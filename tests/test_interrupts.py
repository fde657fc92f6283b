"""Hard interrupts (SIGKILL, as a preempted node or the OOM killer does it) in the middle of a stage, then the
same stage again: it finishes, leaves no half-written file, and the raw folder stays byte-identical.
Inference has its own (tests/test_predictor.py); training resumes from checkpoint_latest (tests/test_trainer.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pancreas_multitask.dataset.phantom import PhantomConfig, ensure_phantom

from conftest import REPO, snapshot

PREPARE = """
import os, sys
from pathlib import Path
from pancreas_multitask.experiment_planning.plans import CPU_PLANS, ReducedPlan
from pancreas_multitask.experiment_planning.prepare import prepare
from pancreas_multitask.manifest import ProfilePaths, load_manifest
from pancreas_multitask.runtime import nnunet_environment

if __name__ == "__main__":
    raw, work, manifest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    paths = ProfilePaths(raw=raw, work=work, test_answers=None)
    os.environ.update(nnunet_environment(paths, "cpu"))
    prepare(load_manifest(manifest), paths, CPU_PLANS, num_processes=1, reduced=ReducedPlan(patch_size=(16, 32, 32), max_features=32))
    print("prepared", flush=True)
"""


SMALL = PhantomConfig(train=(2, 2, 2), validation=(1, 1, 1), test=1, shape=(16, 28, 32), spacing=(3.0, 2.0, 2.0), seed=5)


@pytest.mark.slow  # about 70 s (nnU-Net's planning and preprocessing, twice): outside CI's 20-minute budget
def test_prepare_killed_during_preprocessing_finishes_on_the_rerun(tmp_path: Path) -> None:
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
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "prepared" in again.stdout, again.stderr[-2000:]
    cases = sorted(p.name.removesuffix("_0000.nii.gz") for p in (work / "nnUNet_raw" / "Dataset501_PancreasQuiz" / "imagesTr").glob("*_0000.nii.gz"))
    for folder in preprocessed.glob("nnUNetPlans_3d_fullres*"):
        assert sorted(p.stem for p in folder.glob("*.pkl")) == cases, folder  # every case preprocessed, none twice
    leftovers = [p for p in (work / "nnUNet_raw").rglob(".tmp.*")]
    assert not leftovers and snapshot(raw) == before

"""The GPU check's CPU dry run: ``benchmarks/gpu_check.sh dry-run`` runs all four parts end to end, as the
device call will, and writes JSON a reviewer can read (a few real cases, the reduced plan for b-d)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

REAL_CT = Path(os.environ.get("PANCREAS_REAL_CT_DIR", REPO.parent / "shared" / "data" / "real_ct"))


@pytest.mark.slow  # about 2 min; run before a device call: ./run_tests.sh -m slow -k gpu_check
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    if not (REAL_CT / "train" / "subtype2").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real CT not found in {REAL_CT}; the GPU check's dry run needs it")
        pytest.skip(f"real CT not found in {REAL_CT}")
    # the device has no papermill, Jupyter or MONAI: the dry run must not need them either
    device_like = tmp_path / "device_like"
    device_like.mkdir()
    (device_like / "sitecustomize.py").write_text("import sys\nfor name in ('papermill', 'nbformat', 'nbconvert', 'nbclient', 'jupyter_client', 'ipywidgets', 'monai'):\n    sys.modules[name] = None\n")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "PANCREAS_REAL_CT_DIR": str(REAL_CT), "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(device_like), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    parts = {name: json.loads((out / f"{name}.json").read_text()) for name in ("a_planning", "b_train_speed", "c_training", "d_inference_speed")}
    assert all(part["dry_run"] and part["git_revision"] for part in parts.values())

    planning = parts["a_planning"]["resenc_m"]  # nnU-Net's ResEncM plan of the real CT, not the reduced one
    assert len(planning["patch_size"]) == 3 and planning["batch_size"] >= 2 and all(p % 8 == 0 for p in planning["patch_size"])

    speed = parts["b_train_speed"]
    for key in ("seconds_per_iteration", "seconds_per_epoch"):
        assert set(speed[key]) == {"nnUNetTrainer", "nnUNetTrainerMultitask"} and min(speed[key].values()) > 0
    assert speed["settings"]["pooling"] == "lesion"  # the profiles' pooling, not the trainer's default

    training = parts["c_training"]
    assert training["validation_cases"] == 1 and set(training["full_volume_dice"]) == {"whole_pancreas", "lesion"}

    rows = {row["setting"]: row for row in parts["d_inference_speed"]["rows"]}
    assert {"nnunet_defaults", "accurate", "fast", "fastest"} <= set(rows)
    assert rows["fast"]["rule_compliant"] and not rows["fastest"]["rule_compliant"]
    assert min(rows["fast"]["min_dice_vs_nnunet"].values()) >= 0.999  # (also true of two empty masks; test_predictor compares logits)
    assert abs(sum(rows["fast"]["time_shares"].values()) - 1) < 1e-6
    assert parts["d_inference_speed"]["cases"] == 2 and "| fast | yes |" in (out / "d_inference_speed.md").read_text()

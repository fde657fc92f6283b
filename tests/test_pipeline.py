"""The whole notebook pipeline through the runner with the smoke profile; reduced plans derivation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pancreas_multitask.experiment_planning.plans import CPU_PLANS, RESENC_M, ReducedPlan, derive_reduced_plans
from pancreas_multitask.runner import run

from pancreas_multitask.runner import discover_notebooks

from conftest import REPO, SMOKE, fake_repo


def _plans(spacing: list[float]) -> dict:
    arch = {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320], "kernel_sizes": [[3, 3, 3]] * 6, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
            "n_blocks_per_stage": [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": [1] * 5}
    config = {"spacing": spacing, "patch_size": [64, 128, 192], "batch_size": 2, "data_identifier": "nnUNetPlans_3d_fullres",
              "architecture": {"network_class_name": "x.ResidualEncoderUNet", "arch_kwargs": arch}}
    return {"plans_name": RESENC_M, "configurations": {"3d_fullres": config, "2d": {}}}


def test_reduced_plans_keep_data_and_shrink_the_network() -> None:
    plans = _plans([2.0, 0.73, 0.73])
    reduced = derive_reduced_plans(plans, ReducedPlan(patch_size=(32, 48, 64)))
    config = reduced["configurations"]["3d_fullres"]
    arch = config["architecture"]["arch_kwargs"]
    assert reduced["plans_name"] == CPU_PLANS and list(reduced["configurations"]) == ["3d_fullres"]
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres" and config["spacing"] == [2.0, 0.73, 0.73]
    assert config["batch_size"] == 2 and max(arch["features_per_stage"]) == 64 and arch["features_per_stage"][0] == 8
    n = arch["n_stages"]
    assert len(arch["strides"]) == len(arch["kernel_sizes"]) == len(arch["n_blocks_per_stage"]) == n
    assert len(arch["n_conv_per_stage_decoder"]) == n - 1
    for axis, size in enumerate(config["patch_size"]):  # the patch is divisible by the total downsampling
        total = 1
        for stride in arch["strides"]:
            total *= stride[axis]
        assert size % total == 0
    assert plans["configurations"]["3d_fullres"]["batch_size"] == 2 and plans["plans_name"] == RESENC_M  # input untouched


def test_a_coarser_reduced_grid_gets_its_own_preprocessed_data() -> None:
    """``cpu_plan.spacing`` (the realct profile): a new grid, so nnU-Net preprocesses it under the plan's own identifier."""
    plans = _plans([2.0, 0.73, 0.73])
    plans["configurations"]["3d_fullres"]["median_image_size_in_voxels"] = [64, 120, 180]
    config = derive_reduced_plans(plans, ReducedPlan(patch_size=(32, 64, 80), spacing=(2.5, 1.5, 1.5)))["configurations"]["3d_fullres"]
    assert config["spacing"] == [2.5, 1.5, 1.5] and config["data_identifier"] == f"{CPU_PLANS}_3d_fullres"
    assert config["median_image_size_in_voxels"] == [51.2, 58.4, 87.6]
    assert config["architecture"]["arch_kwargs"]["strides"][-1] == [1, 2, 2]  # topology from nnU-Net for the new spacing
    assert ReducedPlan.from_dict({"patch_size": [32, 64, 80], "spacing": [2.5, 1.5, 1.5]}).spacing == (2.5, 1.5, 1.5)


@pytest.mark.notebook
def test_smoke_pipeline_of_all_notebooks(tmp_path: Path, capsys) -> None:
    repo = fake_repo(tmp_path, tuple(p.name for p in discover_notebooks(REPO / "notebooks")))
    assert run(repo, "smoke") == 0
    printed = capsys.readouterr().out
    pre = repo / "work" / "nnUNet_preprocessed" / "Dataset501_PancreasQuiz"
    phantom = SMOKE["phantom"]
    n_labelled = sum(phantom["train"]) + sum(phantom["validation"])
    for name in (f"{RESENC_M}.json", f"{CPU_PLANS}.json", "dataset_fingerprint.json", "dataset.json", "subtypes.csv"):
        assert (pre / name).is_file(), name
    assert len(list((pre / "nnUNetPlans_3d_fullres").glob("*_seg.b2nd"))) == n_labelled
    (fold,) = json.loads((pre / "splits_final.json").read_text())
    assert len(fold["train"]) == sum(phantom["train"]) and len(fold["val"]) == sum(phantom["validation"])
    assert all(case.startswith("quiz_") and case.count("_") == 2 for case in fold["train"] + fold["val"])
    summary = json.loads((repo / "work" / "prepare.json").read_text())
    assert summary["plan"]["patch_size"] == SMOKE["cpu_plan"]["patch_size"] and summary["label_mode"] == "regions"
    (run_dir,) = (repo / "reports" / "runs").iterdir()
    page = (run_dir / "01_prepare.html").read_text()
    assert "nnUNetResEncUNetMPlans_cpu" in page and "percentile_99_5" in page and "data:image/png;base64" in page

    _check_training(repo, run_dir)
    _check_inference(repo, run_dir)
    _check_evaluation(repo, run_dir, printed)

    # the prepare CLI with the same profile builds exactly what run_all.sh built: it finds everything up to date
    plans_bytes = (pre / f"{CPU_PLANS}.json").read_bytes()
    cli = subprocess.run([sys.executable, "-m", "pancreas_multitask.experiment_planning", "--profile", "smoke"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "up to date" in cli.stdout and "preprocessing up to date" in cli.stdout, cli.stdout
    summary = json.loads((repo / "work" / "prepare.json").read_text())
    assert summary["conversion"]["converted"] == 0 and summary["preprocessing_skipped"] is True
    assert (pre / f"{CPU_PLANS}.json").read_bytes() == plans_bytes and summary["plan"]["patch_size"] == SMOKE["cpu_plan"]["patch_size"]


def _check_training(repo: Path, run_dir: Path) -> None:
    summary = json.loads((repo / "work" / "train.json").read_text())
    model = Path(summary["model_folder"])
    assert model.name == "fold_0" and model.parent.name == "nnUNetTrainerMultitask__nnUNetResEncUNetMPlans_cpu__3d_fullres"
    for name in ("checkpoint_best.pth", "checkpoint_final.pth", "training_metrics.csv", "multitask_settings.json", "validation/summary.json", "postprocessing.pkl"):
        assert (model / name).is_file(), name
    assert summary["selected checkpoint"] == "checkpoint_best.pth" and summary["selected on"] == f"fold 0: validation ({sum(SMOKE['phantom']['validation'])} cases)"
    assert 0.0 <= summary["full-volume Dice whole_pancreas (val, nnU-Net)"] <= 1.0
    # the estimator check on the profile's 2 validation cases, spread over the subtypes (the first two share one)
    agreement = json.loads((model / "estimator_agreement.json").read_text())
    assert agreement["cases"] == SMOKE["trainer_extra"]["deployed_check_cases"] == 2
    assert len({case["true"] for case in agreement["per_case"].values()}) == 2 and agreement["macro_f1_accuracy"] is not None
    assert summary["training pass vs deployed estimator (same subtype, val)"].endswith("/2 (fast)")
    calibration = json.loads((model / "subtype_calibration.json").read_text())  # fitted on all validation cases
    assert calibration["cases"] == sum(SMOKE["phantom"]["validation"]) and "validation" in calibration["fitted_on"]
    assert summary["subtype temperature (fitted on the selection split)"].startswith(f"{calibration['temperature']:.3f}")
    (exported,) = (repo / "work" / "exports").glob("*.zip")
    assert any(name.endswith("fold_0/subtype_calibration.json") for name in zipfile.ZipFile(exported).namelist())
    page = (run_dir / "02_train.html").read_text()
    assert "case-level macro-F1 (val)" in page and "data:image/png;base64" in page


def _check_inference(repo: Path, run_dir: Path) -> None:
    summary = json.loads((repo / "work" / "inference.json").read_text())
    phantom = SMOKE["phantom"]
    expected = {"validation": sum(phantom["validation"]), "test": phantom["test"]}
    assert {split: counts["predicted"] for split, counts in summary["counts"].items()} == expected
    assert summary["postprocessing_file"].endswith("fold_0/postprocessing.pkl") and summary["postprocessing"] != "none"
    for split, n in expected.items():
        folder = Path(summary["outputs"][split])
        assert len(list(folder.glob("quiz_*.nii.gz"))) == n
        assert len((folder / "subtype_results.csv").read_text().splitlines()) == n + 1
    page = (run_dir / "03_inference.html").read_text()
    assert "prob_subtype0" in page and "data:image/png;base64" in page


def _check_evaluation(repo: Path, run_dir: Path, printed: str) -> None:
    from pancreas_multitask.evaluation.report import fmt, fmt_ci

    report = run_dir / "evaluation.html"
    assert f"report: {report.relative_to(repo)}" in printed  # the runner's last line names the report
    phantom = SMOKE["phantom"]
    html = report.read_text()
    for split, n in (("test", phantom["test"]), ("validation", sum(phantom["validation"]))):
        metrics = json.loads((run_dir / "evaluation" / split / "metrics.json").read_text())
        assert metrics["n_ground_truth_cases"] == n and not metrics["missing_predictions"]
        assert len((run_dir / "evaluation" / split / "per_case.csv").read_text().splitlines()) == n + 1
    metrics = json.loads((run_dir / "evaluation" / "test" / "metrics.json").read_text())  # the main report is the held-out split
    for target in metrics["targets"].values():  # 3 test cases: every target undecided, said so beside its CI
        assert fmt(target["value"]) in html and target["verdict"] == "undecided" and f'<span class="undecided">undecided</span>' in html
    assert 'id="chance-line"' in html and 'alt="prediction histogram"' in html and metrics["classification"]["chance"]["permutation_null"]["permutations"] == 2000
    assert "chosen on these cases" not in html  # the test split chose nothing
    validation = json.loads((run_dir / "evaluation" / "validation" / "metrics.json").read_text())
    assert all(t["label"].endswith("(chosen on these cases)") for t in validation["targets"].values())
    assert "validation" in html and "data:image/png;base64" in html
    calibration = metrics["classification"]["calibration"]  # ECE of the CSV's calibrated probabilities and of those before
    assert {"calibrated", "uncalibrated"} <= set(calibration) and 'alt="reliability diagram"' in html
    assert f"{fmt(calibration['uncalibrated']['ece'])}" in html and f"{fmt(calibration['calibrated']['ece'])}" in html
    assert "temperature" in html and "Checkpoint, postprocessing and subtype temperature chosen on: validation" in html
    assert 'id="data-note"' in html and "Synthetic phantom data" in html  # the first screen says these are not CT results
    assert 'id="surface"' in html and metrics["lesion_detection"]["n"] == phantom["test"] and metrics["surface"]["hd95_lesion"]["n"] == phantom["test"]
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html)  # opens offline
    assert (run_dir / "evaluation_validation.html").is_file()
    index = (run_dir / "index.html").read_text()
    assert "href='evaluation.html'" in index and "href='evaluation_validation.html'" in index
    page = (run_dir / "04_evaluate.html").read_text()
    assert "data:image/png;base64" in page and "subtype macro-F1" in page  # static viewer montage and the target table
    assert f"{fmt(metrics['targets']['macro_f1']['value'])} {fmt_ci(metrics['targets']['macro_f1']['ci95'])}: {metrics['targets']['macro_f1']['verdict']}" in page

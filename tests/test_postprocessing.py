"""The safeguard on nnU-Net's postprocessing choice: on a small selection split a step is kept only when its paired
gain clears its 95 % interval and it lowers no region (``postprocessing.keep_decision``)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pancreas_multitask.postprocessing import PP_CASES, PP_PICKLE, decision_line, determine_for_fold, keep_decision, load_postprocessing

CASES = [f"quiz_0_{i:03d}" for i in range(8)]


def _write(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.eye(4)), path)


def _fold(tmp_path: Path, predicted_and_truth) -> tuple[Path, Path]:
    """A model folder with one fold's full-volume validation predictions, and the reference folder."""
    model, gt = tmp_path / "model", tmp_path / "gt"
    (model / "fold_0" / "validation").mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    (model / "plans.json").write_text("{}")
    for i, case in enumerate(CASES):
        predicted, truth = predicted_and_truth(i)
        _write(model / "fold_0" / "validation" / f"{case}.nii.gz", predicted)
        _write(gt / f"{case}.nii.gz", truth)
    return model / "fold_0", gt


def _nnunet_keeps_the_largest_component(monkeypatch) -> None:
    """nnU-Net's determination replaced by its usual choice on this project's labels: keep the largest foreground component."""
    import nnunetv2.postprocessing.remove_connected_components as rcc

    def determine(folder_predictions, folder_ref, *args, **kwargs):
        chain = ([rcc.remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": [1, 2]}])
        (Path(folder_predictions) / "postprocessing.pkl").write_bytes(pickle.dumps(chain))
        (Path(folder_predictions) / "postprocessing.json").write_text("{}")

    monkeypatch.setattr(rcc, "determine_postprocessing", determine)


def _gland(i: int) -> np.ndarray:
    truth = np.zeros((24, 24, 24), np.uint8)
    truth[4:12 + i % 3, 4:12, 4:12] = 1
    truth[6:9, 6:9, 6:9] = 2
    return truth


def test_a_step_that_clears_its_interval_is_kept(tmp_path: Path, monkeypatch) -> None:
    def spurious_blob(i: int):  # the prediction is the truth plus a separate false-positive blob: removing it helps every case
        truth = _gland(i)
        predicted = truth.copy()
        predicted[16:19 + i % 2, 16:19, 16:19] = 1
        return predicted, truth

    fold, gt = _fold(tmp_path, spurious_blob)
    _nnunet_keeps_the_largest_component(monkeypatch)
    determine_for_fold(fold, gt, CASES, num_processes=1, chosen_on="validation")
    record = json.loads((fold / PP_CASES).read_text())["safeguard"]
    assert record["kept"] and record["gains"]["dsc_pancreas"]["ci95"][0] > 0 and record["gains"]["dsc_lesion"]["mean"] == 0
    assert load_postprocessing(fold / PP_PICKLE)[0]  # nnU-Net's chain stays
    assert decision_line(fold).startswith("keep the largest connected component") and "kept: it raises dsc_pancreas" in decision_line(fold)


def test_a_step_that_lowers_a_region_is_dropped(tmp_path: Path, monkeypatch) -> None:
    def lesion_apart(i: int):  # the lesion lies apart from the gland, truth and prediction alike: keeping the largest component deletes it
        truth = _gland(i)
        truth[truth == 2] = 1
        truth[16:20, 16:20, 16:19 + i % 2] = 2
        return truth.copy(), truth

    fold, gt = _fold(tmp_path, lesion_apart)
    _nnunet_keeps_the_largest_component(monkeypatch)
    determine_for_fold(fold, gt, CASES, num_processes=1, chosen_on="validation")
    record = json.loads((fold / PP_CASES).read_text())["safeguard"]
    assert not record["kept"] and record["gains"]["dsc_lesion"]["mean"] == pytest.approx(-1.0)
    assert load_postprocessing(fold / PP_PICKLE) == ([], [])  # the masks stay as predicted
    assert decision_line(fold).startswith("none kept: nnU-Net chose to keep the largest connected component") and "dsc_lesion (-1.0000)" in decision_line(fold)


def test_the_decision_rule() -> None:
    def gain(mean: float, low: float, high: float) -> dict:
        return {"mean": mean, "ci95": [low, high]}

    assert keep_decision({"dsc_pancreas": gain(0.02, 0.005, 0.04), "dsc_lesion": gain(0.0, 0.0, 0.0)})[0]
    within, why = keep_decision({"dsc_pancreas": gain(0.02, -0.01, 0.05), "dsc_lesion": gain(0.0, 0.0, 0.0)})
    assert not within and "within the 95 % interval" in why
    lowered, why = keep_decision({"dsc_pancreas": gain(0.03, 0.01, 0.05), "dsc_lesion": gain(-0.001, -0.02, 0.01)})
    assert not lowered and "dsc_lesion (-0.0010)" in why

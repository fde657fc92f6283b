"""Conversion to nnU-Net raw: labels, geometry, dataset.json, subtype table, read-only raw, idempotence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pancreas_multitask.dataset.scan import DataValidationError, scan_raw
from pancreas_multitask.experiment_planning.dataset_conversion import assert_test_unseen, convert_dataset
from pancreas_multitask.experiment_planning.subtype_table import read_subtype_table

from conftest import TINY, snapshot


@pytest.fixture()
def converted(tiny_phantom: Path, manifest, tmp_path: Path):
    before = snapshot(tiny_phantom / "quiz")
    scan = scan_raw(tiny_phantom / "quiz", manifest)
    report = convert_dataset(scan.cases, manifest, tmp_path / "nnUNet_raw")
    assert snapshot(tiny_phantom / "quiz") == before  # raw data untouched
    return scan, report


def test_layout_and_dataset_json(converted, manifest) -> None:
    scan, report = converted
    out = report.dataset_dir
    assert out.name == "Dataset501_PancreasQuiz"
    n_train = sum(TINY.train) + sum(TINY.validation)
    assert len(list((out / "imagesTr").iterdir())) == len(list((out / "labelsTr").iterdir())) == n_train
    assert len(list((out / "imagesTs").iterdir())) == TINY.test
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "whole_pancreas": [1, 2], "lesion": 2}
    assert list(dataset["labels"]) == ["background", "whole_pancreas", "lesion"]  # region i -> regions_class_order[i]
    assert dataset["regions_class_order"] == [1, 2]
    assert dataset["numTraining"] == n_train and dataset["channel_names"] == {"0": "CT"}


def test_labels_rounded_uint8_on_the_image_grid(converted) -> None:
    scan, report = converted
    for case in (c for c in scan.cases if c.mask is not None):
        label = sitk.ReadImage(str(report.dataset_dir / "labelsTr" / f"{case.case_id}.nii.gz"))
        image = sitk.ReadImage(str(case.image))
        assert label.GetPixelID() == sitk.sitkUInt8
        assert label.GetOrigin() == image.GetOrigin()
        assert label.GetSpacing() == image.GetSpacing()
        assert label.GetDirection() == image.GetDirection()
        raw = np.asarray(nib.load(str(case.mask)).dataobj)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), np.rint(raw).astype(np.uint8).transpose(2, 1, 0))
        converted_image = report.dataset_dir / "imagesTr" / f"{case.case_id}_0000.nii.gz"
        assert converted_image.read_bytes() == case.image.read_bytes()


def test_subtype_table_is_complete(converted, manifest) -> None:
    scan, report = converted
    table = read_subtype_table(report.dataset_dir / "subtypes.csv", len(manifest.subtypes))
    expected = {c.case_id: (c.subtype, c.split) for c in scan.cases if c.subtype is not None}
    assert table == expected
    assert not any(c.case_id in table for c in scan.cases if c.split == "test")


def test_second_run_does_no_work_and_changes_are_picked_up(converted, manifest, tmp_path: Path, tiny_phantom: Path) -> None:
    scan, report = converted
    stamps = {p: p.stat().st_mtime_ns for p in report.dataset_dir.rglob("*") if p.is_file()}
    again = convert_dataset(scan.cases, manifest, tmp_path / "nnUNet_raw")
    assert not again.did_work and "nothing to do" in again.summary()
    assert {p: p.stat().st_mtime_ns for p in report.dataset_dir.rglob("*") if p.is_file()} == stamps

    raw = tmp_path / "quiz"
    shutil.copytree(tiny_phantom / "quiz", raw)
    changed = next(c for c in scan_raw(raw, manifest).cases if c.mask is not None)
    img = nib.load(str(changed.mask))
    data = np.asarray(img.dataobj).copy()
    lesion = np.argwhere(np.rint(data) == 2)
    data[tuple(lesion[: len(lesion) // 2].T)] = 1  # a corrected mask: half the lesion was pancreas
    nib.save(nib.Nifti1Image(data, img.affine), str(changed.mask))
    dropped = next(c for c in scan_raw(raw, manifest).cases if c.split == "test")
    dropped.image.unlink()
    report2 = convert_dataset(scan_raw(raw, manifest).cases, manifest, tmp_path / "nnUNet_raw")
    assert report2.removed == [dropped.case_id]
    assert not (report.dataset_dir / "imagesTs" / dropped.image.name).exists()
    # every case's source path changed (new raw folder), so all are redone; the corrected mask shows
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(report.dataset_dir / "labelsTr" / f"{changed.case_id}.nii.gz")))
    assert (label == 2).sum() == len(lesion) - len(lesion) // 2
    report3 = convert_dataset(scan_raw(raw, manifest).cases, manifest, tmp_path / "nnUNet_raw")
    assert not report3.did_work


def test_plain_label_mode(tiny_phantom: Path, manifest, tmp_path: Path) -> None:
    report = convert_dataset(scan_raw(tiny_phantom / "quiz", manifest).cases, manifest, tmp_path, label_mode="plain")
    dataset = json.loads((report.dataset_dir / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "pancreas": 1, "lesion": 2}
    assert "regions_class_order" not in dataset


def test_bad_cases_stop_or_are_skipped(raw_copy: Path, manifest, tmp_path: Path) -> None:
    broken = sorted((raw_copy / "train" / "subtype1").glob("*_0000.nii.gz"))[0]
    broken.write_bytes(b"garbage")
    with pytest.raises(DataValidationError, match=str(broken)):
        scan_raw(raw_copy, manifest)
    with pytest.warns(UserWarning, match=str(broken)):
        scan = scan_raw(raw_copy, manifest, on_bad_case="skip")
    report = convert_dataset(scan.cases, manifest, tmp_path / "nnUNet_raw")
    case_id = broken.name.removesuffix("_0000.nii.gz")
    assert case_id not in {p.name.removesuffix(".nii.gz") for p in (report.dataset_dir / "labelsTr").iterdir()}
    assert len(report.converted) == sum(TINY.train) + sum(TINY.validation) + TINY.test - 1


def test_test_cases_never_join_training() -> None:
    with pytest.raises(AssertionError, match="quiz_001"):
        assert_test_unseen(["quiz_0_001", "quiz_001"], ["quiz_001"], "dataset")


def test_real_case_converts_with_hu_and_geometry(real_case_dir: Path, manifest, tmp_path: Path) -> None:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    quiz = tmp_path / "quiz"
    (quiz / "train" / "subtype0").mkdir(parents=True)
    (quiz / "validation").mkdir()
    for name in ("quiz_0_324_0000.nii.gz", "quiz_0_324.nii.gz"):
        shutil.copy(real_case_dir / name, quiz / "train" / "subtype0" / name)
    report = convert_dataset(scan_raw(quiz, manifest).cases, manifest, tmp_path / "nnUNet_raw")
    io = SimpleITKIO()
    data, props = io.read_images([str(report.dataset_dir / "imagesTr" / "quiz_0_324_0000.nii.gz")])
    seg, seg_props = io.read_seg(str(report.dataset_dir / "labelsTr" / "quiz_0_324.nii.gz"))
    hu = nib.load(str(real_case_dir / "quiz_0_324_0000.nii.gz")).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(data[0], hu.transpose(2, 1, 0), atol=0.02)  # scaled int16 -> HU
    assert data[0].min() == pytest.approx(-1030.0, abs=0.02) and data[0].max() == pytest.approx(2356.0, abs=0.02)
    np.testing.assert_allclose(props["spacing"], (3.0, 0.877, 0.877), atol=1e-3)
    assert seg_props["sitk_stuff"] == props["sitk_stuff"]
    assert set(np.unique(seg)) == {0, 1, 2} and seg.shape == data.shape


def test_outputs_are_written_atomically_with_normal_permissions(tmp_path: Path) -> None:
    from pancreas_multitask.io import atomic_path, write_text

    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~_umask()
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.nii.gz") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no half-file, no temp file


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask

"""Scan/validation: one test per kind of bad input, each naming the file; inputs never modified."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pancreas_multitask.dataset.phantom import MASK_QUIRK
from pancreas_multitask.dataset.scan import DataValidationError, scan_raw

from conftest import TINY, break_spacing, snapshot


def _first(raw: Path, kind: str = "image") -> Path:
    pattern = "quiz_*_0000.nii.gz" if kind == "image" else "quiz_?_???.nii.gz"
    return sorted((raw / "train" / "subtype0").glob(pattern))[0]


def _scan_fails(raw: Path, manifest, *fragments: str) -> DataValidationError:
    """Scan must raise; every fragment appears on one problem line; inputs are left untouched."""
    before = snapshot(raw)
    with pytest.raises(DataValidationError) as info:
        scan_raw(raw, manifest)
    assert snapshot(raw) == before
    lines = [str(p) for p in info.value.problems]
    assert any(all(f in line for f in fragments) for line in lines), lines
    return info.value


def test_clean_phantom_scans(tiny_phantom: Path, manifest) -> None:
    result = scan_raw(tiny_phantom / "quiz", manifest)
    assert not result.problems
    frame = result.frame()
    assert len(frame) == sum(TINY.train) + sum(TINY.validation) + TINY.test
    assert (frame[frame.split == "train"].subtype.value_counts().sort_index().tolist()) == list(TINY.train)
    assert frame[frame.split == "test"]["mask"].eq("").all()


def test_image_without_mask(raw_copy: Path, manifest) -> None:
    image = _first(raw_copy)
    (image.parent / image.name.replace("_0000", "")).unlink()
    _scan_fails(raw_copy, manifest, str(image), "image without mask")


def test_mask_without_image(raw_copy: Path, manifest) -> None:
    image = _first(raw_copy)
    image.unlink()
    mask = image.parent / image.name.replace("_0000", "")
    _scan_fails(raw_copy, manifest, str(mask), "mask without image")


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_unreadable_file(raw_copy: Path, manifest, corruption: str) -> None:
    image = _first(raw_copy)
    data = image.read_bytes()
    image.write_bytes(b"not a nifti file at all" * 20 if corruption == "garbage" else data[: len(data) // 3])
    _scan_fails(raw_copy, manifest, str(image), "unreadable")


def test_not_3d(raw_copy: Path, manifest) -> None:
    image = _first(raw_copy)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), str(image))
    _scan_fails(raw_copy, manifest, str(image), "expected a 3D volume")


def test_shape_mismatch(raw_copy: Path, manifest) -> None:
    mask = _first(raw_copy, "mask")
    img = nib.load(str(mask))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine), str(mask))
    _scan_fails(raw_copy, manifest, str(mask), "mask shape", "differs from image shape")


def test_affine_mismatch(raw_copy: Path, manifest) -> None:
    mask = _first(raw_copy, "mask")
    img = nib.load(str(mask))
    affine = img.affine.copy()
    affine[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), str(mask))
    _scan_fails(raw_copy, manifest, str(mask), "mask affine differs")


@pytest.mark.parametrize("which", ["image", "mask"])
def test_non_finite_voxels(raw_copy: Path, manifest, which: str) -> None:
    path = _first(raw_copy, which)
    img = nib.load(str(path))
    data = img.get_fdata(dtype=np.float32)
    data[0, 0, 0] = np.nan
    data[1, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    _scan_fails(raw_copy, manifest, str(path), "2 non-finite voxel(s)")


@pytest.mark.parametrize("value", [1.5, 3.0, -1.0])
def test_mask_values_off_labels(raw_copy: Path, manifest, value: float) -> None:
    mask = _first(raw_copy, "mask")
    img = nib.load(str(mask))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[0, 0, 0] = value
    nib.save(nib.Nifti1Image(data, img.affine), str(mask))
    _scan_fails(raw_copy, manifest, str(mask), "not within 0.001 of a label", f"{value:.6g}")


def test_near_integer_mask_values_are_accepted(raw_copy: Path, manifest) -> None:
    mask = _first(raw_copy, "mask")
    img = nib.load(str(mask))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[data == 1] = MASK_QUIRK
    data[data == 2] = 2.0004
    nib.save(nib.Nifti1Image(data, img.affine), str(mask))
    assert not scan_raw(raw_copy, manifest).problems


@pytest.mark.parametrize("name", ["quiz_0_12_image.nii.gz", "case_0_001_0000.nii.gz", "quiz_0_001_0000.nii"])
def test_file_name_off_pattern(raw_copy: Path, manifest, name: str) -> None:
    stray = raw_copy / "train" / "subtype0" / name
    stray.write_bytes(_first(raw_copy).read_bytes())
    _scan_fails(raw_copy, manifest, str(stray), "does not fit the pattern")


def test_file_name_subtype_disagrees_with_folder(raw_copy: Path, manifest) -> None:
    image = _first(raw_copy)
    moved = raw_copy / "train" / "subtype1" / image.name
    image.rename(moved)
    _scan_fails(raw_copy, manifest, str(moved), "says subtype 0", "folder subtype1")


def test_test_file_name_off_pattern(raw_copy: Path, manifest) -> None:
    stray = raw_copy / "test" / "quiz_0_001_0000.nii.gz"
    stray.write_bytes(_first(raw_copy).read_bytes())
    _scan_fails(raw_copy, manifest, str(stray), "does not fit the test pattern")


def test_subtype_folder_outside_classes(raw_copy: Path, manifest) -> None:
    (raw_copy / "train" / "subtype3").mkdir()
    _scan_fails(raw_copy, manifest, str(raw_copy / "train" / "subtype3"), "not one of the manifest's classes")


@pytest.mark.parametrize("kind", ["image", "mask", "test"])
def test_a_truncated_file_is_named(raw_copy: Path, manifest, kind: str) -> None:
    """A copy that broke off: the first half of the .nii.gz bytes (what SimpleITK would zero-fill)."""
    path = sorted((raw_copy / "test").glob("*_0000.nii.gz"))[0] if kind == "test" else _first(raw_copy, kind)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _scan_fails(raw_copy, manifest, str(path), "unreadable")


def test_missing_raw_folder(tmp_path: Path, manifest) -> None:
    with pytest.raises(DataValidationError, match=f"{tmp_path / 'nope'}: raw data folder does not exist"):
        scan_raw(tmp_path / "nope", manifest)


@pytest.mark.parametrize("content", ["nothing", "empty splits", "another layout"])
def test_a_raw_folder_without_cases_says_what_was_expected(tmp_path: Path, manifest, content: str) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    if content == "empty splits":
        for split in ("train/subtype0", "validation/subtype0", "test"):
            (raw / split).mkdir(parents=True)
    elif content == "another layout":
        (raw / "imagesTr").mkdir()
        (raw / "imagesTr" / "case_001_0000.nii.gz").write_bytes(b"")
    with pytest.raises(DataValidationError) as caught:
        scan_raw(raw, manifest)
    message = str(caught.value)
    assert f"{raw}: no cases found under {raw / 'train'}, {raw / 'validation'}, {raw / 'test'}" in message
    assert manifest.layout.image.pattern in message and manifest.layout.test_image.pattern in message


def test_all_problems_reported_at_once(raw_copy: Path, manifest) -> None:
    image = _first(raw_copy)
    (image.parent / image.name.replace("_0000", "")).unlink()
    (raw_copy / "train" / "subtype9").mkdir()
    bad = sorted((raw_copy / "validation" / "subtype2").glob("*_0000.nii.gz"))[0]
    with gzip.open(bad, "wb") as f:
        f.write(b"\0" * 10)
    error = _scan_fails(raw_copy, manifest, str(image))
    text = str(error)
    assert str(raw_copy / "train" / "subtype9") in text and str(bad) in text
    assert len(error.problems) == 3


def test_skip_policy_keeps_the_good_cases(raw_copy: Path, manifest) -> None:
    image = _first(raw_copy)
    (image.parent / image.name.replace("_0000", "")).unlink()
    with pytest.warns(UserWarning, match="image without mask"):
        result = scan_raw(raw_copy, manifest, on_bad_case="skip")
    case_id = image.name.removesuffix("_0000.nii.gz")
    assert result.skipped == [case_id]
    assert case_id not in set(result.frame().case_id)
    assert len(result.cases) == sum(TINY.train) + sum(TINY.validation) + TINY.test - 1


def test_case_in_two_splits_is_reported_and_left_out(raw_copy: Path, manifest) -> None:
    image = _first(raw_copy)
    mask = image.parent / image.name.replace("_0000", "")
    twin = raw_copy / "validation" / "subtype0"
    for path in (image, mask):
        (twin / path.name).write_bytes(path.read_bytes())
    _scan_fails(raw_copy, manifest, str(twin / image.name), "also appears in train/subtype0")
    with pytest.warns(UserWarning, match="also appears"):
        result = scan_raw(raw_copy, manifest, on_bad_case="skip")
    assert image.name.removesuffix("_0000.nii.gz") not in set(result.frame().case_id)


@pytest.mark.parametrize(("split", "kind", "where"), [("train", "image", "pixdim"), ("validation", "mask", "pixdim"), ("train", "image", "sform")])
def test_a_missing_voxel_spacing_is_named_with_its_axis(raw_copy: Path, manifest, split: str, kind: str, where: str) -> None:
    """nibabel and SimpleITK read a zero slice spacing as 1 mm without a word; the scan reads the header's own bytes."""
    folder = sorted((raw_copy / split).glob("subtype*"))[0]
    path = sorted(folder.glob("quiz_*_0000.nii.gz" if kind == "image" else "quiz_?_???.nii.gz"))[0]
    break_spacing(path, where)
    if where == "pixdim":
        assert nib.load(str(path)).header.get_zooms()[2] == 1.0  # what a reader would have used
    _scan_fails(raw_copy, manifest, str(path), "voxel spacing of axis k (z, slices) is 0", "sform" if where == "sform" else "pixdim")


def test_a_zero_spacing_in_a_test_image_stops_the_scan(raw_copy: Path, manifest) -> None:
    path = sorted((raw_copy / "test").iterdir())[0]
    break_spacing(path)
    _scan_fails(raw_copy, manifest, str(path), "axis k (z, slices)", "re-export it")


@pytest.mark.parametrize(("keep", "reason"), [((), "no foreground at all"), ((1,), "pancreas but no lesion")])
def test_a_labelled_case_without_lesion_is_named_and_skip_drops_it(raw_copy: Path, manifest, keep: tuple[int, ...], reason: str) -> None:
    mask = _first(raw_copy, "mask")
    img = nib.load(str(mask))
    labels = np.rint(np.asarray(img.dataobj))
    nib.save(nib.Nifti1Image(np.where(np.isin(labels, keep), labels, 0).astype(np.float32), img.affine), str(mask))
    _scan_fails(raw_copy, manifest, str(mask), reason)
    with pytest.warns(UserWarning, match=reason):
        result = scan_raw(raw_copy, manifest, "skip")
    case_id = mask.name.removesuffix(".nii.gz")
    assert result.skipped == [case_id] and case_id not in {c.case_id for c in result.cases}
    assert any(reason in str(p) for p in result.problems)

"""The synthetic phantom: quiz layout, determinism, the real files' quirks, and honest subtypes."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pancreas_multitask.dataset.phantom import MASK_QUIRK, PhantomConfig, ensure_phantom, generate_case

from conftest import TINY, snapshot


def test_layout_matches_the_quiz(tiny_phantom: Path, manifest) -> None:
    raw = tiny_phantom / "quiz"
    for split, counts in (("train", TINY.train), ("validation", TINY.validation)):
        for k, n in enumerate(counts):
            folder = raw / split / f"subtype{k}"
            images = sorted(folder.glob("*_0000.nii.gz"))
            assert len(images) == n
            for image in images:
                match = manifest.layout.image.match(image.name)
                assert match and int(match["subtype"]) == k
                assert (folder / f"{match['case']}.nii.gz").is_file()
    tests = sorted((raw / "test").iterdir())
    assert len(tests) == TINY.test and all(manifest.layout.test_image.match(p.name) for p in tests)


def test_answer_key_lies_outside_the_test_folder(tiny_phantom: Path) -> None:
    key = tiny_phantom / "test_answers" / "subtype_labels.csv"
    rows = list(csv.DictReader(key.open()))
    test_ids = {p.name.removesuffix("_0000.nii.gz") for p in (tiny_phantom / "quiz" / "test").iterdir()}
    assert {r["Names"].removesuffix(".nii.gz") for r in rows} == test_ids
    assert all(r["Subtype"] in {"0", "1", "2"} for r in rows)
    for row in rows:
        assert (tiny_phantom / "test_answers" / "masks" / row["Names"]).is_file()
    assert not list((tiny_phantom / "quiz" / "test").glob("quiz_???.nii.gz"))


def test_generation_is_deterministic(tiny_phantom: Path, tmp_path: Path) -> None:
    ensure_phantom(tmp_path / "quiz", tmp_path / "answers", TINY)
    assert snapshot(tmp_path / "quiz") == snapshot(tiny_phantom / "quiz")
    other = PhantomConfig(**{**TINY.__dict__, "seed": TINY.seed + 1})
    ensure_phantom(tmp_path / "other", tmp_path / "other_answers", other)
    assert snapshot(tmp_path / "other") != snapshot(tiny_phantom / "quiz")


def test_regeneration_is_skipped_and_foreign_folders_are_kept(tiny_phantom: Path, tmp_path: Path) -> None:
    assert ensure_phantom(tiny_phantom / "quiz", tiny_phantom / "test_answers", TINY) is False
    foreign = tmp_path / "real_data"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no phantom stamp"):
        ensure_phantom(foreign, tmp_path / "answers", TINY)
    assert (foreign / "keep.txt").read_text() == "mine"


def test_files_carry_the_real_quirks(tiny_phantom: Path) -> None:
    images = sorted((tiny_phantom / "quiz").rglob("*_0000.nii.gz"))
    masks = sorted(p for p in (tiny_phantom / "quiz").rglob("quiz_?_???.nii.gz"))
    storages, orientations = set(), set()
    for path in images:
        img = nib.load(str(path))
        scaled = img.get_data_dtype() == np.int16 and img.dataobj.slope != 1.0
        storages.add("int16_scaled" if scaled else str(img.get_data_dtype()))
        orientations.add("".join(nib.aff2axcodes(img.affine)))
        zooms = img.header.get_zooms()
        assert zooms[2] > zooms[0] * 1.2  # anisotropic: thick slices
    assert "int16_scaled" in storages and len(storages) >= 2
    assert len(orientations) >= 2
    quirky = 0
    for path in masks:
        data = np.asarray(nib.load(str(path)).dataobj)
        assert data.dtype == np.float32
        quirky += int((data == np.float32(MASK_QUIRK)).any())
        assert set(np.unique(np.rint(data))) == {0.0, 1.0, 2.0}  # every case has a lesion
    assert quirky > 0


def _features(n_per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    config = PhantomConfig(shape=(20, 36, 44), spacing=(3.0, 2.0, 2.0))
    look, geometry, y = [], [], []
    for k in range(3):
        for i in range(n_per_class):
            case = generate_case("c", "train", k, config, np.random.default_rng([99, k, i]))
            lesion = case.labels == 2
            fg = case.labels > 0
            hu = case.image[lesion]
            centroid = np.argwhere(lesion).mean(axis=0) / np.array(lesion.shape)
            look.append([hu.mean(), hu.std(), np.percentile(hu, 10), np.percentile(hu, 90)])
            geometry.append([lesion.sum() / fg.sum(), lesion.sum() * np.prod(case.spacing), *centroid])
            y.append(k)
    return np.array(look), np.array(geometry), np.array(y)


def test_subtypes_differ_only_in_lesion_appearance() -> None:
    look, geometry, y = _features(12)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    by_look = cross_val_score(model, look, y, cv=4).mean()
    by_geometry = cross_val_score(model, geometry, y, cv=4).mean()
    assert by_look >= 0.9, by_look  # intensity statistics of the lesion separate the subtypes
    assert by_geometry <= 0.6, by_geometry  # size and position alone do not (chance is 1/3)
    fractions = geometry[:, 0]
    assert 0.12 <= fractions.min() and fractions.max() <= 0.4  # lesions ~15-35 % of the foreground

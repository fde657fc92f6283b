"""The synthetic phantom: quiz layout, determinism, the real files' quirks, and honest subtypes."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from pancreas_multitask.dataset.phantom import (
    LESION_FRACTION_FLOOR, MASK_QUIRK, REAL_QUIZ, PhantomConfig, _plan, draw_lesion_fraction, ensure_phantom, generate_case,
    read_generator_truth,
)
from pancreas_multitask.evaluation.baselines import lesion_features, lesion_probe, mean_hu_baseline, mean_lesion_hu

from conftest import REPO, TINY, snapshot


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


def test_the_answers_hold_every_case_s_drawn_look(tiny_phantom: Path) -> None:
    """The generator truth (learnability study): one row per case in every split, with the look the case was painted from."""
    rows = read_generator_truth(tiny_phantom / "test_answers")
    raw = tiny_phantom / "quiz"
    on_disk = {p.name.removesuffix("_0000.nii.gz") for p in raw.rglob("*_0000.nii.gz")}
    assert {r["case"] for r in rows} == on_disk and len(rows) == len(on_disk)
    for index, (case_id, split, subtype) in enumerate(_plan(TINY)):
        if index % 4:  # a few cases are regenerated, enough to catch a row written for another case
            continue
        row = next(r for r in rows if r["case"] == case_id)
        case = generate_case(case_id, split, subtype, TINY, np.random.default_rng([TINY.seed, 1, index]))
        assert (row["split"], row["subtype"], row["components"]) == (split, subtype, case.components)
        assert row["contrast"] == pytest.approx(case.look.contrast) and row["septa"] == case.look.septa
        assert np.isnan(row["rim"]) == (case.look.rim is None)
    with pytest.raises(FileNotFoundError, match="generator truth"):
        read_generator_truth(raw)


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
    storages, orientations, anisotropy = set(), set(), []
    for path in images:
        img = nib.load(str(path))
        scaled = img.get_data_dtype() == np.int16 and img.dataobj.slope != 1.0
        storages.add("int16_scaled" if scaled else str(img.get_data_dtype()))
        orientations.add("".join(nib.aff2axcodes(img.affine)))
        zooms = img.header.get_zooms()
        anisotropy.append(zooms[2] / zooms[0])
    assert np.median(anisotropy) > 1.2  # mostly thick slices, like the real quiz (a few near-isotropic)
    assert "int16_scaled" in storages and len(storages) >= 2
    assert len(orientations) >= 2
    quirky = 0
    for path in masks:
        data = np.asarray(nib.load(str(path)).dataobj)
        assert data.dtype == np.float32
        quirky += int((data == np.float32(MASK_QUIRK)).any())
        assert set(np.unique(np.rint(data))) == {0.0, 1.0, 2.0}  # every case has a lesion
    assert quirky > 0


DEMO_GRID = PhantomConfig(shape=(40, 64, 80), spacing=(2.5, 1.4, 1.4))  # the demo's median case
REAL_STATS = REPO.parent / "shared" / "data" / "real_stats" / "quiz_label_stats.csv"


@pytest.fixture(scope="module")
def demo_cases() -> list:
    """18 cases per subtype on the demo's grid, fixed seeds."""
    return [generate_case("c", "train", k, DEMO_GRID, np.random.default_rng([99, k, i])) for k in range(3) for i in range(18)]


def test_mean_hu_threshold_is_weak_and_lesion_features_are_not(demo_cases) -> None:
    y = [c.subtype for c in demo_cases]
    by_mean = mean_hu_baseline([mean_lesion_hu(c.image, c.labels) for c in demo_cases], y)
    by_probe = lesion_probe(np.stack([lesion_features(c.image, c.labels) for c in demo_cases]), y)
    assert by_mean <= 0.7, by_mean  # the old phantom's 45 / 5 / 175 HU gave 1.00 here
    assert by_probe >= by_mean + 0.15, (by_probe, by_mean)  # texture and structure still separate them


def test_some_lesions_are_near_iso_dense(demo_cases) -> None:
    contrasts = [lesion_features(c.image, c.labels)[7] for c in demo_cases]  # lesion interior minus parenchyma, HU
    assert sum(abs(v) < 15 for v in contrasts) >= 5


def test_lesion_sizes_follow_the_real_quiz(demo_cases) -> None:
    """Per subtype, the phantom's lesion-fraction quartiles lie within the real ones' range."""
    for k in range(3):
        fractions = [(c.labels == 2).sum() / (c.labels > 0).sum() for c in demo_cases if c.subtype == k]
        q25, q50, q75 = np.percentile(fractions, [25, 50, 75])
        real = dict(zip(REAL_QUIZ["levels"], REAL_QUIZ["lesion_fraction"][k]))
        assert LESION_FRACTION_FLOOR <= q25 and real[5] <= q25 <= real[50], (k, q25)
        assert real[25] <= q50 <= real[75], (k, q50)
        assert real[50] <= q75 <= real[95], (k, q75)
    rng = np.random.default_rng(0)  # the drawn distribution itself, many draws: the real median and upper half
    for k in range(3):
        draws = [draw_lesion_fraction(k, rng) for _ in range(4000)]
        real = dict(zip(REAL_QUIZ["levels"], REAL_QUIZ["lesion_fraction"][k]))
        assert abs(np.median(draws) - real[50]) < 0.01 and abs(np.percentile(draws, 75) - real[75]) < 0.02


def test_lesion_components_and_geometry_spread(demo_cases) -> None:
    components = [ndimage.label(c.labels == 2)[1] for c in demo_cases]
    assert np.mean([n == 1 for n in components]) >= 0.6 and max(components) >= 2  # mostly one, some satellites
    z_spacing = [c.spacing[0] for c in demo_cases]
    assert min(z_spacing) < 0.9 * DEMO_GRID.spacing[0] and max(z_spacing) > 1.2 * DEMO_GRID.spacing[0]


def test_calibration_constants_match_the_real_masks() -> None:
    """``REAL_QUIZ`` holds what ``real_stats/quiz_label_stats.csv`` says (281 public quiz masks)."""
    if not REAL_STATS.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{REAL_STATS} not found; CI must check the phantom's calibration")
        pytest.skip(f"{REAL_STATS} not found")
    stats = pd.read_csv(REAL_STATS)
    for k in range(3):
        rows = stats[stats["subtype"] == k]
        assert np.allclose(np.percentile(rows["lesion_fraction_of_foreground"], REAL_QUIZ["levels"]), REAL_QUIZ["lesion_fraction"][k], atol=6e-4)
        shares = rows["lesion_components"].clip(upper=4).value_counts(normalize=True).sort_index()
        assert np.allclose(shares.to_numpy(), REAL_QUIZ["lesion_components"][k], atol=1e-3)
    ratio = np.percentile(stats["spacing_z"], REAL_QUIZ["ratio_levels"]) / stats["spacing_z"].median()
    assert np.allclose(ratio, REAL_QUIZ["spacing_z"], atol=1e-3)
    fov = stats["shape_x"] * stats["spacing_x"]
    assert np.allclose(np.percentile(fov, REAL_QUIZ["ratio_levels"]) / fov.median(), REAL_QUIZ["fov"][2], atol=1e-3)

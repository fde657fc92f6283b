"""The multitask predictor: geometry, subtype CSV, resume, bad input, sharding, modes, model zips, CLI (tiny model, CPU)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pancreas_multitask.experiment_planning.plans import CPU_PLANS
from pancreas_multitask.evaluation.metrics import dice, evaluate_case
from pancreas_multitask.inference.model_sharing import PROJECT_FILES, export_model, install_model
from pancreas_multitask.manifest import ProfilePaths
from pancreas_multitask.inference.predictor import CSV_NAME, MODES, UNPROCESSED, InferenceMode, MultitaskPredictor, case_records, input_cases, make_predictor, predict_cases
from pancreas_multitask.runtime import configured_nnunet
from pancreas_multitask.workspace import Workspace

from conftest import assert_logits_agree, assert_masks_agree, break_spacing, snapshot
from pancreas_multitask.model.calibration import Calibration, apply_temperature


@pytest.fixture(scope="module")
def model(tiny_trained_model: Path) -> Path:
    return tiny_trained_model


@pytest.fixture()
def predictor(model) -> MultitaskPredictor:
    p = MultitaskPredictor(tile_step_size=0.5, use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_model_folder(model, folds=(0,))
    return p


def _images(tiny_phantom: Path) -> list[tuple[str, Path]]:
    return input_cases(tiny_phantom / "quiz" / "test") + input_cases(tiny_phantom / "quiz" / "validation" / "subtype0")


def test_masks_keep_the_input_geometry_and_the_csv_fits_the_quiz(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    cases = _images(tiny_phantom)
    report = predict_cases(predictor, cases, tmp_path)
    assert sorted(report.predicted) == sorted(c for c, _ in cases) and not report.failed
    for case_id, image in cases:
        source, mask = nib.load(str(image)), nib.load(str(tmp_path / f"{case_id}.nii.gz"))
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-4)
        assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(source.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2} and mask.get_data_dtype() == np.uint8
    rows = list(csv.DictReader((tmp_path / CSV_NAME).open()))
    assert list(rows[0]) == ["Names", "Subtype", *(f"prob_subtype{k}" for k in range(3)), *(f"uncalibrated_prob_subtype{k}" for k in range(3))]
    assert sorted(r["Names"] for r in rows) == sorted(f"{c}.nii.gz" for c, _ in cases)
    for row in rows:
        probs = [float(row[f"prob_subtype{k}"]) for k in range(3)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and int(row["Subtype"]) == int(np.argmax(probs))


def test_real_case_comes_back_in_its_own_geometry(predictor, real_case_dir: Path, tmp_path: Path) -> None:
    predictor.use_mirroring = False
    report = predict_cases(predictor, [("quiz_0_324", real_case_dir / "quiz_0_324_0000.nii.gz")], tmp_path)
    assert report.predicted == ["quiz_0_324"]
    source, mask = nib.load(str(real_case_dir / "quiz_0_324_0000.nii.gz")), nib.load(str(tmp_path / "quiz_0_324.nii.gz"))
    assert mask.shape == (187, 95, 49) and np.allclose(mask.affine, source.affine, atol=1e-4)
    assert "".join(nib.aff2axcodes(mask.affine)) == "LPS"
    # and it can be scored against its real (float) mask: evaluate_case raises on any grid mismatch
    scored = evaluate_case(real_case_dir / "quiz_0_324.nii.gz", tmp_path / "quiz_0_324.nii.gz")
    assert set(scored) == {"dsc_pancreas", "dsc_lesion", "nsd_pancreas", "nsd_lesion", "hd95_pancreas", "hd95_lesion", "lesion_detected",
                           "lesion_components", "lesion_components_detected", "lesion_fp_components"}
    assert 0 <= scored["nsd_pancreas"] <= 1 and scored["hd95_pancreas"] >= 0  # in mm, on the real case's LPS grid


def test_rerun_skips_and_bad_input_is_named(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    predictor.use_mirroring = False
    folder = tmp_path / "in"
    shutil.copytree(tiny_phantom / "quiz" / "test", folder)
    bad = folder / "quiz_999_0000.nii.gz"
    bad.write_bytes(b"corrupt")
    report = predict_cases(predictor, input_cases(folder), tmp_path / "out")
    assert len(report.failed) == 1 and str(bad) in report.failed[0]
    assert not (tmp_path / "out" / "quiz_999.nii.gz").exists()
    assert len(report.predicted) == len(input_cases(folder)) - 1
    again = predict_cases(predictor, input_cases(folder), tmp_path / "out")
    assert sorted(again.skipped) == sorted(report.predicted) and not again.predicted


def test_overlapped_reading_and_export_give_the_same_results(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    """The CUDA pipeline (next case read and preprocessed, last one exported, in threads), run on CPU."""
    predictor.use_mirroring = False
    folder = tmp_path / "in"
    shutil.copytree(tiny_phantom / "quiz" / "test", folder)
    (folder / "quiz_998_0000.nii.gz").write_bytes(b"corrupt")  # a failure inside the loader thread
    reports = {flag: predict_cases(predictor, input_cases(folder), tmp_path / str(flag), overlap=flag) for flag in (False, True)}
    assert reports[True].predicted == reports[False].predicted and len(reports[True].failed) == 1
    assert "quiz_998_0000.nii.gz" in reports[True].failed[0]
    for case_id in reports[True].predicted:
        masks = [np.asarray(nib.load(str(tmp_path / str(flag) / f"{case_id}.nii.gz")).dataobj) for flag in (False, True)]
        assert np.array_equal(*masks), case_id
    assert (tmp_path / "True" / CSV_NAME).read_text() == (tmp_path / "False" / CSV_NAME).read_text()


def test_a_truncated_image_is_named_not_predicted(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    """A download cut short: the first half of a .nii.gz. SimpleITK reads it and zero-fills the rest; we refuse it."""
    import SimpleITK as sitk

    predictor.use_mirroring = False
    folder = tmp_path / "in"
    folder.mkdir()
    source = input_cases(tiny_phantom / "quiz" / "test")[0][1]
    truncated = folder / "quiz_900_0000.nii.gz"
    data = source.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(truncated))).size > 0  # what nnU-Net's reader would have used
    report = predict_cases(predictor, input_cases(folder), tmp_path / "out")
    assert report.predicted == [] and len(report.failed) == 1
    assert str(truncated) in report.failed[0] and "incomplete or corrupt file" in report.failed[0]
    assert not (tmp_path / "out" / "quiz_900.nii.gz").exists()


def test_a_test_image_without_slice_spacing_fails_and_the_others_are_predicted(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    predictor.use_mirroring = False
    folder = tmp_path / "in"
    folder.mkdir()
    sources = input_cases(tiny_phantom / "quiz" / "test")[:2]
    for _, source in sources:
        shutil.copy(source, folder / source.name)
    broken = folder / sources[0][1].name
    break_spacing(broken)
    report = predict_cases(predictor, input_cases(folder), tmp_path / "out")
    assert report.predicted == [sources[1][0]] and len(report.failed) == 1
    assert str(broken) in report.failed[0] and "voxel spacing of axis k (z, slices) is 0" in report.failed[0]
    assert not (tmp_path / "out" / f"{sources[0][0]}.nii.gz").exists()


def test_temporaries_of_a_killed_run_are_ignored_and_cleaned(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    """A hard kill mid-write leaves ``atomic_path``'s hidden temporaries; they are never read as results."""
    predictor.use_mirroring = False
    cases = input_cases(tiny_phantom / "quiz" / "test")
    out = tmp_path / "out"
    predict_cases(predictor, cases, out)
    name = cases[0][0]
    old = out / f".tmp.{name}.subtype.json.k1ll3d.subtype.json"  # half a sidecar, from a run killed an hour ago
    old.write_text('{"Names": "' + name)
    os.utime(old, (old.stat().st_atime - 7200, old.stat().st_mtime - 7200))
    fresh = out / f".tmp.{name}.nii.gz.w0rk1ng.nii.gz"  # a concurrent part's write in progress
    fresh.write_bytes(b"\x1f\x8b")
    other = out / ".keep"  # someone else's hidden file, however old
    other.write_text("")
    os.utime(other, (other.stat().st_atime - 7200, other.stat().st_mtime - 7200))
    assert len(case_records(out)) == len(cases)  # neither temporary is read
    report = predict_cases(predictor, cases, out)
    assert sorted(report.skipped) == sorted(c for c, _ in cases) and not report.failed
    assert not old.exists() and fresh.exists() and other.exists()  # the stale one is cleaned, the live one and others left alone
    rows = list(csv.DictReader((out / CSV_NAME).open()))
    assert sorted(r["Names"] for r in rows) == sorted(f"{c}.nii.gz" for c, _ in cases)


def test_an_unwritable_output_folder_is_named_before_any_work(predictor, tiny_phantom: Path, tmp_path: Path, monkeypatch) -> None:
    """A read-only folder (simulated: the tests run as root, who may write anywhere)."""
    import errno
    import tempfile

    out = tmp_path / "read_only"
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match=f"{out}: cannot write here \\(Permission denied\\)"):
        predict_cases(predictor, input_cases(tiny_phantom / "quiz" / "test"), out)


def test_a_full_disk_fails_the_case_it_hits_and_keeps_the_finished_ones(predictor, tiny_phantom: Path, tmp_path: Path, monkeypatch) -> None:
    import errno

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    predictor.use_mirroring = False
    cases = input_cases(tiny_phantom / "quiz" / "test")[:2]
    out = tmp_path / "out"
    write_seg = SimpleITKIO.write_seg

    def disk_full_on_the_second(self, seg, output_fname, properties):
        if cases[1][0] in Path(output_fname).name:
            with open(output_fname, "wb") as handle:  # half a file, then the disk is full
                handle.write(b"\x1f\x8b\x08")
            raise OSError(errno.ENOSPC, "No space left on device", output_fname)
        return write_seg(self, seg, output_fname, properties)

    monkeypatch.setattr(SimpleITKIO, "write_seg", disk_full_on_the_second)
    report = predict_cases(predictor, cases, out)
    assert report.predicted == [cases[0][0]] and len(report.failed) == 1
    assert str(cases[1][1]) in report.failed[0] and "No space left on device" in report.failed[0]
    assert (out / f"{cases[0][0]}.nii.gz").is_file() and not (out / f"{cases[1][0]}.nii.gz").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written file left
    assert [r["Names"] for r in csv.DictReader((out / CSV_NAME).open())] == [f"{cases[0][0]}.nii.gz"]

    import pancreas_multitask.inference.predictor as predictor_module

    def csv_disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(predictor_module, "write_subtype_csv", csv_disk_full)
    monkeypatch.setattr(SimpleITKIO, "write_seg", write_seg)
    report = predict_cases(predictor, cases, out)  # the disk filled up again before the CSV
    assert report.predicted == [cases[1][0]] and report.skipped == [cases[0][0]]
    assert any(CSV_NAME in f and "re-run to rebuild it" in f for f in report.failed)
    assert (out / f"{cases[1][0]}.nii.gz").is_file()


def test_a_result_of_another_model_or_input_is_not_reused(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    """A re-run after retraining, or on a re-generated input with the same name, predicts again instead of skipping."""
    predictor.use_mirroring = False
    folder = tmp_path / "in"
    shutil.copytree(tiny_phantom / "quiz" / "test", folder)
    cases = input_cases(folder)
    predict_cases(predictor, cases, tmp_path / "out")
    first = cases[0][1]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # the input changed
    report = predict_cases(predictor, cases, tmp_path / "out")
    assert report.predicted == [cases[0][0]] and len(report.skipped) == len(cases) - 1
    predictor.use_mirroring = True  # other settings (or other weights): nothing is reused
    report = predict_cases(predictor, cases, tmp_path / "out")
    assert sorted(report.predicted) == sorted(c for c, _ in cases) and not report.skipped


def test_two_parts_cover_every_case_once(predictor, tiny_phantom: Path, tmp_path: Path) -> None:
    predictor.use_mirroring = False
    cases = _images(tiny_phantom)
    first = predict_cases(predictor, cases, tmp_path, num_parts=2, part_id=0)
    second = predict_cases(predictor, cases, tmp_path, num_parts=2, part_id=1)
    assert not set(first.predicted) & set(second.predicted)
    assert sorted(first.predicted + second.predicted) == sorted(c for c, _ in cases)
    assert len(list(csv.DictReader((tmp_path / CSV_NAME).open()))) == len(cases)


def test_tile_batching_changes_nothing_but_speed(model, real_case_dir: Path, tiny_phantom: Path) -> None:
    image = [str(real_case_dir / "quiz_0_324_0000.nii.gz")]
    one, four = make_predictor(model, InferenceMode(0.5, False, 1)), make_predictor(model, InferenceMode(0.5, False, 4))
    logits_one, properties, probs_one = one.predict_logits(image)
    logits_four, _, probs_four = four.predict_logits(image)
    assert len(one._tiles[0]) > len(four._tiles[0]) > 1  # several tiles, fewer forward passes
    # the same numbers up to float rounding: batched convolutions sum in another order (the kernel oneDNN picks
    # differs between CPUs) and the tiles are accumulated in fp16 (ulp 0.004 at |logit| 4), so a rare voxel may
    # differ by a few ulps. A misplaced tile or flip would change whole blocks by O(1).
    assert_logits_agree(logits_four.float().numpy(), logits_one.float().numpy())
    np.testing.assert_allclose(probs_one, probs_four, atol=1e-5)
    same = one.export_segmentation(logits_one, properties) == four.export_segmentation(logits_four, properties)
    assert same.mean() > 0.999  # an untrained model sits near the threshold, so a few voxels may flip

    small = [str(_images(tiny_phantom)[0][1])]  # the pass counts do not need the real case's many tiles
    one.predict_logits(small)
    tiles = sum(len(t) for t in one._tiles[0])  # one row of class logits per tile and forward pass
    passes = {}
    for mode in ("accurate", "fast", "fastest"):
        predictor = make_predictor(model, mode)
        predictor.predict_logits(small)
        passes[mode] = sum(len(t) for t in predictor._tiles[0]) // tiles
    assert passes == {"accurate": 8, "fast": 8, "fastest": 2}  # nnU-Net's 7 flips and the original; fastest: one flip


def test_fast_keeps_the_rule_and_equals_accurate(model, tiny_phantom: Path, tmp_path: Path) -> None:
    """The quiz's speed rule: same step, all mirroring passes; masks within Dice 0.999 and the same subtype."""
    from pancreas_multitask.inference.__main__ import MODE_NAMES

    assert MODES["accurate"].rule_compliant and MODES["fast"].rule_compliant and not MODES["fastest"].rule_compliant
    assert set(MODE_NAMES) == set(MODES)  # the CLI offers every mode
    assert "not rule-compliant" in MODES["fastest"].describe() and "not rule-compliant" not in MODES["fast"].describe()
    cases = _images(tiny_phantom)
    accurate, fast = make_predictor(model, "accurate", engine="torch"), make_predictor(model, "fast")  # nnU-Net's defaults against fast on this machine's engine
    predict_cases(accurate, cases, tmp_path / "accurate")
    predict_cases(fast, cases, tmp_path / "fast")
    records = {mode: {r["Names"]: r for r in case_records(tmp_path / mode)} for mode in ("accurate", "fast")}
    for case_id, image in cases:
        masks = [np.asarray(nib.load(str(tmp_path / mode / f"{case_id}.nii.gz")).dataobj) for mode in ("accurate", "fast")]
        assert_masks_agree(masks[1], masks[0], case_id)
        probabilities = [np.array(records[mode][f"{case_id}.nii.gz"]["probabilities"]) for mode in ("accurate", "fast")]
        np.testing.assert_allclose(probabilities[1], probabilities[0], atol=1e-4)
        assert set(records["fast"][f"{case_id}.nii.gz"]["stages"]) == {"read", "preprocess", "network", "export", "write"}
        # the 1-epoch test model's masks can be trivial; its logits never are: they agree up to float rounding
        (a, _, _), (f, _, _) = accurate.predict_logits([str(image)]), fast.predict_logits([str(image)])
        assert float(a.float().std()) > 0
        assert_logits_agree(f.float().numpy(), a.float().numpy())


def test_device_export_matches_nnunets_resampling(model, real_case_dir: Path) -> None:
    """The torch export (fast) against nnU-Net's default scipy export, on the real case's geometry and a smooth,
    non-trivial prediction (the tiny model's own masks may be empty)."""
    from scipy import ndimage

    accurate, fast = make_predictor(model, "accurate"), make_predictor(model, "fast")
    data, properties, _ = accurate.preprocess([str(real_case_dir / "quiz_0_324_0000.nii.gz")])
    rng = np.random.default_rng(0)
    field = np.stack([ndimage.gaussian_filter(rng.normal(size=data.shape[1:]), 3) for _ in range(2)])
    logits = torch.from_numpy(field / field.std() * 4).half()  # two region channels, about 40 % of voxels on each
    exported = [p.export_segmentation(logits, properties) for p in (accurate, fast)]
    assert exported[0].shape == exported[1].shape
    for region in ((1, 2), (2,)):
        reference = np.isin(exported[0], region)
        assert 0.05 < reference.mean() < 0.95
        assert dice(np.isin(exported[1], region), reference) >= 0.999, region


def test_fast_falls_back_to_one_pass_at_a_time_when_the_gpu_is_full(model, tiny_phantom: Path, monkeypatch) -> None:
    """Batched passes that do not fit (a 16 GB GPU) give the same logits one tile and one flip at a time."""
    image = [str(_images(tiny_phantom)[0][1])]
    reference, _, reference_probabilities = make_predictor(model, "fast", engine="torch").predict_logits(image)
    predictor = make_predictor(model, "fast", engine="torch")  # the GPU's out-of-memory path is torch's
    forward = predictor._forward_with_class

    def small_gpu(x):
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(x)

    predictor._forward_with_class = small_gpu
    logits, _, probabilities = predictor.predict_logits(image)
    assert predictor._one_pass_at_a_time
    np.testing.assert_allclose(logits.float().numpy(), reference.float().numpy(), atol=1e-2)
    np.testing.assert_allclose(probabilities, reference_probabilities, atol=1e-5)


def test_fastest_is_close_but_not_equal(model, tiny_phantom: Path, tmp_path: Path) -> None:
    """The reduced-flip mode: 2 of the 8 passes, so its logits differ from accurate's, but not by much."""
    cases = _images(tiny_phantom)
    accurate, fastest = make_predictor(model, "accurate"), make_predictor(model, "fastest")
    for case_id, image in cases:
        (a, _, _), (f, _, _) = accurate.predict_logits([str(image)]), fastest.predict_logits([str(image)])
        correlation = np.corrcoef(a.float().flatten(), f.float().flatten())[0, 1]
        assert 0.8 < correlation < 1 - 1e-6, case_id


def test_exported_zip_predicts_the_same(model, tiny_phantom: Path, tmp_path: Path) -> None:
    calibrated = tmp_path / "trained" / model.parent.name / model.name  # a copy, with a temperature far from 1
    shutil.copytree(model, calibrated)
    Calibration(temperature=2.5, fitted_on="test", cases=3).save(calibrated / "fold_0")
    model = calibrated
    zip_file = export_model(model, tmp_path / "model.zip")
    written = zip_file.stat().st_mtime_ns
    assert export_model(model, zip_file) == zip_file and zip_file.stat().st_mtime_ns == written  # up to date: kept
    with zipfile.ZipFile(zip_file) as archive:
        names = set(archive.namelist())
    inner = f"{model.parent.name}/{model.name}"
    assert {f"{inner}/plans.json", f"{inner}/dataset.json", f"{inner}/fold_0/checkpoint_best.pth", f"{inner}/fold_0/multitask_settings.json",
            f"{inner}/fold_0/postprocessing.pkl", f"{inner}/fold_0/postprocessing.json"} <= names  # nnU-Net's postprocessing travels with the model
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    with configured_nnunet(replace(ProfilePaths(raw=tmp_path, work=tmp_path, test_answers=None), results=model.parent.parent), "cpu"):
        trainer, plans, configuration = model.name.split("__")
        export_pretrained_model(model.parent.name, str(tmp_path / "nnunet.zip"), (configuration,), trainer, plans, (0,), save_checkpoints=("checkpoint_best.pth",))
    theirs = set(zipfile.ZipFile(tmp_path / "nnunet.zip").namelist())
    assert theirs <= names and {n.rsplit("/", 1)[1] for n in names - theirs} <= set(PROJECT_FILES)  # nnU-Net's layout, plus the project's files
    installed = install_model(zip_file, tmp_path / "results")
    assert installed == tmp_path / "results" / inner
    mtime = (installed / "plans.json").stat().st_mtime_ns
    assert install_model(zip_file, tmp_path / "results") == installed and (installed / "plans.json").stat().st_mtime_ns == mtime  # not unpacked twice
    with pytest.raises(FileExistsError, match="no zip installed"):  # never over the model trained here
        install_model(zip_file, model.parent.parent)
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    cases = _images(tiny_phantom)
    for name, folder in (("before", model), ("after", installed)):
        predict_cases(make_predictor(folder, "fast"), cases, tmp_path / name)
    for case_id, _ in cases:
        before, after = (np.asarray(nib.load(str(tmp_path / n / f"{case_id}.nii.gz")).dataobj) for n in ("before", "after"))
        assert np.array_equal(before, after)
    assert [r["probabilities"] for r in case_records(tmp_path / "before")] == [r["probabilities"] for r in case_records(tmp_path / "after")]
    assert make_predictor(installed, "fast").calibrations == [Calibration(temperature=2.5, fitted_on="test", cases=3)]  # the temperature travels in the zip
    for record in case_records(tmp_path / "after"):  # and the CSV's probabilities are the calibrated ones
        np.testing.assert_allclose(record["probabilities"], apply_temperature(np.array(record["uncalibrated_probabilities"]), 2.5), atol=1e-6)
    assert make_predictor(installed, "fast").postprocessing_source == installed / "fold_0" / "postprocessing.pkl"


INSTALL_AND_READ = """
import sys, zipfile
from pathlib import Path
from pancreas_multitask.inference.model_sharing import install_model
zip_file, root = Path(sys.argv[1]), Path(sys.argv[2])
target = install_model(zip_file, root)
names = [n for n in zipfile.ZipFile(zip_file).namelist() if not n.endswith("/")]
missing = [n for n in names if not (root / n).is_file()]
assert not missing, f"{len(missing)} file(s) gone after install, e.g. {missing[0]}"
print("ok", target)
"""


def test_a_stamp_that_vanishes_while_it_is_read_counts_as_none(tmp_path: Path, monkeypatch) -> None:
    """A process checks the stamp without the lock while another replaces the install (CI saw one crash so):
    the stamp may exist at one instant and be gone at the next."""
    from pancreas_multitask.inference import model_sharing

    monkeypatch.setattr(Path, "is_file", lambda self: True)  # it was there a moment ago
    assert model_sharing._installed_from(tmp_path / "model") is None


def test_concurrent_installs_of_one_zip_leave_every_process_a_whole_model(model, tmp_path: Path) -> None:
    """Several real processes install the same zip at once (array jobs on a cluster), twice: the second time
    the zip is newer, so each replaces the older install. None may remove the folder another has just installed."""
    zip_file = export_model(model, tmp_path / "model.zip")
    root = tmp_path / "models"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "lib"), os.environ.get("PYTHONPATH", "")])}
    for round_ in range(2):
        if round_:
            os.utime(zip_file, ns=(zip_file.stat().st_atime_ns, zip_file.stat().st_mtime_ns + 10**9))
        processes = [subprocess.Popen([sys.executable, "-c", INSTALL_AND_READ, str(zip_file), str(root)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
        outputs = [p.communicate(timeout=300)[0] for p in processes]
        assert all(p.returncode == 0 for p in processes), "\n".join(outputs)
    assert not list(root.rglob(".unpacking-*"))  # no staging folder left


def test_postprocessing_is_applied_and_the_masks_before_it_are_kept(model, tiny_phantom: Path, tmp_path: Path) -> None:
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing, remove_all_but_largest_component_from_segmentation
    from scipy import ndimage

    determined = make_predictor(model, "fast")
    assert determined.postprocessing_source == model / "fold_0" / "postprocessing.pkl"  # what 02_train determined on the validation split
    assert make_predictor(model, "fast", postprocessing=False).postprocessing is None
    keep_largest = ([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": [1, 2]}])
    determined.postprocessing = keep_largest  # a choice with a visible effect, whatever this 1-epoch model predicts
    cases = _images(tiny_phantom)[:2]
    predict_cases(determined, cases, tmp_path / "out")
    for case_id, _ in cases:
        final = np.asarray(nib.load(str(tmp_path / "out" / f"{case_id}.nii.gz")).dataobj)
        before = np.asarray(nib.load(str(tmp_path / "out" / UNPROCESSED / f"{case_id}.nii.gz")).dataobj)
        assert np.array_equal(final, apply_postprocessing(before, *keep_largest))
        assert ndimage.label(final > 0)[1] <= 1
    plain = make_predictor(model, "fast", postprocessing=False)
    predict_cases(plain, cases, tmp_path / "plain")
    assert not (tmp_path / "plain" / UNPROCESSED).exists()


def test_cli_predicts_a_folder_from_a_zip_and_fails_on_bad_input(model, tiny_phantom: Path, tmp_path: Path) -> None:
    zip_file = export_model(model, tmp_path / "model.zip")
    folder = tmp_path / "in"
    shutil.copytree(tiny_phantom / "quiz" / "test", folder)
    command = [sys.executable, "-m", "pancreas_multitask.inference", "-i", str(folder), "-o", str(tmp_path / "out"), "-m", str(zip_file), "-device", "cpu", "--models_dir", str(tmp_path / "models")]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PANCREAS_HEADLESS": "1"})
    assert done.returncode == 0, done.stderr
    assert len(list(csv.DictReader((tmp_path / "out" / CSV_NAME).open()))) == len(input_cases(folder))
    (folder / "quiz_999_0000.nii.gz").write_bytes(b"corrupt")
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PANCREAS_HEADLESS": "1"})
    assert done.returncode == 1 and "quiz_999_0000.nii.gz" in done.stderr
    assert "skipped 2" in done.stdout  # the finished cases are not predicted again
    assert "postprocessing: keep the largest" in done.stdout or "postprocessing: determined: nothing helped" in done.stdout
    done = subprocess.run([*command[:6], str(tmp_path / "plain"), *command[7:], "--disable_postprocessing"], capture_output=True, text=True, env={**os.environ, "PANCREAS_HEADLESS": "1"})
    assert "postprocessing: none" in done.stdout and not (tmp_path / "plain" / UNPROCESSED).exists()


def test_inference_killed_hard_resumes_without_half_written_masks(model, tiny_phantom: Path, tmp_path: Path) -> None:
    """SIGKILL mid-way (a preempted node, an OOM kill), then the same command again: every case once, no partial file."""
    import signal
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):  # enough cases that the kill lands mid-folder
        for case_id, image in input_cases(tiny_phantom / "quiz" / "test"):
            shutil.copy(image, folder / f"{case_id}{i}_0000.nii.gz")
    before = snapshot(folder)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pancreas_multitask.inference", "-i", str(folder), "-o", str(out), "-m", str(model), "-device", "cpu", "--mode", "fast"]
    env = {**os.environ, "PANCREAS_HEADLESS": "1"}
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while not list(out.glob("*.subtype.json")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished = {p.name for p in out.glob("*.nii.gz")}
    assert 0 < len(finished) < len(input_cases(folder)), "the kill should land mid-folder"
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    names = [r["Names"] for r in csv.DictReader((out / CSV_NAME).open())]
    assert sorted(names) == sorted(f"{c}.nii.gz" for c, _ in input_cases(folder))
    for name in names:
        nib.load(str(out / name)).get_fdata()  # every mask whole
    assert snapshot(folder) == before  # the inputs untouched


def test_a_failed_sliding_window_attempt_leaves_no_tiles(model, real_case_dir: Path, monkeypatch) -> None:
    """nnU-Net retries an out-of-memory sliding window with its results on the CPU: the first try must not count."""
    predictor = make_predictor(model, "fast")
    predict = predictor._internal_maybe_mirror_and_predict
    calls = []

    def fail_on_second_batch(x):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return predict(x)

    monkeypatch.setattr(predictor, "_internal_maybe_mirror_and_predict", fail_on_second_batch)
    image = [str(real_case_dir / "quiz_0_324_0000.nii.gz")]
    with pytest.raises(RuntimeError, match="simulated"):
        predictor.predict_logits(image)
    assert predictor._tiles == ([], [])  # the first batch's tiles were dropped with the failed attempt
    monkeypatch.setattr(predictor, "_internal_maybe_mirror_and_predict", predict)
    _, _, probabilities = predictor.predict_logits(image)
    assert len(calls) == 2 and probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_cases_the_scan_left_out_are_neither_predicted_nor_scored(model, tiny_phantom: Path, manifest, tmp_path: Path) -> None:
    """``on_bad_case: skip``: inference and evaluation take their cases from the scan's case table, not the raw folder."""
    import warnings

    from pancreas_multitask.dataset.scan import scan_raw, write_case_table
    from pancreas_multitask.evaluation.stage import evaluation_jobs
    from pancreas_multitask.inference.stage import predict

    raw = tmp_path / "quiz"
    shutil.copytree(tiny_phantom / "quiz", raw)
    broken = sorted((raw / "validation").glob("*/*_0000.nii.gz"))[0]
    broken.with_name(broken.name.replace("_0000", "")).unlink()  # an image without its mask
    paths = ProfilePaths(raw=raw, work=tmp_path / "work", test_answers=tiny_phantom / "test_answers")
    workspace = Workspace(manifest, paths, CPU_PLANS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_case_table(workspace.case_table, scan_raw(raw, manifest, "skip"))  # what the prepare stage records
    left_out = broken.name.removesuffix("_0000.nii.gz")
    record = predict(workspace, {"model_folder": str(model), "input_splits": ["validation", "test"], "mode": "fast"}, "cpu")
    predicted = {p.name.removesuffix(".nii.gz") for p in workspace.predictions("validation").glob("*.nii.gz")}
    assert left_out not in predicted and len(predicted) == len(list((tiny_phantom / "quiz" / "validation").glob("*/*_0000.nii.gz"))) - 1
    assert not record.failures and record.record_file == workspace.record("inference")
    jobs, _ = evaluation_jobs(workspace, {"input_splits": ["validation", "test"]})
    assert {c.case for c in jobs["validation"].cases} == predicted and len(jobs["test"].cases) == len(list((raw / "test").glob("*.nii.gz")))



def test_folds_are_calibrated_each_then_averaged(model, tiny_phantom: Path, tmp_path: Path) -> None:
    """``-f 0 1``: the subtype is the mean over folds of each fold's calibrated probabilities; the segmentation nnU-Net's fold mean."""
    ensemble = tmp_path / model.parent.name / model.name
    shutil.copytree(model, ensemble)
    shutil.copytree(ensemble / "fold_0", ensemble / "fold_1")
    checkpoint = torch.load(ensemble / "fold_1" / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    bias = [k for k in checkpoint["network_weights"] if k.startswith("head.mlp.") and k.endswith("bias")][-1]
    checkpoint["network_weights"][bias] = checkpoint["network_weights"][bias] + torch.tensor([1.5, -1.0, 0.0])  # another fold, other subtype odds
    torch.save(checkpoint, ensemble / "fold_1" / "checkpoint_best.pth")
    Calibration(temperature=0.5).save(ensemble / "fold_0")
    Calibration(temperature=3.0).save(ensemble / "fold_1")
    image = _images(tiny_phantom)[0][1]
    single = []
    for fold in (0, 1):
        p = make_predictor(ensemble, "fast", folds=(fold,), postprocessing=False)
        logits, probabilities = p.predict_preprocessed(p.preprocess([str(image)])[0])
        single.append((logits, probabilities, p.last_uncalibrated))
    both = make_predictor(ensemble, "fast", folds=(0, 1), postprocessing=False)
    logits, probabilities = both.predict_preprocessed(both.preprocess([str(image)])[0])
    assert not np.allclose(single[0][2], single[1][2], atol=1e-3)  # the folds disagree
    np.testing.assert_allclose(probabilities, (apply_temperature(single[0][2], 0.5) + apply_temperature(single[1][2], 3.0)) / 2, atol=1e-5)
    np.testing.assert_allclose(both.last_uncalibrated, (single[0][2] + single[1][2]) / 2, atol=1e-5)
    torch.testing.assert_close(logits, (single[0][0] + single[1][0]) / 2, atol=2e-3, rtol=0)  # fp16 tile accumulation


def test_the_forward_batch_is_split_to_fit_in_memory_and_no_bit_of_the_answer_changes() -> None:
    from pancreas_multitask.inference.predictor import inputs_per_forward

    assert inputs_per_forward(16, 1e9, 20e9) == 16
    assert inputs_per_forward(16, 1e9, 5.5e9) == 4  # 5 fit; the largest divisor of 16 up to 5
    assert inputs_per_forward(16, 1e9, 0.5e9) == 1 and inputs_per_forward(6, 1e9, 5e9) == 3


def test_a_cpu_short_of_memory_predicts_fasts_batch_in_chunks_with_the_same_result(tiny_trained_model: Path, tiny_phantom: Path, monkeypatch) -> None:
    """nnU-Net's full ResEncM plan with fast's 16 inputs per forward took over 18 GB on a 24 GB CPU machine and was killed;
    the predictor splits such a batch into equal chunks that fit, and the masks and subtype stay as they were."""
    import psutil

    from pancreas_multitask.inference import predictor as module

    image = [str(input_cases(tiny_phantom / "quiz" / "test")[0][1])]
    whole = make_predictor(tiny_trained_model, "fast", engine="torch")
    expected_logits, _, expected_probabilities = whole.predict_logits(image)
    chunked = make_predictor(tiny_trained_model, "fast", engine="torch")
    monkeypatch.setattr(module, "MEMORY_SHARE", 4.5 * chunked.bytes_per_input() / psutil.virtual_memory().available)  # room for 4 inputs
    sizes: list[int] = []
    forward = chunked._forward_with_class
    chunked._forward_with_class = lambda x: (sizes.append(x.shape[0]), forward(x))[1]
    logits, _, probabilities = chunked.predict_logits(image)
    assert sizes and set(sizes) == {4}  # 2 tiles x 8 passes per batch, in chunks of 4
    assert_logits_agree(logits.numpy(), expected_logits.numpy())
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-5)

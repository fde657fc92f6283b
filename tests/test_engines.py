"""The network's engine: OpenVINO against torch on every case, its cache (reuse, damage, other weights, two
processes), the fallback to torch, and the choice of engine (tiny model, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pancreas_multitask.inference import engines
from pancreas_multitask.inference.engines import CACHE_FOLDER, OpenVinoForward, choose_engine
from pancreas_multitask.inference.predictor import case_records, input_cases, make_predictor, predict_cases

from conftest import assert_logits_agree, assert_masks_agree

pytest.importorskip("openvino")


@pytest.fixture()
def model(tiny_trained_model: Path, tmp_path: Path) -> Path:
    """A copy with no OpenVINO cache: each test starts cold and changes nothing the others see."""
    copy = tmp_path / "model"
    shutil.copytree(tiny_trained_model, copy, ignore=shutil.ignore_patterns(CACHE_FOLDER))
    return copy


def _images(tiny_phantom: Path) -> list[tuple[str, Path]]:
    return input_cases(tiny_phantom / "quiz" / "test") + input_cases(tiny_phantom / "quiz" / "validation" / "subtype0")


def _records(folder: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in folder.glob("*/*.json") if p.name != "model.json"), key=lambda r: r["shape"])


def test_the_engine_is_chosen_by_device_and_availability(monkeypatch) -> None:
    assert choose_engine("auto", "cpu") == ("openvino", None)
    assert choose_engine("auto", "cuda") == ("torch", None) and choose_engine("torch", "cpu") == ("torch", None)
    engine, note = choose_engine("openvino", "cuda")
    assert engine == "torch" and "CPU only" in note
    monkeypatch.setattr(engines, "openvino_problem", lambda: "openvino cannot be imported (ImportError: simulated)")
    engine, note = choose_engine("auto", "cpu")
    assert engine == "torch" and note == "engine auto: openvino cannot be imported (ImportError: simulated); the network runs in torch"
    with pytest.raises(ValueError, match="engine must be one of"):
        choose_engine("tensorrt", "cpu")


@pytest.mark.parametrize("mode", ["fast", "accurate"])
def test_openvino_equals_torch_on_every_case(model, tiny_phantom: Path, tmp_path: Path, mode: str) -> None:
    """Masks within Dice 0.999, the same subtype, probabilities within 1e-3, logits equal up to float rounding."""
    cases = _images(tiny_phantom)
    predictors = {engine: make_predictor(model, mode, engine=engine) for engine in ("torch", "openvino")}
    assert predictors["openvino"].engine == "openvino" and predictors["openvino"]._nnunet_passes is False
    for engine, predictor in predictors.items():
        assert not predict_cases(predictor, cases, tmp_path / engine).failed
    records = {engine: {r["Names"]: r for r in case_records(tmp_path / engine)} for engine in predictors}
    for case_id, image in cases:
        masks = [np.asarray(nib.load(str(tmp_path / engine / f"{case_id}.nii.gz")).dataobj) for engine in predictors]
        assert_masks_agree(masks[1], masks[0], case_id)
        rows = [records[engine][f"{case_id}.nii.gz"] for engine in predictors]
        np.testing.assert_allclose(rows[1]["probabilities"], rows[0]["probabilities"], atol=1e-3)
        top = np.sort(rows[0]["probabilities"])[::-1]
        assert int(np.argmax(rows[0]["probabilities"])) == int(np.argmax(rows[1]["probabilities"])) or top[0] - top[1] < 1e-3  # the same subtype, unless a float-rounding tie
        (t, _, _), (o, _, _) = (predictors[e].predict_logits([str(image)]) for e in predictors)
        assert_logits_agree(o.float().numpy(), t.float().numpy())
    record = predictors["openvino"].engine_record()
    assert record["used"] == "openvino" and record["failure"] is None and record["openvino"]["compiled"]
    assert "engine: OpenVINO" in predictors["openvino"].describe() and "engine: torch" in predictors["torch"].describe()
    batch = 1 if mode == "accurate" else 2 * 8  # accurate: one tile and one flip per forward; fast: 2 tiles x 8 passes
    assert {r["shape"][0] for r in _records(model / CACHE_FOLDER)} == {batch}


def test_a_second_predictor_loads_the_compiled_network_from_the_cache(model, tiny_phantom: Path) -> None:
    image = [str(_images(tiny_phantom)[0][1])]
    first = make_predictor(model, "fast", engine="openvino")
    reference, _, probabilities = first.predict_logits(image)
    assert [r["from_cache"] for r in first.openvino.records] == [False] and first.openvino.records[0]["seconds_converting"] > 0
    files = {p: p.stat().st_mtime_ns for p in (model / CACHE_FOLDER).rglob("*") if p.is_file() and p.name != ".lock"}
    second = make_predictor(model, "fast", engine="openvino")
    logits, _, again = second.predict_logits(image)
    assert [(r["from_cache"], r["seconds_converting"]) for r in second.openvino.records] == [(True, 0.0)]
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing rewritten
    cache = second.openvino.records[0]["cache"]  # named relative to the model folder: a record names no machine's paths
    assert model.is_absolute() and not Path(cache).is_absolute() and (model / cache).is_dir()
    np.testing.assert_array_equal(logits.numpy(), reference.numpy())
    np.testing.assert_array_equal(again, probabilities)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 64] = bytes(255 - b for b in data[middle: middle + 64])
    path.write_bytes(bytes(data))


def _edit_record(field: str, value):
    def edit(path: Path) -> None:
        record = json.loads(path.read_text())
        record[field] = value
        path.write_text(json.dumps(record))
    return edit


DAMAGE = {  # what is harmed, how, and whether the converted network (not only the compiled one) must be made again
    "truncated blob": ("*.blob", _truncate, False),
    "corrupt blob": ("*.blob", _flip_bytes, False),
    "blob without its record (killed compile)": ("[0-9]*.json", Path.unlink, False),
    "record of other weights": ("[0-9]*.json", _edit_record("key", "0123456789abcdef"), False),
    "record of another OpenVINO": ("[0-9]*.json", _edit_record("openvino", "2020.1.0"), False),
    "truncated converted network": ("model.bin", _truncate, True),
    "corrupt converted network": ("model.xml", _flip_bytes, True),
    "converted network of other weights": ("model.json", _edit_record("key", "0123456789abcdef"), True),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_is_rebuilt_never_used(model, tiny_phantom: Path, damage: str) -> None:
    image = [str(_images(tiny_phantom)[0][1])]
    torch_logits, _, torch_probabilities = make_predictor(model, "fast", engine="torch").predict_logits(image)
    make_predictor(model, "fast", engine="openvino").predict_logits(image)
    pattern, harm, converted = DAMAGE[damage]
    (target,) = (model / CACHE_FOLDER).glob(f"*/{pattern}")
    harm(target)
    if converted:  # the converted network is read only to compile: make a compile necessary
        next((model / CACHE_FOLDER).glob("*/*.blob")).unlink()
    predictor = make_predictor(model, "fast", engine="openvino")
    logits, _, probabilities = predictor.predict_logits(image)
    assert [r["from_cache"] for r in predictor.openvino.records] == [False] and predictor.engine_failure is None
    assert (predictor.openvino.records[0]["seconds_converting"] > 0) == converted  # a sound converted network is reused
    assert_logits_agree(logits.float().numpy(), torch_logits.float().numpy())
    np.testing.assert_allclose(probabilities, torch_probabilities, atol=1e-3)
    assert make_predictor(model, "fast", engine="openvino").predict_logits(image) is not None  # the rebuilt cache is valid again
    (record,) = _records(model / CACHE_FOLDER)
    assert record["openvino"] == predictor.openvino.version and len(record["key"]) == 16


def test_new_weights_get_their_own_cache(model, tiny_phantom: Path) -> None:
    """A checkpoint with other weights has another key: the old compiled network is never used for it."""
    image = [str(_images(tiny_phantom)[0][1])]
    make_predictor(model, "fast", engine="openvino").predict_logits(image)
    checkpoint_file = model / "fold_0" / "checkpoint_best.pth"
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    checkpoint["network_weights"] = {k: v * 1.5 if v.is_floating_point() else v for k, v in checkpoint["network_weights"].items()}
    torch.save(checkpoint, checkpoint_file)
    expected, _, _ = make_predictor(model, "fast", engine="torch").predict_logits(image)
    predictor = make_predictor(model, "fast", engine="openvino")
    logits, _, _ = predictor.predict_logits(image)
    assert len(list((model / CACHE_FOLDER).iterdir())) == 2 and predictor.openvino.records[0]["from_cache"] is False
    assert_logits_agree(logits.float().numpy(), expected.float().numpy())


def test_a_failing_engine_says_so_in_one_line_and_torch_takes_over(model, tiny_phantom: Path, monkeypatch, capsys) -> None:
    image = [str(_images(tiny_phantom)[0][1])]
    expected, _, expected_probabilities = make_predictor(model, "fast", engine="torch").predict_logits(image)

    def broken(self, x):
        raise RuntimeError("Exception from src/plugin.cpp:7\nsimulated compile failure")

    monkeypatch.setattr(OpenVinoForward, "__call__", broken)
    predictor = make_predictor(model, "fast", engine="openvino")
    capsys.readouterr()
    logits, _, probabilities = predictor.predict_logits(image)
    lines = [line for line in capsys.readouterr().out.splitlines() if "OpenVINO" in line]
    assert lines == ["OpenVINO failed (RuntimeError: simulated compile failure); the network runs in torch from here on"]
    assert_logits_agree(logits.float().numpy(), expected.float().numpy())
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-5)
    assert predictor.engine_record()["used"] == "torch" and "OpenVINO failed" in predictor.describe()


def test_an_engine_that_cannot_start_leaves_torch_in_one_line(model, tiny_phantom: Path, monkeypatch, capsys) -> None:
    """OpenVINO imports but its CPU plugin cannot load: the predictor is still made, and predicts in torch."""
    def no_plugin(self, *args, **kwargs):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:217:\nsimulated: the CPU plugin cannot be loaded")

    monkeypatch.setattr(OpenVinoForward, "__init__", no_plugin)
    predictor = make_predictor(model, "fast", engine="openvino")
    assert capsys.readouterr().out.splitlines()[-1] == "OpenVINO failed (RuntimeError: simulated: the CPU plugin cannot be loaded); the network runs in torch from here on"
    assert predictor.engine == "torch" and predictor.openvino is None and predictor.engine_record()["failure"].startswith("RuntimeError: simulated")
    logits, _, _ = predictor.predict_logits([str(_images(tiny_phantom)[0][1])])
    expected, _, _ = make_predictor(model, "fast", engine="torch").predict_logits([str(_images(tiny_phantom)[0][1])])
    np.testing.assert_array_equal(logits.numpy(), expected.numpy())


@pytest.mark.parametrize("before", [None, "false"])
def test_the_telemetry_switch_restores_the_environment(monkeypatch, before) -> None:
    if before is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", before)
    with engines._no_telemetry():
        assert os.environ["CI"] == "true"
    assert os.environ.get("CI") == before


def test_two_processes_on_a_cold_cache_share_it_without_damage(model, tiny_phantom: Path, tmp_path: Path) -> None:
    """``--num_parts 2`` with one model: both compile under the lock, one cache results, and OpenVINO's converter
    writes nothing into the home folder (its telemetry)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PANCREAS_HEADLESS": "1", "HOME": str(home)}
    env.pop("CI", None)  # as on a user's machine
    before = os.environ.get("CI")
    images = tiny_phantom / "quiz" / "test"
    command = [sys.executable, "-m", "pancreas_multitask.inference", "-i", str(images), "-o", str(tmp_path / "out"), "-m", str(model), "-device", "cpu",
               "--engine", "openvino", "--num_parts", "2"]
    processes = [subprocess.Popen([*command, "--part_id", str(k)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert all("engine openvino" in out for out in outputs)
    (record,) = _records(model / CACHE_FOLDER)
    assert record["blob_sha256"] == engines.sha256(next((model / CACHE_FOLDER).glob("*/*.blob")))
    assert sum("compiled in" in out for out in outputs) == 1 and sum("loaded from the cache" in out for out in outputs) == 1
    assert not (home / "intel").exists() and os.environ.get("CI") == before
    reference = tmp_path / "torch"
    predict_cases(make_predictor(model, "fast", engine="torch"), input_cases(images), reference)
    for case_id, _ in input_cases(images):
        a, b = (np.asarray(nib.load(str(folder / f"{case_id}.nii.gz")).dataobj) for folder in (tmp_path / "out", reference))
        assert (a == b).mean() > 0.999


def test_streams_divide_the_batch() -> None:
    forward = OpenVinoForward.__new__(OpenVinoForward)
    forward.threads = 2
    assert [forward.streams_for(b) for b in (1, 2, 3, 16)] == [1, 2, 1, 2]
    forward.threads = 6
    assert [forward.streams_for(b) for b in (16, 9, 7)] == [4, 3, 1]

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pancreas_multitask.manifest import ManifestError, load_manifest, parse_manifest

from conftest import REPO


def _data() -> dict:
    return yaml.safe_load((REPO / "data_manifest.yaml").read_text())


def test_repo_manifest_loads(manifest) -> None:
    assert manifest.dataset_name == "Dataset501_PancreasQuiz"
    assert manifest.labels == {"background": 0, "pancreas": 1, "lesion": 2}
    assert manifest.subtypes == ("subtype0", "subtype1", "subtype2")
    assert set(manifest.profiles) == {"demo", "smoke", "realct", "local", "colab"}
    assert manifest.layout.image.match("quiz_1_042_0000.nii.gz")["case"] == "quiz_1_042"
    assert manifest.layout.mask.match("quiz_1_042.nii.gz")["subtype"] == "1"
    assert manifest.layout.test_image.match("quiz_042_0000.nii.gz")["case"] == "quiz_042"
    assert manifest.layout.image.match("quiz_1_042.nii.gz") is None
    if "PANCREAS_REAL_CT_DIR" not in os.environ:  # the real CT beside the project, read in place
        assert manifest.paths("realct").raw == (REPO.parent / "shared" / "data" / "real_ct").resolve()


def test_relative_paths_resolve_against_the_manifest_folder(manifest) -> None:
    paths = manifest.paths("demo")
    assert paths.raw == REPO / "data" / "synthetic" / "demo" / "quiz"
    assert paths.nnunet_results == REPO / "work" / "demo" / "nnUNet_results"


def test_variables_and_home_are_expanded(tmp_path: Path, monkeypatch) -> None:
    data = _data()
    data["profiles"] = {"x": {"raw": "${QUIZ_TEST_DIR}/quiz", "work": "${UNSET_TEST_VAR:-~/work}", "test_answers": "${UNSET_TEST_VAR:-}"}}
    monkeypatch.setenv("QUIZ_TEST_DIR", str(tmp_path))
    monkeypatch.delenv("UNSET_TEST_VAR", raising=False)
    paths = parse_manifest(data, tmp_path / "m.yaml").paths("x")
    assert paths.raw == tmp_path / "quiz"
    assert paths.work == Path("~/work").expanduser()
    assert paths.test_answers is None


def test_unset_variable_names_field_and_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PANCREAS_QUIZ_DIR", raising=False)
    manifest = load_manifest(REPO / "data_manifest.yaml")
    with pytest.raises(ManifestError, match=r"profiles\.local\.raw.*PANCREAS_QUIZ_DIR"):
        manifest.paths("local")


def test_unknown_profile(manifest) -> None:
    with pytest.raises(ManifestError, match="profiles.nope: no such profile"):
        manifest.paths("nope")


def _set(data: dict, dotted: str, value) -> dict:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dataset.id", _DELETE, "dataset.id is missing"),
        ("dataset.id", "501", "dataset.id must be int"),
        ("dataset.id", 1234, "dataset.id must be within"),
        ("dataset.name", "Pancreas Quiz", "dataset.name must be letters"),
        ("labels.lesion", 3, "labels must be background 0, pancreas 1, lesion 2"),
        ("labels.lesion", 1, "labels must be background 0, pancreas 1, lesion 2"),
        ("labels.pancreas", _DELETE, "labels.pancreas is missing"),
        ("subtypes", "subtype0", "subtypes must be list"),
        ("subtypes", ["a", "a"], "subtypes has duplicates"),
        ("file_ending", "nii.gz", "file_ending must start"),
        ("layout.image", "quiz_(", "layout.image is not a valid regex"),
        ("layout.mask", r"^(?P<case>quiz_\d+_\d+)\.nii\.gz$", r"layout.mask lacks the named group\(s\) \['subtype'\]"),
        ("layout.labeled_splits", [], "layout.labeled_splits must be a non-empty list"),
        ("on_bad_case", "ignore", "on_bad_case must be 'error' or 'skip'"),
        ("label_mode", "multi", "label_mode must be 'regions' or 'plain'"),
        ("profiles.demo.raw", _DELETE, "profiles.demo.raw is missing"),
        ("profiles.demo.extra", "x", r"profiles.demo has unknown key\(s\) \['extra'\]"),
        ("profiles", {}, "profiles must define at least one profile"),
    ],
)
def test_broken_manifest_names_file_and_field(tmp_path: Path, field: str, value, message: str) -> None:
    path = tmp_path / "data_manifest.yaml"
    path.write_text(yaml.safe_dump(_set(_data(), field, value)))
    with pytest.raises(ManifestError, match=message) as info:
        load_manifest(path)
    assert str(path) in str(info.value)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(bad)
    with pytest.raises(ManifestError, match="cannot read the manifest"):
        load_manifest(tmp_path / "missing.yaml")

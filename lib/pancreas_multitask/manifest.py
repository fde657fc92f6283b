"""Typed loader for ``data_manifest.yaml``: the one place that describes the data and its paths."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

OnBadCase = Literal["error", "skip"]
LabelMode = Literal["regions", "plain"]
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_REQUIRED_LABELS = ("background", "pancreas", "lesion")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Layout:
    """File-name patterns of the raw quiz layout."""

    labeled_splits: tuple[str, ...]
    test_split: str
    image: re.Pattern[str]
    mask: re.Pattern[str]
    test_image: re.Pattern[str]


@dataclass(frozen=True)
class ProfilePaths:
    """Folders of one profile, already expanded and absolute."""

    raw: Path
    work: Path
    test_answers: Path | None
    results: Path | None = None  # nnU-Net's results folder when not <work>/nnUNet_results (e.g. a test's own)

    @property
    def nnunet_raw(self) -> Path:
        return self.work / "nnUNet_raw"

    @property
    def nnunet_preprocessed(self) -> Path:
        return self.work / "nnUNet_preprocessed"

    @property
    def nnunet_results(self) -> Path:
        return self.results or self.work / "nnUNet_results"


@dataclass(frozen=True)
class Manifest:
    """The validated content of ``data_manifest.yaml``."""

    path: Path
    dataset_id: int
    dataset_short_name: str
    labels: Mapping[str, int]
    subtypes: tuple[str, ...]
    file_ending: str
    layout: Layout
    on_bad_case: OnBadCase
    label_mode: LabelMode
    raw_profiles: Mapping[str, Mapping[str, str]]

    @property
    def dataset_name(self) -> str:
        """nnU-Net's folder name, e.g. ``Dataset501_PancreasQuiz``."""
        return f"Dataset{self.dataset_id:03d}_{self.dataset_short_name}"

    def with_dataset_id(self, dataset_id: int) -> "Manifest":
        """This manifest with another nnU-Net dataset id (0 keeps the manifest's)."""
        return dataclasses.replace(self, dataset_id=int(dataset_id)) if dataset_id else self

    @property
    def profiles(self) -> tuple[str, ...]:
        return tuple(self.raw_profiles)


    def paths(self, profile: str) -> ProfilePaths:
        """Expand and resolve the path block of ``profile``."""
        if profile not in self.raw_profiles:
            raise ManifestError(
                f"{self.path}: profiles.{profile}: no such profile (have: {', '.join(self.profiles)})"
            )
        block = self.raw_profiles[profile]
        base = self.path.parent

        def resolve(key: str, required: bool) -> Path | None:
            field = f"profiles.{profile}.{key}"
            value = block.get(key)
            if value is None or str(value).strip() == "":
                if required:
                    raise ManifestError(f"{self.path}: {field} is required")
                return None
            expanded = _expand(str(value), f"{self.path}: {field}")
            if not expanded.strip():
                if required:
                    raise ManifestError(f"{self.path}: {field} expands to an empty path ({value!r})")
                return None
            path = Path(expanded).expanduser()
            return (path if path.is_absolute() else base / path).resolve()

        raw, work = resolve("raw", True), resolve("work", True)
        assert raw is not None and work is not None
        return ProfilePaths(raw=raw, work=work, test_answers=resolve("test_answers", False))


def _expand(value: str, where: str) -> str:
    def sub(match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        if name in os.environ and os.environ[name] != "":
            return os.environ[name]
        if default is not None:
            return default
        raise ManifestError(f"{where}: environment variable {name} is not set (used in {value!r})")

    return _VAR.sub(sub, value)


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ManifestError(f"{where}{key} is missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ManifestError(f"{where}{key} must be {names}, got {value!r}")
    return value


def _regex(data: Mapping[str, Any], key: str, groups: set[str], where: str) -> re.Pattern[str]:
    text = _require(data, key, str, where)
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise ManifestError(f"{where}{key} is not a valid regex: {exc}") from exc
    missing = groups - set(pattern.groupindex)
    if missing:
        raise ManifestError(f"{where}{key} lacks the named group(s) {sorted(missing)}")
    return pattern


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate the parsed YAML ``data``; errors name ``path`` and the field."""
    where = f"{path}: "
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the top level must be a mapping")

    dataset = _require(data, "dataset", dict, where)
    dataset_id = _require(dataset, "id", int, f"{where}dataset.")
    if not 1 <= dataset_id <= 999:
        raise ManifestError(f"{where}dataset.id must be within 1..999, got {dataset_id}")
    short_name = _require(dataset, "name", str, f"{where}dataset.")
    if not re.fullmatch(r"[A-Za-z0-9]+", short_name):
        raise ManifestError(f"{where}dataset.name must be letters and digits only, got {short_name!r}")

    labels = _require(data, "labels", dict, where)
    for name in _REQUIRED_LABELS:
        _require(labels, name, int, f"{where}labels.")
    if (labels["background"], labels["pancreas"], labels["lesion"]) != (0, 1, 2):
        raise ManifestError(f"{where}labels must be background 0, pancreas 1, lesion 2 (the quiz masks' values), got {labels}")

    subtypes = _require(data, "subtypes", list, where)
    if len(subtypes) < 2 or not all(isinstance(s, str) and s for s in subtypes):
        raise ManifestError(f"{where}subtypes must list at least two folder names, got {subtypes!r}")
    if len(set(subtypes)) != len(subtypes):
        raise ManifestError(f"{where}subtypes has duplicates: {subtypes!r}")

    file_ending = _require(data, "file_ending", str, where)
    if not file_ending.startswith("."):
        raise ManifestError(f"{where}file_ending must start with '.', got {file_ending!r}")

    lay = _require(data, "layout", dict, where)
    lw = f"{where}layout."
    splits = _require(lay, "labeled_splits", list, lw)
    if not splits or not all(isinstance(s, str) and s for s in splits):
        raise ManifestError(f"{lw}labeled_splits must be a non-empty list of folder names, got {splits!r}")
    layout = Layout(
        labeled_splits=tuple(splits),
        test_split=_require(lay, "test_split", str, lw),
        image=_regex(lay, "image", {"case", "subtype"}, lw),
        mask=_regex(lay, "mask", {"case", "subtype"}, lw),
        test_image=_regex(lay, "test_image", {"case"}, lw),
    )

    on_bad_case = data.get("on_bad_case", "error")
    if on_bad_case not in ("error", "skip"):
        raise ManifestError(f"{where}on_bad_case must be 'error' or 'skip', got {on_bad_case!r}")

    label_mode = data.get("label_mode", "regions")
    if label_mode not in ("regions", "plain"):
        raise ManifestError(f"{where}label_mode must be 'regions' or 'plain', got {label_mode!r}")

    profiles = _require(data, "profiles", dict, where)
    if not profiles:
        raise ManifestError(f"{where}profiles must define at least one profile")
    for name, block in profiles.items():
        if not isinstance(block, dict):
            raise ManifestError(f"{where}profiles.{name} must be a mapping with raw/work paths")
        for key in ("raw", "work"):
            _require(block, key, str, f"{where}profiles.{name}.")
        unknown = set(block) - {"raw", "work", "test_answers"}
        if unknown:
            raise ManifestError(f"{where}profiles.{name} has unknown key(s) {sorted(unknown)}")

    return Manifest(
        path=path,
        dataset_id=dataset_id,
        dataset_short_name=short_name,
        labels=dict(labels),
        subtypes=tuple(subtypes),
        file_ending=file_ending,
        layout=layout,
        on_bad_case=on_bad_case,
        label_mode=label_mode,
        raw_profiles={k: {kk: ("" if vv is None else str(vv)) for kk, vv in v.items()} for k, v in profiles.items()},
    )


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest file."""
    path = Path(path).resolve()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    return parse_manifest(data, path)

"""Convert a validated quiz-layout case table into an nnU-Net v2 raw dataset.

Writes ``nnUNet_raw/DatasetNNN_Name/`` with ``imagesTr`` (train + validation), ``labelsTr`` (masks
rounded to uint8 on the image's exact grid), ``imagesTs`` (test images), ``dataset.json`` and the
subtype table. Raw files are only read. Each case is redone only when its source files or the
settings changed; ``conversion.json`` records what was converted from what.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import SimpleITK as sitk

from ..dataset.scan import Case
from ..io import atomic_path, update_text, write_json
from ..manifest import LabelMode, Manifest
from ..runtime import progress
from .subtype_table import SUBTYPE_TABLE, write_subtype_table

STATE_FILE = "conversion.json"
CONVERSION_VERSION = 1
LinkMode = Literal["copy", "symlink"]


@dataclass
class ConversionReport:
    """What one conversion run did."""

    dataset_dir: Path
    converted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def did_work(self) -> bool:
        return bool(self.converted or self.removed)

    def summary(self) -> str:
        if not self.did_work:
            return f"up to date: {len(self.unchanged)} case(s) unchanged, nothing to do ({self.dataset_dir})"
        return f"converted {len(self.converted)}, unchanged {len(self.unchanged)}, removed {len(self.removed)} case(s) -> {self.dataset_dir}"


def dataset_labels(manifest: Manifest, label_mode: LabelMode) -> tuple[dict[str, Any], list[int] | None]:
    """``labels`` and ``regions_class_order`` for dataset.json.

    ``regions``: whole pancreas = {pancreas, lesion}, lesion = {lesion}, which are the two scored structures.
    """
    pancreas, lesion = manifest.labels["pancreas"], manifest.labels["lesion"]
    if label_mode == "regions":
        return {"background": 0, "whole_pancreas": [pancreas, lesion], "lesion": lesion}, [pancreas, lesion]
    return {"background": 0, "pancreas": pancreas, "lesion": lesion}, None


def _signature(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _place_image(source: Path, target: Path, link: LinkMode) -> None:
    """Copy (or symlink) a raw image into the dataset atomically; the source is never opened for writing."""
    with atomic_path(target) as tmp:
        if link == "symlink":
            tmp.unlink()
            os.symlink(source.resolve(), tmp)
        else:
            shutil.copyfile(source, tmp)


def _write_label(image: Path, mask: Path, target: Path) -> None:
    """Round the float mask to uint8 and store it with the image's exact geometry (as SimpleITK reads it)."""
    info = sitk.ImageFileReader()
    info.SetFileName(str(image))
    info.ReadImageInformation()
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))
    label = sitk.GetImageFromArray(np.rint(values).astype(np.uint8))
    label.SetOrigin(info.GetOrigin())
    label.SetSpacing(info.GetSpacing())
    label.SetDirection(info.GetDirection())
    with atomic_path(target) as tmp:
        sitk.WriteImage(label, str(tmp), useCompression=True)


def _dataset_json(manifest: Manifest, label_mode: LabelMode, num_training: int) -> dict[str, Any]:
    labels, regions = dataset_labels(manifest, label_mode)
    data: dict[str, Any] = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": num_training,
        "file_ending": manifest.file_ending,
        "name": manifest.dataset_name,
        "description": "Pancreas (1) and pancreatic lesion (2) segmentation; lesion subtype per case in subtypes.csv.",
        "subtypes": list(manifest.subtypes),
        "label_mode": label_mode,
    }
    if regions is not None:
        data["regions_class_order"] = regions
    return data


def assert_test_unseen(train_ids: Sequence[str], test_ids: Sequence[str], where: str) -> None:
    """Raise if any test case is among the training cases."""
    leaked = sorted(set(train_ids) & set(test_ids))
    if leaked:
        raise AssertionError(f"{where}: test case(s) among the training data: {leaked}")


def convert_dataset(
    cases: Sequence[Case],
    manifest: Manifest,
    nnunet_raw: Path,
    label_mode: LabelMode | None = None,
    link: LinkMode = "copy",
) -> ConversionReport:
    """Convert the scanned ``cases`` into ``nnunet_raw/<dataset name>``; idempotent."""
    mode = label_mode or manifest.label_mode
    dataset_dir = Path(nnunet_raw) / manifest.dataset_name
    report = ConversionReport(dataset_dir)
    state_file = dataset_dir / STATE_FILE
    settings = {"version": CONVERSION_VERSION, "label_mode": mode, "link": link}
    previous: dict[str, Any] = {}
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("settings") == settings:
            previous = state.get("cases", {})
    test_split = manifest.layout.test_split
    ending = manifest.file_ending
    train = [c for c in cases if c.split != test_split]
    test = [c for c in cases if c.split == test_split]
    assert_test_unseen([c.case_id for c in train], [c.case_id for c in test], str(dataset_dir))

    def targets(case: Case) -> list[Path]:
        if case.split == test_split:
            return [dataset_dir / "imagesTs" / f"{case.case_id}_0000{ending}"]
        return [dataset_dir / "imagesTr" / f"{case.case_id}_0000{ending}", dataset_dir / "labelsTr" / f"{case.case_id}{ending}"]

    for folder in ("imagesTr", "labelsTr", "imagesTs"):  # temporaries of a killed run would confuse nnU-Net
        for stale in (dataset_dir / folder).glob(".*") if (dataset_dir / folder).is_dir() else ():
            stale.unlink()
    current: dict[str, Any] = {}
    for case in progress(list(cases), "converting", unit="case"):
        signature = {"split": case.split, "subtype": case.subtype, "image": _signature(case.image), "mask": _signature(case.mask)}
        current[case.case_id] = signature
        if previous.get(case.case_id) == signature and all(p.exists() for p in targets(case)):
            report.unchanged.append(case.case_id)
            continue
        if case.case_id in previous:  # the case may have moved between splits
            for stale in _old_targets(dataset_dir, case.case_id, ending):
                stale.unlink(missing_ok=True)
        image_target, *label_target = targets(case)
        _place_image(case.image, image_target, link)
        if label_target:
            assert case.mask is not None
            _write_label(case.image, case.mask, label_target[0])
        report.converted.append(case.case_id)
    for case_id in sorted(set(previous) - set(current)):
        for stale in _old_targets(dataset_dir, case_id, ending):
            stale.unlink(missing_ok=True)
        report.removed.append(case_id)

    update_text(dataset_dir / "dataset.json", json.dumps(_dataset_json(manifest, mode, len(train)), indent=2) + "\n")
    rows = [(c.case_id, int(c.subtype), c.split) for c in train if c.subtype is not None]
    write_subtype_table(dataset_dir / SUBTYPE_TABLE, rows, manifest.subtypes)
    if report.did_work or not state_file.exists():
        write_json(state_file, {"settings": settings, "cases": current})
    return report


def _old_targets(dataset_dir: Path, case_id: str, ending: str) -> list[Path]:
    return [
        dataset_dir / "imagesTr" / f"{case_id}_0000{ending}",
        dataset_dir / "labelsTr" / f"{case_id}{ending}",
        dataset_dir / "imagesTs" / f"{case_id}_0000{ending}",
    ]

"""The prepare stage: validate -> convert -> integrity check, fingerprint, ResEncM plan, preprocess -> split.

Each step is skipped when its inputs did not change (``force`` redoes planning and preprocessing).
``prepare(workspace, params)`` is the stage's one entry (01_prepare and the CLI
``python -m pancreas_multitask.experiment_planning --profile demo`` both call it); it writes the scan's
case table and ``prepare.json``, the records the later stages read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..dataset.scan import ScanResult, scan_raw, write_case_table
from ..io import write_json
from ..manifest import Manifest, ProfilePaths
from ..runtime import available_cores, is_headless
from ..workspace import Workspace
from .dataset_conversion import STATE_FILE, ConversionReport, convert_dataset
from .plans import CONFIGURATION, CPU_PLANS, RESENC_M, ReducedPlan, derive_reduced_plans, plan_resenc_m, plan_summary
from .splits import SplitMode, make_splits, write_splits
from .subtype_table import SUBTYPE_TABLE, read_subtype_table

PREPARE_STATE = "prepare_state.json"


@dataclass
class PreprocessReport:
    plans_file: Path
    skipped: bool
    summary: dict[str, Any]


def _state_key(raw_dir: Path, plans_name: str, reduced: ReducedPlan | None) -> str:
    digest = hashlib.sha256()
    for name in ("dataset.json", STATE_FILE):
        digest.update((raw_dir / name).read_bytes())
    digest.update(json.dumps({"plans": plans_name, "reduced": reduced.as_dict() if reduced else None, "nnunetv2": importlib.metadata.version("nnunetv2")}, sort_keys=True).encode())
    return digest.hexdigest()


def plan_and_preprocess(
    manifest: Manifest,
    paths: ProfilePaths,
    plans_name: str = RESENC_M,
    num_processes: int | None = None,
    reduced: ReducedPlan | None = None,
    force: bool = False,
) -> PreprocessReport:
    """nnU-Net's integrity check, fingerprint, ResEncM planning (plus the reduced variant) and preprocessing."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    if plans_name not in (RESENC_M, CPU_PLANS):
        raise ValueError(f"plans must be {RESENC_M!r} or {CPU_PLANS!r}, got {plans_name!r}")
    if plans_name == CPU_PLANS and reduced is None:
        reduced = ReducedPlan()
    processes = num_processes or available_cores()
    raw_dir = paths.nnunet_raw / manifest.dataset_name
    pre_dir = paths.nnunet_preprocessed / manifest.dataset_name
    plans_file = pre_dir / f"{plans_name}.json"
    state_file = pre_dir / PREPARE_STATE
    key = _state_key(raw_dir, plans_name, reduced)
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    current = not force and state.get("key") == key and plans_file.exists()
    if current and state.get("preprocessed", True):
        plans = json.loads(plans_file.read_text())
        if (pre_dir / plans["configurations"][CONFIGURATION]["data_identifier"]).is_dir():
            return PreprocessReport(plans_file, True, plan_summary(plans))

    show = not is_headless()
    if not current:  # a run killed during preprocessing resumes here, with its plans
        verify_dataset_integrity(str(raw_dir), processes)
        extract_fingerprint_dataset(manifest.dataset_id, num_processes=processes, clean=True, verbose=False, show_progress_bar=show)
        plans = plan_resenc_m(manifest.dataset_id)
        if reduced is not None:
            write_json(pre_dir / f"{CPU_PLANS}.json", derive_reduced_plans(plans, reduced))
        write_json(state_file, {"key": key, "plans": plans_name, "preprocessed": False})
    preprocess_dataset(manifest.dataset_id, plans_name, configurations=(CONFIGURATION,), num_processes=(processes,), show_progress_bar=show)
    shutil.copyfile(raw_dir / SUBTYPE_TABLE, pre_dir / SUBTYPE_TABLE)
    write_json(state_file, {"key": key, "plans": plans_name, "preprocessed": True})
    return PreprocessReport(plans_file, False, plan_summary(json.loads(plans_file.read_text())))


def write_fold_splits(manifest: Manifest, paths: ProfilePaths, mode: SplitMode) -> Path:
    """``splits_final.json`` from the subtype table; test cases (imagesTs) must appear nowhere."""
    raw_dir = paths.nnunet_raw / manifest.dataset_name
    table = read_subtype_table(raw_dir / SUBTYPE_TABLE, len(manifest.subtypes))
    test_ids = [p.name.removesuffix(f"_0000{manifest.file_ending}") for p in (raw_dir / "imagesTs").glob(f"*{manifest.file_ending}")]
    train_split, val_split = manifest.layout.labeled_splits[:2]
    return write_splits(paths.nnunet_preprocessed / manifest.dataset_name, make_splits(table, mode, train_split, val_split), test_ids)


@dataclass
class PrepareRecord:
    """What the stage did and wrote; ``record_file`` (``prepare.json``) holds its summary."""

    scan: ScanResult
    conversion: ConversionReport
    preprocessing: PreprocessReport
    splits_file: Path
    record_file: Path


def prepare(workspace: Workspace, params: Mapping[str, Any]) -> PrepareRecord:
    """The whole stage with a profile's parameters (``cpu_plan``, ``label_mode``, ``split_mode``, ``num_processes``,
    ``force``, ``on_bad_case``; empty values keep the manifest's or the defaults)."""
    manifest, paths, plans_name = workspace.manifest, workspace.paths, workspace.plans
    reduced = ReducedPlan.from_dict(params.get("cpu_plan") or {}) if plans_name == CPU_PLANS else None
    split_mode: SplitMode = params.get("split_mode") or "given"
    scan = scan_raw(paths.raw, manifest, params.get("on_bad_case") or None)
    conversion = convert_dataset(scan.cases, manifest, paths.nnunet_raw, params.get("label_mode") or None)
    write_case_table(workspace.case_table, scan)
    preprocessing = plan_and_preprocess(manifest, paths, plans_name, int(params.get("num_processes") or 0) or None, reduced, bool(params.get("force")))
    splits_file = write_fold_splits(manifest, paths, split_mode)
    folds = json.loads(splits_file.read_text())
    dataset_json = json.loads((workspace.raw_dataset / "dataset.json").read_text())
    record = workspace.record("prepare")
    write_json(record, {
        "dataset": manifest.dataset_name, "plans": plans_name, "plans_file": str(preprocessing.plans_file), "plan": preprocessing.summary,
        "label_mode": dataset_json.get("label_mode"), "split_mode": split_mode,
        "folds": [{"train": len(f["train"]), "val": len(f["val"])} for f in folds],
        "cases": {split: len(workspace.cases(split)) for split in workspace.splits}, "case_table": str(workspace.case_table),
        "left_out_by_the_scan": scan.skipped,
        "conversion": {"converted": len(conversion.converted), "unchanged": len(conversion.unchanged), "removed": len(conversion.removed)},
        "preprocessing_skipped": preprocessing.skipped,
    })
    return PrepareRecord(scan, conversion, preprocessing, splits_file, record)

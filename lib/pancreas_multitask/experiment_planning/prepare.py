"""The prepare stage: validate -> convert -> integrity check, fingerprint, ResEncM plan, preprocess -> split.

Each step is skipped when its inputs did not change (``force`` redoes planning and preprocessing).
CLI: ``python -m pancreas_multitask.experiment_planning.prepare --profile demo [--plans ...]``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dataset.scan import scan_raw
from ..io import write_json
from ..manifest import Manifest, ProfilePaths, load_manifest
from ..runtime import available_cores, configure_nnunet, is_headless
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
    if not force and state_file.exists() and plans_file.exists() and json.loads(state_file.read_text()).get("key") == key:
        plans = json.loads(plans_file.read_text())
        if (pre_dir / plans["configurations"][CONFIGURATION]["data_identifier"]).is_dir():
            return PreprocessReport(plans_file, True, plan_summary(plans))

    show = not is_headless()
    verify_dataset_integrity(str(raw_dir), processes)
    extract_fingerprint_dataset(manifest.dataset_id, num_processes=processes, clean=True, verbose=False, show_progress_bar=show)
    plans = plan_resenc_m(manifest.dataset_id)
    if reduced is not None:
        write_json(pre_dir / f"{CPU_PLANS}.json", derive_reduced_plans(plans, reduced))
    preprocess_dataset(manifest.dataset_id, plans_name, configurations=(CONFIGURATION,), num_processes=(processes,), show_progress_bar=show)
    shutil.copyfile(raw_dir / SUBTYPE_TABLE, pre_dir / SUBTYPE_TABLE)
    write_json(state_file, {"key": key, "plans": plans_name})
    return PreprocessReport(plans_file, False, plan_summary(json.loads(plans_file.read_text())))


def write_fold_splits(manifest: Manifest, paths: ProfilePaths, mode: SplitMode) -> Path:
    """``splits_final.json`` from the subtype table; test cases (imagesTs) must appear nowhere."""
    raw_dir = paths.nnunet_raw / manifest.dataset_name
    table = read_subtype_table(raw_dir / SUBTYPE_TABLE, len(manifest.subtypes))
    test_ids = [p.name.removesuffix(f"_0000{manifest.file_ending}") for p in (raw_dir / "imagesTs").glob(f"*{manifest.file_ending}")]
    train_split, val_split = manifest.layout.labeled_splits[:2]
    return write_splits(paths.nnunet_preprocessed / manifest.dataset_name, make_splits(table, mode, train_split, val_split), test_ids)


def prepare(
    manifest: Manifest,
    paths: ProfilePaths,
    plans_name: str,
    split_mode: SplitMode = "given",
    num_processes: int | None = None,
    reduced: ReducedPlan | None = None,
    force: bool = False,
    on_bad_case: str | None = None,
) -> tuple[ConversionReport, PreprocessReport, Path]:
    """The whole stage, as the notebook runs it step by step."""
    scan = scan_raw(paths.raw, manifest, on_bad_case or None)  # type: ignore[arg-type]
    conversion = convert_dataset(scan.cases, manifest, paths.nnunet_raw)
    preprocessing = plan_and_preprocess(manifest, paths, plans_name, num_processes, reduced, force)
    return conversion, preprocessing, write_fold_splits(manifest, paths, split_mode)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert, plan (ResEncM), preprocess and split a quiz-layout dataset.")
    parser.add_argument("--manifest", type=Path, default=Path("data_manifest.yaml"))
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--plans", default=CPU_PLANS, choices=(RESENC_M, CPU_PLANS))
    parser.add_argument("--split", default="given", choices=("given", "cv5"))
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="sets the CPU-specific nnU-Net variables")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    manifest = load_manifest(args.manifest)
    paths = manifest.paths(args.profile)
    configure_nnunet(paths, args.device)
    conversion, preprocessing, splits = prepare(manifest, paths, args.plans, args.split, args.processes, force=args.force)
    print(conversion.summary())
    print(("preprocessing up to date: " if preprocessing.skipped else "preprocessed: ") + str(preprocessing.plans_file))
    print("splits:", splits)


if __name__ == "__main__":
    main()

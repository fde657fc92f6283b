"""Start the multitask trainer the project's way: from the class itself, no name lookup.

This is what ``nnunetv2.run.run_training.get_trainer_from_args`` does, minus
``recursive_find_trainer_class_by_name`` (which imports every trainer module, timm and torchvision
included, and so fails beside the CPU torch). CLI:
``python -m pancreas_multitask.training.run --profile demo --plans nnUNetResEncUNetMPlans_cpu --epochs 5``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..io import write_json
from ..manifest import Manifest, ProfilePaths, load_manifest
from ..runtime import configure_nnunet, detect_device
from .settings import MultitaskSettings

CONFIGURATION = "3d_fullres"
METRICS_FILE = "training_metrics.csv"  # written by the trainer every epoch


@dataclass
class TrainingResult:
    output_folder: Path
    metrics_file: Path
    stop_reason: str
    selected_checkpoint: Path
    final_validation: Path | None  # nnU-Net's summary.json of the full-volume validation

    def final_dice(self) -> dict[str, float]:
        """Mean full-volume Dice per dataset.json label name, from nnU-Net's final validation."""
        return final_validation_dice(self.final_validation, json.loads((self.output_folder.parent / "dataset.json").read_text()))


def final_validation_dice(summary_file: Path | None, dataset_json: dict) -> dict[str, float]:
    """Map nnU-Net's summary keys (a label ``1`` or a region ``(1, 2)``) to the dataset.json names."""
    if summary_file is None:
        return {}
    means = json.loads(Path(summary_file).read_text())["mean"]
    by_key = {tuple(np.atleast_1d(ast.literal_eval(k)).tolist()): v["Dice"] for k, v in means.items()}
    return {name: float(by_key[tuple(np.atleast_1d(value).tolist())]) for name, value in dataset_json["labels"].items() if name != "background"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_trainer(
    preprocessed_dataset_dir: Path,
    plans_name: str,
    fold: int | str,
    device: str,
    continue_training: bool = False,
    trainer_class: type | None = None,
):
    """Instantiate the trainer from its class, with the plans and dataset.json of the preprocessed folder.

    nnunetv2 is imported here, not at module import, so that the CLI can set the nnUNet_* variables first.
    """
    from .trainers.nnUNetTrainerMultitask import nnUNetTrainerMultitask

    trainer_class = trainer_class or nnUNetTrainerMultitask
    plans = json.loads((preprocessed_dataset_dir / f"{plans_name}.json").read_text())
    plans["continue_training"] = continue_training  # nnUNetTrainer.__init__ pops it without a default
    dataset_json = json.loads((preprocessed_dataset_dir / "dataset.json").read_text())
    return trainer_class(plans=plans, configuration=CONFIGURATION, fold=fold, dataset_json=dataset_json, device=torch.device(device))


TRAINER_NAME = "nnUNetTrainerMultitask"
DONE_FILE = "training_done.json"


def model_folder(manifest: Manifest, plans_name: str) -> Path:
    """``$nnUNet_results/<dataset>/<trainer>__<plans>__3d_fullres``, where nnU-Net's trainer writes it."""
    if not os.environ.get("nnUNet_results"):
        raise RuntimeError("nnUNet_results is not set; call runtime.configure_nnunet() first")
    return Path(os.environ["nnUNet_results"]) / manifest.dataset_name / f"{TRAINER_NAME}__{plans_name}__{CONFIGURATION}"


def train(
    manifest: Manifest,
    paths: ProfilePaths,
    plans_name: str,
    settings: MultitaskSettings,
    fold: int | str = 0,
    device: str = "cpu",
    resume: bool = False,
    final_validation: bool = True,
    force: bool = False,
) -> TrainingResult:
    """Train (or resume) one fold, restore the selected checkpoint and run nnU-Net's full-volume validation.

    A fold that already finished with the same settings is not trained again unless ``force``.
    """
    from nnunetv2.run.run_training import maybe_load_checkpoint

    output = model_folder(manifest, plans_name) / f"fold_{fold}"
    done = output / DONE_FILE
    summary = output / "validation" / "summary.json"
    if not (force or resume) and done.is_file() and (summary.is_file() or not final_validation):
        record = json.loads(done.read_text())
        if record["settings"] == json.loads(json.dumps(settings.to_dict())):
            print(f"already trained with these settings ({output}); force=True retrains", flush=True)
            return TrainingResult(output, output / METRICS_FILE, record["stop_reason"], output / "checkpoint_best.pth", summary if final_validation else None)

    seed_everything(settings.seed)
    trainer = build_trainer(paths.nnunet_preprocessed / manifest.dataset_name, plans_name, fold, device, continue_training=resume)
    trainer.configure(settings)
    if resume:
        maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
    trainer.run_training()
    if final_validation:
        trainer.perform_actual_validation(save_probabilities=False)
    stop_reason = trainer.stop_reason or f"reached the maximum of {trainer.num_epochs} epochs"
    write_json(done, {"settings": settings.to_dict(), "stop_reason": stop_reason})
    return TrainingResult(output, output / METRICS_FILE, stop_reason, output / "checkpoint_best.pth", summary if final_validation else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the multitask nnU-Net (the project's way, no trainer name lookup).")
    parser.add_argument("--manifest", type=Path, default=Path("data_manifest.yaml"))
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--plans", default="nnUNetResEncUNetMPlans_cpu")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--settings", type=Path, help="JSON file with MultitaskSettings fields")
    parser.add_argument("--epochs", type=int, help="override num_epochs")
    parser.add_argument("--c", dest="resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--force", action="store_true", help="retrain even if this fold finished with the same settings")
    args = parser.parse_args(argv)
    manifest = load_manifest(args.manifest)
    paths = manifest.paths(args.profile)
    device = detect_device(args.device)
    configure_nnunet(paths, device)
    settings = MultitaskSettings.from_dict(json.loads(args.settings.read_text())) if args.settings else MultitaskSettings()
    if args.epochs:
        settings = replace(settings, num_epochs=args.epochs)
    fold = args.fold if args.fold == "all" else int(args.fold)
    result = train(manifest, paths, args.plans, settings, fold, device, args.resume, force=args.force)
    print(f"{result.stop_reason}\nmodel: {result.output_folder}\nper-epoch metrics: {result.metrics_file}")


if __name__ == "__main__":
    main()

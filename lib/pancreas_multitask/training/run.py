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
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

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


def train(
    manifest: Manifest,
    paths: ProfilePaths,
    plans_name: str,
    settings: MultitaskSettings,
    fold: int | str = 0,
    device: str = "cpu",
    resume: bool = False,
    final_validation: bool = True,
) -> TrainingResult:
    """Train (or resume) one fold, restore the selected checkpoint and run nnU-Net's full-volume validation."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    seed_everything(settings.seed)
    trainer = build_trainer(paths.nnunet_preprocessed / manifest.dataset_name, plans_name, fold, device, continue_training=resume)
    trainer.configure(settings)
    if resume:
        maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
    trainer.run_training()
    output = Path(trainer.output_folder)
    summary = None
    if final_validation:
        trainer.perform_actual_validation(save_probabilities=False)
        summary = output / "validation" / "summary.json"
    return TrainingResult(
        output_folder=output,
        metrics_file=output / METRICS_FILE,
        stop_reason=trainer.stop_reason or f"reached the maximum of {trainer.num_epochs} epochs",
        selected_checkpoint=output / "checkpoint_best.pth",
        final_validation=summary,
    )


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
    args = parser.parse_args(argv)
    manifest = load_manifest(args.manifest)
    paths = manifest.paths(args.profile)
    device = detect_device(args.device)
    configure_nnunet(paths, device)
    settings = MultitaskSettings.from_dict(json.loads(args.settings.read_text())) if args.settings else MultitaskSettings()
    if args.epochs:
        settings = replace(settings, num_epochs=args.epochs)
    fold = args.fold if args.fold == "all" else int(args.fold)
    result = train(manifest, paths, args.plans, settings, fold, device, args.resume)
    print(f"{result.stop_reason}\nmodel: {result.output_folder}\nper-epoch metrics: {result.metrics_file}")


if __name__ == "__main__":
    main()

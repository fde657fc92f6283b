"""Start the multitask trainer the project's way: from the class itself, no name lookup.

This is what ``nnunetv2.run.run_training.get_trainer_from_args`` does, minus
``recursive_find_trainer_class_by_name`` (which imports every trainer module, timm and torchvision
included, and so fails beside the CPU torch). CLI:
``python -m pancreas_multitask.training.run --profile demo`` (the profile's parameters, as run_all.sh passes them).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ..io import write_json
from ..manifest import Manifest, ProfilePaths, load_manifest
from ..postprocessing import PP_JSON, PP_PICKLE
from ..runtime import available_cores, configure_nnunet, detect_device
from .settings import MultitaskSettings, settings_from_parameters

CONFIGURATION = "3d_fullres"
METRICS_FILE = "training_metrics.csv"  # written by the trainer every epoch


@dataclass
class TrainingResult:
    output_folder: Path
    metrics_file: Path
    stop_reason: str
    selected_checkpoint: Path
    final_validation: Path | None  # nnU-Net's summary.json of the full-volume validation
    postprocessing: Path | None = None  # nnU-Net's postprocessing.json, determined on that validation

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
TRAINERS_FOLDER = Path(__file__).parent / "trainers"  # what nnUNet_extTrainer points at
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
    num_gpus: int = 1,
) -> TrainingResult:
    """Train (or resume) one fold, restore the selected checkpoint and run nnU-Net's full-volume validation.

    ``num_gpus`` > 1 trains with nnU-Net's own DDP launcher (``run_training(..., num_gpus=N)``, what
    ``nnUNetv2_train -num_gpus N`` does), which finds the trainer by name through ``nnUNet_extTrainer``.

    A fold that already finished with the same settings is not trained again unless ``force``, also
    with ``resume`` (a Colab session re-running the notebook after training finished skips it).
    """
    from nnunetv2.run.run_training import maybe_load_checkpoint

    output = model_folder(manifest, plans_name) / f"fold_{fold}"
    done = output / DONE_FILE
    summary = output / "validation" / "summary.json"
    record = {"settings": json.loads(json.dumps(settings.to_dict())), "inputs": training_inputs(paths, manifest, plans_name)}
    gt_folder = paths.nnunet_preprocessed / manifest.dataset_name / "gt_segmentations"
    if not force and done.is_file() and (summary.is_file() or not final_validation):
        previous = json.loads(done.read_text())
        if {k: previous.get(k) for k in record} == record:
            print(f"already trained with these settings and data ({output}); force=True retrains", flush=True)
            pp = ensure_postprocessing(output, gt_folder) if final_validation else None
            return TrainingResult(output, output / METRICS_FILE, previous["stop_reason"], output / "checkpoint_best.pth", summary if final_validation else None, pp)
    done.unlink(missing_ok=True)  # from here on the fold is not finished
    for stale in (PP_PICKLE, PP_JSON):  # an older model's postprocessing must not outlive it
        (output / stale).unlink(missing_ok=True)

    seed_everything(settings.seed)
    if num_gpus > 1:
        stop_reason = train_ddp(manifest, plans_name, settings, fold, num_gpus, resume, output)
        pp = ensure_postprocessing(output, gt_folder) if summary.is_file() else None  # nnU-Net's launcher validates at the end
        write_json(done, {**record, "stop_reason": stop_reason})
        return TrainingResult(output, output / METRICS_FILE, stop_reason, output / "checkpoint_best.pth", summary, pp)
    trainer = build_trainer(paths.nnunet_preprocessed / manifest.dataset_name, plans_name, fold, device, continue_training=resume)
    trainer.configure(settings)
    if resume:
        maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
    trainer.run_training()
    pp = None
    if final_validation:
        trainer.perform_actual_validation(save_probabilities=False)
        pp = ensure_postprocessing(output, gt_folder, force=True)
    stop_reason = trainer.stop_reason or f"reached the maximum of {trainer.num_epochs} epochs"
    write_json(done, {**record, "stop_reason": stop_reason})
    return TrainingResult(output, output / METRICS_FILE, stop_reason, output / "checkpoint_best.pth", summary if final_validation else None, pp)


def ensure_postprocessing(fold_folder: Path, gt_folder: Path, force: bool = False) -> Path:
    """nnU-Net's postprocessing for this fold, determined on its full-volume validation unless already there."""
    from ..postprocessing import describe, determine_for_fold, load_postprocessing

    if force or not (fold_folder / PP_PICKLE).is_file():
        determine_for_fold(fold_folder, gt_folder, available_cores())
        print(f"postprocessing (determined on the validation split): {describe(load_postprocessing(fold_folder / PP_PICKLE))}", flush=True)
    return fold_folder / PP_JSON


def train_ddp(manifest: Manifest, plans_name: str, settings: MultitaskSettings, fold: int | str, num_gpus: int, resume: bool, output: Path) -> str:
    """Multi-GPU training through nnU-Net's DDP launcher; the trainer reads ``settings`` from the fold folder.

    nnU-Net's launcher always runs its final validation (with the restored best weights) and trains on CUDA.
    """
    from nnunetv2.run.run_training import run_training

    output.mkdir(parents=True, exist_ok=True)
    settings.save(output)  # nnUNetTrainerMultitask.__init__ loads them in every DDP process
    searched = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p and p != str(TRAINERS_FOLDER)]
    os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(TRAINERS_FOLDER), *searched])
    run_training(manifest.dataset_name, CONFIGURATION, fold, TRAINER_NAME, plans_name, num_gpus=num_gpus, continue_training=resume)
    return f"trained on {num_gpus} GPUs with nnU-Net's DDP; the stop reason is in the training log"


def training_inputs(paths: ProfilePaths, manifest: Manifest, plans_name: str) -> str:
    """Hash of what training reads besides its settings: plans, dataset.json, splits, preprocessing state."""
    pre = paths.nnunet_preprocessed / manifest.dataset_name
    digest = hashlib.sha256()
    for name in (f"{plans_name}.json", "dataset.json", "splits_final.json", "prepare_state.json", "subtypes.csv"):
        digest.update(name.encode() + ((pre / name).read_bytes() if (pre / name).is_file() else b"-"))
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the multitask nnU-Net with a profile's parameters (no trainer name lookup).")
    parser.add_argument("--profile", default="demo", help="reads notebooks/params/<profile>.yaml and the manifest's paths")
    parser.add_argument("--manifest", type=Path, default=Path("data_manifest.yaml"))
    parser.add_argument("--params", type=Path, help="extra YAML whose keys override the profile's")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--epochs", type=int, help="override the profile's epochs")
    parser.add_argument("--c", dest="resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--force", action="store_true", help="retrain even if this fold finished with the same settings and data")
    parser.add_argument("--num_gpus", type=int, default=1, help="GPUs for nnU-Net's DDP training (default 1)")
    args = parser.parse_args(argv)
    params = yaml.safe_load((Path("notebooks") / "params" / f"{args.profile}.yaml").read_text()) or {}
    if args.params:
        params.update(yaml.safe_load(args.params.read_text()) or {})
    if args.epochs:
        params["epochs"] = args.epochs
    manifest = load_manifest(args.manifest).with_dataset_id(params.get("dataset_id", 0))
    paths = manifest.paths(args.profile)
    device = detect_device(params.get("device", "auto"))
    configure_nnunet(paths, device)
    settings = settings_from_parameters(params, len(manifest.subtypes))
    fold = args.fold if args.fold == "all" else int(args.fold)
    result = train(manifest, paths, params.get("plans", "nnUNetResEncUNetMPlans"), settings, fold, device, args.resume, force=args.force, num_gpus=args.num_gpus)
    print(f"{result.stop_reason}\nmodel: {result.output_folder}\nper-epoch metrics: {result.metrics_file}")


if __name__ == "__main__":
    main()

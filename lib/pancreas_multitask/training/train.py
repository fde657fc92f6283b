"""Start the multitask trainer the project's way: from the class itself, no name lookup.

This is what ``nnunetv2.run.run_training.get_trainer_from_args`` does, minus
``recursive_find_trainer_class_by_name`` (which imports every trainer module, timm and torchvision
included, and so fails beside the CPU torch). ``train(workspace, settings, ...)`` is the stage's entry
(02_train and the CLI ``python -m pancreas_multitask.training --profile demo`` both call it).
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..io import remove_stale_temporaries, write_json
from ..model.calibration import Calibration
from ..model.folders import AGREEMENT_FILE, CASE_VALIDATION_FILE, CONFIGURATION, DONE_FILE, METRICS_FILE, SELECTED_CHECKPOINT, TRAINER_NAME
from ..model.settings import MultitaskSettings
from ..postprocessing import PP_CASES, PP_JSON, PP_PICKLE, decision_line
from ..runtime import add_trainer_folder, available_cores
from ..workspace import Workspace


@dataclass
class TrainingResult:
    output_folder: Path
    metrics_file: Path
    stop_reason: str
    selected_checkpoint: Path
    final_validation: Path | None  # nnU-Net's summary.json of the full-volume validation
    postprocessing: Path | None = None  # nnU-Net's postprocessing.json, determined on that validation
    selection: dict[str, Any] = field(default_factory=dict)  # which checkpoint, chosen on which split, with what
    record_file: Path | None = None  # train.json, the record the later stages read

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


TRAINERS_FOLDER = Path(__file__).parent / "trainers"  # what nnUNet_extTrainer points at


def train(
    workspace: Workspace,
    settings: MultitaskSettings,
    device: str = "cpu",
    resume: bool = False,
    final_validation: bool = True,
    force: bool = False,
    num_gpus: int = 1,
) -> TrainingResult:
    """Train (or resume) the workspace's fold, restore the selected checkpoint and run nnU-Net's full-volume validation.

    ``num_gpus`` > 1 trains with nnU-Net's own DDP launcher (``run_training(..., num_gpus=N)``, what
    ``nnUNetv2_train -num_gpus N`` does), which finds the trainer by name through ``nnUNet_extTrainer``.

    A fold that already finished with the same settings is not trained again unless ``force``, also
    with ``resume`` (a Colab session re-running the notebook after training finished skips it).
    """
    from nnunetv2.run.run_training import maybe_load_checkpoint

    output, fold, plans_name = workspace.fold_folder, workspace.fold, workspace.plans
    done = output / DONE_FILE
    summary = output / "validation" / "summary.json"
    record = {"settings": json.loads(json.dumps(settings.to_dict())), "inputs": training_inputs(workspace)}
    gt_folder = workspace.preprocessed / "gt_segmentations"
    if not force and done.is_file() and (summary.is_file() or not final_validation):
        previous = json.loads(done.read_text())
        if {k: previous.get(k) for k in record} == record:
            print(f"already trained with these settings and data ({output}); force=True retrains", flush=True)
            pp = ensure_postprocessing(workspace, gt_folder) if final_validation else None
            return _recorded(workspace, settings, TrainingResult(output, output / METRICS_FILE, previous["stop_reason"], output / SELECTED_CHECKPOINT, summary if final_validation else None, pp))
    done.unlink(missing_ok=True)  # from here on the fold is not finished
    for stale in (PP_PICKLE, PP_JSON, PP_CASES):  # an older model's postprocessing must not outlive it
        (output / stale).unlink(missing_ok=True)
    if output.is_dir():  # what a killed run left half-written (e.g. a checkpoint); only this training writes here
        remove_stale_temporaries(output, older_than_s=0)

    seed_everything(settings.seed)
    if num_gpus > 1:
        stop_reason = train_ddp(workspace, settings, num_gpus, resume)
        pp = ensure_postprocessing(workspace, gt_folder) if summary.is_file() else None  # nnU-Net's launcher validates at the end
        write_json(done, {**record, "stop_reason": stop_reason})
        return _recorded(workspace, settings, TrainingResult(output, output / METRICS_FILE, stop_reason, output / SELECTED_CHECKPOINT, summary if summary.is_file() else None, pp))
    trainer = build_trainer(workspace.preprocessed, plans_name, fold, device, continue_training=resume)
    if Path(trainer.output_folder).resolve() != output.resolve():  # nnU-Net takes its folder from nnUNet_results
        raise RuntimeError(f"nnU-Net would train into {trainer.output_folder}, not {output}: call runtime.configure_nnunet(paths) first")
    trainer.configure(settings)
    if resume:
        maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
    trainer.run_training()
    pp = None
    if final_validation:
        trainer.perform_actual_validation(save_probabilities=False)
        pp = ensure_postprocessing(workspace, gt_folder, force=True)
    stop_reason = trainer.stop_reason or f"reached the maximum of {trainer.num_epochs} epochs"
    write_json(done, {**record, "stop_reason": stop_reason})
    return _recorded(workspace, settings, TrainingResult(output, output / METRICS_FILE, stop_reason, output / SELECTED_CHECKPOINT, summary if final_validation else None, pp))


def selection_summary(workspace: Workspace, result: TrainingResult) -> dict[str, Any]:
    """Which checkpoint, selected at which epoch on which split, with its validation numbers (pseudo-Dice is
    nnU-Net's patch estimate, the full-volume Dice its final validation) and the estimator check."""
    if not result.metrics_file.is_file():  # nnU-Net's DDP launcher with another trainer's logging
        return {"selected checkpoint": result.selected_checkpoint.name, "stopped because": result.stop_reason}
    metrics = pd.read_csv(result.metrics_file)
    best = int(metrics["val_criterion"].idxmax())
    row = metrics.loc[best]
    full_volume = result.final_dice()
    folds = json.loads((workspace.preprocessed / "splits_final.json").read_text())
    n_val = len(folds[int(workspace.fold)]["val"]) if str(workspace.fold).isdigit() else 0
    agreement_file = result.output_folder / AGREEMENT_FILE
    agreement = json.loads(agreement_file.read_text()) if agreement_file.is_file() else None
    pseudo = [c.removeprefix("pseudo_dice_") for c in metrics.columns if c.startswith("pseudo_dice_")]
    return {
        "selected checkpoint": result.selected_checkpoint.name,
        "selected at epoch": best,
        "selected on": f"fold {workspace.fold}: {workspace.selection_split()} ({n_val} cases)",
        "criterion": _rounded(row["val_criterion"]),
        "case-level macro-F1 (val)": _rounded(row["val_macro_f1"]),  # None: not measured (one subtype)
        "case-level accuracy (val)": _rounded(row["val_accuracy"]),
        **case_level_chance(result.output_folder, best, list(workspace.manifest.subtypes)),
        **{f"pseudo-Dice {name} (val patches)": _rounded(row[f"pseudo_dice_{name}"]) for name in pseudo},
        **{f"full-volume Dice {name} (val, nnU-Net)": round(dice, 4) for name, dice in full_volume.items()},
        "postprocessing (nnU-Net, chosen on the selection split)": decision_line(result.output_folder) if result.postprocessing else "not determined",
        "subtype temperature (fitted on the selection split)": _temperature(result.output_folder),
        "training pass vs deployed estimator (same subtype, val)": f"{agreement['same_subtype']}/{agreement['cases']} ({agreement['deployed_estimator'].split(':')[0]})" if agreement else "not checked",
        "stopped because": result.stop_reason,
    }


def _rounded(value: float) -> float | None:
    """A value for train.json: 4 decimals, None for NaN (strict JSON has no NaN)."""
    return None if pd.isna(value) else round(float(value), 4)


def case_level_chance(fold_folder: Path, epoch: int, class_names: list[str]) -> dict[str, str]:
    """Beside the selected epoch's case-level macro-F1: its CI, the chance line on the same cases and the subtype answers
    (``case_validation.json``); empty when that epoch's answers were not recorded (one subtype: no F1 at all)."""
    from ..evaluation.chance import chance_line, collapse_warnings, describe, prediction_histogram
    from ..evaluation.metrics import macro_f1, classification_ci

    path = fold_folder / CASE_VALIDATION_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    answers = record.get("epochs", {}).get(str(epoch))
    if not answers:
        return {}
    keys = sorted(answers)
    truth, predicted = [record["truth"][k] for k in keys], [answers[k] for k in keys]
    k = len(class_names)
    ci = classification_ci(truth, predicted, k)
    histogram = prediction_histogram(truth, predicted, k)
    warnings = collapse_warnings(truth, predicted, class_names)
    return {
        "case-level macro-F1 (val) with its 95 % CI": f"{macro_f1(truth, predicted, k):.3f} [{ci[0]:.3f}, {ci[1]:.3f}], {len(keys)} cases",
        "chance line (the same cases)": describe(chance_line(truth, predicted, k, ci), class_names),
        "subtype answers (val): true / predicted per subtype": f"{histogram['true']} / {histogram['predicted']}" + (f"; collapsed: {'; '.join(warnings)}" if warnings else ""),
    }


def _temperature(fold_folder: Path) -> str:
    calibration = Calibration.load(fold_folder)
    line = f"{calibration.temperature:.3f} ({calibration.fitted_on})"
    if calibration.ece_before is not None:
        line += f"; ECE there {calibration.ece_before:.3f} -> {calibration.ece_after:.3f} (in-sample)"
    if calibration.warning:
        line += f"; warning: {calibration.warning}"
    return line


def _recorded(workspace: Workspace, settings: MultitaskSettings, result: TrainingResult) -> TrainingResult:
    """The result with its selection summary, written to ``train.json``."""
    result.selection = selection_summary(workspace, result)
    result.record_file = workspace.record("train")
    write_json(result.record_file, {"model_folder": str(result.output_folder), "settings": settings.to_dict(), **result.selection})
    return result


def ensure_postprocessing(workspace: Workspace, gt_folder: Path, force: bool = False) -> Path:
    """nnU-Net's postprocessing for the workspace's fold, determined on the full-volume validation of exactly the selection
    split's cases (``Workspace.selection_cases``), unless it is already there for those cases."""
    from ..postprocessing import determine_for_fold, determined_on

    fold_folder, cases = workspace.fold_folder, workspace.selection_cases()
    if force or not (fold_folder / PP_PICKLE).is_file() or determined_on(fold_folder) != cases:
        determine_for_fold(fold_folder, gt_folder, cases, available_cores(), chosen_on=workspace.selection_split())
        print(f"postprocessing (determined on the {len(cases)} cases of the selection split, {workspace.selection_split()}): "
              f"{decision_line(fold_folder)}", flush=True)
    return fold_folder / PP_JSON


def train_ddp(workspace: Workspace, settings: MultitaskSettings, num_gpus: int, resume: bool) -> str:
    """Multi-GPU training through nnU-Net's DDP launcher; the trainer reads ``settings`` from the fold folder.

    nnU-Net's launcher always runs its final validation (with the restored best weights) and trains on CUDA.
    """
    from nnunetv2.run.run_training import run_training

    workspace.fold_folder.mkdir(parents=True, exist_ok=True)
    settings.save(workspace.fold_folder)  # nnUNetTrainerMultitask.__init__ loads them in every DDP process
    add_trainer_folder(TRAINERS_FOLDER)  # nnU-Net's launcher finds the trainer by name
    run_training(workspace.dataset_name, CONFIGURATION, workspace.fold, TRAINER_NAME, workspace.plans, num_gpus=num_gpus, continue_training=resume)
    return f"trained on {num_gpus} GPUs with nnU-Net's DDP; the stop reason is in the training log"


def training_inputs(workspace: Workspace) -> str:
    """Hash of what training reads besides its settings: plans, dataset.json, splits, preprocessing state."""
    digest = hashlib.sha256()
    for name in (f"{workspace.plans}.json", "dataset.json", "splits_final.json", "prepare_state.json", "subtypes.csv"):
        path = workspace.preprocessed / name
        digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return digest.hexdigest()

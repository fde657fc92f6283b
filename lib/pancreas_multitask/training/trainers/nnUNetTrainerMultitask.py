"""nnU-Net v2 trainer for segmentation + lesion subtype classification (one shared encoder).

Two ways to start it:

* the project's (notebook 02, ``python -m pancreas_multitask.training``): the class itself is
  instantiated, so no name lookup (and no torchvision import) is needed;
* nnU-Net's: ``nnUNet_extTrainer=<this folder> nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerMultitask -p PLANS``.

What it changes in nnU-Net's recipe (every number is a setting, see ``MultitaskSettings``):
total loss = w_seg * nnU-Net's Dice+CE/BCE loss (deep supervision unchanged) + w_cls * class-weighted
cross-entropy on the subtype; AdamW with polynomial decay; case-level macro-F1 on the validation
cases every ``case_val_every`` epochs and at the last; checkpoint_best and early stopping on w * EMA pseudo-Dice +
(1 - w) * macro-F1, defined only at the epochs whose case-level pass ran on those weights (no F1 is carried
forward, so a checkpoint is never chosen on an F1 that other weights earned). At the end, with the
selected weights restored: the deployed inference mode classifies every validation case, a temperature is
fitted to those probabilities (``subtype_calibration.json``) and compared with the training pass
(``estimator_agreement.json``). Neither runs under DDP (the other ranks would wait at nnU-Net's barrier);
such a model ships uncalibrated (temperature 1), and says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from time import time

import numpy as np
import pandas as pd
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from sklearn.metrics import accuracy_score
from torch import autocast, nn

from pancreas_multitask.evaluation.metrics import macro_f1
from pancreas_multitask.experiment_planning.subtype_table import SUBTYPE_TABLE, read_subtype_table
from pancreas_multitask.inference.predictor import InferenceMode, MultitaskPredictor, resolve_mode
from pancreas_multitask.io import atomic_path, write_json, write_text
from pancreas_multitask.model.calibration import Calibration, fit_temperature
from pancreas_multitask.model.folders import AGREEMENT_FILE, CASE_VALIDATION_FILE, METRICS_FILE, SELECTED_CHECKPOINT
from pancreas_multitask.model.network import MultitaskNetwork, build_multitask_network
from pancreas_multitask.model.settings import MultitaskSettings
from pancreas_multitask.runtime import is_headless
from pancreas_multitask.training.schedule import best_epoch, class_weights, criterion, loss_weights, should_stop

EXTRA_KEYS = ("train_seg_losses", "train_cls_losses", "train_cls_patches", "w_seg", "w_cls", "val_macro_f1", "val_accuracy", "val_criterion")


class HeadAwarePolyLR(PolyLRScheduler):
    """nnU-Net's polynomial decay, applied to both parameter groups (the head's scaled by its factor)."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, head_factor: float):
        self.head_factor = head_factor  # before super().__init__, which already steps once
        super().__init__(optimizer, initial_lr, max_steps)

    def step(self, current_step=None):
        super().step(current_step)
        self.optimizer.param_groups[1]["lr"] = self.optimizer.param_groups[0]["lr"] * self.head_factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class nnUNetTrainerMultitask(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # a resumed run (also through nnUNetv2_train --c) picks up the settings it was started with
        self.configure(MultitaskSettings.load(Path(self.output_folder)) or MultitaskSettings())
        self.logger.local_logger.my_fantastic_logging.update({key: [] for key in EXTRA_KEYS})
        self.subtypes = read_subtype_table(Path(self.preprocessed_dataset_folder_base) / SUBTYPE_TABLE, self.settings.head.num_classes)
        self.cls_loss: nn.Module | None = None
        self.stop_reason: str | None = None
        self._case_keys: tuple[list[str], list[str]] = ([], [])

    # ---- settings -------------------------------------------------------------------------------
    def configure(self, settings: MultitaskSettings) -> None:
        """Apply settings; must be called before ``initialize`` (the head shape depends on them)."""
        if self.was_initialized:
            raise RuntimeError("configure() must come before the trainer is initialized")
        self.settings = settings
        self.num_epochs = settings.num_epochs
        self.num_iterations_per_epoch = settings.iterations_per_epoch
        self.num_val_iterations_per_epoch = settings.val_iterations_per_epoch
        self.initial_lr = settings.initial_lr
        self.weight_decay = settings.weight_decay
        self.save_every = settings.save_every
        if settings.oversample_foreground is not None:  # read by nnU-Net's get_dataloaders
            self.oversample_foreground_percent = settings.oversample_foreground

    def _do_i_compile(self) -> bool:
        # torch.compile only when asked for explicitly: the head's side output is untested under compile
        return os.environ.get("nnUNet_compile", "f").lower() in ("true", "1", "t") and super()._do_i_compile()

    def print_to_log_file(self, *args, also_print_to_console: bool = True, add_timestamp: bool = True) -> None:
        # headless runs print one line per epoch (see on_epoch_end); the log file keeps everything
        super().print_to_log_file(*args, also_print_to_console=also_print_to_console and not is_headless(), add_timestamp=add_timestamp)

    # ---- network and optimisation ---------------------------------------------------------------
    def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision: bool = True) -> nn.Module:
        return build_multitask_network(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision,
            self.settings.head, self.label_manager.has_regions,
        )

    def configure_optimizers(self):
        head = self.multitask_network().head
        head_ids = {id(p) for p in head.parameters()}
        groups = [
            {"params": [p for p in self.network.parameters() if id(p) not in head_ids], "lr": self.initial_lr},
            {"params": list(head.parameters()), "lr": self.initial_lr * self.settings.head_lr_factor},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, HeadAwarePolyLR(optimizer, self.initial_lr, self.num_epochs, self.settings.head_lr_factor)

    def multitask_network(self) -> MultitaskNetwork:
        """The network without DDP / torch.compile wrappers."""
        module = self.network.module if self.is_ddp else self.network
        return getattr(module, "_orig_mod", module)

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        self._case_keys = (list(dataset_tr.identifiers), list(dataset_val.identifiers))
        return dataset_tr, dataset_val

    def on_train_start(self) -> None:
        super().on_train_start()
        self.settings.save(Path(self.output_folder))
        train_keys = self._case_keys[0]
        counts = np.bincount([self._subtype(k) for k in train_keys], minlength=self.settings.head.num_classes)
        weights = class_weights(counts, self.settings.class_weight_smoothing)
        self.cls_loss = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=self.device))
        message = f"subtype counts in the training split: {counts.tolist()}; class weights: {np.round(weights, 4).tolist()}"
        if not self.classification_measurable():
            message += ("\nthe selection cases (this fold's validation cases) hold one subtype only: macro-F1 cannot be measured, so the checkpoint "
                        "is selected on the EMA pseudo-Dice alone")
        self.print_to_log_file(message, also_print_to_console=False)
        print(message, flush=True)

    def _subtype(self, case_id: str) -> int:
        if case_id not in self.subtypes:
            raise KeyError(f"case {case_id} has no subtype in {SUBTYPE_TABLE}; re-run the prepare stage")
        return self.subtypes[case_id][0]

    def current_loss_weights(self) -> tuple[float, float]:
        return loss_weights(self.current_epoch, self.settings.schedule)

    # ---- training ---------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        w_seg, w_cls = self.current_loss_weights()
        self.logger.log("w_seg", w_seg, self.current_epoch)
        self.logger.log("w_cls", w_cls, self.current_epoch)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else target.to(self.device, non_blocking=True)
        labels = torch.tensor([self._subtype(k) for k in batch["keys"]], dtype=torch.long, device=self.device)
        w_seg, w_cls = self.current_loss_weights()

        network = self.multitask_network()
        highest = target[0] if isinstance(target, list) else target
        structure = network.guide_from_target(highest)  # ground-truth mask of what the head pools over (None: all)
        guide = structure if self.settings.guided_pooling else None
        # a patch that does not show the pooled structure (e.g. a small lesion outside it) carries no subtype evidence
        shows = torch.ones(len(labels), dtype=torch.bool, device=self.device) if structure is None or not self.settings.cls_patches_showing_structure else structure.flatten(1).any(dim=1)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data, guide)
            seg_loss = self.loss(output, target)
            logits = network.last_class_logits.float()
            cls_loss = self.cls_loss(logits[shows], labels[shows]) if bool(shows.any()) else logits.sum() * 0.0
            loss = w_seg * seg_loss + w_cls * cls_loss
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy(), "seg_loss": seg_loss.detach().cpu().numpy(), "cls_loss": cls_loss.detach().cpu().numpy(),
                "cls_patches": int(shows.sum())}

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        self.logger.log("train_seg_losses", float(np.mean([o["seg_loss"] for o in train_outputs])), self.current_epoch)
        self.logger.log("train_cls_losses", float(np.mean([o["cls_loss"] for o in train_outputs])), self.current_epoch)
        # how many patches of this epoch the subtype loss learnt from (those showing the pooled structure)
        self.logger.log("train_cls_patches", int(sum(o["cls_patches"] for o in train_outputs)), self.current_epoch)

    # ---- validation -------------------------------------------------------------------------------
    def validation_mode(self) -> InferenceMode:
        """The case-level pass during training: the deployed estimator without mirroring, at ``case_val_step``."""
        return InferenceMode(self.settings.case_val_step, use_mirroring=False, tile_batch_size=2)

    def case_probabilities(self, mode: InferenceMode, keys: list[str]) -> list[np.ndarray]:
        """Subtype probabilities of whole preprocessed cases from the network as it is now, through the predictor
        that inference uses (``MultitaskPredictor.predict_preprocessed``: nnU-Net's Gaussian-weighted sliding window,
        every tile's class logits weighted by its predicted lesion), in ``mode``."""
        network = self.multitask_network()
        was_training = network.training
        predictor = MultitaskPredictor(mode.tile_step_size, use_mirroring=mode.use_mirroring, mode=mode, perform_everything_on_device=self.device.type == "cuda",
                                       device=self.device, allow_tqdm=False)
        predictor.use_network(network, self.plans_manager, self.configuration_manager, self.dataset_json, self.inference_allowed_mirroring_axes)
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys)
        self.set_deep_supervision_enabled(False)
        try:
            return [predictor.predict_preprocessed(np.asarray(dataset.load_case(key)[0][:]))[1] for key in keys]
        finally:
            self.set_deep_supervision_enabled(self.enable_deep_supervision)
            network.train(was_training)

    def _f1_accuracy(self, keys: list[str], probabilities: list[np.ndarray]) -> tuple[float, float]:
        """Macro-F1 (evaluation's definition: over the manifest's classes present in the truth) and accuracy."""
        truth, predicted = [self._subtype(k) for k in keys], [int(np.argmax(p)) for p in probabilities]
        return macro_f1(truth, predicted, self.settings.head.num_classes), float(accuracy_score(truth, predicted))

    def case_level_validation(self) -> tuple[float, float]:
        """Macro-F1 and accuracy of the subtype over whole validation cases (``validation_mode``); the subtype each case
        got is added to ``case_validation.json`` under this epoch (what train.json's chance line is computed from)."""
        keys = self._case_keys[1]
        probabilities = self.case_probabilities(self.validation_mode(), keys)
        self.record_case_predictions(keys, [int(np.argmax(p)) for p in probabilities])
        return self._f1_accuracy(keys, probabilities)

    def record_case_predictions(self, keys: list[str], predicted: list[int]) -> None:
        """``case_validation.json``: the true subtypes once, and per epoch of a case-level pass the predicted ones."""
        if self.local_rank != 0:
            return
        path = Path(self.output_folder) / CASE_VALIDATION_FILE
        record = json.loads(path.read_text()) if path.is_file() else {"truth": {}, "epochs": {}}
        record["truth"] = {k: self._subtype(k) for k in keys}
        record["epochs"] = {e: p for e, p in record["epochs"].items() if int(e) < self.current_epoch}  # a resumed run redoes later epochs
        record["epochs"][str(self.current_epoch)] = dict(zip(keys, predicted))
        write_json(path, record)

    def deployed_validation_probabilities(self) -> dict[str, np.ndarray]:
        """The deployed mode's (uncalibrated) subtype probabilities of every validation case, with the weights as they are now;
        empty when neither the calibration nor the estimator check needs them."""
        keys = sorted(self._case_keys[1])
        fit = self.settings.calibrate and self.classification_measurable()
        keys = keys if fit else self.agreement_cases()
        return dict(zip(keys, self.case_probabilities(resolve_mode(self.settings.deployed_mode), keys))) if keys else {}

    def agreement_cases(self) -> list[str]:
        """The validation cases of the estimator check: all, none, or ``deployed_check_cases`` spread over the sorted ids
        (quiz ids start with the subtype: every subtype is in)."""
        count, every = self.settings.deployed_check_cases, sorted(self._case_keys[1])
        if count == 0 or not every:
            return []
        return every if count < 0 or count >= len(every) else [every[int(i)] for i in np.linspace(0, len(every) - 1, count).round()]

    def fit_calibration(self, deployed: dict[str, np.ndarray]) -> Calibration:
        """Temperature scaling of the deployed mode's probabilities on the validation cases (the split that selected the
        checkpoint), written to ``subtype_calibration.json`` beside it; the identity, saying why, where it cannot be fitted."""
        if not self.settings.calibrate:
            calibration = Calibration(fitted_on="not fitted (calibrate: false)")
        elif not self.classification_measurable():
            calibration = Calibration(fitted_on="not fitted (the selection cases hold one subtype)")
        else:
            keys = sorted(deployed)
            calibration = fit_temperature(np.stack([deployed[k] for k in keys]), [self._subtype(k) for k in keys],
                                          f"fold {self.fold} validation cases ({SELECTED_CHECKPOINT}, deployed '{self.settings.deployed_mode}' mode)")
        calibration.save(Path(self.output_folder))
        message = f"subtype calibration: temperature {calibration.temperature:.3f}, {calibration.fitted_on}"
        if calibration.ece_before is not None:
            message += (f"; on those {calibration.cases} cases ECE {calibration.ece_before:.3f} -> {calibration.ece_after:.3f}, "
                        f"NLL {calibration.nll_before:.3f} -> {calibration.nll_after:.3f}")
        if calibration.warning:
            message += f"; warning: {calibration.warning}"
        self.print_to_log_file(message, also_print_to_console=False)
        print(message, flush=True)
        return calibration

    def check_estimator_agreement(self, deployed: dict[str, np.ndarray] | None = None) -> dict | None:
        """The selected weights through both the validation pass and the deployed mode on ``agreement_cases``:
        how often they give the same subtype, their largest probability difference and both macro-F1s (uncalibrated).
        Logged, and written to ``estimator_agreement.json`` (None when ``deployed_check_cases`` is 0).
        ``deployed``: the deployed mode's probabilities already computed for some cases."""
        keys = self.agreement_cases()
        if not keys:
            return None
        known = deployed or {}
        missing = [k for k in keys if k not in known]
        known = {**known, **dict(zip(missing, self.case_probabilities(resolve_mode(self.settings.deployed_mode), missing)))} if missing else known
        cheap, deployed_list = self.case_probabilities(self.validation_mode(), keys), [known[k] for k in keys]
        same = [int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(cheap, deployed_list)]
        record = {
            "checkpoint": SELECTED_CHECKPOINT, "split": "validation", "cases": len(keys), "same_subtype": int(sum(same)),
            "max_probability_difference": float(max(np.abs(a - b).max() for a, b in zip(cheap, deployed_list))),
            "validation_estimator": self.validation_mode().describe(), "deployed_estimator": f"{self.settings.deployed_mode}: {resolve_mode(self.settings.deployed_mode).describe()}",
            "macro_f1_accuracy": {"validation_estimator": self._f1_accuracy(keys, cheap), "deployed_estimator": self._f1_accuracy(keys, deployed_list)}
            if len({self._subtype(k) for k in keys}) >= 2 else None,  # on one class macro-F1 means nothing
            "per_case": {k: {"true": self._subtype(k), "validation_estimator": a.round(6).tolist(), "deployed_estimator": b.round(6).tolist()} for k, a, b in zip(keys, cheap, deployed_list)},
        }
        write_json(Path(self.output_folder) / AGREEMENT_FILE, record)
        message = (f"case-level estimator check ({SELECTED_CHECKPOINT}, {len(keys)} validation cases): the training pass and the deployed "
                   f"'{self.settings.deployed_mode}' mode give the same subtype for {sum(same)}/{len(keys)}, probabilities differ by at most {record['max_probability_difference']:.3f}")
        if record["macro_f1_accuracy"] is not None:
            message += f"; macro-F1 {record['macro_f1_accuracy']['validation_estimator'][0]:.3f} (training pass) vs {record['macro_f1_accuracy']['deployed_estimator'][0]:.3f} (deployed)"
        self.print_to_log_file(message, also_print_to_console=False)
        print(message, flush=True)
        return record

    def classification_measurable(self) -> bool:
        """Whether the validation cases hold at least two subtypes; on one class macro-F1 means nothing."""
        return len({self._subtype(k) for k in self._case_keys[1]}) >= 2

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        super().on_validation_epoch_end(val_outputs)
        epoch = self.current_epoch
        measurable = self.classification_measurable()
        if measurable and (epoch % self.settings.case_val_every == 0 or epoch == self.num_epochs - 1):
            f1, accuracy = self.case_level_validation()
        else:  # no case-level pass on these weights (or one subtype, e.g. the real CT set): no F1, and none carried forward
            f1, accuracy = float("nan"), float("nan")
        self.logger.log("val_macro_f1", f1, epoch)
        self.logger.log("val_accuracy", accuracy, epoch)
        ema = self.logger.get_value("ema_fg_dice", epoch)
        if measurable:  # NaN where no F1 was measured: such an epoch cannot be selected (best_epoch skips NaN)
            self.logger.log("val_criterion", criterion(ema, f1, self.settings.criterion_dice_weight), epoch)
        else:  # one subtype: select on the segmentation alone, every epoch
            self.logger.log("val_criterion", criterion(ema, 0.0, 1.0), epoch)

    # ---- epoch bookkeeping, checkpoints, early stopping ---------------------------------------------
    def early_stop_reason(self) -> str | None:
        """Why training should stop now (patience exhausted), or None."""
        history = self.logger.get_value("val_criterion", step=None)
        if not should_stop(history, self.settings.patience):
            return None
        best = best_epoch(history)
        return (f"early stopping at epoch {len(history) - 1}: the validation criterion has not improved for "
                f"{len(history) - 1 - best} epochs (patience {self.settings.patience}); best {history[best]:.4f} at epoch {best}")

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written beside ``filename`` and renamed onto it: a process killed mid-write
        (preemption, the OOM killer) leaves the previous checkpoint whole for ``--c`` / ``resume``, not half a file."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)  # writes nothing (nnU-Net logs why)
        with atomic_path(filename) as tmp:
            super().save_checkpoint(str(tmp))

    def on_epoch_end(self) -> None:
        epoch = self.current_epoch
        log = self.logger
        log.log("epoch_end_timestamps", time(), epoch)
        seconds = log.get_value("epoch_end_timestamps", epoch) - log.get_value("epoch_start_timestamps", epoch)
        dice = [round(float(d), 4) for d in log.get_value("dice_per_class_or_region", epoch)]
        history = log.get_value("val_criterion", step=None)
        improved = best_epoch(history) == epoch  # never at an epoch without a fresh case-level F1 (its criterion is NaN)
        print(
            f"epoch {epoch:4d}/{self.num_epochs} | loss {log.get_value('train_losses', epoch):.4f} "
            f"(seg {log.get_value('train_seg_losses', epoch):.4f}, cls {log.get_value('train_cls_losses', epoch):.4f}) "
            f"| w {log.get_value('w_seg', epoch):.2f}/{log.get_value('w_cls', epoch):.2f} | pseudo-Dice {dice} "
            f"| F1 {log.get_value('val_macro_f1', epoch):.3f} acc {log.get_value('val_accuracy', epoch):.3f} "
            f"| criterion {history[-1]:.4f}{' *best*' if improved else ''} | {seconds:.1f}s",
            flush=True,
        )
        self.print_to_log_file(f"epoch {epoch}: pseudo dice {dice}, macro-F1 {log.get_value('val_macro_f1', epoch):.4f}, criterion {history[-1]:.4f}")
        if (epoch + 1) % self.save_every == 0 and epoch != self.num_epochs - 1:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        if improved:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            log.plot_progress_png(self.output_folder)
            self.write_metrics()
        self.current_epoch += 1
        self.stop_reason = self.early_stop_reason()

    def metrics_frame(self) -> pd.DataFrame:
        """One row per finished epoch: losses, patches the subtype loss learnt from, loss weights, lr, pseudo-Dice per region, F1, criterion."""
        log = self.logger.local_logger.my_fantastic_logging
        n = len(log["epoch_end_timestamps"])
        frame = pd.DataFrame({"epoch": range(n)})
        for key in ("train_losses", "train_seg_losses", "train_cls_losses", "train_cls_patches", "val_losses", "w_seg", "w_cls", "lrs", "mean_fg_dice", "ema_fg_dice", "val_macro_f1", "val_accuracy", "val_criterion"):
            frame[key] = log[key][:n]
        names = [k for k in self.dataset_json["labels"] if k != "background"]  # nnU-Net's region/label order
        for i, name in enumerate(names):
            frame[f"pseudo_dice_{name}"] = [d[i] for d in log["dice_per_class_or_region"][:n]]
        frame["epoch_seconds"] = np.array(log["epoch_end_timestamps"][:n]) - np.array(log["epoch_start_timestamps"][:n])
        return frame

    def write_metrics(self) -> None:
        write_text(Path(self.output_folder) / METRICS_FILE, self.metrics_frame().to_csv(index=False))

    def run_training(self) -> None:
        self.on_train_start()
        self.stop_reason = self.early_stop_reason()  # a resumed run may already be done
        while self.current_epoch < self.num_epochs and self.stop_reason is None:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        reason = self.stop_reason or f"reached the maximum of {self.num_epochs} epochs"
        self.print_to_log_file(f"training stopped: {reason}", also_print_to_console=False)
        print(f"training stopped: {reason}", flush=True)
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """nnU-Net's full-volume validation; without mirroring TTA when the settings say so (CPU demo)."""
        axes = self.inference_allowed_mirroring_axes
        if not self.settings.final_validation_mirroring:
            self.inference_allowed_mirroring_axes = None  # the predictor then runs no mirrored passes
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes  # checkpoints keep the axes for inference

    def on_train_end(self) -> None:
        super().on_train_end()
        best = Path(self.output_folder) / "checkpoint_best.pth"
        if best.is_file():  # final validation and export use the selected (best) weights
            weights = torch.load(best, map_location=self.device, weights_only=False)["network_weights"]
            self.multitask_network().load_state_dict(weights)
            self.print_to_log_file(f"restored the weights of {best.name} (selected on the validation split)")
            if not self.is_ddp:  # under DDP the other ranks would wait at nnU-Net's barrier meanwhile
                deployed = self.deployed_validation_probabilities()
                self.fit_calibration(deployed)
                self.check_estimator_agreement(deployed)

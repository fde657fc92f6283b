"""The names that build a trained model's paths (nnU-Net's layout; one function makes the model folder) and
the names of what the stages write beside it."""

from __future__ import annotations

from pathlib import Path

TRAINER_NAME = "nnUNetTrainerMultitask"
CONFIGURATION = "3d_fullres"
METRICS_FILE = "training_metrics.csv"  # written by the trainer every epoch
DONE_FILE = "training_done.json"  # written when a fold finished: settings, inputs, stop reason
SELECTED_CHECKPOINT = "checkpoint_best.pth"  # selected on the validation split; what inference uses
AGREEMENT_FILE = "estimator_agreement.json"  # the training pass vs the deployed mode on the validation cases
CASE_VALIDATION_FILE = "case_validation.json"  # the subtype the training pass gave each validation case, per epoch it ran
SUBTYPE_CSV = "subtype_results.csv"  # per prediction folder: Names, Subtype, prob_* (the quiz's format), uncalibrated_prob_*
PROB_PREFIX = "prob_"  # the CSV's calibrated probability columns
UNCALIBRATED_PREFIX = "uncalibrated_prob_"  # the same before temperature scaling


def model_folder(results: Path, dataset_name: str, plans_name: str, trainer: str = TRAINER_NAME) -> Path:
    """``<results>/<dataset>/<trainer>__<plans>__3d_fullres``, where nnU-Net's trainer writes its folds."""
    return Path(results) / dataset_name / f"{trainer}__{plans_name}__{CONFIGURATION}"


def fold_folder(model: Path, fold: int | str) -> Path:
    """nnU-Net's ``fold_<fold>`` (``fold_all`` for training on all cases)."""
    return Path(model) / f"fold_{fold}"

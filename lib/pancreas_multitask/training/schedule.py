"""Pure functions of the training recipe: loss-weight schedule, class weights, early-stopping bookkeeping."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..model.settings import LossSchedule


def loss_weights(epoch: int, schedule: LossSchedule) -> tuple[float, float]:
    """(w_seg, w_cls) at ``epoch``: constant in phase 1, then linear to ``end`` over ``ramp_epochs``."""
    if epoch < schedule.phase1_epochs:
        return schedule.start
    progress = 1.0 if schedule.ramp_epochs <= 0 else min(1.0, (epoch - schedule.phase1_epochs) / schedule.ramp_epochs)
    return tuple(float(a + (b - a) * progress) for a, b in zip(schedule.start, schedule.end))  # type: ignore[return-value]


def class_weights(counts: Sequence[int], smoothing: float = 1.0) -> np.ndarray:
    """Inverse-frequency weights ``1 / (n_k + smoothing)``, scaled to mean 1; a missing class stays finite."""
    if smoothing <= 0:
        raise ValueError("smoothing must be > 0, so that a class without cases gets a finite weight")
    raw = 1.0 / (np.asarray(counts, dtype=np.float64) + smoothing)
    return raw / raw.mean()


def criterion(ema_dice: float, macro_f1: float, dice_weight: float) -> float:
    """The early-stopping and checkpoint-selection score on the validation cases."""
    return dice_weight * ema_dice + (1.0 - dice_weight) * macro_f1


def best_epoch(history: Sequence[float]) -> int:
    """Index of the first maximum of the criterion history (NaN never wins)."""
    values = np.asarray(history, dtype=np.float64)
    if not len(values) or np.isnan(values).all():
        return -1
    return int(np.nanargmax(values))


def should_stop(history: Sequence[float], patience: int) -> bool:
    """True when the last ``patience`` epochs brought no better criterion than the best before them."""
    best = best_epoch(history)
    return best >= 0 and len(history) - 1 - best >= patience

"""Hyper-parameters of the multitask trainer, stored beside its checkpoints as ``multitask_settings.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping

from ..io import write_json

Pooling = Literal["avg", "foreground", "lesion"]
Source = Literal["bottleneck", "encoder", "decoder"]
Reducer = Literal["mean", "mean_std", "attention"]
Fallback = Literal["foreground", "average"]  # lesion pooling where no lesion is predicted: the predicted gland, or the whole tile
SETTINGS_FILE = "multitask_settings.json"


@dataclass(frozen=True)
class HeadConfig:
    """The subtype head: which features it reads, where it pools them, and how.

    ``source``: the encoder's deepest stage (``bottleneck``), the encoder ``stages`` listed (each pooled on
    its own grid, the vectors concatenated), or the last decoder stage (full resolution, before the
    segmentation layer). ``pooling``: over the whole tile (``avg``), the predicted foreground or the
    predicted lesion. ``reducer``: the masked mean, mean and standard deviation (second-order statistics:
    texture), or a learned attention over the masked voxels. benchmarks/classification_heads.py compares them.
    ``fallback`` (lesion pooling, at inference): what a tile's head pools over where no lesion is predicted in it:
    the predicted gland (``foreground``), or the whole tile (``average``). benchmarks/classification_learnability.py
    measures both on the same checkpoints.
    """

    num_classes: int = 3
    pooling: Pooling = "lesion"
    source: Source = "bottleneck"
    stages: tuple[int, ...] = (1, 2, 3)  # encoder stages for source "encoder" (0 is the full-resolution stem stage)
    reducer: Reducer = "mean"
    hidden: int = 128
    dropout: float = 0.3
    fallback: Fallback = "foreground"

    def __post_init__(self) -> None:
        for name, value, allowed in (("pooling", self.pooling, Pooling), ("source", self.source, Source), ("reducer", self.reducer, Reducer),
                                     ("fallback", self.fallback, Fallback)):
            if value not in allowed.__args__:
                raise ValueError(f"head {name} must be one of {list(allowed.__args__)}, got {value!r}")
        if self.source == "encoder" and not self.stages:
            raise ValueError("head source 'encoder' needs at least one stage in 'stages'")
        object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))

    def describe(self) -> str:
        """e.g. ``encoder stages 1,2,3 · lesion · mean_std``."""
        source = f"encoder stages {','.join(map(str, self.stages))}" if self.source == "encoder" else self.source
        return f"{source} · {self.pooling} · {self.reducer}"


@dataclass(frozen=True)
class LossSchedule:
    """(w_seg, w_cls): ``start`` for ``phase1_epochs``, then a linear ramp over ``ramp_epochs`` to ``end``."""

    start: tuple[float, float] = (0.9, 0.1)
    end: tuple[float, float] = (0.5, 0.5)
    phase1_epochs: int = 20
    ramp_epochs: int = 50


@dataclass(frozen=True)
class MultitaskSettings:
    """Everything the multitask trainer adds to, or changes in, nnU-Net's defaults."""

    num_epochs: int = 500
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    initial_lr: float = 1e-4
    head_lr_factor: float = 10.0  # the subtype head learns at initial_lr * head_lr_factor
    guided_pooling: bool = True  # weighted pooling uses the ground-truth mask during training
    cls_patches_showing_structure: bool = True  # the subtype loss only on patches that show the pooled structure (lesion pooling: the lesion)
    weight_decay: float = 3e-5
    patience: int = 100  # epochs without a better validation criterion before training stops
    criterion_dice_weight: float = 0.5  # criterion = w * EMA pseudo-Dice + (1 - w) * case-level macro-F1
    case_val_every: int = 1  # case-level classification of the validation cases every N epochs
    case_val_step: float = 1.0  # sliding-window step for that case-level pass (no mirroring: the cheaper variant of the deployed estimator)
    deployed_mode: str = "fast"  # the inference mode that ships; its agreement with the case-level pass is measured at the end
    deployed_check_cases: int = -1  # validation cases for that check: -1 all, 0 none, N spread over the subtypes
    calibrate: bool = True  # temperature scaling of the deployed mode's case probabilities, fitted on the validation cases at the end
    class_weight_smoothing: float = 1.0
    oversample_foreground: float | None = None  # nnU-Net's oversample_foreground_percent (the share of a batch centred on foreground); None: nnU-Net's own
    save_every: int = 50
    final_validation_mirroring: bool = True  # nnU-Net's mirroring TTA in the final validation (8x the cost)
    seed: int = 12345
    head: HeadConfig = field(default_factory=HeadConfig)
    schedule: LossSchedule = field(default_factory=LossSchedule)

    def __post_init__(self) -> None:
        if self.case_val_every < 1:
            raise ValueError(f"case_val_every must be at least 1, got {self.case_val_every}")
        if self.oversample_foreground is not None and not 0.0 <= self.oversample_foreground <= 1.0:
            raise ValueError(f"oversample_foreground must be between 0 and 1 (a share of the batch), got {self.oversample_foreground}")
        if self.patience < self.case_val_every:  # the criterion exists only at case-level passes
            raise ValueError(f"patience ({self.patience}) must be at least case_val_every ({self.case_val_every}): early stopping would stop "
                             "before the next case-level pass could measure an improvement")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MultitaskSettings":
        """Build from a plain mapping (profile parameters or the JSON file); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown trainer setting(s) {sorted(unknown)}; allowed: {sorted(names)}")
        values = dict(data)
        if "head" in values and not isinstance(values["head"], HeadConfig):
            values["head"] = HeadConfig(**values["head"])
        if "schedule" in values and not isinstance(values["schedule"], LossSchedule):
            sched = {k: tuple(v) if isinstance(v, list) else v for k, v in values["schedule"].items()}
            values["schedule"] = LossSchedule(**sched)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: Path) -> None:
        write_json(Path(folder) / SETTINGS_FILE, self.to_dict())

    @classmethod
    def load(cls, folder: Path) -> "MultitaskSettings | None":
        path = Path(folder) / SETTINGS_FILE
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else None


# notebook / profile parameter -> MultitaskSettings field
PARAMETER_FIELDS = {
    "epochs": "num_epochs",
    "iterations_per_epoch": "iterations_per_epoch",
    "val_iterations_per_epoch": "val_iterations_per_epoch",
    "initial_lr": "initial_lr",
    "weight_decay": "weight_decay",
    "patience": "patience",
    "case_val_every": "case_val_every",
    "save_every": "save_every",
    "loss_schedule": "schedule",
}


def settings_from_parameters(params: Mapping[str, Any], num_classes: int) -> MultitaskSettings:
    """The trainer settings that 02_train's parameters (or a profile file) describe.

    ``head`` sets the head's fields (``source``, ``stages``, ``pooling``, ``reducer``, ...; an older profile's
    ``pooling`` alone still works); ``trainer_extra`` may set any other field, ``head`` included.
    """
    values: dict[str, Any] = {field: params[key] for key, field in PARAMETER_FIELDS.items() if key in params}
    extra = dict(params.get("trainer_extra") or {})
    head = {"num_classes": num_classes, **({"pooling": params["pooling"]} if "pooling" in params else {}), **dict(params.get("head") or {}), **extra.pop("head", {})}
    return MultitaskSettings.from_dict({**values, **extra, "head": head})

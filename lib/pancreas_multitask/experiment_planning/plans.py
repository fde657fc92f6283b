"""ResEncM planning through nnU-Net, and the reduced CPU variant derived from it as its own plans file.

The GPU profiles train the ``nnUNetResEncUNetMPlans`` plan unchanged. The CPU profiles (demo, smoke,
realct) use ``nnUNetResEncUNetMPlans_cpu``: the same normalisation, but features 8…64, batch 2 and a
smaller patch, with the network topology recomputed by nnU-Net's own ``get_pool_and_conv_props`` for
that patch. By default it keeps ResEncM's spacing and shares its preprocessed data; with ``spacing``
set (realct: real quiz crops at 0.73 mm in-plane are too large for a CPU patch to see the gland) it
resamples to that coarser grid and nnU-Net preprocesses it under its own data identifier. On 2 CPU
cores the full ResEncM network costs about 15 s per training iteration; the reduced one under 1 s.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..model.folders import CONFIGURATION

RESENC_M = "nnUNetResEncUNetMPlans"
CPU_PLANS = f"{RESENC_M}_cpu"
MIN_FEATURE_MAP_EDGE = 4  # nnU-Net's ExperimentPlanner.UNet_featuremap_min_edge_length
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)  # ResEncUNetPlanner's encoder blocks


@dataclass(frozen=True)
class ReducedPlan:
    """Settings of the CPU plans variant (profile parameter ``cpu_plan``)."""

    patch_size: tuple[int, int, int] = (32, 48, 64)
    base_features: int = 8
    max_features: int = 64
    batch_size: int = 2
    spacing: tuple[float, float, float] | None = None  # z, y, x mm; None keeps the ResEncM plan's

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReducedPlan":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"cpu_plan: unknown key(s) {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_resenc_m(dataset_id: int) -> dict[str, Any]:
    """Run nnU-Net's ``nnUNetPlannerResEncM`` (needs the fingerprint); writes and returns its plans."""
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import nnUNetPlannerResEncM
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    plans, identifier = plan_experiment_dataset(dataset_id, nnUNetPlannerResEncM)
    assert identifier == RESENC_M, identifier
    return plans


def derive_reduced_plans(plans: Mapping[str, Any], reduced: ReducedPlan, name: str = CPU_PLANS) -> dict[str, Any]:
    """A copy of ``plans`` with a smaller 3d_fullres network; spacing and preprocessed data are shared."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    out = copy.deepcopy(dict(plans))
    out["plans_name"] = name
    config = out["configurations"][CONFIGURATION]
    if reduced.spacing is not None:  # a coarser grid: nnU-Net preprocesses it separately
        config["spacing"] = [float(s) for s in reduced.spacing]
        config["data_identifier"] = f"{name}_{CONFIGURATION}"
        if config.get("median_image_size_in_voxels"):  # the median case on the new grid
            config["median_image_size_in_voxels"] = [round(float(n) * old / new, 1) for n, old, new in zip(config["median_image_size_in_voxels"], plans["configurations"][CONFIGURATION]["spacing"], reduced.spacing)]
    _, strides, kernels, patch, _ = get_pool_and_conv_props(config["spacing"], list(reduced.patch_size), MIN_FEATURE_MAP_EDGE, 999999)
    n_stages = len(strides)
    config["patch_size"] = [int(p) for p in patch]
    config["batch_size"] = reduced.batch_size
    arch = config["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=n_stages,
        features_per_stage=[min(reduced.max_features, reduced.base_features * 2**i) for i in range(n_stages)],
        kernel_sizes=[list(k) for k in kernels],
        strides=[list(s) for s in strides],
        n_blocks_per_stage=list(RESENC_BLOCKS_PER_STAGE[:n_stages]),
        n_conv_per_stage_decoder=[1] * (n_stages - 1),
    )
    out["configurations"] = {CONFIGURATION: config}  # only the configuration the CPU profiles train
    return out


def plan_summary(plans: Mapping[str, Any], configuration: str = CONFIGURATION) -> dict[str, Any]:
    """What the planner chose, for display: patch, batch, spacing, stages, features."""
    config = plans["configurations"][configuration]
    arch = config["architecture"]["arch_kwargs"]
    return {
        "plans": plans["plans_name"],
        "network": config["architecture"]["network_class_name"].rsplit(".", 1)[-1],
        "patch_size": list(config["patch_size"]),
        "batch_size": config["batch_size"],
        "spacing": [round(float(s), 4) for s in config["spacing"]],
        "median_shape": list(config.get("median_image_size_in_voxels", [])),
        "n_stages": arch["n_stages"],
        "features_per_stage": list(arch["features_per_stage"]),
        "strides": [list(s) for s in arch["strides"]],
        "n_blocks_per_stage": list(arch["n_blocks_per_stage"]),
        "normalization": list(config["normalization_schemes"]),
        "data_identifier": config["data_identifier"],
    }

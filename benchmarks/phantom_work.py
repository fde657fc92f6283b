"""What the phantom benchmarks share: a profile's parameters and paths, redirected to a phantom of their own under ``work``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def phantom_setup(profile: str, work: Path, device: str) -> tuple[dict[str, Any], Any, Any, str]:
    """(profile parameters, manifest, paths with raw, answers, work and results under ``work``, resolved device),
    with nnU-Net's environment set for those paths."""
    from pancreas_multitask.manifest import load_manifest
    from pancreas_multitask.profiles import load_parameters
    from pancreas_multitask.runtime import configure_nnunet, detect_device

    params = load_parameters(REPO / "notebooks" / "params", profile)
    manifest = load_manifest(REPO / "data_manifest.yaml")
    work = work.resolve()
    paths = replace(manifest.paths(profile), raw=work / "quiz", test_answers=work / "test_answers", work=work, results=work / "nnUNet_results")
    device = detect_device(device)
    configure_nnunet(paths, device)
    return params, manifest, paths, device

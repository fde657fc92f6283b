"""The parameter profiles (``notebooks/params/<profile>.yaml``), read with nothing but pyyaml: the runner, every
CLI, the benchmarks and the GPU check (whose machine has no papermill) share this one loader.

Profiles are layered: ``base: <profile>`` takes that profile's parameters, and the file's own keys replace
them (whole values: a mapping such as ``trainer_extra`` is replaced, not merged). ``demo`` is the root, and
its values are the notebooks' defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

BASE_KEY = "base"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"{path}: cannot read it ({exc})") from exc
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of parameter names to values")
    return data


def profile_layers(params_dir: Path, profile: str) -> list[Path]:
    """The files a profile is made of, root first (``demo.yaml``, …, ``<profile>.yaml``)."""
    chain: list[Path] = []  # the profile first, then its bases
    name: str | None = profile
    while name is not None:
        path = params_dir / f"{name}.yaml"
        if not path.is_file():
            raise SystemExit(f"unknown profile {name!r}: {path} does not exist" + (f" (the base of {chain[-1].stem})" if chain else ""))
        if path in chain:
            raise SystemExit(f"{path}: profile bases form a loop: {' -> '.join(p.stem for p in [*chain, path])}")
        chain.append(path)
        name = _read(path).get(BASE_KEY)
    return chain[::-1]


def load_parameters(params_dir: Path, profile: str, extra: Path | None = None) -> dict[str, Any]:
    """The profile's parameters (its bases first), updated by an optional extra YAML file."""
    params: dict[str, Any] = {}
    for path in profile_layers(params_dir, profile):
        params.update({k: v for k, v in _read(path).items() if k != BASE_KEY})
    if extra is not None:
        params.update({k: v for k, v in _read(extra).items() if k != BASE_KEY})
    params["profile"] = profile
    return params

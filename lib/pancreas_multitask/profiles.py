"""The parameter profiles (``notebooks/params/<profile>.yaml``), read with nothing but pyyaml: the runner, the
benchmarks and the GPU check (whose machine has no papermill) share this."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_parameters(params_dir: Path, profile: str, extra: Path | None = None) -> dict[str, Any]:
    """The profile's parameter file, updated by an optional extra YAML file."""
    path = params_dir / f"{profile}.yaml"
    if not path.is_file():
        raise SystemExit(f"unknown profile {profile!r}: {path} does not exist")
    params = yaml.safe_load(path.read_text()) or {}
    if extra is not None:
        try:
            params.update(yaml.safe_load(extra.read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise SystemExit(f"--params {extra}: cannot read it ({exc})") from exc
    params["profile"] = profile
    return params

"""Where and how we run: repo root, Colab/headless/device detection, nnU-Net variables, provenance."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

from .manifest import ProfilePaths

T = TypeVar("T")

HEADLESS_VAR = "PANCREAS_HEADLESS"  # set by the papermill runner
KEY_PACKAGES = ("nnunetv2", "torch", "numpy", "nibabel", "SimpleITK", "scikit-learn", "papermill", "nbconvert", "matplotlib", "seaborn")


def find_repo_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) that holds ``data_manifest.yaml``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "data_manifest.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no data_manifest.yaml at or above {here}; run from inside the repository")


def is_headless() -> bool:
    """True when the notebooks run under the papermill runner (no widgets, one line per step)."""
    return os.environ.get(HEADLESS_VAR) == "1"


def progress(iterable: Iterable[T], desc: str, **kwargs: Any) -> Iterable[T]:
    """A tqdm.auto progress bar, silent when headless (the runner prints one line per step)."""
    if is_headless():
        kwargs["disable"] = True
    return tqdm(iterable, desc=desc, **kwargs)


def detect_device(requested: str = "auto") -> str:
    """``cuda`` when asked for or available (with ``auto``), else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA GPU")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def available_cores() -> int:
    """CPU cores this process may use (affinity and container limits included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def nnunet_environment(paths: ProfilePaths, device: str) -> dict[str, str]:
    """The ``nnUNet_*`` variables for a profile and device.

    On CPU: ``nnUNet_compile=f`` (torch.compile breaks CPU training, nnU-Net #1365/#2219),
    ``nnUNet_def_n_proc`` and ``nnUNet_n_proc_DA`` set to the core count (nnU-Net's default of 8
    processes oversubscribes a 2-core machine). On CUDA nnU-Net's own defaults are kept.
    """
    env = {
        "nnUNet_raw": str(paths.nnunet_raw),
        "nnUNet_preprocessed": str(paths.nnunet_preprocessed),
        "nnUNet_results": str(paths.nnunet_results),
    }
    if device == "cpu":
        cores = str(available_cores())
        env.update(nnUNet_compile="f", nnUNet_def_n_proc=cores, nnUNet_n_proc_DA=cores)
    return env


def configure_nnunet(paths: ProfilePaths, device: str) -> dict[str, str]:
    """Create the nnU-Net folders and export the variables (set them before nnU-Net reads them)."""
    env = nnunet_environment(paths, device)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    return env


def set_nnunet_variables(values: dict[str, str], keep_existing: bool = False) -> None:
    """Set ``nnUNet_*`` options (``nnUNet_compile``, ``nnUNet_n_proc_DA``, …) before nnU-Net reads them;
    ``keep_existing`` leaves the ones the user set. With ``configure_nnunet`` the only writer of these variables."""
    for key, value in values.items():
        if not key.startswith("nnUNet_"):
            raise ValueError(f"{key}: not an nnU-Net variable")
        if not (keep_existing and key in os.environ):
            os.environ[key] = value


def add_trainer_folder(folder: Path) -> None:
    """Put ``folder`` first in ``nnUNet_extTrainer``, where nnU-Net's name lookup (its CLI, its DDP launcher) searches."""
    searched = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p and p != str(folder)]
    os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(folder), *searched])


@contextlib.contextmanager
def configured_nnunet(paths: ProfilePaths, device: str) -> Iterator[dict[str, str]]:
    """``configure_nnunet`` for the block, then the previous variables back: for benchmarks and tests that
    train into folders of their own. This module is the one place that writes ``nnUNet_*`` variables."""
    keys = nnunet_environment(paths, device)
    previous = {key: os.environ.get(key) for key in keys}
    try:
        yield configure_nnunet(paths, device)
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def library_versions() -> dict[str, str]:
    """Python and key library versions, for reports."""
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision(repo: str | os.PathLike[str]) -> str:
    """``HEAD``'s hash, with ``+dirty`` when tracked files changed; ``unknown`` outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")

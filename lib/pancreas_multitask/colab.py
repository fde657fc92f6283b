"""Colab bootstrap for 00_setup: mount Drive, clone or pull the repo, install what is missing.

Colab's preinstalled CUDA torch is kept: the requirements are installed under a constraints file
that pins the torch/torchvision versions already present. Every step is idempotent.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

Runner = Callable[[Sequence[str]], object]


def _run(cmd: Sequence[str]) -> object:
    return subprocess.run(list(cmd), check=True)


def mount_drive(drive_root: Path) -> Path:
    """Mount Google Drive at ``drive_root`` (no-op when mounted) and export ``DRIVE_ROOT``."""
    if not (drive_root / "MyDrive").is_dir():
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount(str(drive_root))
    os.environ["DRIVE_ROOT"] = str(drive_root)
    return drive_root


def ensure_repo(repo_dir: Path, repo_url: str, run: Runner = _run) -> None:
    """Clone ``repo_url`` into ``repo_dir``, or fast-forward it when it is already there."""
    if (repo_dir / ".git").is_dir():
        run(["git", "-C", str(repo_dir), "pull", "--ff-only"])
    elif not repo_url:
        raise ValueError("repo_url is empty: set it in the parameters cell to the repository's git URL")
    else:
        run(["git", "clone", repo_url, str(repo_dir)])


def torch_constraints(target: Path) -> Path:
    """Write a constraints file pinning the torch/torchvision that are installed now."""
    lines = []
    for name in ("torch", "torchvision"):
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    target.write_text("\n".join(lines) + "\n")
    return target


def install_requirements(repo_dir: Path, run: Runner = _run) -> bool:
    """pip-install requirements + the package unless this exact set is installed; returns True if it ran."""
    stamp = repo_dir / ".colab-installed"
    wanted = (repo_dir / "requirements.txt").read_text() + (repo_dir / "pyproject.toml").read_text()
    if stamp.exists() and stamp.read_text() == wanted:
        return False
    constraints = torch_constraints(repo_dir / ".colab-constraints.txt")
    pip = [sys.executable, "-m", "pip", "install", "-q", "-c", str(constraints)]
    run([*pip, "-r", str(repo_dir / "requirements.txt")])
    run([*pip, "--no-deps", "-e", str(repo_dir)])
    stamp.write_text(wanted)
    return True


def bootstrap(repo_dir: Path, repo_url: str, drive_root: Path, run: Runner = _run) -> None:
    """Mount Drive, clone or pull, install; then make the package importable."""
    mount_drive(drive_root)
    ensure_repo(repo_dir, repo_url, run)
    install_requirements(repo_dir, run)
    lib = str(repo_dir / "lib")
    if lib not in sys.path:
        sys.path.insert(0, lib)

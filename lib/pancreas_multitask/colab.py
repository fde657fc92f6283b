"""Colab session setup for the notebooks: Google Drive, the repository, the packages, the working folder.

Colab runs every notebook on its own machine, so each notebook's first cell calls ``ensure_session``.
Each step is skipped when it is done already (a second call costs one ``git pull``); outside Colab
nothing happens. Colab's preinstalled CUDA torch is kept: the requirements are installed under a
constraints file that pins the torch/torchvision already there.

This module imports only the standard library: it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

Runner = Callable[[Sequence[str]], object]

COLAB_CONTENT = Path("/content")  # Colab's fixed working folder
DRIVE_MOUNT = COLAB_CONTENT / "drive"  # Colab's Drive mount point, the default DRIVE_ROOT
COLAB_REPO = COLAB_CONTENT / "pancreas-multitask"  # the clone, when this module is not imported from one
HEADLESS_VAR = "PANCREAS_HEADLESS"  # runtime.HEADLESS_VAR, not imported (runtime needs installed packages)
STAMP_PREFIX = ".pancreas-colab-installed-"
CONSTRAINTS_FILE = ".pancreas-colab-constraints.txt"


class RestartRequired(RuntimeError):
    """The install replaced packages this kernel had already imported."""


def _run(cmd: Sequence[str]) -> object:
    """Run a command, failing on a non-zero exit; git may not prompt for credentials."""
    return subprocess.run(list(cmd), check=True, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})


def in_colab() -> bool:
    """True in a Colab kernel, and in the papermill kernels started from one (they inherit its variables)."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def default_repo_dir() -> Path:
    """The checkout this module is imported from, else ``COLAB_REPO``."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "data_manifest.yaml").is_file() else COLAB_REPO


def mount_drive(drive_root: Path, headless: bool = False) -> bool:
    """Mount Google Drive at ``drive_root`` unless it is mounted; True when it mounted it now.

    Mounting asks for access, so headless an unmounted Drive is an error instead of a prompt.
    """
    if (drive_root / "MyDrive").is_dir():
        return False
    if headless:
        raise RuntimeError(
            f"Google Drive is not mounted at {drive_root} and a headless run cannot ask for access; mount it "
            f"interactively first: from google.colab import drive; drive.mount('{drive_root}')"
        )
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount(str(drive_root))
    return True


def ensure_repo(repo_dir: Path, repo_url: str, run: Runner = _run) -> str:
    """Clone ``repo_url`` into ``repo_dir``, or fast-forward it when it is there; returns what it did."""
    if (repo_dir / ".git").is_dir():
        run(["git", "-C", str(repo_dir), "pull", "--ff-only", "-q"])
        return "pulled"
    if not repo_url:
        raise ValueError("repo_url is empty: set it in the parameters cell to the repository's git URL")
    run(["git", "clone", "-q", repo_url, str(repo_dir)])
    return "cloned"


def torch_constraints() -> str:
    """A constraints file's text pinning the torch/torchvision installed now."""
    lines = []
    for name in ("torch", "torchvision"):
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}\n")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "".join(lines)


def _imported_versions() -> dict[str, str]:
    """Installed version of every distribution that provides an already-imported top-level module."""
    imported = {name.partition(".")[0] for name in list(sys.modules)}
    dists = {d for module, names in importlib.metadata.packages_distributions().items() if module in imported for d in names}
    versions = {}
    for dist in dists:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def install_requirements(repo_dir: Path, state_dir: Path, run: Runner = _run) -> bool:
    """pip-install requirements.txt and the package under the torch constraints; True when it ran.

    A stamp in ``state_dir`` (which lives as long as the installed packages) keyed on the hash of
    requirements.txt, pyproject.toml and the constraints skips an install that is done. Raises
    ``RestartRequired`` (after stamping) when the install replaced a package the kernel had imported.
    """
    constraints = torch_constraints()
    wanted = (repo_dir / "requirements.txt").read_bytes() + (repo_dir / "pyproject.toml").read_bytes() + constraints.encode()
    stamp = state_dir / (STAMP_PREFIX + hashlib.sha256(wanted).hexdigest()[:16])
    if stamp.exists():
        return False
    state_dir.mkdir(parents=True, exist_ok=True)
    constraints_file = state_dir / CONSTRAINTS_FILE
    constraints_file.write_text(constraints)
    before = _imported_versions()
    pip = [sys.executable, "-m", "pip", "install", "-q", "-c", str(constraints_file)]
    run([*pip, "-r", str(repo_dir / "requirements.txt")])
    run([*pip, "--no-deps", "-e", str(repo_dir)])
    for old in state_dir.glob(STAMP_PREFIX + "*"):
        old.unlink()
    stamp.touch()
    changed = sorted(d for d, v in _imported_versions().items() if before.get(d, v) != v)
    if changed:
        raise RestartRequired(
            f"the install replaced {', '.join(changed)}, already imported by this kernel: "
            "Runtime > Restart session, then run this cell again (the install is then skipped)"
        )
    return True


def ensure_session(
    repo_url: str = "",
    *,
    mount: bool = True,
    repo_dir: Path | None = None,
    state_dir: Path | None = None,
    run: Runner = _run,
) -> Path | None:
    """Make a Colab kernel ready for the notebooks; outside Colab do nothing and return None.

    In Colab: ``DRIVE_ROOT`` defaults to ``DRIVE_MOUNT``; Drive is mounted there (``mount``, skipped
    when mounted); the repository is cloned or pulled, the requirements installed unless stamped,
    its ``lib`` put on ``sys.path`` and the working folder set to its ``notebooks/``; returns the
    repository. Headless (papermill) only the Drive default and check run: nothing prompts,
    clones or installs, and None is returned.
    """
    if not in_colab():
        return None
    drive_root = Path(os.environ.setdefault("DRIVE_ROOT", str(DRIVE_MOUNT)))
    headless = os.environ.get(HEADLESS_VAR) == "1"
    if mount:
        print("Google Drive:", "mounted at" if mount_drive(drive_root, headless) else "already mounted at", drive_root)
    if headless:
        return None
    repo = repo_dir or default_repo_dir()
    print(f"repository: {ensure_repo(repo, repo_url, run)} ({repo})")
    installed = install_requirements(repo, state_dir or Path(sys.prefix), run)
    print("packages:", "installed" if installed else "up to date")
    lib = str(repo / "lib")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    os.chdir(repo / "notebooks")
    return repo

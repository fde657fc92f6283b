"""Colab session setup for the notebooks: Google Drive, the repository, the packages, the working folder.

Colab runs every notebook on its own machine, so each notebook's first cell calls ``ensure_session``.
Each step is skipped when it is done already (a second call costs one ``git pull``); outside Colab
nothing happens. Nothing Colab preinstalled is replaced (its CUDA torch, numpy, pandas, ... are what its own
``google-colab`` package expects): only the requirements that are not installed at all are installed, under
a constraints file that pins every installed distribution to its version (``install_requirements``).

This module imports only the standard library: it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

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


def canonical_name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``PyYAML`` and ``pyyaml``, ``scikit_learn`` and ``scikit-learn``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions(python: str = sys.executable) -> dict[str, str]:
    """``canonical name -> version`` of every distribution the interpreter ``python`` has (Colab's kernel, or a stand-in)."""
    if python == sys.executable:
        return {canonical_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    listing = subprocess.run([python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"], check=True, capture_output=True, text=True)
    return {canonical_name(d["name"]): d["version"] for d in json.loads(listing.stdout)}


@dataclass(frozen=True)
class InstallPlan:
    """What the Colab install does: install only what is missing, with everything installed pinned where it is."""

    missing: tuple[str, ...]  # requirement lines of distributions not installed at all
    kept: tuple[tuple[str, str, str], ...]  # (name, installed version, the version requirements.txt pins) where they differ
    constraints: str  # ``name==version`` for every installed distribution, except those the user lets pip upgrade
    upgrade: tuple[str, ...] = ()


def plan_install(requirements: Path, installed: Mapping[str, str], upgrade: Sequence[str] = ()) -> InstallPlan:
    """The install that replaces nothing already installed (``upgrade``: names the user allows pip to replace)."""
    allowed = {canonical_name(n) for n in upgrade}
    missing, kept = [], []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = re.split(r"(==)", line, maxsplit=1) if "==" in line else (re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0], "", "")
        name = canonical_name(name.strip())
        if name not in installed or name in allowed:
            missing.append(line)
        elif version and installed[name] != version.strip():
            kept.append((name, installed[name], version.strip()))
    constraints = "".join(f"{name}=={version}\n" for name, version in sorted(installed.items()) if name not in allowed)
    return InstallPlan(tuple(missing), tuple(kept), constraints, tuple(sorted(allowed)))


class InstallConflict(RuntimeError):
    """pip cannot install what is missing without replacing a preinstalled distribution."""


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


def install_requirements(repo_dir: Path, state_dir: Path, run: Runner = _run, *, python: str = sys.executable, upgrade: Sequence[str] = (),
                         dry_run_report: Path | None = None) -> bool:
    """Install what the project needs and Colab lacks, replacing nothing Colab installed; True when pip ran.

    Every installed distribution is pinned to its installed version in a constraints file (torch and
    torchvision included), and only the requirements not installed at all are asked for; a preinstalled
    version other than the one requirements.txt pins is kept and listed. When pip cannot resolve that
    (a missing package needs a newer version of a preinstalled one) ``InstallConflict`` says so with pip's
    reason; ``upgrade`` names the distributions the user lets pip replace. ``dry_run_report``: resolve
    only (``pip install --dry-run --report``), install nothing. A stamp in ``state_dir`` keyed on the
    requirements, pyproject.toml and the constraints skips an install that is done. Raises
    ``RestartRequired`` (after stamping) when the install replaced a package the kernel had imported.
    """
    plan = plan_install(repo_dir / "requirements.txt", installed_distributions(python), upgrade)
    wanted = (repo_dir / "requirements.txt").read_bytes() + (repo_dir / "pyproject.toml").read_bytes() + plan.constraints.encode()
    stamp = state_dir / (STAMP_PREFIX + hashlib.sha256(wanted).hexdigest()[:16])
    if stamp.exists() and dry_run_report is None:
        return False
    state_dir.mkdir(parents=True, exist_ok=True)
    constraints_file = state_dir / CONSTRAINTS_FILE
    constraints_file.write_text(plan.constraints)
    for name, have, pinned in plan.kept:
        print(f"kept the preinstalled {name} {have} (the project pins {pinned})")
    before = _imported_versions()
    pip = [python, "-m", "pip", "install", "-q", "-c", str(constraints_file)]
    dry = ["--dry-run", "--report", str(dry_run_report)] if dry_run_report is not None else []
    if plan.missing:
        try:
            run([*pip, *dry, *plan.missing])
        except subprocess.CalledProcessError as exc:
            reason = (exc.stderr or exc.stdout or "") if isinstance(exc.stderr or exc.stdout, str) else ""
            raise InstallConflict(
                f"pip cannot install {', '.join(plan.missing)} without replacing a package Colab installed"
                f"{': ' + reason.strip()[-1500:] if reason else ' (pip printed which, above)'}\nTo let pip replace the ones it names (Colab features that need "
                "them may break), call ensure_session(repo_url, upgrade=[...names...]); or keep Colab's and use the local profile."
            ) from exc
    if dry_run_report is not None:
        return True
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
    upgrade: Sequence[str] = (),
) -> Path | None:
    """Make a Colab kernel ready for the notebooks; outside Colab do nothing and return None.

    In Colab: ``DRIVE_ROOT`` defaults to ``DRIVE_MOUNT``; Drive is mounted there (``mount``, skipped
    when mounted); the repository is cloned or pulled, what is missing installed unless stamped (nothing
    Colab installed is replaced, except the distributions named in ``upgrade``: ``install_requirements``),
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
    installed = install_requirements(repo, state_dir or Path(sys.prefix), run, upgrade=upgrade)
    print("packages:", "installed" if installed else "up to date")
    lib = str(repo / "lib")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    os.chdir(repo / "notebooks")
    return repo

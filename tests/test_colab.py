"""The Colab branches of colab.ensure_session, with google.colab, drive.mount and the command runner faked."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

import pytest

from pancreas_multitask.profiles import load_parameters
from pancreas_multitask import colab, runtime

from conftest import REPO

URL = "https://example.org/pancreas-multitask.git"


class FakeMachine:
    """Records mount, clone, pull and pip in call order; the clone and the mount create what they would."""

    def __init__(self, template: Path) -> None:
        self.template = template
        self.events: list[str] = []
        self.pip_commands: list[list[str]] = []

    def mount(self, mountpoint: str) -> None:
        self.events.append("mount")
        (Path(mountpoint) / "MyDrive").mkdir(parents=True)

    def run(self, cmd: Sequence[str]) -> None:
        cmd = list(cmd)
        if cmd[:2] == ["git", "clone"]:
            self.events.append("clone")
            target = Path(cmd[-1])
            (target / ".git").mkdir(parents=True)
            (target / "lib").mkdir()
            (target / "notebooks").mkdir()
            for name in ("requirements.txt", "pyproject.toml"):
                (target / name).write_text((self.template / name).read_text())
            with (target / "requirements.txt").open("a") as f:  # what this kernel lacks, as Colab lacks nnunetv2
                f.write("missing-on-this-kernel==1.0\n")
        elif cmd[0] == "git" and "pull" in cmd:
            self.events.append("pull")
        elif cmd[1:4] == ["-m", "pip", "install"]:
            self.events.append("install -e" if "-e" in cmd else "install missing")
            self.pip_commands.append(cmd)
        else:
            raise AssertionError(f"unexpected command {cmd}")


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Colab, not headless, DRIVE_ROOT unset, cwd in tmp_path; sys.path restored afterwards."""
    for var in ("DRIVE_ROOT", colab.HEADLESS_VAR, "COLAB_RELEASE_TAG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(colab, "_imported_versions", lambda: {})
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def machine(session: Path, monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    """A Colab kernel: google.colab imported, drive.mount recording, DRIVE_ROOT in tmp_path."""
    fake = FakeMachine(REPO)
    google_colab = ModuleType("google.colab")
    google_colab.drive = ModuleType("google.colab.drive")  # type: ignore[attr-defined]
    google_colab.drive.mount = fake.mount  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google", sys.modules.get("google") or ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", google_colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", google_colab.drive)
    monkeypatch.setenv("DRIVE_ROOT", str(session / "drive"))
    return fake


def start(fake: FakeMachine, root: Path, **kwargs: object) -> Path | None:
    return colab.ensure_session(URL, repo_dir=root / "repo", state_dir=root / "env", run=fake.run, **kwargs)  # type: ignore[arg-type]


def test_first_run_mounts_clones_installs_then_second_run_skips_them(machine: FakeMachine, session: Path) -> None:
    repo = session / "repo"
    assert start(machine, session) == repo
    assert machine.events == ["mount", "clone", "install missing", "install -e"]
    assert Path.cwd() == repo / "notebooks" and sys.path[0] == str(repo / "lib")
    assert os.environ["DRIVE_ROOT"] == str(session / "drive")  # a DRIVE_ROOT that is set is kept

    machine.events.clear()
    assert start(machine, session) == repo
    assert machine.events == ["pull"]  # mounted, cloned, stamped
    assert sys.path.count(str(repo / "lib")) == 1


def test_install_keeps_everything_colab_installed(machine: FakeMachine, session: Path) -> None:
    start(machine, session)
    constraints = (session / "env" / colab.CONSTRAINTS_FILE).read_text()
    installed = colab.installed_distributions()
    assert f"torch=={importlib.metadata.version('torch')}\n" in constraints and f"numpy=={importlib.metadata.version('numpy')}\n" in constraints
    assert len(constraints.splitlines()) == len(installed)  # every installed distribution pinned where it is
    missing, package = machine.pip_commands
    for cmd in machine.pip_commands:
        assert cmd[0] == sys.executable and cmd[cmd.index("-c") + 1] == str(session / "env" / colab.CONSTRAINTS_FILE)
    asked = [colab.canonical_name(line.split("==")[0]) for line in missing[missing.index("-c") + 2:]]
    assert asked == ["missing-on-this-kernel"]  # only what this kernel lacks is asked for
    assert package[-3:] == ["--no-deps", "-e", str(session / "repo")]


def test_changed_requirements_install_again(machine: FakeMachine, session: Path) -> None:
    start(machine, session)
    with (session / "repo" / "requirements.txt").open("a") as f:
        f.write("extra-package==1.0\n")
    machine.events.clear()
    start(machine, session)
    assert machine.events == ["pull", "install missing", "install -e"]
    assert len(list((session / "env").glob(colab.STAMP_PREFIX + "*"))) == 1  # the old stamp is gone


def test_install_that_replaces_an_imported_package_asks_for_a_restart(machine: FakeMachine, session: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = iter([{"numpy": "1.0"}, {"numpy": "2.0"}])
    monkeypatch.setattr(colab, "_imported_versions", lambda: next(versions))
    with pytest.raises(colab.RestartRequired, match="numpy.*Restart session"):
        start(machine, session)
    machine.events.clear()
    start(machine, session)  # after the restart the stamp skips the install
    assert machine.events == ["pull"]


def test_mount_false_leaves_drive_alone(machine: FakeMachine, session: Path) -> None:
    start(machine, session, mount=False)
    assert machine.events == ["clone", "install missing", "install -e"]


def test_missing_repo_url_is_an_error_before_anything_installs(machine: FakeMachine, session: Path) -> None:
    with pytest.raises(ValueError, match="repo_url"):
        colab.ensure_session("", repo_dir=session / "repo", state_dir=session / "env", run=machine.run)
    assert machine.events == ["mount"]


def test_outside_colab_nothing_happens(session: Path) -> None:
    path_before = list(sys.path)
    fake = FakeMachine(REPO)
    assert start(fake, session) is None
    assert fake.events == [] and "DRIVE_ROOT" not in os.environ
    assert Path.cwd() == session and sys.path == path_before
    assert not (session / "repo").exists() and not (session / "env").exists()


def test_headless_never_prompts_clones_or_installs(machine: FakeMachine, session: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(colab.HEADLESS_VAR, "1")
    with pytest.raises(RuntimeError, match="not mounted"):
        start(machine, session)  # Drive not mounted: an error, not a prompt
    (session / "drive" / "MyDrive").mkdir(parents=True)
    assert start(machine, session) is None
    assert machine.events == [] and Path.cwd() == session


def test_papermill_kernel_on_colab_gets_the_default_drive_root(session: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-test")  # inherited from Colab; google.colab not imported
    monkeypatch.setenv(colab.HEADLESS_VAR, "1")
    fake = FakeMachine(REPO)
    assert start(fake, session, mount=False) is None
    assert os.environ["DRIVE_ROOT"] == str(colab.DRIVE_MOUNT) and fake.events == []


def test_run_fails_loudly_and_git_never_prompts() -> None:
    colab._run([sys.executable, "-c", "import os, sys; sys.exit(os.environ['GIT_TERMINAL_PROMPT'] != '0')"])
    with pytest.raises(subprocess.CalledProcessError):
        colab._run([sys.executable, "-c", "raise SystemExit(3)"])


def test_module_needs_only_the_standard_library() -> None:
    code = "import sys, pancreas_multitask.colab as c; print(sorted({'yaml', 'tqdm', 'numpy', 'torch'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    assert colab.HEADLESS_VAR == runtime.HEADLESS_VAR
    assert colab.default_repo_dir() == REPO


def test_imported_versions_lists_loaded_distributions() -> None:
    assert colab._imported_versions()["pytest"] == importlib.metadata.version("pytest")


def test_colab_profile_is_the_full_gpu_recipe_and_resumes() -> None:
    params = load_parameters(REPO / "notebooks" / "params", "colab")
    assert params["plans"] == "nnUNetResEncUNetMPlans"
    assert (params["epochs"], params["iterations_per_epoch"], params["patience"]) == (500, 250, 100)
    assert params["resume"] is True
    assert params["trainer_extra"] == {}  # the trainer's own defaults, not the CPU demo's notebook default


def test_colab_badges_are_written_once_for_every_notebook(tmp_path: Path) -> None:
    import importlib.util
    import shutil

    import nbformat

    spec = importlib.util.spec_from_file_location("colab_badges", REPO / "scripts" / "colab_badges.py")
    badges = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(badges)
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO / badges.BADGE_PAGE, tmp_path / badges.BADGE_PAGE)
    notebooks = sorted((tmp_path / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(badges.add_badges(tmp_path, "someone/pancreas-multitask")) == len(notebooks) + 1
    assert badges.add_badges(tmp_path, "someone/pancreas-multitask") == []  # idempotent
    readme = (tmp_path / badges.BADGE_PAGE).read_text()
    for path in notebooks:
        url = f"https://colab.research.google.com/github/someone/pancreas-multitask/blob/main/notebooks/{path.name}"
        assert url in readme
        first = next(c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "markdown")
        assert first.source.startswith(f"[![Open in Colab]") and first.source.count("Open in Colab") == 1 and url in first.source
    assert len(badges.add_badges(tmp_path, "other/repo")) == len(notebooks) + 1 and "someone/" not in (tmp_path / badges.BADGE_PAGE).read_text()


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A stand-in for Colab's kernel: a venv with older versions of some packages preinstalled."""
    venv = tmp_path_factory.mktemp("colab_like") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "PyYAML==6.0.1", "tqdm==4.66.1", "idna==2.4"], check=True)
    return python


def _repo(root: Path, requirements: str) -> Path:
    root.mkdir()
    (root / "requirements.txt").write_text(requirements)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root


def _captured(cmd: Sequence[str]) -> object:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True)


def test_colab_install_replaces_nothing_preinstalled(colab_like: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    before = colab.installed_distributions(colab_like)
    assert (before["pyyaml"], before["tqdm"]) == ("6.0.1", "4.66.1")
    repo = _repo(tmp_path / "repo", "PyYAML==6.0.4\ntqdm==4.70.1\nJinja2==3.1.6\n")
    report = tmp_path / "report.json"
    assert colab.install_requirements(repo, tmp_path / "state", _captured, python=colab_like, dry_run_report=report)
    would_install = {colab.canonical_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert "jinja2" in would_install and not would_install & set(before)  # Jinja2 (and its MarkupSafe) only: nothing preinstalled replaced
    printed = capsys.readouterr().out
    assert "kept the preinstalled pyyaml 6.0.1 (the project pins 6.0.4)" in printed and "tqdm 4.66.1" in printed
    assert colab.installed_distributions(colab_like) == before  # a dry run installs nothing


def test_a_preinstalled_version_too_old_is_named_and_the_user_may_let_pip_replace_it(colab_like: str, tmp_path: Path) -> None:
    import json

    repo = _repo(tmp_path / "repo", "requests==2.32.3\n")  # needs idna >= 2.5; the stand-in has 2.4
    with pytest.raises(colab.InstallConflict, match="idna") as raised:
        colab.install_requirements(repo, tmp_path / "state", _captured, python=colab_like, dry_run_report=tmp_path / "r.json")
    assert "upgrade=" in str(raised.value)
    assert colab.install_requirements(repo, tmp_path / "state", _captured, python=colab_like, upgrade=["idna"], dry_run_report=tmp_path / "r.json")
    planned = {colab.canonical_name(item["metadata"]["name"]) for item in json.loads((tmp_path / "r.json").read_text())["install"]}
    assert "idna" in planned and "requests" in planned and not planned & {"pyyaml", "tqdm", "pip"}  # only the one the user allowed

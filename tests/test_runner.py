"""The papermill runner and 00_setup, executed headless with the smoke profile."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from pancreas_multitask.runner import run, select_notebooks

from conftest import REPO, SMOKE, fake_repo, write_manifest

pytestmark = pytest.mark.notebook
def test_setup_notebook_with_smoke_parameters(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, smoke={"raw": "quiz", "test_answers": "answers", "work": "work"})
    pm.execute_notebook(
        str(REPO / "notebooks" / "00_setup.ipynb"),
        str(tmp_path / "00_setup.ipynb"),
        parameters={**SMOKE, "profile": "smoke", "manifest": str(manifest)},
        cwd=str(REPO / "notebooks"),
        kernel_name="python3",
        progress_bar=False,
    )
    summary = json.loads((tmp_path / "work" / "setup.json").read_text())
    phantom = SMOKE["phantom"]
    assert summary["device"] == "cpu"
    assert summary["counts"]["train"] == {f"subtype{k}": n for k, n in enumerate(phantom["train"])}
    assert summary["counts"]["validation"] == {f"subtype{k}": n for k, n in enumerate(phantom["validation"])}
    assert summary["counts"]["test"] == {"unlabeled": phantom["test"]}
    assert summary["nnunet_env"]["nnUNet_raw"] == str(tmp_path / "work" / "nnUNet_raw")
    assert summary["nnunet_env"]["nnUNet_compile"] == "f"
    table = (tmp_path / "work" / "case_table.csv").read_text().splitlines()
    assert len(table) == 1 + sum(phantom["train"]) + sum(phantom["validation"]) + phantom["test"]
    executed = nbformat.read(str(tmp_path / "00_setup.ipynb"), as_version=4)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the subtype figure was not drawn"


def test_runner_writes_html_and_run_record(tmp_path: Path, capsys) -> None:
    repo = fake_repo(tmp_path)
    assert run(repo, "smoke") == 0
    (run_dir,) = (repo / "reports" / "runs").iterdir()
    assert (run_dir / "00_setup.ipynb").is_file()
    assert "usable case(s)" in (run_dir / "00_setup.html").read_text()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "ok" and record["notebooks"][0]["status"] == "ok"
    assert record["parameters"]["phantom"] == SMOKE["phantom"]
    assert (repo / "data" / "quiz" / "phantom.json").is_file()
    out = capsys.readouterr().out
    assert f"report: reports/runs/{run_dir.name}/index.html" in out
    executed = (run_dir / "00_setup.ipynb").read_text()
    for text in (out, executed):  # no progress bars, neither in the log nor in the executed notebook
        assert "it/s" not in text and "case/s" not in text and "%|" not in text


def test_runner_stops_at_the_first_failure(tmp_path: Path, capsys) -> None:
    repo = fake_repo(tmp_path, extra_cells={"01_fails.ipynb": "raise RuntimeError('boom')", "02_never.ipynb": "print('unreachable')"})
    assert run(repo, "smoke", start="01") == 1
    (run_dir,) = (repo / "reports" / "runs").iterdir()
    assert (run_dir / "01_fails.html").is_file()
    assert not (run_dir / "02_never.ipynb").exists()
    record = json.loads((run_dir / "run.json").read_text())
    assert [n["status"] for n in record["notebooks"]] == ["failed"]
    out = capsys.readouterr().out
    assert "FAILED after" in out and "RuntimeError: boom" in out and "01_fails.html" in out


def test_headless_console_names_every_problem_of_a_failed_scan(tmp_path: Path, capsys) -> None:
    """A lab engineer over ssh sees the problems themselves, not only the exception's first line."""
    problems = "[Problem(Path(f'/quiz/train/subtype0/quiz_0_{i:03d}_0000.nii.gz'), 'image without mask') for i in range(3)]"
    many = "[Problem(Path(f'/quiz/test/quiz_{i:03d}_0000.nii.gz'), 'unreadable NIfTI file') for i in range(30)]"
    cell = "from pathlib import Path\nfrom pancreas_multitask.dataset.scan import DataValidationError, Problem\nraise DataValidationError({})"
    repo = fake_repo(tmp_path / "few", extra_cells={"01_scan.ipynb": cell.format(problems)})
    assert run(repo, "smoke", start="01") == 1
    out = capsys.readouterr().out
    assert "DataValidationError: 3 problem(s) in the raw data:" in out
    for i in range(3):
        assert f"/quiz/train/subtype0/quiz_0_{i:03d}_0000.nii.gz: image without mask" in out

    repo = fake_repo(tmp_path / "many", extra_cells={"01_scan.ipynb": cell.format(many)})
    assert run(repo, "smoke", start="01") == 1
    out = capsys.readouterr().out
    shown = [i for i in range(30) if f"/quiz/test/quiz_{i:03d}_0000.nii.gz: unreadable" in out]
    assert shown == list(range(19)) and "... and 11 more line(s)" in out  # the count line, then 19 problems, then the rest counted


def test_the_local_kernel_starts_without_the_tcp_warning(tmp_path: Path, capfd) -> None:
    """ipykernel warns about unencrypted TCP at every start; the runner's kernel talks over IPC instead."""
    cell = "import json\nfrom ipykernel.connect import get_connection_info\nprint('transport', json.loads(get_connection_info())['transport'])"
    repo = fake_repo(tmp_path, notebooks=(), extra_cells={"00_hello.ipynb": cell})
    assert run(repo, "smoke") == 0
    captured = capfd.readouterr()
    assert "[00_hello] ok" in captured.out
    assert "without encryption" not in captured.out + captured.err and "Kernel is running over TCP" not in captured.err
    (executed,) = (repo / "reports" / "runs").glob("*/00_hello.ipynb")
    assert "transport ipc" in executed.read_text()  # the kernel really talks over IPC


HOLD_LOCK = """
import sys, time
from pancreas_multitask.io import file_lock
with file_lock(sys.argv[1], wait=False, holder="pid of the first run, profile smoke"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_the_same_work_folder_stops_at_once(tmp_path: Path, capfd) -> None:
    import os
    import subprocess
    import sys

    from pancreas_multitask.runner import RUN_LOCK

    repo = fake_repo(tmp_path, notebooks=(), extra_cells={"00_hello.ipynb": "print('hello')"})
    lock = repo / "work" / RUN_LOCK
    lock.parent.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "lib"), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        assert run(repo, "smoke") == 1
        out = capfd.readouterr().out
        assert f"another run is using the work folder {repo / 'work'}" in out and str(lock) in out and "pid of the first run" in out
        assert not (repo / "reports" / "runs").exists()  # it stopped before starting anything
    finally:
        first.kill()
        first.wait()
    assert run(repo, "smoke") == 0  # the lock went with the process that held it


def test_a_read_only_work_folder_is_named(tmp_path: Path, capsys, monkeypatch) -> None:
    """Simulated (the tests run as root): every file opened under the work folder is refused."""
    import builtins
    import errno

    import pancreas_multitask.io as io_module

    repo = fake_repo(tmp_path, notebooks=(), extra_cells={"00_hello.ipynb": "print('hello')"})
    work = repo / "work"

    def read_only(file, *args, **kwargs):
        if str(file).startswith(str(work)):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(io_module, "open", read_only, raising=False)
    assert run(repo, "smoke") == 1
    assert f"cannot write to the work folder {work} (Permission denied)" in capsys.readouterr().out


def test_the_kernel_stays_on_tcp_where_a_socket_path_would_be_too_long(tmp_path: Path, monkeypatch) -> None:
    from pancreas_multitask.runner import LocalKernelManager

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", "/tmp/jrt")
    assert LocalKernelManager().transport == "ipc"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / ("a-very-long-folder-name" * 4)))
    assert LocalKernelManager().transport == "tcp"


def test_select_notebooks() -> None:
    paths = [Path(f"{i:02d}_x.ipynb") for i in range(5)]
    assert select_notebooks(paths, start="02") == paths[2:]
    assert select_notebooks(paths, only="03") == [paths[3]]
    with pytest.raises(SystemExit, match="no notebook numbered 09"):
        select_notebooks(paths, only="09")


def test_profile_parameters_fill_in_what_was_left_at_the_defaults(monkeypatch, capsys) -> None:
    from pancreas_multitask.runner import profile_parameters

    params = REPO / "notebooks" / "params"
    monkeypatch.delenv("PANCREAS_HEADLESS", raising=False)
    current = {"profile": "colab", "epochs": 60, "plans": "nnUNetResEncUNetMPlans_cpu", "resume": False, "patience": 5, "unrelated": 1}
    changes = profile_parameters("colab", current, params)
    assert changes == {"epochs": 500, "plans": "nnUNetResEncUNetMPlans", "resume": True}  # patience was changed by hand: kept
    assert "colab profile: epochs = 500" in capsys.readouterr().out
    assert profile_parameters("demo", current, params) == {}
    monkeypatch.setenv("PANCREAS_HEADLESS", "1")  # run_all.sh injected the profile already
    assert profile_parameters("colab", current, params) == {}

"""Headless notebook runner behind ``run_all.sh`` (papermill + nbconvert, MONAI ``runner.sh`` style).

Runs the numbered notebooks in order with a profile's parameters, writes each executed copy and
its HTML export to ``reports/runs/<run_id>/`` (a failed one included), records the run in
``run.json`` and an ``index.html``, and stops at the first failure with a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import html
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import papermill as pm
import yaml
from jupyter_client.manager import AsyncKernelManager
from nbconvert import HTMLExporter
from traitlets import default

from .dataset.phantom import ensure_phantom
from .io import LockedError, file_lock, write_json, write_text
from .manifest import load_manifest
from .profiles import load_parameters
from .runtime import HEADLESS_VAR, find_repo_root, git_revision, is_headless, library_versions

PROFILES = ("demo", "smoke", "realct", "local", "colab")


def discover_notebooks(notebook_dir: Path) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``), in order."""
    return sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))


def select_notebooks(notebooks: list[Path], start: str | None = None, only: str | None = None) -> list[Path]:
    """Filter by ``--from NN`` / ``--only NN`` (two-digit prefixes)."""
    def number(p: Path) -> int:
        return int(p.name[:2])

    if only is not None:
        chosen = [p for p in notebooks if number(p) == int(only)]
        if not chosen:
            raise SystemExit(f"--only {only}: no notebook numbered {only} in {[p.name for p in notebooks]}")
        return chosen
    if start is not None:
        return [p for p in notebooks if number(p) >= int(start)]
    return notebooks


def profile_parameters(profile: str, current: dict[str, Any], params_dir: Path | None = None) -> dict[str, Any]:
    """For a notebook run by hand (e.g. in Colab): the profile's values of the parameters still at their defaults.

    The notebooks' defaults are the demo profile's, so a parameter equal to its demo value takes the
    profile's value, and one changed by hand is kept. Headless, ``run_all.sh`` has injected the
    profile already: nothing changes. Prints what it sets.
    """
    if is_headless() or profile == "demo":
        return {}
    params_dir = params_dir or find_repo_root() / "notebooks" / "params"
    demo, chosen = load_parameters(params_dir, "demo"), load_parameters(params_dir, profile)
    changes = {k: v for k, v in chosen.items() if k in current and k in demo and current[k] == demo[k] and v != demo[k]}
    for key, value in changes.items():
        print(f"{profile} profile: {key} = {value!r}")
    return changes


def notebook_parameters(notebook: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that the notebook's ``parameters`` cell declares."""
    declared = pm.inspect_notebook(str(notebook))
    return {k: v for k, v in params.items() if k in declared}


def export_html(executed: Path, target: Path) -> None:
    """HTML export of an executed notebook (images embedded)."""
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(str(executed), as_version=4))
    write_text(target, body)


def _index_html(record: dict[str, Any], reports: list[str]) -> str:
    links = "".join(f"<li><a href='{html.escape(name)}'>{html.escape(name)}</a></li>" for name in reports)
    rows = "".join(
        f"<tr><td><a href='{html.escape(n['html'])}'>{html.escape(n['notebook'])}</a></td>"
        f"<td>{html.escape(n['status'])}</td><td>{n['seconds']:.1f}</td></tr>"
        for n in record["notebooks"]
    )
    params = html.escape(yaml.safe_dump(record["parameters"], sort_keys=True))
    versions = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in record["versions"].items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Run "
        f"{html.escape(record['run_id'])}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "td,th{padding:4px 12px;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>Run {html.escape(record['run_id'])}</h1>"
        f"<p>Profile <b>{html.escape(record['profile'])}</b>, status <b>{html.escape(record['status'])}</b>, "
        f"git {html.escape(record['git_revision'])}, started {html.escape(record['started'])}.</p>"
        + (f"<h2>Evaluation reports</h2><ul>{links}</ul>" if links else "")
        + f"<table><tr><th>notebook</th><th>status</th><th>seconds</th></tr>{rows}</table>"
        f"<h2>Parameters</h2><pre>{params}</pre><h2>Library versions</h2><ul>{versions}</ul></body></html>"
    )


def new_run_dir(reports: Path, profile: str) -> Path:
    """``reports/runs/<timestamp>-<profile>``, unique."""
    stem = f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{profile}"
    run_dir, n = reports / "runs" / stem, 1
    while run_dir.exists():
        n += 1
        run_dir = reports / "runs" / f"{stem}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


RUN_LOCK = ".run.lock"  # in the profile's work folder, held while a run uses it


def run(repo: Path, profile: str, start: str | None = None, only: str | None = None, extra: Path | None = None) -> int:
    """Run the selected notebooks; returns the process exit code.

    One run at a time per work folder: a second run on the same folder stops at once, naming the lock
    and the run that holds it, instead of both writing into the same nnU-Net folders.
    """
    notebook_dir = repo / "notebooks"
    params = load_parameters(notebook_dir / "params", profile, extra)
    notebooks = select_notebooks(discover_notebooks(notebook_dir), start, only)
    try:
        work = load_manifest(notebook_dir / params.get("manifest", "../data_manifest.yaml")).paths(profile).work
    except Exception:  # a manifest problem: 00_setup explains it
        work = None
    holder = f"pid {os.getpid()} on {socket.gethostname()}, profile {profile}, started {dt.datetime.now().isoformat(timespec='seconds')}"
    try:
        with file_lock(work / RUN_LOCK, wait=False, holder=holder) if work is not None else contextlib.nullcontext():
            return _run(repo, profile, params, notebooks, notebook_dir)
    except LockedError as exc:
        print(f"another run is using the work folder {work}: {exc}.\nWait for it to finish, or give this run its own work folder "
              "(PANCREAS_WORK_DIR, or the profile's `work` in data_manifest.yaml).", flush=True)
        return 1
    except OSError as exc:
        if work is None or exc.filename is None or not str(exc.filename).startswith(str(work)):
            raise
        print(f"cannot write to the work folder {work} ({exc.strerror}); fix its permissions, free some space, or choose another work folder", flush=True)
        return 1


def _run(repo: Path, profile: str, params: dict[str, Any], notebooks: list[Path], notebook_dir: Path) -> int:
    run_dir = new_run_dir(repo / "reports", profile)
    params["run_dir"] = str(run_dir)
    os.environ[HEADLESS_VAR] = "1"
    os.environ["TQDM_DISABLE"] = "1"  # no progress bars in logs or executed notebooks
    if params.get("phantom"):  # synthetic profiles: make the data even when 00_setup is skipped
        paths = load_manifest(notebook_dir / params.get("manifest", "../data_manifest.yaml")).paths(profile)
        made = ensure_phantom(paths.raw, paths.test_answers, params["phantom"])
        print(f"synthetic data: {'generated' if made else 'up to date'} in {paths.raw}", flush=True)
    record: dict[str, Any] = {
        "run_id": run_dir.name,
        "profile": profile,
        "parameters": params,
        "git_revision": git_revision(repo),
        "versions": library_versions(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "status": "running",
        "notebooks": [],
    }
    write_json(run_dir / "run.json", record)  # already now: 04_evaluate records the run's parameters from it
    print(f"run {run_dir.name}: profile {profile}, {len(notebooks)} notebook(s) -> {run_dir.relative_to(repo)}", flush=True)
    status = 0
    for notebook in notebooks:
        executed = run_dir / notebook.name
        page = executed.with_suffix(".html")
        entry = {"notebook": notebook.name, "html": page.name, "status": "running", "seconds": 0.0}
        record["notebooks"].append(entry)
        t0 = time.monotonic()
        print(f"[{notebook.stem}] running ...", flush=True)
        error: Exception | None = None
        try:
            pm.execute_notebook(
                str(notebook),
                str(executed),
                parameters=notebook_parameters(notebook, params),
                cwd=str(notebook_dir),
                kernel_name="python3",
                progress_bar=False,
                request_save_on_cell_execute=True,
                kernel_manager_class=LocalKernelManager,
            )
        except Exception as exc:  # papermill's execution error, a dead kernel, ...
            error = exc
        entry["seconds"] = round(time.monotonic() - t0, 1)
        if executed.exists():
            export_html(executed, page)
        if error is not None:
            entry["status"] = "failed"
            where = page.relative_to(repo) if page.exists() else executed.relative_to(repo)
            print(f"[{notebook.stem}] FAILED after {entry['seconds']}s -> see {where}\n{failure_message(error)}", flush=True)
            status = 1
            break
        entry["status"] = "ok"
        print(f"[{notebook.stem}] ok in {entry['seconds']}s", flush=True)
    record["status"] = "failed" if status else "ok"
    record["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    write_json(run_dir / "run.json", record)
    write_text(run_dir / "index.html", _index_html(record, sorted(p.name for p in run_dir.glob("evaluation*.html"))))
    report = run_dir / "evaluation.html"
    print(f"report: {(report if report.exists() else run_dir / 'index.html').relative_to(repo)}", flush=True)
    return status


IPC_PATH_LIMIT = 100  # bytes; a Unix socket's path may hold about 107


class LocalKernelManager(AsyncKernelManager):
    """The notebooks' kernel, on this machine, over IPC (Unix sockets beside its connection file in the
    private Jupyter runtime folder) instead of TCP on localhost. ipykernel warns about unencrypted TCP
    at every start; IPC is not reachable over the network, so there is nothing to encrypt. Where the
    runtime folder's path is too long for a socket (or on Windows), it stays on TCP."""

    @default("transport")
    def _default_transport(self) -> str:
        from jupyter_core.paths import jupyter_runtime_dir

        socket_path = os.path.join(jupyter_runtime_dir(), f"kernel-{'0' * 36}-ipc-5")  # what jupyter_client names them
        return "ipc" if os.name == "posix" and len(socket_path.encode()) < IPC_PATH_LIMIT else "tcp"


CONSOLE_LINES = 20  # of a failure's message; the rest is counted (the HTML has it all)


def failure_message(error: Exception) -> str:
    """What a headless user needs on the console: the error's type and its message, every line of it up
    to ``CONSOLE_LINES`` (a failed raw-data scan names one problem per line), then how many more."""
    lines = str(getattr(error, "evalue", error)).splitlines() or [""]
    name = getattr(error, "ename", type(error).__name__)
    shown = [f"  {name}: {lines[0]}", *(f"  {line}" for line in lines[1:CONSOLE_LINES])]
    if len(lines) > CONSOLE_LINES:
        shown.append(f"  ... and {len(lines) - CONSOLE_LINES} more line(s)")
    return "\n".join(shown)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="run_all.sh", description="Run the numbered notebooks headless with a parameter profile.")
    parser.add_argument("--profile", default="demo", choices=PROFILES, help="parameter profile (notebooks/params/<profile>.yaml)")
    parser.add_argument("--from", dest="start", metavar="NN", help="start at notebook NN (e.g. 02)")
    parser.add_argument("--only", metavar="NN", help="run notebook NN only")
    parser.add_argument("--params", type=Path, help="extra YAML whose keys override the profile's parameters")
    args = parser.parse_args(argv)
    sys.exit(run(find_repo_root(), args.profile, args.start, args.only, args.params))


if __name__ == "__main__":
    main()

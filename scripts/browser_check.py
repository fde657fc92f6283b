"""The report and the case viewer, checked in a real browser: Debian's headless Chromium, driven by Playwright.

    python scripts/browser_check.py report REPORT.html [--out docs]
    python scripts/browser_check.py viewer RUN_DIR [--out docs]

``report`` opens a report at 1300 px width and checks that nothing is wider than the window (no table or
path cut off), that every figure loaded and is drawn at a legible size; it saves the first screen and the
whole page as PNGs, and the worst-cases figure as it is drawn. ``viewer`` starts JupyterLab on a localhost port, opens a small notebook that builds
04_evaluate's case viewer (``show_viewer``) from a finished run's ``evaluation/<split>/per_case.csv``, runs
it, and then works every control (case, plane, slice, view, window, opacity) and checks that each one
changes the drawn image; it saves a screenshot of the rendered widget. Both write ``browser_check_<what>.json``
beside the screenshots and exit non-zero when a check fails.

Needs ``apt-get install chromium`` (``/usr/bin/chromium``) and ``pip install playwright`` (no browser
download: Playwright drives Debian's Chromium). Not part of the test suite (CI has no browser); the README
says when to run it and shows its screenshots.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# what the machine's closed network needs (no background connections), as root (no sandbox)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WIDTH = 1300
FIRST_SCREEN = 900
MIN_FIGURE_WIDTH = 300  # px: a figure drawn narrower than this is not legible


def _shown(path: Path) -> str:
    """A path as the JSON records it: relative to the repository when inside it, else its name (no machine's absolute path)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return path.name


def browser(playwright):
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"{CHROMIUM} not found: apt-get install chromium (or set CHROMIUM)")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def check_report(report: Path, out: Path) -> dict:
    """Open ``report`` at ``WIDTH`` px; screenshots and the layout checks."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = browser(p)
        page = b.new_page(viewport={"width": WIDTH, "height": FIRST_SCREEN})
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        layout = page.evaluate("""() => {
            const doc = document.documentElement;
            const wide = [...document.querySelectorAll('table, img, pre, code, p')]
                .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
                .map(e => e.tagName + (e.id ? '#' + e.id : '') + ': ' + (e.textContent || e.alt || '').slice(0, 60));
            const images = [...document.images].map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0, drawn_width: Math.round(i.getBoundingClientRect().width)}));
            const first = [...document.querySelectorAll('h1, p, table')].filter(e => e.getBoundingClientRect().top < window.innerHeight).map(e => e.id || e.tagName);
            return {scroll_width: doc.scrollWidth, window_width: window.innerWidth, too_wide: wide, images: images, first_screen: first,
                    text: document.body.innerText};
        }""")
        page.screenshot(path=str(out / "report_first_screen.png"))
        page.screenshot(path=str(out / "report_full.png"), full_page=True)
        worst = page.locator('img[alt="worst cases"]')
        if worst.count():
            worst.first.screenshot(path=str(out / "report_worst_cases.png"))
        b.close()
    text = layout.pop("text")
    result = {
        "report": _shown(report), "width": WIDTH, **layout,
        "checks": {
            "nothing wider than the window": layout["scroll_width"] <= WIDTH and not layout["too_wide"],
            "every figure loaded": all(i["loaded"] for i in layout["images"]) and bool(layout["images"]),
            "figures legible (drawn at least 300 px wide)": all(i["drawn_width"] >= MIN_FIGURE_WIDTH for i in layout["images"]),
            "first screen holds the targets": "summary" in layout["first_screen"],
            "no Python repr or JSON": not any(token in text for token in ("InferenceMode(", "{'", '{"', "PosixPath(")),
        },
        "screenshots": ["report_first_screen.png", "report_full.png", "report_worst_cases.png"],
    }
    (out / "browser_check_report.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


VIEWER_NOTEBOOK = {
    "cells": [{"cell_type": "code", "execution_count": None, "id": "viewer", "metadata": {}, "outputs": [], "source": [
        "import sys\n", "sys.path.insert(0, {lib!r})\n", "import pandas as pd\n",
        "from pancreas_multitask.evaluation.viewer import show_viewer\n",
        "per_case = pd.read_csv({per_case!r}, keep_default_na=False)\n",
        "viewer = show_viewer(per_case, {names!r})\n"]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_viewer(run_dir: Path, out: Path, split: str = "test", timeout_s: float = 120) -> dict:
    """JupyterLab on localhost, the viewer notebook run, every control worked; screenshot and checks."""
    from playwright.sync_api import sync_playwright

    per_case = run_dir / "evaluation" / split / "per_case.csv"
    metrics = json.loads((run_dir / "evaluation" / split / "metrics.json").read_text())
    names = metrics["classification"]["class_names"] if metrics.get("classification") else ["subtype0", "subtype1", "subtype2"]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="viewer-check-") as tmp:
        notebook = json.loads(json.dumps(VIEWER_NOTEBOOK))
        notebook["cells"][0]["source"] = [line.format(lib=str(REPO / "lib"), per_case=str(per_case.resolve()), names=names) for line in notebook["cells"][0]["source"]]
        (Path(tmp) / "viewer_check.ipynb").write_text(json.dumps(notebook))
        port, token = _free_port(), secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if k != "PANCREAS_HEADLESS"}
        server = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
                                   f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp}", "--LabApp.expose_app_in_browser=True"],
                                  env={**env, "JUPYTER_CONFIG_DIR": str(Path(tmp) / "config")}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_for_port(port, server, timeout_s)
            with sync_playwright() as p:
                b = browser(p)
                page = b.new_page(viewport={"width": WIDTH, "height": 1100})
                page.goto(f"http://127.0.0.1:{port}/lab/tree/viewer_check.ipynb?token={token}")
                page.wait_for_selector(".jp-Notebook", timeout=timeout_s * 1000)
                page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell.currentWidget.sessionContext"
                                       " && window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=timeout_s * 1000)
                page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
                page.wait_for_selector(".widget-output img", timeout=timeout_s * 1000)
                page.add_style_tag(content=".Toastify { display: none !important; }")  # JupyterLab's news prompt would cover the widget
                widget = page.locator(".jp-OutputArea-output .widget-vbox").first
                widget.screenshot(path=str(out / "viewer_jupyterlab.png"))
                changes = _work_controls(page, timeout_s)
                widget.screenshot(path=str(out / "viewer_jupyterlab_changed.png"))
                b.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    result = {"run": _shown(run_dir), "split": split, "controls": changes,
              "checks": {f"{control} changes the image": changed for control, changed in changes.items()},
              "screenshots": ["viewer_jupyterlab.png", "viewer_jupyterlab_changed.png"]}
    (out / "browser_check_viewer.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _wait_for_port(port: int, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited: {server.stderr.read().decode()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not listen on port {port} within {timeout_s} s")


def _work_controls(page, timeout_s: float) -> dict[str, bool]:
    """Each control in turn, as a user works it; whether the drawn image changed afterwards."""
    image = lambda: page.locator(".widget-output img").first.get_attribute("src")  # noqa: E731

    def changed_by(action) -> bool:
        before = image()
        action()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            page.wait_for_timeout(250)
            try:
                now = image()
            except Exception:  # the output is being replaced
                continue
            if now and now != before:
                return True
        return False

    def readout(label: str, value: str):
        def act():
            box = page.locator(".widget-slider", has=page.locator(f"label:text-is('{label}')")).locator(".widget-readout").first
            box.click()
            page.keyboard.press("Control+A")
            page.keyboard.type(value)
            page.keyboard.press("Enter")
        return act

    toggle = lambda text: (lambda: page.locator(".widget-toggle-button", has_text=text).first.click())  # noqa: E731
    window = lambda: page.locator(".widget-dropdown", has=page.locator("label:text-is('window')")).locator("select").select_option(index=2)  # noqa: E731
    case = lambda: page.locator(".widget-dropdown", has=page.locator("label:text-is('case')")).locator("select").select_option(index=1)  # noqa: E731
    return {
        "slice slider": changed_by(readout("slice", "1")),
        "plane (coronal)": changed_by(toggle("coronal")),
        "view (prediction)": changed_by(toggle("prediction")),
        "window preset": changed_by(window),
        "overlay opacity": changed_by(readout("opacity", "0.95")),
        "case": changed_by(case),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("report", "viewer"))
    parser.add_argument("path", type=Path, help="report: the HTML file; viewer: a run folder under reports/runs/")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--split", default="test", help="viewer: the evaluated split whose cases it shows")
    args = parser.parse_args(argv)
    result = check_report(args.path, args.out) if args.what == "report" else check_viewer(args.path, args.out, args.split)
    for check, passed in result["checks"].items():
        print(f"{'ok  ' if passed else 'FAIL'} {check}")
    print(f"wrote {', '.join(str(args.out / s) for s in result['screenshots'])}")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The notebooks in JupyterLab, in a real browser: headless Chromium driven by Playwright.

JupyterLab is started on a copy of the repository (it autosaves, and the notebooks write their run
folder, cache and figures inside the copy's tree); each notebook is opened there, every cell is run
in order with the notebook's own default parameters (Run > Run All Cells), the notebook is saved,
and then both what the browser shows and what the saved notebook holds are checked:

- no error output, and nothing at all on stderr (warnings included);
- progress bars rendered as widgets (ipywidgets), never as text or as "Error displaying widget";
- tables rendered as HTML (DataFrames and Table 1's Markdown);

and a screenshot of each notebook is saved under ``runs/jupyterlab-test/`` (``LARE_SCREENSHOTS``
overrides it). The source notebooks of the repository are checked to be byte-identical afterwards.

Needs Chromium (Debian's ``chromium``; ``LARE_CHROMIUM`` names another binary) and the Python
package ``playwright`` (a dev dependency). Without them the test is skipped, except under CI
(``CI`` set), where it fails: ``.ci/run`` installs Chromium.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from repo_copy import repository_copy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
ONLY = [n for n in os.environ.get("LARE_JUPYTERLAB_NOTEBOOKS", "").split(",") if n]  # a subset, when debugging
CELL_TIMEOUT_S = 900  # one notebook, all cells (the demo's defaults on 2 CPU cores take minutes)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
PROGRESS_WIDGET = ".jp-OutputArea-output .widget-hprogress"  # ipywidgets' progress bar, as tqdm.auto shows it


def _need(what: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI installs it: see .ci/run)")
    pytest.skip(what)


def _chromium() -> str:
    for cand in (os.environ.get("LARE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if cand and (path := shutil.which(cand)):
            return path
    _need("no Chromium found (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Lab:
    """A JupyterLab server on ``root`` with its own config, data, runtime and settings folders."""

    def __init__(self, root: Path, home: Path):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        settings = home / "settings" / "@jupyterlab" / "apputils-extension"  # no news, no update checks
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "JUPYTER_PLATFORM_DIRS")}
        env.setdefault("OMP_NUM_THREADS", "1")  # the demo's tiny trainings: robust on a busy 2-core machine
        env.update(PYTHONPATH=str(root), HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(home / "config"),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
                   JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
                   PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        self.log = (home / "jupyterlab.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
             ],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                self.api("GET", "/api/status")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(home / 'jupyterlab.log').read_text()[-3000:]}") from None
                time.sleep(1)

    def api(self, method: str, path: str):
        req = urllib.request.Request(self.base + path, method=method, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt'))
                        .map(e => e.textContent.trim())"""
STDERR_JS = """() => Array.from(document.querySelectorAll(
    '.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')).map(e => e.textContent)"""


def _run_all(page, timeout_s: float) -> list[str]:
    """Run > Run All Cells, then wait until no cell is queued or running; the final prompts."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).first.click()
    deadline, quiet = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        prompts = page.evaluate(PROMPTS_JS)
        busy = any("*" in p for p in prompts)
        quiet = 0 if busy else quiet + 1
        if quiet >= 4:
            return prompts
        page.wait_for_timeout(1000)
    raise AssertionError(f"the cells did not finish within {timeout_s} s: {page.evaluate(PROMPTS_JS)}")


def _saved_outputs(path: Path) -> dict[str, list]:
    nb = nbformat.read(path, as_version=4)
    out = {"errors": [], "stderr": [], "widgets": 0, "tables": 0, "text_tables": [], "unexecuted": []}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None and cell.source.strip():
            out["unexecuted"].append(i)
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if o["output_type"] == "error":
                out["errors"].append(f"cell {i}: {o['ename']}: {o['evalue']}")
            if o["output_type"] == "stream" and o["name"] == "stderr":
                out["stderr"].append(f"cell {i}: {o['text'][:300]}")
            out["widgets"] += WIDGET_MIME in data
            html, md, plain = data.get("text/html", ""), data.get("text/markdown", ""), data.get("text/plain", "")
            out["tables"] += "<table" in html or "|---" in md
            if not html and not md and re.search(r"\n\s*\d+\s+\S+.*\n\s*\d+\s+\S+", plain) and "[" not in plain[:1]:
                out["text_tables"].append(f"cell {i}: {plain[:200]}")
    return out


def test_every_notebook_runs_in_jupyterlab_in_chromium(tmp_path):
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the Python package playwright is not installed (pip install -e '.[dev]')")
    sources = {n: _sha(ROOT / "notebooks" / n) for n in NOTEBOOKS}
    shots = Path(os.environ.get("LARE_SCREENSHOTS") or ROOT / "runs" / "jupyterlab-test")
    shots.mkdir(parents=True, exist_ok=True)
    copy = repository_copy(tmp_path / "repo")
    lab = Lab(copy, tmp_path / "jupyter")
    report, problems, console_errors = {}, [], []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            for i, name in enumerate(ONLY or NOTEBOOKS):
                page.goto(f"{lab.base}/lab/workspaces/nb{i}/tree/notebooks/{name}?reset&token={lab.token}")
                page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
                deadline = time.monotonic() + 120
                while not any(s["path"].endswith(name) and s["kernel"]["execution_state"] == "idle"
                              for s in lab.api("GET", "/api/sessions")):
                    assert time.monotonic() < deadline, f"{name}: the kernel did not start"
                    page.wait_for_timeout(1000)
                page.keyboard.press("Escape")
                t0 = time.monotonic()
                prompts = _run_all(page, CELL_TIMEOUT_S)
                page.wait_for_timeout(2000)  # widgets and figures finish rendering
                shown = {
                    "stderr": page.evaluate(STDERR_JS),
                    "progress_widgets": page.locator(PROGRESS_WIDGET).count(),
                    "broken_widgets": page.locator(".jp-OutputArea-output",
                                                   has_text=re.compile(r"Error displaying widget|Loading widget|"
                                                                       r"HBox\(children=")).count(),
                    "html_tables": page.locator(".jp-OutputArea-output table").count(),
                }
                page.screenshot(path=str(shots / f"{Path(name).stem}.png"))
                saved = copy / "notebooks" / name
                before = saved.stat().st_mtime_ns
                page.keyboard.press("Control+s")
                deadline = time.monotonic() + 60
                while saved.stat().st_mtime_ns == before and time.monotonic() < deadline:
                    page.wait_for_timeout(500)
                outputs = _saved_outputs(saved)
                report[name] = {"seconds": round(time.monotonic() - t0), "prompts": prompts, **shown,
                                **{k: v for k, v in outputs.items() if v}}
                for s in lab.api("GET", "/api/sessions"):
                    if s["path"].endswith(name):
                        lab.api("DELETE", f"/api/sessions/{s['id']}")
                for key in ("errors", "stderr", "unexecuted", "text_tables"):
                    if outputs[key]:
                        problems.append(f"{name}: {key}: {outputs[key]}")
                if shown["stderr"]:
                    problems.append(f"{name}: stderr shown in the browser: {[t[:300] for t in shown['stderr']]}")
                if shown["broken_widgets"]:
                    problems.append(f"{name}: a widget did not render")
                if outputs["widgets"] and not shown["progress_widgets"]:
                    problems.append(f"{name}: {outputs['widgets']} widget output(s) saved, none rendered as a progress bar")
                if shown["html_tables"] < outputs["tables"]:
                    problems.append(f"{name}: {outputs['tables']} table output(s), {shown['html_tables']} rendered as HTML")
                if any(not re.fullmatch(r"\[\d+\]:", p) for p in prompts):
                    problems.append(f"{name}: cells not run: prompts {prompts}")
            browser.close()
    finally:
        lab.close()
        (shots / "report.json").write_text(json.dumps(report, indent=1))
    assert not problems, "\n".join(problems) + f"\n(screenshots and report.json in {shots})"
    assert ONLY or sum(r["progress_widgets"] for r in report.values()) > 0, "no notebook showed a progress bar widget"
    if "05_table1.ipynb" in report:
        assert report["05_table1.ipynb"]["html_tables"] > 0, "Table 1 is not shown as an HTML table"
    assert not console_errors, f"JavaScript errors in the page: {console_errors[:5]}"
    assert {n: _sha(ROOT / "notebooks" / n) for n in NOTEBOOKS} == sources, "a source notebook was modified"

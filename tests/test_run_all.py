"""run_all.sh on a fake project of six tiny notebooks: order, forwarding, skipping, failures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
PER_DATASET = ["01_extract_embeddings", "02_train_boxes", "03_probe_lare", "04_baselines"]
PER_PROFILE = ["05_table1", "06_figure3"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

BODY = """\
import pathlib
if value == 13 and NB_NAME == "02_train_boxes":
    raise ValueError("boom")
run = pathlib.Path(run_dir)
run.mkdir(parents=True, exist_ok=True)
with open(run / "log.txt", "a") as f:
    f.write(f"{NB_NAME},{dataset},{value},{label},{note}\\n")
if NB_NAME in ("05_table1", "06_figure3"):
    out = pathlib.Path("figures") / profile
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NB_NAME}.txt").write_text("ok")
else:
    (run / f"{NB_NAME}__{dataset}.out").write_text("ok")
"""


def make_notebook(path: Path, name: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = ""\nrun_dir = ""\ndataset = ""\nvalue = 0\nlabel = ""\nnote = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {name}"),
        params,
        nbformat.v4.new_code_cell(f"NB_NAME = {name!r}"),
        nbformat.v4.new_code_cell(BODY),
    ]
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "run_all.sh", tmp_path / "run_all.sh")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "env.sh", tmp_path / "scripts" / "env.sh")
    for profile, names in {"smoke": ["a", "b"], "tiny": ["a"]}.items():
        (tmp_path / "params" / profile).mkdir(parents=True)
        for ds in names:
            (tmp_path / "params" / profile / f"{ds}.yaml").write_text(f"dataset: {ds}\nvalue: 1\nnote: profile\n")
    (tmp_path / "notebooks").mkdir()
    for name in PER_DATASET + PER_PROFILE:
        make_notebook(tmp_path / "notebooks" / f"{name}.ipynb", name)
    return tmp_path


def run_all(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["LARE_NO_SETUP"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    return subprocess.run(["bash", "run_all.sh", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False)


def log_lines(project: Path, profile: str = "smoke") -> list[str]:
    log = project / "runs" / profile / "log.txt"
    return log.read_text().splitlines() if log.exists() else []


def expected(datasets: list[str], value: str, label: str, note: str) -> list[str]:
    rows = [f"{nb},{ds},{value},{label},{note}" for nb in PER_DATASET for ds in datasets]
    return rows + [f"{nb},a,{value},{label},{note}" for nb in PER_PROFILE]


def test_runs_forwards_skips_and_invalidates(project: Path) -> None:
    (project / "extra.yaml").write_text("note: from file\nvalue: 3\n")
    opts = ["--profile", "smoke", "-f", "extra.yaml", "-p", "value", "7", "-p", "label", "hello world"]

    # First run: every step, stage by stage, with the overrides (-p beats both files, -f beats the profile's).
    res = run_all(project, *opts)
    assert res.returncode == 0, res.stdout + res.stderr
    assert log_lines(project) == expected(["a", "b"], "7", "hello world", "from file")
    assert res.stdout.count("done in") == 10
    assert "[ 3/10] 02_train_boxes (a) " in res.stdout
    assert "figures/smoke/" in res.stdout
    nbs = project / "runs" / "smoke" / "notebooks"
    assert sorted(p.name for p in nbs.iterdir()) == sorted(
        [f"{nb}__{ds}.ipynb" for nb in PER_DATASET for ds in "ab"] + [f"{nb}.ipynb" for nb in PER_PROFILE]
    )
    assert len(list((project / "runs" / "smoke" / "stamps").glob("*.json"))) == 10
    assert (project / "figures" / "smoke" / "06_figure3.txt").exists()

    # Second run: nothing to do.
    before = log_lines(project)
    res = run_all(project, *opts)
    assert res.returncode == 0, res.stdout + res.stderr
    assert log_lines(project) == before
    assert res.stdout.count("skipped (up to date)") == 10

    # A change in b's parameters re-runs b's steps and the per-profile steps, not a's.
    with open(project / "params" / "smoke" / "b.yaml", "a") as f:
        f.write("extra: 1\n")
    res = run_all(project, *opts)
    assert res.returncode == 0, res.stdout + res.stderr
    row = "{},{},7,hello world,from file"
    assert log_lines(project)[len(before) :] == [row.format(nb, "b") for nb in PER_DATASET] + [row.format(nb, "a") for nb in PER_PROFILE]
    assert res.stdout.count("skipped (up to date)") == 4

    # A missing executed notebook re-runs its step.
    (nbs / "06_figure3.ipynb").unlink()
    n = len(log_lines(project))
    res = run_all(project, *opts)
    assert res.returncode == 0, res.stdout + res.stderr
    assert log_lines(project)[n:] == [row.format("06_figure3", "a")]
    assert res.stdout.count("skipped (up to date)") == 9


def test_failure_stops_with_the_error(project: Path) -> None:
    res = run_all(project, "--profile", "tiny", "-p", "value", "13")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    kept = project / "runs" / "tiny" / "notebooks" / "02_train_boxes__a.ipynb"
    assert "02_train_boxes" in out and "dataset a" in out
    assert "ValueError" in out and "boom" in out
    assert 'raise ValueError("boom")' in out  # the failing cell's source
    assert str(kept.relative_to(project)) in out
    assert kept.exists()
    assert log_lines(project, "tiny") == ["01_extract_embeddings,a,13,,profile"]  # 01 ran, 02 stopped the run
    stamps = project / "runs" / "tiny" / "stamps"
    assert (stamps / "01_extract_embeddings__a.json").exists()
    assert not (stamps / "02_train_boxes__a.json").exists()
    assert "03_probe_lare" not in res.stdout

    # --force runs the finished (and stamped) step 01 again.
    res = run_all(project, "--profile", "tiny", "-p", "value", "13", "--force")
    assert res.returncode != 0
    assert "skipped" not in res.stdout
    assert log_lines(project, "tiny") == ["01_extract_embeddings,a,13,,profile"] * 2


def test_unknown_profile_and_options(project: Path) -> None:
    res = run_all(project, "--profile", "nope")
    assert res.returncode != 0
    assert "nope" in res.stderr and "smoke" in res.stderr and "tiny" in res.stderr

    res = run_all(project, "--bogus")
    assert res.returncode == 2
    assert "Usage:" in res.stderr

    res = run_all(project, "-p", "value")
    assert res.returncode == 2

    res = run_all(project, "-h")
    assert res.returncode == 0
    for opt in ("--profile", "-f FILE", "-p NAME VALUE", "--force", "-h"):
        assert opt in res.stdout
    assert not (project / "runs").exists()

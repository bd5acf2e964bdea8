"""The orchestrator (lare.pipeline.orchestrator, what ./run_all.sh calls) on a fake project of six tiny notebooks:
order, parameter forwarding, skipping by hash, failures reported from papermill's exception."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lare.pipeline import orchestrator as R

ROOT = Path(__file__).resolve().parents[1]
PER_DATASET = list(R.PER_DATASET)
PER_PROFILE = list(R.PER_PROFILE)

# Each fake notebook logs the parameters it was given (as the real ones load them) to the run folder.
BODY = """\
import pathlib
from lare.pipeline.params import build, deep_merge, merged_values
P = build(merged_values(profile, dataset, overrides, root=pathlib.Path.cwd()))
if P.title_note == "boom" and NB_NAME == "02_train_boxes":
    raise ValueError("boom")
run = pathlib.Path(P.run_dir)
run.mkdir(parents=True, exist_ok=True)
with open(run / "log.txt", "a") as f:
    f.write(f"{NB_NAME},{P.dataset},{P.seeds},{P.probe.lr},{P.probe.epochs},{P.title_note}\\n")
"""


def make_notebook(path: Path, name: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = ""\ndataset = ""\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), params, nbformat.v4.new_code_cell(f"NB_NAME = {name!r}"),
                nbformat.v4.new_code_cell(BODY)]
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for profile, names in {"smoke": ["a", "b"], "tiny": ["a"]}.items():
        (tmp_path / "params" / profile).mkdir(parents=True)
        for ds in names:
            (tmp_path / "params" / profile / f"{ds}.yaml").write_text(
                f"encoders: {{coca: {{noise: 0.6}}}}\nrun_dir: {tmp_path / 'runs' / profile}\n"
                f"figures_root: {tmp_path / 'figures'}\ntable1_dataset: a\nfewshot_dataset: a\ntitle_note: profile\n"
                "protocol: fixed\n")  # the fixed recipe: probe.lr and probe.epochs given below are used
    (tmp_path / "notebooks").mkdir()
    for name in PER_DATASET + PER_PROFILE:
        make_notebook(tmp_path / "notebooks" / f"{name}.ipynb", name)
    return tmp_path


def run_all(project: Path, *args: str, capsys) -> tuple[int, str, str]:
    code = R.main(list(args), root=project)
    out = capsys.readouterr()
    return code, out.out, out.err


def log_lines(project: Path, profile: str = "smoke") -> list[str]:
    log = project / "runs" / profile / "log.txt"
    return log.read_text().splitlines() if log.exists() else []


def expected(datasets, seeds, lr, epochs, note) -> list[str]:
    rows = [f"{nb},{ds},{seeds},{lr},{epochs},{note}" for nb in PER_DATASET for ds in datasets]
    return rows + [f"{nb},a,{seeds},{lr},{epochs},{note}" for nb in PER_PROFILE]


@pytest.mark.slow  # ./run_tests.sh --all
def test_runs_forwards_skips_and_invalidates(project: Path, capsys) -> None:
    (project / "extra.yaml").write_text("title_note: from file\nseeds: [3]\nprobe: {epochs: 7}\n")
    opts = ["--profile", "smoke", "-f", str(project / "extra.yaml"), "-p", "seeds", "[1, 2]", "-p", "probe.lr", "0.01"]

    # First run: every step, stage by stage; -p beats -f, -f beats the profile; nested values deep-merge.
    code, out, err = run_all(project, *opts, capsys=capsys)
    assert code == 0, out + err
    assert log_lines(project) == expected(["a", "b"], "[1, 2]", 0.01, 7, "from file")
    assert out.count("done in") == 11
    assert "[ 3/11] 02_train_boxes (a) " in out
    assert str(project / "figures" / "smoke") in out
    nbs = project / "runs" / "smoke" / "notebooks"
    assert sorted(p.name for p in nbs.iterdir()) == sorted(
        [f"{nb}__{ds}.ipynb" for nb in PER_DATASET for ds in "ab"] + [f"{nb}.ipynb" for nb in PER_PROFILE])
    stamps = sorted((project / "runs" / "smoke" / "stamps").glob("*.json"))
    assert len(stamps) == 11
    assert all("time" not in json.loads(s.read_text()) and "finished" not in json.loads(s.read_text()) for s in stamps)

    # Second run: nothing to do.
    before = log_lines(project)
    code, out, err = run_all(project, *opts, capsys=capsys)
    assert code == 0, out + err
    assert log_lines(project) == before
    assert out.count("skipped (up to date)") == 11

    # A change in b's parameters re-runs b's steps and the per-profile steps, not a's.
    with open(project / "params" / "smoke" / "b.yaml", "a") as f:
        f.write("val_fraction: 0.3\n")
    code, out, err = run_all(project, *opts, capsys=capsys)
    assert code == 0, out + err
    row = "{},{},[1, 2],0.01,7,from file"
    assert log_lines(project)[len(before):] == [row.format(nb, "b") for nb in PER_DATASET] + [row.format(nb, "a") for nb in PER_PROFILE]
    assert out.count("skipped (up to date)") == 4

    # A comment in a parameter file changes no parameter: nothing re-runs.
    with open(project / "params" / "smoke" / "a.yaml", "a") as f:
        f.write("# a comment\n")
    code, out, err = run_all(project, *opts, capsys=capsys)
    assert out.count("skipped (up to date)") == 11

    # A missing executed notebook re-runs its step; a changed notebook re-runs it and what follows.
    (nbs / "06_figure3.ipynb").unlink()
    n = len(log_lines(project))
    code, out, err = run_all(project, *opts, capsys=capsys)
    assert code == 0, out + err
    assert log_lines(project)[n:] == [row.format("06_figure3", "a")]
    assert out.count("skipped (up to date)") == 10
    make_notebook(project / "notebooks" / "04_baselines.ipynb", "04_baselines")
    nb = nbformat.read(project / "notebooks" / "04_baselines.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("x = 1"))
    nbformat.write(nb, project / "notebooks" / "04_baselines.ipynb")
    code, out, err = run_all(project, *opts, capsys=capsys)
    assert out.count("skipped (up to date)") == 6  # 01-03 of both datasets


@pytest.mark.slow  # ./run_tests.sh --all
def test_dry_run_prints_the_plan_and_runs_and_writes_nothing(project: Path, capsys, monkeypatch) -> None:
    opts = ["--profile", "smoke", "-p", "seeds", "[1, 2]"]
    code, out, err = run_all(project, *opts, "--dry-run", capsys=capsys)
    assert code == 0, out + err
    assert out.count(" would run\n") == 11 and "dry run: 11 step(s) would run, 0 up to date" in out
    assert not (project / "runs").exists() and not log_lines(project)
    assert run_all(project, *opts, capsys=capsys)[0] == 0
    code, out, err = run_all(project, *opts, "--dry-run", capsys=capsys)
    assert out.count("skipped (up to date)") == 11 and "0 step(s) would run, 11 up to date" in out
    code, out, err = run_all(project, *opts, "--dry-run", "--force", capsys=capsys)
    assert out.count("would run (--force)") == 11
    # an edit to the library (another code fingerprint) makes every step out of date
    monkeypatch.setattr(R, "code_state", lambda: {"code_fingerprint": "0" * 16, "code_commit": "x", "code_modified": True})
    code, out, err = run_all(project, *opts, "--dry-run", capsys=capsys)
    assert out.count(" would run\n") == 11
    code, out, err = run_all(project, *opts, "-p", "probe.lr", "0.5", "-p", "protocol", "tuned", "--dry-run", capsys=capsys)
    assert code == 1 and "probe.lr is set, but protocol 'tuned' replaces it by search.probe_lr" in err


@pytest.mark.slow  # ./run_tests.sh --all
def test_failure_stops_with_the_error(project: Path, capsys) -> None:
    code, out, err = run_all(project, "--profile", "tiny", "-p", "title_note", "boom", capsys=capsys)
    assert code == 1
    kept = project / "runs" / "tiny" / "notebooks" / "02_train_boxes__a.ipynb"
    assert "02_train_boxes" in err and "dataset a" in err
    assert "ValueError" in err and "boom" in err
    assert 'raise ValueError("boom")' in err  # the failing cell's source
    assert "traceback (last lines)" in err
    assert str(kept) in err and kept.exists()
    assert log_lines(project, "tiny") == ["01_extract_embeddings,a,[0, 1, 2, 3, 4],0.001,50,boom"]
    stamps = project / "runs" / "tiny" / "stamps"
    assert (stamps / "01_extract_embeddings__a.json").exists()
    assert not (stamps / "02_train_boxes__a.json").exists()
    assert "03_probe_lare" not in out

    # --force runs the finished (and stamped) step 01 again.
    code, out, err = run_all(project, "--profile", "tiny", "-p", "title_note", "boom", "--force", capsys=capsys)
    assert code == 1
    assert "skipped" not in out
    assert log_lines(project, "tiny") == ["01_extract_embeddings,a,[0, 1, 2, 3, 4],0.001,50,boom"] * 2


def test_bad_parameters_stop_before_any_notebook(project: Path, capsys) -> None:
    code, out, err = run_all(project, "--profile", "smoke", "-p", "probe.lrr", "0.1", "-p", "seeds", "3", capsys=capsys)
    assert code == 1
    assert "probe.lrr (did you mean lr?)" in err and "'seeds' must be a list" in err
    assert "[a]" in err and "[b]" in err  # per dataset file
    assert not (project / "runs" / "smoke" / "notebooks").exists()


def test_unknown_profile_and_options(project: Path, capsys) -> None:
    code, out, err = run_all(project, "--profile", "nope", capsys=capsys)
    assert code == 1
    assert "nope" in err and "smoke" in err and "tiny" in err

    with pytest.raises(SystemExit) as exc:
        R.main(["--bogus"], root=project)
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        R.main(["-p", "value"], root=project)
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        R.main(["-h"], root=project)
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for opt in ("--profile", "-f FILE", "-p NAME VALUE", "-r NAME VALUE", "--force", "--verbose", "-h"):
        assert opt in help_text
    assert not (project / "runs").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_run_all_sh_is_a_thin_wrapper() -> None:
    text = (ROOT / "run_all.sh").read_text()
    assert len(text.splitlines()) < 40
    assert "python -m lare" in text and "<<" not in text and "python -c" not in text
    env = {**os.environ, "LARE_NO_SETUP": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(["bash", str(ROOT / "run_all.sh"), "-h"], cwd="/", env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0 and "--profile" in res.stdout, res.stderr

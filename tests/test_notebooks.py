"""The notebooks: structure (one typed `parameters` cell, no outputs in git) and an end-to-end
smoke run of every notebook through run_all.sh with tiny open_clip models on generated images."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from executed_notebooks import notebook_outputs, notebook_warnings

from lare.pipeline.params import RunParams, load_params

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_extract_embeddings", "02_train_boxes", "03_probe_lare", "04_baselines", "05_table1", "06_figure3",
             "07_sensitivity"]


def _nb(name):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def _parameter_names(name) -> set[str]:
    cell = next(c for c in _nb(name).cells if "parameters" in c.metadata.get("tags", []))
    return {n.target.id for n in ast.parse(cell.source).body if isinstance(n, ast.AnnAssign)}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_is_only_what_papermill_injects(name):
    """The schema lives in lare.pipeline.params; the cell holds profile, dataset, overrides and force (--force); the next cell loads."""
    nb = _nb(name)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    assert len(nb.cells[i].source.splitlines()) < 10
    assert _parameter_names(name) == {"profile", "dataset", "overrides", "force"}
    assert "load_params(profile, dataset, overrides)" in nb.cells[i + 1].source


def test_notebooks_are_the_pipeline_in_order():
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_one_typed_parameters_cell_and_no_outputs(name):
    nb = _nb(name)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged 'parameters'"
    body = ast.parse(tagged[0].source).body
    untyped = [ast.unparse(n)[:40] for n in body if not isinstance(n, ast.AnnAssign)]
    assert not untyped, f"{name}: parameters without a type annotation: {untyped}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{name} has outputs"
    assert any(c.cell_type == "markdown" for c in nb.cells)
    nbformat.validate(nb)


@pytest.mark.parametrize("params", sorted((ROOT / "params").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_params_files_load_and_hold_only_differences(params):
    """Every profile file loads through the schema and writes out no setting equal to its default."""
    p = load_params(params.parent.name, params.stem)
    assert p.dataset == params.stem
    defaults = RunParams().to_dict()

    def same(given, default, where):
        if isinstance(given, dict) and isinstance(default, dict):
            return [x for k, v in given.items() if k in default for x in same(v, default[k], f"{where}.{k}")]
        return [where] if given == default else []

    written = yaml.safe_load(params.read_text())
    assert not [x for k, v in written.items() for x in same(v, defaults[k], k)], "settings equal to their defaults"


def test_methods_in_the_open():
    """Notebooks 02 and 03 walk one unit in the open, with the settings of its trial 0 under the run's
    protocol, before the grid, and end by checking the library's checkpoint or row against it (the
    checks run in the notebook tests and the JupyterLab test)."""
    src02 = "\n".join(c.source for c in _nb("02_train_boxes").cells)
    for needle in ("BoxNet(", "lare_loss_terms(", "sample_boxes(", "$$L_{LARE}", "train_boxes(P, force=force)",
                   "cfg = unit_box_config(P, seed)", "opt.step()", "trained_boxes(P, encoder, shots, seed)", "assert "):
        assert needle in src02, needle
    src03 = "\n".join(c.source for c in _nb("03_probe_lare").cells)
    for needle in ("BoxSampler(", "configs_of(", "F.cross_entropy(", "opt.step()", 'run_methods(P, ["lare"], force=force)',
                   'r["trials"][0]', "assert "):
        assert needle in src03, needle


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """./run_all.sh --profile smoke, redirected to a temporary folder, with progress bars on (the
    profile turns them off) so that the notebooks' widgets are exercised."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "LARE_NO_SETUP": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    run, fig = tmp_path / "run", tmp_path / "figures"
    cmd = ["bash", str(ROOT / "run_all.sh"), "--profile", "smoke", "-p", "run_dir", str(run),
           "-p", "cache_dir", str(tmp_path / "cache"), "-p", "data_root", str(tmp_path / "data"),
           "-p", "figures_root", str(fig), "-p", "progress", "true"]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return {"tmp": tmp_path, "run": run, "fig": fig, "cmd": cmd, "env": env, "first": first}


@pytest.mark.slow  # ./run_tests.sh --all
def test_smoke_profile_runs_every_notebook(smoke):
    """The smoke run succeeded and wrote what it should; run again, every step is skipped."""
    first, run, fig, tmp_path = smoke["first"], smoke["run"], smoke["fig"], smoke["tmp"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    table = pd.read_csv(fig / "smoke" / "table1.csv")
    expected = {"CLIP (zero-shot)", "CoCa (zero-shot)", "CLIP (fine-tuning)", "CoCa (fine-tuning)", "LADS", "LARE"}
    assert expected <= set(table["method"])
    assert table[["In-domain mean", "Out-of-domain mean"]].notna().all().all()
    assert (table["seeds"] == 2).all()
    for ext in ("md", "tex"):
        assert "LARE" in (fig / "smoke" / f"table1.{ext}").read_text()
    for ext in ("png", "pdf"):
        assert (fig / "smoke" / f"figure3.{ext}").stat().st_size > 1000

    # the real open_clip path ran: caches carry the tiny models' manifests
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("manifest.json")]
    assert {"lare-tiny-clip", "lare-tiny-coca"} <= {m["model"] for m in manifests}
    # splits are saved and disjoint from the evaluation sets
    idx = json.loads((run / "embeddings" / "toy_fewshot" / "coca.json").read_text())
    test_ids = set(json.loads((Path(idx["splits"]["test"]) / "ids.json").read_text()))
    for f in (run / "splits" / "toy_fewshot").glob("*.json"):
        split = json.loads(f.read_text())
        assert not set(split["train"]) & set(split["val"]) and not (set(split["train"]) | set(split["val"])) & test_ids
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert all({"git_commit", "versions", "config_hash", "params"} <= set(r) for r in rows)
    assert {r["shots"] for r in rows if r["dataset"] == "toy_fewshot"} == {0, 1, 2}

    second = subprocess.run(smoke["cmd"], cwd=ROOT, env=smoke["env"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:]
    assert second.stdout.count("skipped") >= 11, second.stdout


@pytest.mark.slow  # ./run_tests.sh --all
def test_executed_notebooks_show_no_warnings_and_render_tables_and_widgets(smoke):
    """What a JupyterLab user sees: no warning in any output (TqdmWarning: IProgress not found was in
    every notebook before ipywidgets became a dependency), progress bars as widgets, Table 1 as
    rendered Markdown, no Markdown table printed as raw text."""
    assert smoke["first"].returncode == 0, smoke["first"].stdout[-3000:] + smoke["first"].stderr[-3000:]
    executed = sorted((smoke["run"] / "notebooks").glob("*.ipynb"))
    assert len(executed) == 2 * 4 + 3, [p.name for p in executed]
    warnings = [w for p in executed for w in notebook_warnings(p)]
    assert not warnings, "\n".join(warnings)
    widgets = [p.name for p in executed for _, o, _ in notebook_outputs(p)
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert any(name.startswith("02_train_boxes") for name in widgets), f"no progress widget in notebook 02: {widgets}"
    raw_tables = [f"{p.name} cell {i}" for p in executed for i, o, text in notebook_outputs(p)
                  if "|---|" in text and "text/markdown" not in o.get("data", {})]
    assert not raw_tables, raw_tables
    table1 = [o for _, o, _ in notebook_outputs(smoke["run"] / "notebooks" / "05_table1.ipynb") if "text/markdown" in o.get("data", {})]
    assert table1 and "| LARE |" in "".join(table1[0]["data"]["text/markdown"])

"""Results follow the code and the data: real runs of ./run_all.sh on the demo profile at a small size.

(a) a bring-your-own file replaced in place by other content is recomputed and Table 1 changes;
(b) a copy of the package with one loss weight edited, run over the same run folder and cache,
    recomputes f_Box and the LARE rows without --force, reuses the embeddings, and Table 1 changes;
(c) the same inputs and code again: every step skipped, every file byte-identical;
(d) --force: every unit recomputed, the same numbers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lare.compare.results import read_rows, superseded_path
from lare.data.synthetic import SyntheticSpec, make_synthetic
from lare.provenance import code_fingerprint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 2 * 4 + 3
SMALL = ["-p", "seeds", "[0, 1]", "-p", "shots", "[1, 0]", "-p", "search.trials", "2", "-p", "search.max_epochs", "2",
         "-p", "progress", "false"]
pytestmark = [pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash"),
              pytest.mark.slow]  # end-to-end runs: ./run_tests.sh --all


def run_all(root: Path, *args: str, pythonpath: Path | None = None) -> str:
    env = {**os.environ, "LARE_NO_SETUP": "1", "HF_HUB_OFFLINE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if pythonpath:  # the kernels and the orchestrator import this copy of lare
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run(["bash", str(root / "run_all.sh"), "--profile", "demo", *SMALL, *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def units(rows: list[dict]) -> set[tuple]:
    return {(r["method"], r["encoder"], r["dataset"], r["shots"], r["seed"]) for r in rows}


def top1(rows: list[dict], method: str) -> dict[tuple, float]:
    return {(r["encoder"], r["dataset"], r["shots"], r["seed"], r["domain"]): r["top1"] for r in rows if r["method"] == method}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run folder, one cache and one figures folder, run again and again."""
    base = tmp_path_factory.mktemp("follow")
    where = ["-p", "run_dir", str(base / "run"), "-p", "cache_dir", str(base / "cache"), "-p", "figures_root",
             str(base / "figures")]
    first = run_all(ROOT, *where)
    return {"base": base, "where": where, "first": first, "run": base / "run", "cache": base / "cache",
            "figures": base / "figures" / "demo"}


def test_c_same_inputs_and_code_again_skip_every_step_and_change_no_file(demo):
    before = {k: files(demo[k]) for k in ("run", "cache", "figures")}
    out = run_all(ROOT, *demo["where"])
    assert out.count("skipped (up to date)") == STEPS, out[-3000:]
    for k, was in before.items():
        now = files(demo[k])
        assert now.keys() == was.keys(), k
        assert [n for n in now if now[n] != was[n]] == [], k


def test_d_force_recomputes_every_unit_with_the_same_numbers(demo):
    run = demo["run"]
    rows, table = read_rows(run / "results.jsonl"), (demo["figures"] / "table1.csv").read_bytes()
    boxes = mtimes(run / "boxes")
    out = run_all(ROOT, *demo["where"], "--force")
    assert out.count("skipped (up to date)") == 0 and out.count("done in") == STEPS, out[-3000:]
    now = read_rows(run / "results.jsonl")
    assert units(read_rows(superseded_path(run / "results.jsonl"))) >= units(rows)  # every unit computed again
    assert {k: v for k, v in mtimes(run / "boxes").items() if v == boxes.get(k)} == {}  # every f_Box trained again
    assert sorted(r["top1"] for r in now) == sorted(r["top1"] for r in rows)
    assert (demo["figures"] / "table1.csv").read_bytes() == table


def test_b_edited_package_recomputes_boxes_and_lare_rows_and_reuses_the_embeddings(demo, tmp_path):
    run, cache = demo["run"], demo["cache"]
    copy = tmp_path / "copy"
    for name in ("lare", "notebooks", "params", "scripts"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "run_all.sh", copy / "run_all.sh")
    losses = copy / "lare" / "core" / "losses.py"
    text = losses.read_text()
    assert text.count("total = w_bv * bv") == 1
    losses.write_text(text.replace("total = w_bv * bv", "total = 3 * w_bv * bv"))  # L_BV weighs three times more
    assert code_fingerprint(copy / "lare") != code_fingerprint()
    rows, table = read_rows(run / "results.jsonl"), (demo["figures"] / "table1.csv").read_text()
    box_keys = {p: p.read_bytes() for p in (run / "boxes").rglob("*.json")}
    embeddings = mtimes(cache)

    out = run_all(copy, *demo["where"], pythonpath=copy)  # no --force
    assert "skipped (up to date)" not in out, out[-3000:]
    assert mtimes(cache) == embeddings  # not one embedding file written again
    assert all(p.read_bytes() != b for p, b in box_keys.items())  # every f_Box trained again, under a new key
    now = read_rows(run / "results.jsonl")
    assert {r["code_fingerprint"] for r in now} == {code_fingerprint(copy / "lare")}
    old, new = top1(rows, "lare"), top1(now, "lare")
    assert old.keys() == new.keys() and old != new  # the LARE rows changed with the loss
    assert top1(now, "zero-shot") == top1(rows, "zero-shot")  # recomputed by the new code, nothing to change there
    assert (demo["figures"] / "table1.csv").read_text() != table
    assert code_fingerprint(copy / "lare") in (demo["figures"] / "table1.md").read_text()  # the caption names the code


def _byo(path: Path, noise: float, seed: int) -> Path:
    """A bring-your-own file laid out as the README says, from a synthetic world."""
    sp = SyntheticSpec(num_classes=8, dim=32, n_train_per_class=12, n_test_per_class=6, n_ood_per_class=6, noise=noise)
    d = make_synthetic(sp, seed=seed, world_seed=7)
    x = np.concatenate([d[f"{s}_x"].numpy() for s in ("train", "test", "ood")]).astype(np.float32)
    y = np.concatenate([d[f"{s}_y"].numpy() for s in ("train", "test", "ood")]).astype(np.int64)
    split = np.array([s for s in ("train", "test", "ood") for _ in range(len(d[f"{s}_y"]))])
    np.savez(path, embeddings=x, labels=y, split=split, ids=np.array([f"item{i:04d}" for i in range(len(y))]),
             class_names=np.array(d["class_names"]), class_text=d["class_text"].numpy().astype(np.float32),
             source_text=d["photo_text"].numpy().astype(np.float32), target_text=d["painting_text"].numpy().astype(np.float32))
    return path


def test_a_byo_file_replaced_in_place_is_recomputed_and_table1_changes(tmp_path):
    npz = _byo(tmp_path / "mine.npz", noise=0.6, seed=1)
    over = tmp_path / "byo.yaml"
    over.write_text(yaml.safe_dump({"source": "byo", "encoders": {"clip": None, "coca": {"model": "byo"}},
                                    "byo": {"coca": str(npz)}, "with_domains": True}))
    where = ["-f", str(over), "-p", "run_dir", str(tmp_path / "run"), "-p", "cache_dir", str(tmp_path / "cache"),
             "-p", "figures_root", str(tmp_path / "figures")]
    run_all(ROOT, *where)
    table = (tmp_path / "figures" / "demo" / "table1.csv").read_text()
    rows = read_rows(tmp_path / "run" / "results.jsonl")
    assert {r["params"]["embeddings"]["source_sha256"] for r in rows} == {_sha(npz)}

    _byo(npz, noise=0.9, seed=2)  # same path, same ids, other embeddings
    out = run_all(ROOT, *where)
    assert "skipped (up to date)" not in out, out[-3000:]
    now = read_rows(tmp_path / "run" / "results.jsonl")
    assert {r["params"]["embeddings"]["source_sha256"] for r in now} == {_sha(npz)}
    assert {r["embeddings_hash"] for r in now}.isdisjoint({r["embeddings_hash"] for r in rows})
    assert top1(now, "linear-probe") != top1(rows, "linear-probe")
    assert (tmp_path / "figures" / "demo" / "table1.csv").read_text() != table


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

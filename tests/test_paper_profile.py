"""The paper profile through ./run_all.sh: with no data it stops before any notebook with a message
per dataset; on fake CUB-200-2011 / CUB-200-Paintings / CIFAR-100 trees (official layouts) with
tiny random-weight encoders it runs every notebook and writes Table 1, Figure 3 and the splits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fake_datasets import make_fake_cifar100, make_fake_cub, make_fake_paintings

from lare.compare.results import PAPER_TABLE1
from lare.data.sources import CIFAR100, CUB, network_reachable
from lare.data.splits import carve_validation, kshot_subset

ROOT = Path(__file__).resolve().parents[1]
SHOTS = [1, 2, 4, 8, 16, 0]  # params/paper/cifar100.yaml
SEEDS = [0, 1]
CIFAR_TRAIN_PER_CLASS = 18   # 10 % validation (2) leaves exactly 16, the largest k of Figure 3

OVERRIDES = {  # given with -f to both dataset files of the profile
    "encoders": {"clip": {"model": "lare-tiny-clip", "pretrained": "none"},
                 "coca": {"model": "lare-tiny-coca", "pretrained": "none"}},
    "seeds": SEEDS,
    # the other settings keep the notebooks' defaults; under tuned the epochs are the search's
    "search": {"trials": 2, "max_epochs": 2, "patience": 1},  # the tuned protocol's path, at the smallest size
    "batch_size": 128,
    "num_workers": 0,
    "progress": False,
    "title_note": "FAKE data, tiny random encoders",
}


def run_all(*args: str, timeout: float, profile: str = "paper") -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "LARE_NO_SETUP": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    env.pop("LARE_DATA_ROOT", None)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--profile", profile, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return proc, time.monotonic() - t0


def redirect(tmp: Path) -> list[str]:
    """Keep every output of the run under ``tmp``."""
    return ["-p", "run_dir", str(tmp / "run"), "-p", "cache_dir", str(tmp / "cache"),
            "-p", "figures_root", str(tmp / "figures")]


# ---------------------------------------------------------------- no data, no network
def test_empty_data_root_stops_before_any_notebook(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    # The sandbox is offline; where the dataset hosts answer, forbid downloads instead (same report).
    online = any(network_reachable(s.url, timeout=2.0) for s in (CUB, CIFAR100))
    proc, secs = run_all("-p", "data_root", str(empty), *redirect(tmp_path),
                         *(["-p", "download", "False"] if online else []), timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert secs < 60, f"the preflight took {secs:.0f} s"
    assert "nothing was started" in out
    for title in ("CUB-200-2011", "CUB-200-Paintings", "CIFAR-100"):
        assert f"{title} is missing" in out, f"no message for {title}:\n{out}"
    for source in (CUB, CIFAR100):  # what to download, from where, its checksum, where to put it
        for part in (source.url, source.archive, source.md5, f"{empty / source.folder}/", f"put it in {empty}/"):
            assert part in out, f"{part!r} not in the output:\n{out}"
    assert f"{empty}/CUB-200-Painting/NNN.Class_Name/*.jpg" in out and "Google Drive" in out
    assert not (tmp_path / "run" / "notebooks").exists() or not any((tmp_path / "run" / "notebooks").iterdir()), \
        "a notebook ran"
    assert not (tmp_path / "figures").exists()
    assert list(empty.iterdir()) == [], "nothing is written into data_root"


# ---------------------------------------------------------------- the preflight, in process
@pytest.fixture
def small_fake_root(tmp_path) -> Path:
    root = tmp_path / "data"
    make_fake_cub(root, classes=3, per_class=2)
    make_fake_paintings(root, classes=3, per_class=1)
    # 18 per class: 16 shots remain after the 10 % validation carve, which the preflight checks
    make_fake_cifar100(root, per_class_train=18, per_class_test=1)
    return root


@pytest.fixture
def overrides_file(tmp_path) -> Path:
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(OVERRIDES))
    return path


def test_preflight_accepts_fake_trees_by_parameter_and_by_environment(small_fake_root, overrides_file, monkeypatch, capsys):
    from lare.pipeline import preflight

    monkeypatch.delenv("LARE_DATA_ROOT", raising=False)
    assert preflight.main(["--profile", "paper", "-f", str(overrides_file), "-p", "data_root", str(small_fake_root)]) == 0
    # the paper profile leaves data_root at its default "data": the environment variable points it elsewhere
    monkeypatch.setenv("LARE_DATA_ROOT", str(small_fake_root))
    assert preflight.main(["--profile", "paper", "-f", str(overrides_file)]) == 0
    empty = small_fake_root.parent / "empty"
    empty.mkdir()
    monkeypatch.setenv("LARE_DATA_ROOT", str(empty))
    capsys.readouterr()
    assert preflight.main(["--profile", "paper", "-f", str(overrides_file), "-p", "download", "False"]) == 1
    err = capsys.readouterr().err
    assert err.count(f"{empty}/") >= 3 and "[cub]" in err and "[cifar100]" in err


def test_preflight_reports_a_damaged_tree_and_missing_data_together(small_fake_root, overrides_file, capsys):
    from lare.pipeline import preflight

    (small_fake_root / "CUB_200_2011" / "train_test_split.txt").unlink()
    for f in (small_fake_root / "cifar-100-python").iterdir():
        f.unlink()
    (small_fake_root / "cifar-100-python").rmdir()
    assert preflight.main(["--profile", "paper", "-f", str(overrides_file), "-p", "data_root", str(small_fake_root),
                           "-p", "download", "False"]) == 1
    err = capsys.readouterr().err
    assert "train_test_split.txt" in err and "CIFAR-100 is missing" in err and CIFAR100.md5 in err


# ---------------------------------------------------------------- end to end on fake trees
@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """./run_all.sh --profile paper -f <tiny encoders, 2 seeds, 2 epochs> on fake trees (1.5 to 2.5 min on 2 CPUs)."""
    tmp = tmp_path_factory.mktemp("paper")
    data = tmp / "data"
    cub = make_fake_cub(data, classes=3, per_class=6)
    paintings = make_fake_paintings(data, classes=3, per_class=2)
    cifar = make_fake_cifar100(data, per_class_train=CIFAR_TRAIN_PER_CLASS, per_class_test=1)
    overrides = tmp / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(OVERRIDES))
    proc, secs = run_all("-f", str(overrides), "-p", "data_root", str(data), *redirect(tmp), timeout=900)
    return {"proc": proc, "secs": secs, "tmp": tmp, "run": tmp / "run", "fig": tmp / "figures" / "paper",
            "cub": cub, "paintings": paintings, "cifar": cifar}


def _ok(paper_run):
    proc = paper_run["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def _split_ids(run: Path, dataset: str, encoder: str, split: str) -> list[str]:
    idx = json.loads((run / "embeddings" / dataset / f"{encoder}.json").read_text())
    return json.loads((Path(idx["splits"][split]) / "ids.json").read_text())


@pytest.mark.slow  # ./run_tests.sh --all
def test_paper_profile_runs_every_notebook_and_writes_table1_and_figure3(paper_run):
    _ok(paper_run)
    run, fig = paper_run["run"], paper_run["fig"]
    assert "preflight: profile paper ready" in paper_run["proc"].stdout
    executed = sorted(p.stem for p in (run / "notebooks").glob("*.ipynb"))
    assert executed == sorted([f"{nb}__{ds}" for nb in ("01_extract_embeddings", "02_train_boxes", "03_probe_lare",
                                                        "04_baselines") for ds in ("cifar100", "cub")]
                              + ["05_table1", "06_figure3", "07_sensitivity"])

    table = pd.read_csv(fig / "table1.csv")
    assert set(PAPER_TABLE1) <= set(table["method"])
    assert {"In-domain paper", "Out-of-domain paper"} <= set(table.columns), "compare_paper: the paper's numbers beside ours"
    lare_row = table.set_index("method").loc["LARE"]
    assert lare_row["In-domain paper"] == PAPER_TABLE1["LARE"][0][0]
    assert lare_row["Out-of-domain paper"] == PAPER_TABLE1["LARE"][1][0]
    assert table[["In-domain mean", "Out-of-domain mean"]].notna().all().all()
    assert (table["seeds"] == len(SEEDS)).all()
    for enc in ("CLIP", "CoCa"):  # the f_Box ablations run where LARE does, paired with the probe of their encoder
        for label in (f"Gaussian noise on {enc} (no f_Box)", f"Fixed boxes on {enc} (no f_Box)"):
            assert table.set_index("method").loc[label, ["In-domain vs probe mean", "Out-of-domain vs probe mean"]].notna().all()
    md, tex = (fig / "table1.md").read_text(), (fig / "table1.tex").read_text()
    assert "In-domain (paper)" in md and f"{PAPER_TABLE1['LARE'][1][0]:.2f}" in md
    assert "FAKE data" in md and f"{PAPER_TABLE1['LARE'][0][0]:.2f}" in tex
    for ext in ("png", "pdf"):
        assert (fig / f"figure3.{ext}").stat().st_size > 1000

    agg = pd.read_csv(fig / "results.csv")
    few = agg[agg["dataset"] == "cifar100"]
    for method in ("zero-shot", "linear-probe", "lare"):
        assert set(few[few["method"] == method]["shots"]) == set(SHOTS), method
    assert set(few["encoder"]) == {"coca"}, "cifar100 runs only the encoders its lists name"
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {r["domain"] for r in rows if r["dataset"] == "cub"} == {"in_domain", "out_of_domain"}


@pytest.mark.slow  # ./run_tests.sh --all
def test_paper_profile_table1_split_is_saved_and_disjoint(paper_run):
    """Train on the CUB training photos minus a validation part; test on the CUB test photos
    (in-domain) and all paintings (out-of-domain)."""
    _ok(paper_run)
    run, cub = paper_run["run"], paper_run["cub"]
    painting_ids = {f"painting/{p.parent.name}/{p.name}" for p in paper_run["paintings"].glob("*/*.jpg")}
    for enc in ("clip", "coca"):
        assert _split_ids(run, "cub", enc, "train") == cub.train_ids
        assert _split_ids(run, "cub", enc, "test") == cub.test_ids
        assert set(_split_ids(run, "cub", enc, "ood")) == painting_ids
    files = sorted((run / "splits" / "cub").glob("*.json"))
    assert [f.name for f in files] == [f"shots0_seed{s}.json" for s in SEEDS]
    vals = []
    for f in files:
        split = json.loads(f.read_text())
        train, val = set(split["train"]), set(split["val"])
        assert val and not train & val
        assert train | val == set(cub.train_ids), "the whole training pool, and only it"
        assert not (train | val) & (set(cub.test_ids) | painting_ids)
        assert Counter(cub.labels[i] for i in val) == {0: 1, 1: 1, 2: 1}  # 20 % of 3 training photos per class
        vals.append(val)
    assert vals[0] != vals[1], "each seed draws its own validation part"


@pytest.mark.slow  # ./run_tests.sh --all
def test_paper_profile_kshot_subsets_are_saved_seeded_and_exact(paper_run):
    _ok(paper_run)
    run, cifar = paper_run["run"], paper_run["cifar"]
    pool = _split_ids(run, "cifar100", "coca", "train")
    test_ids = set(_split_ids(run, "cifar100", "coca", "test"))
    assert len(pool) == 100 * CIFAR_TRAIN_PER_CLASS and len(test_ids) == 100
    label = {i: cifar.labels["train"][int(i.rsplit("/", 1)[1])] for i in pool}
    files = {f.stem for f in (run / "splits" / "cifar100").glob("*.json")}
    assert files == {f"shots{k}_seed{s}" for k in SHOTS for s in SEEDS}
    for seed in SEEDS:
        val_ref = None
        for k in SHOTS:
            split = json.loads((run / "splits" / "cifar100" / f"shots{k}_seed{seed}.json").read_text())
            train, val = split["train"], split["val"]
            assert not set(train) & set(val) and not (set(train) | set(val)) & test_ids
            assert set(train) | set(val) <= set(pool)
            counts = Counter(label[i] for i in train)
            assert len(counts) == 100
            assert set(counts.values()) == {k if k else CIFAR_TRAIN_PER_CLASS - 2}, f"{k} shots, seed {seed}"
            assert val_ref is None or set(val) == val_ref, "validation comes from the pool, whatever k"
            val_ref = set(val)
            # drawn by the seeded generator: the same draw is reproduced from the pool and the seed
            rest, val2 = carve_validation(pool, [label[i] for i in pool], 0.1, seed)
            assert val2 == val
            assert kshot_subset(rest, [label[i] for i in rest], k, seed) == train
    one = [json.loads((run / "splits" / "cifar100" / f"shots1_seed{s}.json").read_text())["train"] for s in SEEDS]
    assert one[0] != one[1], "each seed draws its own k-shot subset"


@pytest.mark.slow  # ./run_tests.sh --all
def test_paper_profile_summary_names_the_real_output_folders(paper_run):
    _ok(paper_run)
    out = paper_run["proc"].stdout
    assert "does not exist" not in out
    assert str(paper_run["fig"]) in out
    assert f"executed notebooks:   {paper_run['run'] / 'notebooks'}/" in out

"""The arxiv profile (DomainNet's SENTRY 40-class split, CIFAR-100-LT at imbalance 100 / 50 / 10 and
the few-shot figure) through ./run_all.sh on fake trees in the official layouts, tiny random encoders."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
import yaml
from fake_datasets import make_fake_cifar100, make_fake_domainnet
from test_paper_profile import OVERRIDES, redirect
from test_paper_profile import run_all as run_paper

from lare.data.longtail import lt_counts
from lare.pipeline.runfolder import load_encoder_data

pytestmark = pytest.mark.slow  # end-to-end: ./run_tests.sh --all

SEEDS = OVERRIDES["seeds"]
PER_CLASS = 18  # CIFAR-100 training images per class in the fake tree (the few-shot figure needs 16 after validation)


def run_all(*args, timeout):
    return run_paper(*args, timeout=timeout, profile="arxiv")


@pytest.fixture(scope="module")
def arxiv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arxiv")
    data = tmp / "data"
    make_fake_domainnet(data)
    make_fake_cifar100(data, per_class_train=PER_CLASS, per_class_test=1)
    overrides = tmp / "overrides.yaml"
    overrides.write_text(yaml.safe_dump({**OVERRIDES, "title_note": "FAKE data"}))
    proc, _ = run_all("-f", str(overrides), "-p", "data_root", str(data), *redirect(tmp), timeout=1200)
    return {"proc": proc, "run": tmp / "run", "fig": tmp / "figures" / "arxiv"}


def _rows(run):
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def test_arxiv_profile_runs_and_writes_every_table(arxiv_run):
    proc = arxiv_run["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    fig = arxiv_run["fig"]
    for name in ("table1.md", "table_domainnet_domains.md", "table_longtail.md", "figure3.png"):
        assert (fig / name).is_file(), name
    table1 = pd.read_csv(fig / "table1.csv").set_index("method")
    for enc in ("CLIP", "CoCa"):  # the f_Box ablations run where LARE does, paired with the probe of their encoder
        for label in (f"Gaussian noise on {enc} (no f_Box)", f"Fixed boxes on {enc} (no f_Box)"):
            assert table1.loc[label, ["In-domain vs probe mean", "Out-of-domain vs probe mean"]].notna().all(), label
    domains = pd.read_csv(fig / "table_domainnet_domains.csv")
    assert {"clipart mean", "painting mean", "real mean", "Out-of-domain (mean) mean"} <= set(domains.columns)
    lt = (fig / "table_longtail.md").read_text()
    for f in (100, 50, 10):
        assert f"(IF {f})" in lt
    assert "Head" in lt and "Tail" in lt


def test_domainnet_reports_each_target_domain_and_their_mean(arxiv_run):
    rows = [r for r in _rows(arxiv_run["run"]) if r["dataset"] == "domainnet"]
    assert {r["domain"] for r in rows} >= {"in_domain", "ood_clipart", "ood_painting", "ood_real", "out_of_domain"}
    for r in (r for r in rows if r["domain"] == "out_of_domain"):
        targets = [t for t in rows if (t["method"], t["encoder"], t["seed"]) == (r["method"], r["encoder"], r["seed"])
                   and t["domain"].startswith("ood_")]
        assert len(targets) == 3
        assert r["top1"] == pytest.approx(sum(t["top1"] for t in targets) / 3)


def test_longtail_subsets_follow_the_profile_per_seed_and_report_groups(arxiv_run):
    run = arxiv_run["run"]
    pool = load_encoder_data(run, "cifar100_lt100", "coca").sets["train"]
    label_of = dict(zip(pool.ids, pool.labels.tolist(), strict=True))
    draws = []
    for seed in SEEDS:
        split = json.loads((run / "splits" / "cifar100_lt100" / f"shots0_seed{seed}.json").read_text())
        ids = split["train"] + split["val"]
        assert not set(split["train"]) & set(split["val"])
        counts = Counter(label_of[i] for i in ids)
        assert [counts.get(c, 0) for c in range(100)] == lt_counts(100, PER_CLASS, 100)
        draws.append(sorted(ids))
    assert draws[0] != draws[1], "each seed draws its own subset"
    rows = [r for r in _rows(run) if r["dataset"].startswith("cifar100_lt") and r["domain"] == "in_domain"]
    assert rows and all({"head", "medium", "tail"} & set(r) for r in rows)

"""Result rows, their aggregation and Table 1: lare.compare.results."""

from __future__ import annotations

import json
import math
import re
import statistics
from types import SimpleNamespace

import pandas as pd
import pytest

from lare.compare import results
from lare.compare.results import (
    PAPER_TABLE1,
    aggregate,
    append_rows,
    has_result,
    make_rows,
    markdown_table,
    read_rows,
    superseded_path,
    table1,
    table1_display,
    write_table1,
)
from lare.provenance import code_fingerprint
from lare.utils import hash_config

PARAMS = {"probe": {"epochs": 3, "lr": 0.001}, "val_fraction": 0.2}
METRICS = {"in_domain": {"top1": 80.0, "balanced_acc": 79.5}, "out_of_domain": {"top1": 60.0, "balanced_acc": 58.0}}


def rows_for(method="lare", encoder="coca", seed=0, shots=0, dataset="d", params=PARAMS, metrics=METRICS):
    return make_rows(method=method, encoder=encoder, dataset=dataset, shots=shots, seed=seed,
                     metrics_by_domain=metrics, params=params)


# ---------------------------------------------------------------- make_rows
def test_make_rows_one_row_per_domain_with_provenance():
    rows = rows_for()
    assert [r["domain"] for r in rows] == ["in_domain", "out_of_domain"]
    for r in rows:
        assert (r["method"], r["encoder"], r["dataset"], r["shots"], r["seed"]) == ("lare", "coca", "d", 0, 0)
        assert isinstance(r["git_commit"], str) and r["git_commit"]
        assert {"python", "torch", "numpy"} <= set(r["versions"])
        assert r["config_hash"] == hash_config(PARAMS)
        assert r["params"] == PARAMS
    assert rows[0]["top1"] == 80.0 and rows[1]["balanced_acc"] == 58.0
    assert isinstance(rows[0]["top1"], float)


def test_make_rows_config_hash_ignores_seed_but_not_params():
    a, b = rows_for(seed=0)[0], rows_for(seed=7)[0]
    assert a["config_hash"] == b["config_hash"]
    c = rows_for(params={**PARAMS, "val_fraction": 0.3})[0]
    assert c["config_hash"] != a["config_hash"]


def test_make_rows_json_serialisable():
    for r in rows_for():
        assert json.loads(json.dumps(r)) == r


# ---------------------------------------------------------------- append_rows
def test_append_rows_dedupes_and_writes_json_lines(tmp_path):
    path = tmp_path / "run" / "results.jsonl"
    rows = rows_for()
    assert append_rows(path, rows) == 2
    assert append_rows(path, rows) == 0
    assert append_rows(path, rows_for(seed=1)) == 2
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    parsed = [json.loads(line) for line in lines]
    assert parsed == read_rows(path)
    assert [(r["seed"], r["domain"]) for r in parsed] == [(0, "in_domain"), (0, "out_of_domain"),
                                                          (1, "in_domain"), (1, "out_of_domain")]


def test_append_rows_unit_computed_again_replaces_its_rows_and_keeps_the_old_aside(tmp_path):
    """Another configuration (or code) for the same unit: its new rows replace the old ones, which
    move to results.superseded.jsonl; other units are untouched."""
    path = tmp_path / "results.jsonl"
    append_rows(path, rows_for())
    append_rows(path, rows_for(seed=1))
    old = [r for r in read_rows(path) if r["seed"] == 0]
    assert append_rows(path, rows_for(params={**PARAMS, "val_fraction": 0.5})) == 2
    now = read_rows(path)
    assert len(now) == 4 and {r["params"]["val_fraction"] for r in now if r["seed"] == 0} == {0.5}
    assert [r for r in now if r["seed"] == 1] == [r for r in read_rows(path) if r["seed"] == 1]
    assert read_rows(superseded_path(path)) == old
    assert superseded_path(path).name == "results.superseded.jsonl"


def test_append_rows_replace_records_a_recomputation_of_the_same_rows(tmp_path):
    """--force recomputes units already recorded: the new rows replace the old even when nothing differs."""
    path = tmp_path / "results.jsonl"
    append_rows(path, rows_for())
    assert append_rows(path, rows_for()) == 0 and not superseded_path(path).exists()
    again = [{**r, "time": "later"} for r in rows_for()]
    assert append_rows(path, again, replace=True) == 2
    assert [r["time"] for r in read_rows(path)] == ["later", "later"]
    assert len(read_rows(superseded_path(path))) == 2


def test_rows_record_code_commit_modified_flag_and_embeddings_hash():
    r = rows_for()[0]
    assert r["code_fingerprint"] == code_fingerprint() and len(r["code_fingerprint"]) == 16
    assert isinstance(r["code_modified"], bool) and r["code_commit"]
    assert r["embeddings_hash"] == hash_config(r["params"].get("embeddings"))
    other = make_rows(method="lare", encoder="coca", dataset="d", shots=0, seed=0, metrics_by_domain={"in_domain": {"top1": 1}},
                      params={**PARAMS, "embeddings": {"source_sha256": "ab"}})[0]
    assert other["embeddings_hash"] != r["embeddings_hash"]


def test_has_result(tmp_path):
    path = tmp_path / "results.jsonl"
    kw = {"method": "lare", "encoder": "coca", "dataset": "d", "shots": 0, "seed": 0}
    assert not has_result(path, **kw, params=PARAMS)
    append_rows(path, rows_for())
    assert has_result(path, **kw, params=PARAMS)
    assert not has_result(path, **{**kw, "seed": 1}, params=PARAMS)
    assert not has_result(path, **kw, params={**PARAMS, "val_fraction": 0.9})
    assert not has_result(path, **kw, params=PARAMS, code="0" * 16)  # the same unit made by other code: not done


def test_append_rows_failure_midway_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    append_rows(path, rows_for())
    before = path.read_bytes()
    calls = {"n": 0}

    def failing_dumps(obj, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # after the two existing rows, on the first new one
            raise RuntimeError("disk on fire")
        return json.dumps(obj, **kw)

    monkeypatch.setattr(results, "json", SimpleNamespace(dumps=failing_dumps, loads=json.loads))
    with pytest.raises(RuntimeError, match="disk on fire"):
        append_rows(path, rows_for(seed=1))
    assert calls["n"] == 3
    assert path.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl", "results.jsonl.lock"]


# ---------------------------------------------------------------- aggregate
def _row(method, encoder, domain, seed, top1, bal, config_hash="h1", shots=0, dataset="d"):
    return {"method": method, "encoder": encoder, "dataset": dataset, "domain": domain, "shots": shots,
            "seed": seed, "top1": top1, "balanced_acc": bal, "config_hash": config_hash}


def test_aggregate_mean_and_sample_std():
    top1 = [70.0, 72.0, 77.0]
    bal = [60.0, 61.0, 65.0]
    rows = [_row("lare", "coca", "in_domain", s, t, b) for s, (t, b) in enumerate(zip(top1, bal, strict=True))]
    rows.append(_row("lare", "coca", "out_of_domain", 0, 50.0, 40.0))
    agg = aggregate(rows).set_index("domain")
    ind = agg.loc["in_domain"]
    assert ind["n_seeds"] == 3
    assert ind["top1_mean"] == pytest.approx(73.0)
    # sample std (ddof=1): squares of deviations 9, 1, 16 -> 26 / 2 = 13
    assert ind["top1_std"] == pytest.approx(math.sqrt(13.0))
    assert ind["balanced_acc_mean"] == pytest.approx(62.0)
    assert ind["balanced_acc_std"] == pytest.approx(statistics.stdev(bal))
    ood = agg.loc["out_of_domain"]
    assert ood["n_seeds"] == 1 and ood["top1_mean"] == 50.0
    assert ood["top1_std"] == 0.0 and ood["balanced_acc_std"] == 0.0  # one seed: no spread, not NaN
    assert ind["config_hash"] == "h1"


def test_aggregate_keeps_cells_apart():
    rows = [_row("lare", "coca", "in_domain", 0, 70.0, 70.0), _row("lare", "clip", "in_domain", 0, 50.0, 50.0),
            _row("lare", "coca", "in_domain", 0, 30.0, 30.0, shots=4)]
    agg = aggregate(rows)
    assert len(agg) == 3
    assert sorted(agg["top1_mean"]) == [30.0, 50.0, 70.0]


def test_aggregate_refuses_mixed_config_hashes():
    rows = [_row("lare", "coca", "in_domain", 0, 70.0, 70.0, "h1"),
            _row("lare", "coca", "in_domain", 1, 71.0, 71.0, "h2")]
    with pytest.raises(ValueError, match=r"disagree in parameters within 1 cell") as err:
        aggregate(rows)
    assert "lare" in str(err.value) and "remove the stale rows" in str(err.value)


def test_aggregate_different_hashes_in_different_cells_are_fine():
    rows = [_row("lare", "coca", "in_domain", 0, 70.0, 70.0, "h1"),
            _row("zero-shot", "coca", "in_domain", 0, 60.0, 60.0, "h2")]
    assert len(aggregate(rows)) == 2


def test_aggregate_refuses_empty():
    with pytest.raises(ValueError, match="no result rows"):
        aggregate([])


# ---------------------------------------------------------------- Table 1
def _agg_all():
    rows = []
    for (method, enc), base in {("zero-shot", "coca"): 60.0, ("linear-probe", "clip"): 70.0,
                                ("lads", "clip"): 72.0, ("lare", "coca"): 80.0, ("lare", "clip"): 75.0}.items():
        for seed in (0, 1):
            rows.append(_row(method, enc, "in_domain", seed, base + seed, base, config_hash=method + enc))
            rows.append(_row(method, enc, "out_of_domain", seed, base - 10 + 2 * seed, base, config_hash=method + enc))
    rows.append(_row("lare", "coca", "in_domain", 0, 10.0, 10.0, shots=2))  # few-shot: not in Table 1
    rows.append(_row("lare", "coca", "in_domain", 0, 10.0, 10.0, dataset="other"))  # other dataset
    return aggregate(rows)


def test_table1_maps_rows_to_paper_labels_in_order():
    t = table1(_agg_all(), "d")
    assert list(t["method"]) == ["CoCa (zero-shot)", "CLIP (fine-tuning)", "LADS", "LARE",
                                 "LARE on CLIP features (addition)"]
    lare = t.set_index("method").loc["LARE"]
    assert lare["In-domain mean"] == pytest.approx(80.5)
    assert lare["Out-of-domain mean"] == pytest.approx(71.0)
    assert lare["In-domain std"] == pytest.approx(statistics.stdev([80.0, 81.0]))
    assert lare["seeds"] == 2
    assert "In-domain paper" not in t


def test_table1_with_paper_numbers_and_differences():
    t = table1(_agg_all(), "d", with_paper=True).set_index("method")
    lare = t.loc["LARE"]
    assert lare["Out-of-domain paper"] == 72.98
    assert lare["In-domain paper"] == 87.01
    assert lare["Out-of-domain diff"] == pytest.approx(71.0 - 72.98)
    assert t.loc["LADS", "In-domain paper"] == PAPER_TABLE1["LADS"][0][0] == 86.31
    assert t.loc["CLIP (fine-tuning)", "Out-of-domain paper"] == 64.40
    assert math.isnan(t.loc["LARE on CLIP features (addition)", "In-domain paper"])  # our addition: no paper value


def test_table1_empty_for_unknown_dataset():
    assert table1(_agg_all(), "nope").empty


def test_write_table1_files(tmp_path):
    t = table1(_agg_all(), "d", with_paper=True)
    paths = write_table1(t, tmp_path / "figs", title="My title")
    assert set(paths) == {"csv", "md", "tex"}
    assert all(p.is_file() for p in paths.values())
    csv = pd.read_csv(paths["csv"])
    assert list(csv["method"]) == list(t["method"])
    assert csv.set_index("method").loc["LARE", "Out-of-domain paper"] == pytest.approx(72.98)
    md = paths["md"].read_text()
    assert md.startswith("**My title**")
    assert "80.50 ± 0.71" in md and "72.98" in md and "-1.98" in md
    tex = paths["tex"].read_text()
    assert r"80.50 $\pm$ 0.71" in tex and "±" not in tex
    assert r"\begin{tabular}" in tex and r"\caption{My title}" in tex
    assert not [p for p in (tmp_path / "figs").iterdir() if p.name.endswith(".tmp")]


def test_write_table1_latex_escapes_title(tmp_path):
    t = table1(_agg_all(), "d")
    paths = write_table1(t, tmp_path, title="Table 1: top-1 accuracy (%) on synthetic_domains, mean ± std over seeds")
    caption = next(line for line in paths["tex"].read_text().splitlines() if line.startswith(r"\caption"))
    assert not re.search(r"(?<!\\)[%_&#]", caption), caption
    assert r"(\%) on synthetic\_domains" in caption


def test_table1_display_formats():
    shown = table1_display(table1(_agg_all(), "d", with_paper=True))
    row = shown.set_index("Method").loc["LARE"]
    assert row["In-domain"] == "80.50 ± 0.71"
    assert row["Out-of-domain (paper)"] == "72.98"
    assert row["Out-of-domain (diff)"] == "-1.98"
    assert shown.set_index("Method").loc["LARE on CLIP features (addition)", "In-domain (paper)"] == ""


def test_markdown_table():
    df = pd.DataFrame({"A": [1, 2], "B b": ["x", "y ± z"]})
    assert markdown_table(df) == "| A | B b |\n|---|---|\n| 1 | x |\n| 2 | y ± z |"


# ---------------------------------------------------------------- provenance in aggregation
def _prov_row(method, seed, top1, *, code="c1", emb="e1", protocol="tuned"):
    return {**_row(method, "coca", "in_domain", seed, top1, top1), "code_fingerprint": code, "embeddings_hash": emb,
            "code_commit": "abc", "code_modified": False, "params": {"protocol": protocol}}


@pytest.mark.parametrize("field,what", [("code", "library code"), ("emb", "embeddings")])
def test_aggregate_refuses_a_cell_mixing_code_or_embeddings_naming_the_seeds(field, what):
    rows = [_prov_row("lare", 0, 70.0), _prov_row("lare", 1, 71.0, **{field: "other"})]
    with pytest.raises(ValueError, match=what) as err:
        aggregate(rows)
    msg = str(err.value)
    assert "seeds [0]" in msg and "seeds [1]" in msg and "other" in msg and "Run the same command again" in msg


def test_paired_difference_uses_only_probe_rows_of_the_same_protocol_embeddings_and_code():
    probe = [_prov_row("linear-probe", 0, 60.0), _prov_row("linear-probe", 1, 61.0, code="old"),
             _prov_row("linear-probe", 2, 62.0, emb="old"), _prov_row("linear-probe", 3, 63.0, protocol="fixed")]
    lare = [_prov_row("lare", s, 70.0 + s) for s in range(4)]
    with pytest.raises(ValueError):  # the probe's own cell mixes: refused as a whole
        aggregate(probe + lare)
    agg = aggregate([probe[0], *lare]).set_index("method")
    assert agg.loc["lare", "delta_probe_pairs"] == 1 and agg.loc["lare", "delta_probe_mean"] == pytest.approx(10.0)
    paired = aggregate([_prov_row("linear-probe", s, 60.0 + s, code="old") for s in range(4)] + lare).set_index("method")
    assert paired.loc["lare", "delta_probe_pairs"] == 0 and math.isnan(paired.loc["lare", "delta_probe_mean"])
    same = aggregate([_prov_row("linear-probe", s, 60.0) for s in range(4)] + lare).set_index("method")
    assert same.loc["lare", "delta_probe_pairs"] == 4
    assert (same["code_fingerprint"] == "c1").all() and (same["embeddings_hash"] == "e1").all()


def test_a_cell_of_one_seed_says_n_1_not_plus_minus_zero():
    agg = aggregate([_prov_row("lare", 0, 70.0)])
    assert agg["n_seeds"].iloc[0] == 1
    t = table1_display(pd.DataFrame([{"method": "LARE", "In-domain mean": 70.0, "In-domain std": 0.0, "seeds": 1}]))
    assert t["In-domain"].iloc[0] == "70.00 (n = 1)"
    assert "± 0.00" not in t.to_string()


def test_code_caption_names_the_commit_and_says_when_modified():
    agg = aggregate([_prov_row("lare", 0, 70.0)])
    assert results.code_caption(agg) == "code at commit abc (lare/ fingerprint c1)"
    agg["code_modified"] = True
    assert "commit abc, modified" in results.code_caption(agg)

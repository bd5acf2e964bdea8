"""What the notebooks call: the parameter schema, embedding sources (lare.pipeline.ingest), the run folder and
its splits (lare.pipeline.runfolder), and the experiment loops over the method registry (lare.pipeline.experiment)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from lare.pipeline import experiment, ingest, runfolder
from lare.pipeline.params import ParameterError, build, deep_merge

SPEC = {"num_classes": 5, "dim": 16, "n_train_per_class": 8, "n_test_per_class": 4, "n_ood_per_class": 4}
DS = "synth"
VAL = 0.25  # 8 training items per class -> 2 to validation, 6 left for training


def stamp(path):
    """Identity of a file version: a rewrite (atomic replace) gives a new inode, whatever the clock resolution."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def write_both(run_dir, cache_dir, dataset=DS, spec=SPEC, **kw):
    ingest.write_synthetic(run_dir, cache_dir, dataset, "clip", spec, noise=0.8, **kw)
    ingest.write_synthetic(run_dir, cache_dir, dataset, "coca", spec, noise=0.6, **kw)


# ---------------------------------------------------------------- the schema's value checks
GOOD = {"seeds": [0, 1], "shots": [0, 4], "encoders": {"coca": {"model": "m", "noise": 0.6}}, "source": "synthetic",
        "val_fraction": 0.2}


def check_common(**values):
    return build(values)


def test_check_common_accepts_good_parameters():
    p = check_common(**GOOD)
    assert p.seeds == [0, 1] and p.val_fraction == 0.2


def test_check_common_lists_every_problem_in_one_message():
    with pytest.raises(ParameterError) as err:
        check_common(seeds=[], shots=[0, -1], encoders={"coca": {"noise": 0.6}}, source="pictures", val_fraction=1.5)
    msg = str(err.value)
    assert "seeds must be a non-empty list of integers" in msg
    assert "shots must be a non-empty list of integers >= 0" in msg and "-1" in msg
    assert "source must be one of" in msg and "'pictures'" in msg
    assert "val_fraction must lie in (0, 1), got 1.5" in msg
    assert msg.count("\n  - ") == 4
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("key, value, needle", [
    ("seeds", [], "seeds"),
    ("seeds", [0, 1.5], "seeds"),
    ("seeds", ["0"], "seeds"),
    ("seeds", 0, "seeds"),
    ("shots", [-1], "shots"),
    ("shots", [], "shots"),
    ("shots", [2.0], "shots"),
    ("source", "bad", "source"),
    ("encoders", {}, "encoders"),
    ("val_fraction", 1.5, "val_fraction"),
    ("val_fraction", 0, "val_fraction"),
])
def test_check_common_rejects_each_bad_value(key, value, needle):
    with pytest.raises(ParameterError, match=needle) as err:
        check_common(**{**GOOD, key: value})
    assert str(err.value).count("\n  - ") == 1


def test_check_common_non_numeric_val_fraction_is_a_parameter_error():
    with pytest.raises(ParameterError) as err:
        check_common(**{**GOOD, "seeds": [], "val_fraction": None})
    assert "seeds" in str(err.value) and "val_fraction" in str(err.value)


def test_check_common_rejects_bool_seeds():
    with pytest.raises(ParameterError, match="seeds"):
        check_common(**{**GOOD, "seeds": [True]})


# ---------------------------------------------------------------- the embedding index
def test_read_index_missing_names_notebook_01(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_extract_embeddings"):
        runfolder.read_index(tmp_path / "run", "nowhere", "coca")
    with pytest.raises(FileNotFoundError, match="01_extract_embeddings"):
        runfolder.load_encoder_data(tmp_path / "run", "nowhere", "coca")


def test_synthetic_round_trip(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    idx = ingest.write_synthetic(run, cache, DS, "coca", SPEC, noise=0.6)
    assert idx == runfolder.index_path(run, DS, "coca") and idx.is_file()
    d = runfolder.load_encoder_data(run, DS, "coca")
    assert set(d.sets) == {"train", "test", "ood"}
    assert d.sets["train"].embeddings.shape == (40, 16)
    assert d.sets["test"].embeddings.shape == (20, 16)
    assert d.sets["ood"].embeddings.shape == (20, 16)
    assert Counter(d.sets["train"].labels.tolist()) == {c: 8 for c in range(5)}
    assert d.class_text.shape == (5, 16)
    assert set(d.extra_text) == {"photo", "painting"}
    assert all(t.shape == (5, 16) for t in d.extra_text.values())
    assert d.index["class_names"] == [f"class {c:03d}" for c in range(5)]
    assert d.index["info"]["source"] == "synthetic" and d.index["info"]["noise"] == 0.6
    # the cache lives under cache_dir, the index under run_dir
    assert all(str(cache) in p for p in d.index["splits"].values())
    # the same call gives the same embeddings
    ingest.write_synthetic(run, cache, DS, "coca", SPEC, noise=0.6)
    again = runfolder.load_encoder_data(run, DS, "coca")
    assert torch.equal(again.sets["train"].embeddings, d.sets["train"].embeddings)


def test_synthetic_without_domains(tmp_path):
    ingest.write_synthetic(tmp_path / "run", tmp_path / "cache", "fs", "coca", SPEC, noise=0.6, with_domains=False)
    d = runfolder.load_encoder_data(tmp_path / "run", "fs", "coca")
    assert set(d.sets) == {"train", "test"}
    assert d.extra_text == {}


# ---------------------------------------------------------------- splits per (shots, seed)
@pytest.fixture
def synth_data(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    ingest.write_synthetic(run, cache, DS, "coca", SPEC, noise=0.6)
    return run, cache, runfolder.load_encoder_data(run, DS, "coca")


def _split_ids(run, shots, seed):
    return json.loads(runfolder.split_path(run, DS, shots, seed).read_text())


def test_encoder_splits_full_shots(synth_data):
    run, _, d = synth_data
    s = runfolder.encoder_splits(d, run, DS, shots=0, seed=0, val_fraction=VAL)
    ids = _split_ids(run, 0, 0)
    train, val = set(ids["train"]), set(ids["val"])
    assert not train & val
    assert train | val == set(d.sets["train"].ids)
    evals = set(d.sets["test"].ids) | set(d.sets["ood"].ids)
    assert not (train | val) & evals
    assert Counter(s.val_y.tolist()) == {c: 2 for c in range(5)}
    assert Counter(s.train_y.tolist()) == {c: 6 for c in range(5)}
    assert set(s.evals) == {"in_domain", "out_of_domain"}
    assert torch.equal(s.evals["in_domain"][0], d.sets["test"].embeddings)
    assert torch.equal(s.evals["out_of_domain"][1], d.sets["ood"].labels)
    # the tensors are the rows of the saved ids
    assert torch.equal(s.train_x, d.sets["train"].subset(ids["train"]).embeddings)
    assert torch.equal(s.val_x, d.sets["train"].subset(ids["val"]).embeddings)
    assert torch.equal(s.class_text, d.class_text)
    assert set(s.extra_text) == {"photo", "painting"}


def test_encoder_splits_kshot(synth_data):
    run, _, d = synth_data
    full = runfolder.encoder_splits(d, run, DS, shots=0, seed=3, val_fraction=VAL)
    s = runfolder.encoder_splits(d, run, DS, shots=2, seed=3, val_fraction=VAL)
    assert Counter(s.train_y.tolist()) == {c: 2 for c in range(5)}
    ids, full_ids = _split_ids(run, 2, 3), _split_ids(run, 0, 3)
    # validation is carved first (same for every shots), the k shots come from what remains
    assert ids["val"] == full_ids["val"]
    assert set(ids["train"]) <= set(full_ids["train"])
    assert torch.equal(s.val_x, full.val_x)


def test_encoder_splits_saved_and_reused(synth_data):
    run, _, d = synth_data
    a = runfolder.encoder_splits(d, run, DS, shots=2, seed=1, val_fraction=VAL)
    path = runfolder.split_path(run, DS, 2, 1)
    assert path.is_file()
    mtime = stamp(path)
    b = runfolder.encoder_splits(d, run, DS, shots=2, seed=1, val_fraction=VAL)
    assert stamp(path) == mtime
    for name in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    # the saved file is what is used: a (valid) edited file changes the result
    ids = json.loads(path.read_text())
    path.write_text(json.dumps({"train": ids["train"][:3], "val": ids["val"], "key": ids["key"]}))
    c = runfolder.encoder_splits(d, run, DS, shots=2, seed=1, val_fraction=VAL)
    assert len(c.train_y) == 3


def test_encoder_splits_other_seed_other_split(synth_data):
    run, _, d = synth_data
    runfolder.encoder_splits(d, run, DS, shots=2, seed=0, val_fraction=VAL)
    runfolder.encoder_splits(d, run, DS, shots=2, seed=1, val_fraction=VAL)
    assert _split_ids(run, 2, 0) != _split_ids(run, 2, 1)


def test_saved_split_leaking_into_test_is_refused(synth_data):
    run, _, d = synth_data
    runfolder.encoder_splits(d, run, DS, shots=0, seed=0, val_fraction=VAL)
    path = runfolder.split_path(run, DS, 0, 0)
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "train": saved["train"] + ["test/000001"]}))  # same key, leaked id
    with pytest.raises(ValueError, match="'train' and 'test'"):
        runfolder.encoder_splits(d, run, DS, shots=0, seed=0, val_fraction=VAL)


def test_encoder_splits_val_fraction_change_not_stale(synth_data):
    run, _, d = synth_data
    a = runfolder.encoder_splits(d, run, DS, shots=0, seed=0, val_fraction=0.25)
    b = runfolder.encoder_splits(d, run, DS, shots=0, seed=0, val_fraction=0.5)
    assert len(a.val_y) == 10
    assert len(b.val_y) == 20


def test_encoder_splits_pool_change_not_stale(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    ingest.write_synthetic(run, cache, DS, "coca", SPEC, noise=0.6)
    runfolder.encoder_splits(runfolder.load_encoder_data(run, DS, "coca"), run, DS, shots=2, seed=0, val_fraction=VAL)
    ingest.write_synthetic(run, cache, DS, "coca", {**SPEC, "n_train_per_class": 12}, noise=0.6)
    s = runfolder.encoder_splits(runfolder.load_encoder_data(run, DS, "coca"), run, DS, shots=2, seed=0, val_fraction=VAL)
    assert Counter(s.train_y.tolist()) == {c: 2 for c in range(5)}


# ---------------------------------------------------------------- bring your own embeddings
def byo_arrays(n_per=(6, 3, 3), c=3, d=8, with_text=True, seed=0):
    """A valid bring-your-own file's arrays (unit-norm vectors, as the README asks)."""
    rng = np.random.default_rng(seed)

    def unit(rows):
        x = rng.normal(size=(rows, d))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    split = np.array(["train"] * (n_per[0] * c) + ["test"] * (n_per[1] * c) + ["ood"] * (n_per[2] * c))
    labels = np.concatenate([np.tile(np.arange(c), k) for k in n_per]).astype(np.int64)
    arrays = {"embeddings": unit(len(labels)), "labels": labels, "split": split,
              "class_names": np.array([f"bird {i}" for i in range(c)]), "class_text": unit(c)}
    if with_text:
        arrays["source_text"] = unit(c)
        arrays["target_text"] = unit(c)
    return arrays


def save_npz(path, arrays):
    np.savez(path, **arrays)
    return path


def test_byo_round_trip(tmp_path):
    arrays = byo_arrays()
    npz = save_npz(tmp_path / "mine.npz", arrays)
    run, cache = tmp_path / "run", tmp_path / "cache"
    ingest.write_byo(run, cache, "birds", "coca", npz)
    d = runfolder.load_encoder_data(run, "birds", "coca")
    assert {k: tuple(s.embeddings.shape) for k, s in d.sets.items()} == {"train": (18, 8), "test": (9, 8), "ood": (9, 8)}
    train_mask = arrays["split"] == "train"
    assert torch.allclose(d.sets["train"].embeddings, torch.from_numpy(arrays["embeddings"][train_mask]))
    assert d.sets["ood"].labels.tolist() == arrays["labels"][arrays["split"] == "ood"].tolist()
    assert d.sets["train"].embeddings.dtype == torch.float32 and d.sets["train"].labels.dtype == torch.int64
    assert d.class_text.shape == (3, 8)
    assert torch.allclose(d.class_text, torch.from_numpy(arrays["class_text"]))
    assert set(d.extra_text) == {"photo", "painting"}
    assert torch.allclose(d.extra_text["painting"], torch.from_numpy(arrays["target_text"]))
    assert d.index["class_names"] == ["bird 0", "bird 1", "bird 2"]
    assert d.index["info"]["source"] == "byo"
    s = runfolder.encoder_splits(d, run, "birds", shots=2, seed=0, val_fraction=0.3)
    assert Counter(s.train_y.tolist()) == {0: 2, 1: 2, 2: 2}
    assert set(s.evals) == {"in_domain", "out_of_domain"}


def test_byo_without_domain_text_or_ood(tmp_path):
    arrays = byo_arrays(n_per=(4, 2, 0), with_text=False)
    arrays["ids"] = np.array([f"img{i}" for i in range(len(arrays["labels"]))])
    npz = save_npz(tmp_path / "mine.npz", arrays)
    ingest.write_byo(tmp_path / "run", tmp_path / "cache", "b", "clip", npz)
    d = runfolder.load_encoder_data(tmp_path / "run", "b", "clip")
    assert set(d.sets) == {"train", "test"}
    assert d.extra_text == {}
    assert d.sets["train"].ids == [f"img{i}" for i in range(12)]
    assert d.sets["test"].ids == [f"img{i}" for i in range(12, 18)]


def test_read_byo_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest.read_byo(tmp_path / "absent.npz")


def test_read_byo_missing_arrays_and_bad_dims_in_one_message(tmp_path):
    arrays = byo_arrays()
    del arrays["labels"]
    arrays["class_text"] = arrays["class_text"][0]  # 1-D
    npz = save_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(ValueError) as err:
        ingest.read_byo(npz)
    msg = str(err.value)
    assert "missing array 'labels'" in msg
    assert "'class_text' must be 2-D" in msg
    assert str(npz) in msg


def test_read_byo_consistency_problems_in_one_message(tmp_path):
    arrays = byo_arrays()
    arrays["class_text"] = arrays["class_text"][:, :5]  # (3, 5) instead of (3, 8)
    arrays["labels"][0] = 3  # out of [0, 3)
    arrays["split"][1] = "val"  # unknown split name
    arrays["target_text"] = arrays["target_text"][:2]
    npz = save_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(ValueError) as err:
        ingest.read_byo(npz)
    msg = str(err.value)
    assert "class_text must be (num classes, d) = (3, 8)" in msg
    assert "labels must lie in [0, 3)" in msg
    assert "split values must be train / test / ood" in msg and "'val'" in msg
    assert "target_text must be (3, 8)" in msg
    assert msg.count("\n  - ") == 4


def test_read_byo_wrong_lengths_and_missing_train(tmp_path):
    arrays = byo_arrays()
    arrays["split"] = np.array(["test"] * len(arrays["labels"]))
    npz = save_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(ValueError, match="train required"):
        ingest.read_byo(npz)
    arrays = byo_arrays()
    arrays["labels"] = arrays["labels"][:-1]
    with pytest.raises(ValueError, match="one entry per embedding"):
        ingest.read_byo(save_npz(tmp_path / "bad2.npz", arrays))


def test_read_byo_refuses_pickled_object_arrays(tmp_path):
    arrays = byo_arrays()
    arrays["class_names"] = np.array(["a", "b", "c"], dtype=object)  # np.savez pickles object arrays
    npz = save_npz(tmp_path / "pickled.npz", arrays)
    with pytest.raises(ValueError, match="allow_pickle"):
        ingest.read_byo(npz)
    with pytest.raises(ValueError, match="allow_pickle"):
        ingest.write_byo(tmp_path / "run", tmp_path / "cache", "b", "coca", npz)
    assert not runfolder.index_path(tmp_path / "run", "b", "coca").exists()


# ---------------------------------------------------------------- the run steps, end to end
SHOTS, SEEDS = [0, 2], [0, 1]
ENCODERS = ["clip", "coca"]


def params(run, figs=None, **over):
    """The run's typed parameters: the small synthetic world, 2 epochs everywhere, LADS on clip only."""
    base = {"dataset": DS, "run_dir": str(run), "figures_root": str(figs or run / "figures"), "device": "cpu",
            "progress": False, "val_fraction": VAL, "shots": SHOTS, "seeds": SEEDS, "lads_encoders": ["clip"],
            "encoders": {"clip": {"noise": 0.8}, "coca": {"noise": 0.6}}, "box": {"epochs": 2},
            "probe": {"epochs": 2}, "lads": {"epochs": 2}, "table1_dataset": DS, "fewshot_dataset": DS,
            "compare_paper": True, "title_note": "SYNTHETIC", "profile": "test", "protocol": "fixed"}
    return build(deep_merge(base, over))


def _run_all(run, cache):
    write_both(run, cache)
    p = params(run)
    boxes = experiment.train_boxes(p)
    lare = experiment.run_methods(p, ["lare"])
    base = experiment.run_methods(p, experiment.baseline_methods())
    return boxes, lare, base


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    run, cache, figs = root / "run", root / "cache", root / "figures"
    boxes, lare, base = _run_all(run, cache)
    p = params(run, figs)
    table = experiment.make_table1(p)
    fig_paths, fig = experiment.make_figure3(p)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return {"run": run, "cache": cache, "figs": figs / "test", "boxes": boxes, "lare": lare, "base": base,
            "table": table, "figure": fig_paths}


def test_e2e_boxes(e2e):
    boxes = e2e["boxes"]
    assert len(boxes) == len(ENCODERS) * len(SHOTS) * len(SEEDS)
    for enc in ENCODERS:
        for k in SHOTS:
            for s in SEEDS:
                path = runfolder.box_path(e2e["run"], DS, enc, k, s)
                assert path in boxes and path.is_file()
                meta = json.loads(path.with_suffix(".json").read_text())
                assert (meta["encoder"], meta["shots"], meta["seed"], meta["val_fraction"]) == (enc, k, s, VAL)
                assert meta["config"]["epochs"] == 2 and meta["config"]["seed"] == s


def test_e2e_result_rows(e2e):
    lare, base = e2e["lare"], e2e["base"]
    assert list(lare.columns) == ["method", "encoder", "domain", "shots", "seed", "top1", "balanced_acc"]
    assert len(lare) == 2 * 2 * 2 * 2  # encoders x shots x seeds x domains
    assert set(lare["method"]) == {"lare"}
    assert Counter(base["method"]) == {"zero-shot": 16, "linear-probe": 16, "lads": 4, "linear-probe-lbfgs": 16,
                                       "gaussian-noise": 16, "fixed-boxes": 16}  # the ablations: on LARE's encoders
    assert set(base[base["method"] == "lads"]["encoder"]) == {"clip"}
    assert set(base[base["method"] == "lads"]["shots"]) == {0}
    allm = pd.concat([lare, base])
    assert allm["top1"].between(0, 100).all() and allm["balanced_acc"].between(0, 100).all()
    rows = [json.loads(line) for line in (e2e["run"] / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 100
    assert all(r["dataset"] == DS and r["config_hash"] and r["git_commit"] for r in rows)
    lare_rows = [r for r in rows if r["method"] == "lare"]
    assert all(r["params"]["probe"]["epochs"] == 2 and "seed" not in r["params"]["probe"] for r in lare_rows)
    # one configuration per (method, encoder, shots): the seed is not part of the hash
    hashes = {(r["method"], r["encoder"], r["shots"]): set() for r in rows}
    for r in rows:
        hashes[(r["method"], r["encoder"], r["shots"])].add(r["config_hash"])
    assert all(len(h) == 1 for h in hashes.values())
    # zero-shot has no training: its seeds agree
    zs = base[(base["method"] == "zero-shot") & (base["encoder"] == "coca") & (base["domain"] == "in_domain")]
    assert zs["top1"].nunique() == 1


def test_e2e_table1(e2e):
    paths = e2e["table"]
    assert all(paths[k].is_file() for k in ("csv", "md", "tex"))
    t = pd.read_csv(paths["csv"]).set_index("method")
    for label in ("LARE", "LADS", "CLIP (zero-shot)", "CoCa (zero-shot)", "CLIP (fine-tuning)", "CoCa (fine-tuning)",
                  "LARE on CLIP features (addition)"):
        assert label in t.index, label
    assert "LADS on CoCa features (addition)" not in t.index
    assert (t["seeds"] == 2).all()
    assert t.loc["LARE", "Out-of-domain paper"] == pytest.approx(72.98)
    md = paths["md"].read_text()
    assert "SYNTHETIC" in md and "±" in md and "| LARE |" in md
    assert r"$\pm$" in paths["tex"].read_text()
    agg = pd.read_csv(e2e["figs"] / "results.csv")
    assert agg.equals(pd.read_csv(e2e["run"] / "results.csv"))
    assert set(agg["shots"]) == {0, 2}
    lare = agg[(agg["method"] == "lare") & (agg["encoder"] == "coca") & (agg["shots"] == 0)].set_index("domain")
    assert t.loc["LARE", "In-domain mean"] == pytest.approx(lare.loc["in_domain", "top1_mean"], abs=1e-4)


def test_e2e_figure3(e2e):
    paths = e2e["figure"]
    assert set(paths) == {"png", "pdf"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["pdf"].read_bytes()[:5] == b"%PDF-"
    assert not [p for p in e2e["figs"].iterdir() if p.name.endswith(".tmp")]


def test_e2e_rerun_adds_nothing_and_reuses_boxes(e2e):
    run = e2e["run"]
    results = run / "results.jsonl"
    before = results.read_bytes()
    mtimes = {p: stamp(p) for p in e2e["boxes"]}
    again = experiment.train_boxes(params(run))
    assert again == e2e["boxes"]
    assert {p: stamp(p) for p in again} == mtimes
    lare = experiment.run_methods(params(run), ["lare"])
    assert isinstance(lare, pd.DataFrame) and lare.empty
    base = experiment.run_methods(params(run), experiment.baseline_methods())
    assert base.empty
    assert results.read_bytes() == before


def test_e2e_missing_box_names_notebook_02(e2e):
    with pytest.raises(FileNotFoundError, match="02_train_boxes"):
        experiment.run_methods(params(e2e["run"], seeds=[9], shots=[0]), ["lare"])


def test_e2e_box_trained_with_other_settings_names_notebook_02(e2e):
    with pytest.raises(ValueError, match="02_train_boxes"):
        experiment.run_methods(params(e2e["run"], seeds=[0], shots=[0], box={"alpha": 0.3}), ["lare"])


def test_bad_settings_rejected_before_work(tmp_path):
    with pytest.raises(ParameterError, match="epochs"):
        params(tmp_path, box={"epochs": 0})
    with pytest.raises(ParameterError, match=r"box.epoch .*did you mean epochs"):
        params(tmp_path, box={"epoch": 2})
    with pytest.raises(ParameterError, match="samples per item"):
        params(tmp_path, sampling={"k": 0})
    assert not any(tmp_path.iterdir())


def test_make_figure3_without_results_csv_names_notebook_05(tmp_path):
    with pytest.raises(FileNotFoundError, match="05_table1"):
        experiment.make_figure3(params(tmp_path))


def test_make_table1_without_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="03 and 04"):
        experiment.make_table1(params(tmp_path))


def test_box_config_change_retrains(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    ingest.write_synthetic(run, cache, DS, "coca", SPEC, noise=0.6)
    kw = {"encoders": {"clip": None}, "lads_encoders": [], "shots": [0], "seeds": [0]}  # coca only
    (path,) = experiment.train_boxes(params(run, **kw))
    mtime = stamp(path)
    experiment.train_boxes(params(run, box={"epochs": 3}, **kw))
    assert stamp(path) != mtime
    assert json.loads(path.with_suffix(".json").read_text())["config"]["epochs"] == 3


def test_box_reuse_not_stale_after_embeddings_change(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    ingest.write_synthetic(run, cache, DS, "coca", SPEC, noise=0.6)
    kw = {"encoders": {"clip": None}, "lads_encoders": [], "shots": [0], "seeds": [0]}  # coca only
    (path,) = experiment.train_boxes(params(run, **kw))
    mtime = stamp(path)
    ingest.write_synthetic(run, cache, DS, "coca", SPEC, noise=0.3)  # other embeddings under the same name
    experiment.train_boxes(params(run, **kw))
    assert stamp(path) != mtime

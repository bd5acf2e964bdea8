"""Bad input refused before any work (issue 12): bring-your-own files, image datasets, Table 1
without an out-of-domain split, and non-finite values met during training.

docs/troubleshooting.md points at these tests. The preflight is run the way users run
it: ``preflight.main`` in process (the code ``python -m lare`` runs first), and the command
line ``python -m lare.pipeline.preflight`` / ``python -m lare`` in a subprocess over many broken files.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fake_datasets import make_fake_cifar100, make_fake_cub, make_fake_paintings

from lare.compare.registry import get
from lare.compare.results import NOT_MEASURED, aggregate, make_rows, table1, write_table1
from lare.core.box import BoxConfig, train_box
from lare.core.train import TrainingDiverged
from lare.data.byo import NORM_TOL
from lare.data.synthetic import make_synthetic
from lare.pipeline import experiment, ingest, preflight, runfolder
from lare.pipeline.params import build, load_params

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- bring-your-own files
def valid_arrays(per_class=(8, 3, 3), c=3, d=8, seed=0) -> dict[str, np.ndarray]:
    """A valid file's arrays: unit-norm vectors, train / test / ood rows, string ids."""
    rng = np.random.default_rng(seed)

    def unit(rows):
        x = rng.normal(size=(rows, d))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    split = np.array([s for s, k in zip(("train", "test", "ood"), per_class, strict=True) for _ in range(k * c)])
    labels = np.concatenate([np.tile(np.arange(c), k) for k in per_class]).astype(np.int64)
    return {"embeddings": unit(len(labels)), "labels": labels, "split": split,
            "class_names": np.array([f"bird {i}" for i in range(c)]), "class_text": unit(c),
            "ids": np.array([f"img{i:03d}" for i in range(len(labels))]), "source_text": unit(c), "target_text": unit(c)}


def changed(**edits):
    """A file writer: the valid arrays with ``edits`` (a callable edits the arrays in place)."""
    def write(path: Path) -> Path:
        arrays = valid_arrays()
        for key, value in edits.items():
            if callable(value):
                value(arrays)
            elif value is None:
                del arrays[key]
            else:
                arrays[key] = value
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path
    return write


def raw(data: bytes):
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path
    return write


def _set(key, index, value):
    def edit(arrays):
        arrays[key][index] = value
    return edit


def _truncated(path: Path) -> Path:
    changed()(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _flipped(path: Path) -> Path:
    changed()(path)
    data = bytearray(path.read_bytes())
    data[300] ^= 0xFF  # inside the first array's data: its CRC no longer matches
    path.write_bytes(bytes(data))
    return path


def _zip_of(members: dict[str, bytes]):
    def write(path: Path) -> Path:
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return path
    return write


def _npy(path: Path) -> Path:
    with open(path, "wb") as f:
        np.save(f, valid_arrays()["embeddings"])
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


# The rows of issue 12 (case -> writer, what the report must say).
ISSUE_ROWS = {
    "nan-in-embeddings": (changed(embeddings=_set("embeddings", (5, 2), np.nan)),
                          ["embeddings has 1 NaN value in 1 row (first: row 5)"]),
    "inf-in-class_text": (changed(class_text=_set("class_text", (1, 0), np.inf)),
                          ["class_text has 1 infinite value in 1 row (first: row 1)"]),
    "duplicate-ids": (changed(ids=_set("ids", 4, "img000")), ["ids must be unique", "'img000' in rows [0, 4]"]),
    "float-labels": (changed(labels=lambda a: a.update(labels=a["labels"].astype(np.float32))),
                     ["labels must be integers", "got dtype float32", "labels.astype(np.int64)"]),
    "empty-file": (raw(b""), ["the file is empty (0 bytes)"]),
    "not-an-npz": (raw(b"embeddings,labels\n0.1,3\n"), ["it is not an .npz file (not a zip archive"]),
}

# Everything else a file can hold; checked again on files not seen here.
OTHER_BROKEN = {
    "single-npy-array": (_npy, ["single .npy array"]),
    "pickle": (raw(pickle.dumps({"embeddings": [1.0]})), ["not an .npz file"]),
    "truncated-zip": (_truncated, ["truncated or damaged .npz"]),
    "damaged-member": (_flipped, ["cannot be read", "damaged"]),
    "zip-not-npz": (_zip_of({"notes.txt": b"hello"}), ["zip archive but not an .npz"]),
    "empty-zip": (_zip_of({}), ["zip archive but not an .npz"]),
    "a-folder": (_folder, ["it is a folder, not a file"]),
    "object-array": (changed(class_names=np.array(["a", "b", "c"], dtype=object)), ["Python objects", "allow_pickle"]),
    "wrong-ndim": (changed(embeddings=np.zeros(8, np.float32)), ["'embeddings' must be 2-D"]),
    "zero-rows": (changed(embeddings=np.zeros((0, 8), np.float32), labels=np.zeros(0, np.int64), split=np.array([], str),
                          ids=np.array([], str)), ["embeddings is empty"]),
    "lengths-differ": (changed(labels=lambda a: a.update(labels=a["labels"][:-2])), ["labels must have one entry per embedding"]),
    "labels-out-of-range": (changed(labels=_set("labels", 2, 7)), ["labels must lie in [0, 3)", "row 2 (value 7)"]),
    "negative-label": (changed(labels=_set("labels", 0, -1)), ["labels must lie in [0, 3)"]),
    "missing-arrays": (changed(class_text=None, labels=None), ["missing array 'class_text'", "missing array 'labels'"]),
    "misspelt-array": (changed(labels=lambda a: a.update(label=a.pop("labels"))), ["missing array 'labels'", "found 'label'"]),
    "unknown-split": (changed(split=_set("split", 0, "val")), ["split values must be train / test / ood", "'val'"]),
    "no-train-rows": (changed(split=lambda a: a.update(split=np.where(a["split"] == "train", "test", a["split"]))),
                      ["no 'train' rows"]),
    "nothing-to-evaluate": (changed(split=lambda a: a.update(split=np.full(len(a["labels"]), "train"))), ["nothing to evaluate"]),
    "int-ids": (changed(ids=lambda a: a.update(ids=np.arange(len(a["labels"])))), ["ids must be strings"]),
    "numeric-split": (changed(split=lambda a: a.update(split=np.zeros(len(a["labels"])))), ["split must be strings"]),
    "bool-labels": (changed(labels=lambda a: a.update(labels=a["labels"] > 0)), ["labels must be integers"]),
    "nan-labels": (changed(labels=lambda a: a.update(labels=np.full(len(a["labels"]), np.nan))), ["not class indices"]),
    "complex-embeddings": (changed(embeddings=lambda a: a.update(embeddings=a["embeddings"].astype(np.complex64))),
                           ["embeddings must hold floats"]),
    "class-text-wrong-shape": (changed(class_text=lambda a: a.update(class_text=a["class_text"][:, :5])),
                               ["class_text must be (num classes, d) = (3, 8)"]),
    "source-text-alone": (changed(target_text=None), ["must be given together"]),
    "zero-norm-row": (changed(embeddings=_set("embeddings", 3, 0.0)), ["rows of norm 0", "row 3"]),
    "several-problems": (changed(embeddings=_set("embeddings", (0, 0), np.inf), labels=_set("labels", 1, 9),
                                 ids=_set("ids", 2, "img000")), ["infinite", "labels must lie", "ids must be unique"]),
}


def byo_options(tmp_path: Path, files: dict[str, Path], **extra) -> list[str]:
    """Options that point the demo profile at one bring-your-own file per encoder (named like the files)."""
    over = {"source": "byo", "encoders": {"clip": None, "coca": None, **{n: {"model": "byo"} for n in files}},
            "byo": {n: str(f) for n, f in files.items()}, "shots": [0], **extra}
    path = tmp_path / "byo-overrides.yaml"
    path.write_text(yaml.safe_dump(over))
    return ["--profile", "demo", "-f", str(path)]


@pytest.mark.parametrize("case", list(ISSUE_ROWS) + list(OTHER_BROKEN))
def test_preflight_refuses_a_broken_byo_file_naming_it_and_what_is_wrong(case, tmp_path, capsys):
    write, needles = {**ISSUE_ROWS, **OTHER_BROKEN}[case]
    bad = write(tmp_path / f"{case}.npz")
    assert preflight.main(byo_options(tmp_path, {"mine": bad})) == 1  # no exception: a report
    err = capsys.readouterr().err
    assert "cannot run yet; nothing was started" in err and f"{bad} is not a valid embeddings file" in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in the report:\n{err}"
    assert "Traceback" not in err
    with pytest.raises(ValueError):  # notebook 01 refuses it too, with the same problems
        ingest.write_byo(tmp_path / "run", tmp_path / "cache", "d", "mine", bad)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path, capsys):
    write, _ = OTHER_BROKEN["several-problems"]
    bad = write(tmp_path / "several.npz")
    assert preflight.main(byo_options(tmp_path, {"mine": bad})) == 1
    err = capsys.readouterr().err
    assert err.count(f"{bad} is not a valid embeddings file") == 2  # once per dataset file of the profile
    block = err.split(f"{bad} is not a valid embeddings file:")[1].split("\n\n")[0]
    assert len([line for line in block.splitlines() if line.startswith("    - ")]) == 3, block


@pytest.mark.slow  # ./run_tests.sh --all
@pytest.mark.parametrize("entry", ["lare.pipeline.preflight", "lare.pipeline.orchestrator"])
def test_command_line_over_broken_files_exits_non_zero_naming_every_file_without_traceback(entry, tmp_path):
    """Every broken file of this module at once, through ``python -m lare.pipeline.preflight`` and through
    the run entry point (its in-process preflight): exit 1, every file named, no traceback."""
    files = {f"e{n:02d}": write(tmp_path / f"{case}.npz")
             for n, (case, (write, _)) in enumerate({**ISSUE_ROWS, **OTHER_BROKEN}.items())}
    files["missing"] = tmp_path / "does-not-exist.npz"
    extra = ["-p", "run_dir", str(tmp_path / "run"), "-p", "cache_dir", str(tmp_path / "cache"),
             "-p", "figures_root", str(tmp_path / "figures")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", entry, *byo_options(tmp_path, files), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for path in files.values():
        assert f"{path.name}" in proc.stderr, f"{path.name} not named:\n{proc.stderr[-3000:]}"
    assert not (tmp_path / "run" / "notebooks").exists() or not any((tmp_path / "run" / "notebooks").iterdir())
    assert not (tmp_path / "cache").exists()


def test_a_valid_file_passes(tmp_path, capsys):
    good = changed()(tmp_path / "good.npz")
    assert preflight.main(byo_options(tmp_path, {"mine": good})) == 0, capsys.readouterr().err
    assert "ready" in capsys.readouterr().out


# ---------------------------------------------------------------- norms
def test_embeddings_far_from_unit_norm_are_normalised_and_recorded_or_refused(tmp_path, capsys):
    far = changed(embeddings=lambda a: a.update(embeddings=a["embeddings"] * np.linspace(0.5, 3, len(a["labels"]))[:, None]
                                                .astype(np.float32)))(tmp_path / "far.npz")
    # default byo_norm: normalize: a note with the norm range, and the run goes on
    assert preflight.main(byo_options(tmp_path, {"mine": far})) == 0
    out = capsys.readouterr().out
    assert "embeddings is not L2-normalised: row norms range from 0.5 to 3" in out and "byo_norm: normalize" in out, out
    # what notebook 01 writes: unit rows, and the normalisation in the index info every result records
    p = build({"source": "byo", "dataset": "mine", "encoders": {"mine": {"model": "byo"}}, "byo": {"mine": str(far)},
               "run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "table1_dataset": "mine",
               "fewshot_dataset": "mine"})
    ingest.extract(p, "mine")
    data = runfolder.load_encoder_data(p.run_path, "mine", "mine")
    norms = torch.cat([s.embeddings for s in data.sets.values()]).norm(dim=1)
    assert (norms - 1).abs().max() < NORM_TOL
    info = data.index["info"]
    assert info["byo_norm"] == "normalize" and info["normalized"]["embeddings"] == pytest.approx([0.5, 3.0], rel=1e-5)
    lp = experiment.method_params(get("linear-probe"), p, info)
    assert lp["embeddings"]["normalized"] == info["normalized"], "the result rows record the normalisation"
    # byo_norm: refuse stops in the preflight, with the range and what to do
    assert preflight.main(byo_options(tmp_path, {"mine": far}, byo_norm="refuse")) == 1
    err = capsys.readouterr().err
    assert "row norms range from 0.5 to 3" in err and "normalise it" in err and "far.npz" in err
    assert preflight.main(byo_options(tmp_path, {"mine": far}, byo_norm="scale")) == 1
    assert "byo_norm (bring-your-own vectors whose norm is not 1) must be one of ('normalize', 'refuse')" in capsys.readouterr().err


# ---------------------------------------------------------------- Table 1 without an ood split
def test_table1_dataset_without_ood_is_noted_and_marked_not_measured(tmp_path, capsys):
    no_ood = changed(split=lambda a: a.update(split=np.where(a["split"] == "ood", "test", a["split"])))(tmp_path / "no-ood.npz")
    assert preflight.main(byo_options(tmp_path, {"mine": no_ood})) == 0
    out = capsys.readouterr().out
    assert "is Table 1's (table1_dataset) but has no out-of-domain split" in out and "'not measured'" in out, out
    assert "no-ood.npz" in out

    rows = [r for m in ("zero-shot", "linear-probe", "lare") for seed in (0, 1)
            for r in make_rows(method=m, encoder="coca", dataset="mine", shots=0, seed=seed, params={"m": m},
                               metrics_by_domain={"in_domain": {"top1": 50.0 + seed, "balanced_acc": 49.0}})]
    t = table1(aggregate(rows), "mine")
    assert t["Out-of-domain mean"].isna().all() and t["In-domain mean"].notna().all()
    paths = write_table1(t, tmp_path / "fig", title="Table 1")
    md = paths["md"].read_text()
    lare_row = next(line for line in md.splitlines() if line.startswith("| LARE |"))
    assert "50.50 ± 0.71" in lare_row and lare_row.count(NOT_MEASURED) == 1, lare_row
    assert "| Out-of-domain |" in md.splitlines()[2], md
    assert "nan" not in md.lower() and "not measured: the dataset has no out-of-domain ('ood') split" in md
    assert "not measured" in paths["tex"].read_text().lower()
    assert pd.read_csv(paths["csv"])["Out-of-domain mean"].isna().all()


def test_tables_with_both_domains_have_no_not_measured_note(tmp_path):
    rows = [r for m in ("zero-shot", "linear-probe") for r in make_rows(
        method=m, encoder="coca", dataset="d", shots=0, seed=0, params={},
        metrics_by_domain={d: {"top1": 50.0, "balanced_acc": 50.0} for d in ("in_domain", "out_of_domain")})]
    md = write_table1(table1(aggregate(rows), "d"), tmp_path, title="T")["md"].read_text()
    assert NOT_MEASURED not in md


# ---------------------------------------------------------------- image datasets
PAPER = {"encoders": {"clip": {"model": "lare-tiny-clip", "pretrained": "none"},
                      "coca": {"model": "lare-tiny-coca", "pretrained": "none"}}, "shots": [0], "download": False}


def _paper_problems(dataset: str, root: Path) -> list[str]:
    return preflight.check(load_params("paper", dataset, {**PAPER, "data_root": str(root)}))


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize("damage", ["truncated-train", "data-as-floats", "no-fine-labels", "labels-too-short",
                                    "meta-without-names", "test-is-a-list"])
def test_preflight_opens_the_cifar100_pickles_notebook_01_reads(damage, tmp_path):
    fake = make_fake_cifar100(tmp_path, per_class_train=2, per_class_test=1)
    assert _paper_problems("cifar100", tmp_path) == []
    train = pickle.loads((fake.folder / "train").read_bytes())
    if damage == "truncated-train":
        (fake.folder / "train").write_bytes((fake.folder / "train").read_bytes()[:1000])
    elif damage == "data-as-floats":
        _dump(fake.folder / "train", {**train, "data": train["data"].astype(np.float32)})
    elif damage == "no-fine-labels":
        _dump(fake.folder / "train", {k: v for k, v in train.items() if k != "fine_labels"})
    elif damage == "labels-too-short":
        _dump(fake.folder / "train", {**train, "fine_labels": train["fine_labels"][:-3]})
    elif damage == "meta-without-names":
        _dump(fake.folder / "meta", {"coarse_label_names": ["a"]})
    else:
        _dump(fake.folder / "test", [1, 2, 3])
    problems = _paper_problems("cifar100", tmp_path)
    assert problems and all("CIFAR-100" in p for p in problems), problems
    named = "meta" if damage.startswith("meta") else "test" if damage.startswith("test") else "train"
    assert str(fake.folder / named) in problems[0] and "extract cifar-100-python.tar.gz again" in problems[0], problems


def test_preflight_finds_every_cub_image_and_painting_notebook_01_reads(tmp_path, capsys):
    cub = make_fake_cub(tmp_path, classes=3, per_class=4)
    paintings = make_fake_paintings(tmp_path, classes=3, per_class=2)
    assert _paper_problems("cub", tmp_path) == []
    (cub.folder / "images" / cub.paths[cub.test_ids[0]]).unlink()
    empty = next(paintings.glob("*/*.jpg"))
    empty.write_bytes(b"")
    problems = _paper_problems("cub", tmp_path)
    text = "\n".join(problems)
    assert "1 of the 12 images" in text and cub.paths[cub.test_ids[0]] in text and "images.txt" in text, text
    assert "CUB-200-Paintings: 1 image files are empty (0 bytes)" in text and empty.name in text, text
    # with skip_bad_images the empty painting is left out by notebook 01: only the missing photo stays
    p = load_params("paper", "cub", {**PAPER, "data_root": str(tmp_path), "skip_bad_images": True})
    assert len(preflight.check(p)) == 1
    # through the command line too: exit 1, no traceback
    assert preflight.main(["--profile", "paper", "-p", "data_root", str(tmp_path), "-p", "download", "False",
                           "-f", _yaml(tmp_path, PAPER)]) == 1
    err = capsys.readouterr().err
    assert "1 of the 12 images" in err and "Traceback" not in err


def _yaml(tmp_path: Path, values: dict) -> str:
    path = tmp_path / "paper-overrides.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_preflight_checks_an_own_image_folder(tmp_path):
    root = tmp_path / "mine"
    for split in ("train", "test"):
        for c in ("001.A", "002.B"):
            (root / split / c).mkdir(parents=True)
            (root / split / c / "x.jpg").write_bytes(b"\xff\xd8 not empty")
    (root / "test" / "003.C").mkdir()
    (root / "test" / "003.C" / "y.jpg").write_bytes(b"x")
    over = {**PAPER, "source": "images", "dataset": "mine", "data_root": str(tmp_path), "table1_dataset": "mine",
            "fewshot_dataset": "mine"}
    problems = preflight.check(build(over))
    text = "\n".join(problems)
    assert f"{root / 'ood'} is missing" in text and "with_domains: false" in text, text
    assert f"{root / 'test'} has other classes than {root / 'train'}" in text, text


# ---------------------------------------------------------------- non-finite values during training
def test_train_box_blames_non_finite_inputs_not_the_learning_rate():
    d = make_synthetic(seed=0)
    x, y, val = d["train_x"][:120], d["train_y"][:120], (d["test_x"][:40], d["test_y"][:40])
    bad_text = d["class_text"].clone()
    bad_text[3, 0] = float("inf")
    with pytest.raises(TrainingDiverged) as err:
        train_box(x, y, bad_text, BoxConfig(epochs=2), val_x=val[0], val_y=val[1], progress=False)
    msg = str(err.value)
    assert "class_text has 1 infinite value in 1 row (first: row 3)" in msg and "the learning rate is not at fault" in msg
    assert "lower the learning rate" not in msg
    with pytest.raises(TrainingDiverged) as err:  # finite inputs, absurd step size: then it is the optimisation
        train_box(x, y, d["class_text"], BoxConfig(epochs=2, lr=1e30), val_x=val[0], val_y=val[1], progress=False)
    assert "although its inputs are finite" in str(err.value) and "lower the learning rate" in str(err.value)


def _byo_params(tmp_path: Path, **over):
    good = changed()(tmp_path / "good.npz")
    p = build({"source": "byo", "dataset": "mine", "encoders": {"coca": {"model": "byo"}}, "byo": {"coca": str(good)},
               "run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "table1_dataset": "mine",
               "fewshot_dataset": "mine", "seeds": [0], "val_fraction": 0.25, "device": "cpu", "progress": False,
               "protocol": "fixed", "box": {"epochs": 2}, "probe": {"epochs": 2}, "lads": {"epochs": 2}, **over})
    ingest.extract(p, "coca")
    return p


def test_infinite_class_text_met_in_training_names_the_unit_and_the_input(tmp_path, monkeypatch):
    p = _byo_params(tmp_path)
    real = experiment.unit_splits

    def with_inf(*args, **kwargs):  # as if the cache held what the preflight now refuses
        s = real(*args, **kwargs)
        s.class_text = s.class_text.clone()
        s.class_text[1, 0] = float("inf")
        return s

    monkeypatch.setattr(experiment, "unit_splits", with_inf)
    with pytest.raises(experiment.NonFiniteInputs) as err:
        experiment.train_boxes(p)
    msg = str(err.value)
    for needle in ("f_Box (LARE step 1) on dataset 'mine', encoder 'coca', shots 0, seed 0",
                   "class_text has 1 infinite value in 1 row (first: row 1)", "Nothing was trained"):
        assert needle in msg, msg
    assert "learning rate" not in msg
    with pytest.raises(experiment.NonFiniteInputs, match=r"zero-shot, linear-probe on dataset 'mine', encoder 'coca'"):
        experiment.run_methods(p, ["zero-shot", "linear-probe"])
    assert not (p.run_path / "boxes").exists() and not (p.run_path / "results.jsonl").exists()


def test_a_diverging_method_names_the_unit_and_says_the_inputs_are_finite(tmp_path, monkeypatch):
    p = _byo_params(tmp_path)

    def diverge(*args, **kwargs):
        raise FloatingPointError("a trial diverged (every validation loss was NaN or infinite)")

    monkeypatch.setattr(experiment, "search_unit", diverge)
    with pytest.raises(TrainingDiverged) as err:
        experiment.run_methods(p, ["linear-probe"])
    msg = str(err.value)
    for needle in ("linear-probe on dataset 'mine', encoder 'coca', shots 0, seed 0", "a trial diverged",
                   "its inputs are finite", "so the training itself diverged", "lower the learning rate"):
        assert needle in msg, msg

    def trainer_says_why(*args, **kwargs):  # a trainer's own verdict (lare.core.train.minimise) is kept, with the unit
        raise TrainingDiverged("LADS: training diverged (every validation loss was NaN or infinite) although its inputs "
                               "are finite (training embeddings): lower the learning rate or the logit scale")

    monkeypatch.setattr(experiment, "search_unit", trainer_says_why)
    with pytest.raises(TrainingDiverged) as err:
        experiment.run_methods(p, ["lads"])
    msg = str(err.value)
    assert msg.startswith("lads on dataset 'mine', encoder 'coca', shots 0, seed 0 stopped on a non-finite loss: LADS:"), msg
    assert msg.count("lower the learning rate") == 1, msg

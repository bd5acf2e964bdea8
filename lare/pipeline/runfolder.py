"""The run folder: the embedding index, the saved splits per (shots, seed), f_Box checkpoints.

Notebooks read only files that earlier notebooks wrote; this module says where each one lives::

    embeddings/<dataset>/<encoder>.json     index: cache paths of each split and the text embeddings
    splits/<dataset>/shots<k>_seed<s>.json  train / val id lists (checked disjoint from test sets)
    boxes/<dataset>/<encoder>/shots<k>_seed<s>.safetensors (+ .json)  trained f_Box
    results.jsonl                           one row per (method, encoder, dataset, domain, shots, seed)
    results.csv                             mean and std over seeds (written by notebook 05)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lare.compare.methods import OOD_PREFIX, EmbeddingSplits
from lare.data.cache import load_embeddings
from lare.data.catalog import imbalance_of
from lare.data.longtail import class_groups, lt_counts, lt_subset
from lare.data.splits import carve_validation, check_disjoint, kshot_subset, n_validation
from lare.pipeline.params import ParameterError
from lare.utils import hash_config, write_json_atomic

# Evaluation splits and the Table 1 domain each stands for; a split ``ood_<domain>`` (one of several
# target domains, DomainNet) keeps its name, and lare.compare.methods.evaluate adds their mean as out_of_domain.
EVAL_DOMAINS = {"test": "in_domain", "ood": "out_of_domain"}


def eval_domain(split: str) -> str | None:
    """The result domain of an embedding split (None: not an evaluation split)."""
    return EVAL_DOMAINS.get(split, split if split.startswith(OOD_PREFIX) else None)


# ---------------------------------------------------------------- the embedding index
def index_path(run_dir: str | Path, dataset: str, encoder: str) -> Path:
    return Path(run_dir) / "embeddings" / dataset / f"{encoder}.json"


def write_index(run_dir, dataset: str, encoder: str, *, splits: dict[str, str], class_text: str,
                class_names: list[str], extra_text: dict[str, str] | None = None, info: dict | None = None) -> Path:
    path = index_path(run_dir, dataset, encoder)
    write_json_atomic(path, {"dataset": dataset, "encoder": encoder, "splits": splits, "class_text": class_text,
                             "class_names": class_names, "extra_text": extra_text or {}, "info": info or {}})
    return path


def read_index(run_dir, dataset: str, encoder: str) -> dict:
    path = index_path(run_dir, dataset, encoder)
    if not path.is_file():
        raise FileNotFoundError(f"no embeddings for {dataset}/{encoder} in {path.parent}: run notebook 01 "
                                "(01_extract_embeddings) for this dataset first")
    return json.loads(path.read_text())


@dataclass
class EncoderData:
    """Everything one encoder gives for one dataset: split embedding sets and text embeddings."""

    index: dict
    sets: dict[str, Any]
    class_text: torch.Tensor
    extra_text: dict[str, torch.Tensor]


_LOADED: dict[tuple, EncoderData] = {}


def load_encoder_data(run_dir, dataset: str, encoder: str) -> EncoderData:
    """One encoder's embeddings for a dataset, read (and checksum-verified) once per process:
    complete cache entries never change, and a rewritten index has another mtime."""
    path = index_path(run_dir, dataset, encoder)
    key = (str(path), path.stat().st_mtime_ns) if path.is_file() else None
    if key in _LOADED:
        return _LOADED[key]
    idx = read_index(run_dir, dataset, encoder)
    sets = {name: load_embeddings(p) for name, p in idx["splits"].items()}
    class_text = load_embeddings(idx["class_text"]).embeddings
    extra = {k: load_embeddings(p).embeddings for k, p in idx["extra_text"].items()}
    _LOADED.clear()  # keep one dataset's tensors at a time
    _LOADED[key] = EncoderData(idx, sets, class_text, extra)
    return _LOADED[key]


# ---------------------------------------------------------------- splits per (shots, seed)
def split_path(run_dir, dataset: str, shots: int, seed: int) -> Path:
    return Path(run_dir) / "splits" / dataset / f"shots{shots}_seed{seed}.json"


def split_key(train_ids, train_labels, *, shots: int, seed: int, val_fraction: float, imbalance: int = 0) -> str:
    """Identifies a split's inputs: the training pool (ids and labels) and the draw settings."""
    return hash_config({"pool": hash_config([list(map(str, train_ids)), [int(y) for y in train_labels]]),
                        "shots": shots, "seed": seed, "val_fraction": val_fraction,
                        **({"imbalance": imbalance} if imbalance else {})})


def make_or_load_split(run_dir, dataset: str, train_ids: list[str], train_labels: list[int],
                       eval_ids: dict[str, list[str]], *, shots: int, seed: int, val_fraction: float,
                       imbalance: int = 0) -> dict[str, list[str]]:
    """The train / validation ids for (shots, seed), drawn once with a seeded generator and saved.

    Validation is carved from the training pool (never from a test set); with ``shots > 0`` the
    k-shot subset is drawn from what remains, so validation never shrinks the k shots. The saved
    file records what it was drawn from (pool ids and labels, validation fraction); if that
    changed, the split is drawn again rather than silently reused. ``imbalance`` (CIFAR-100-LT):
    the pool is first cut to the long-tailed subset of :func:`lare.data.longtail.lt_subset` for this
    seed, and validation is carved from that subset (the labelled budget stays the profile's).
    """
    path = split_path(run_dir, dataset, shots, seed)
    key = split_key(train_ids, train_labels, shots=shots, seed=seed, val_fraction=val_fraction, imbalance=imbalance)
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is not None and saved.get("key") == key:
        split = {"train": saved["train"], "val": saved["val"]}
    else:
        if imbalance:
            keep = set(lt_subset(train_ids, train_labels, imbalance, seed))
            kept = [(i, y) for i, y in zip(train_ids, train_labels, strict=True) if i in keep]
            train_ids, train_labels = [i for i, _ in kept], [y for _, y in kept]
        train, val = carve_validation(train_ids, train_labels, val_fraction, seed)
        if shots > 0:
            label_of = dict(zip(train_ids, train_labels, strict=True))
            train = kshot_subset(train, [label_of[i] for i in train], shots, seed)
        split = {"train": train, "val": val}
        check_disjoint(**split, **eval_ids)
        write_json_atomic(path, {**split, "key": key})
    check_disjoint(**split, **eval_ids)
    return split


def shots_problem(smallest: int, shots: list[int], val_fraction: float) -> str | None:
    """Why ``shots`` cannot be drawn when the smallest class has ``smallest`` training items
    (validation is carved first, as :func:`lare.data.splits.carve_validation` does), or None."""
    left = smallest - n_validation(smallest, val_fraction)
    too_many = [k for k in shots if k > left]
    if not too_many:
        return None
    return (f"shots {too_many} exceed what the smallest class offers: it has {smallest} training items, {left} after "
            f"carving validation (val_fraction {val_fraction}); use shots <= {left}")


def check_shots(data: EncoderData, shots: list[int], val_fraction: float) -> None:
    """Refuse, before any training, shot counts the training pool cannot give after the
    validation carve (the smallest class decides)."""
    counts = torch.bincount(data.sets["train"].labels)
    problem = shots_problem(int(counts[counts > 0].min()), shots, val_fraction)
    if problem:
        raise ParameterError([problem])


def encoder_splits(data: EncoderData, run_dir, dataset: str, *, shots: int, seed: int,
                   val_fraction: float) -> EmbeddingSplits:
    """The :class:`EmbeddingSplits` of one encoder for (shots, seed), ready for the methods."""
    train_all = data.sets["train"]
    evals = {name: s for name, s in data.sets.items() if eval_domain(name)}
    imbalance = imbalance_of(dataset)
    split = make_or_load_split(run_dir, dataset, train_all.ids, train_all.labels.tolist(),
                               {n: s.ids for n, s in evals.items()}, shots=shots, seed=seed, val_fraction=val_fraction,
                               imbalance=imbalance)
    tr, va = train_all.subset(split["train"]), train_all.subset(split["val"])
    groups = None
    if imbalance:  # head / medium / tail by the profile's count per class (train + validation)
        pool = torch.bincount(train_all.labels, minlength=len(data.class_text))
        groups = class_groups(lt_counts(len(data.class_text), int(pool.min()), imbalance))
    return EmbeddingSplits(tr.embeddings, tr.labels, va.embeddings, va.labels,
                           {eval_domain(n): (s.embeddings, s.labels) for n, s in evals.items()},
                           data.class_text, data.extra_text, class_groups=groups)


# ---------------------------------------------------------------- checkpoints and results
def box_path(run_dir, dataset: str, encoder: str, shots: int, seed: int) -> Path:
    return Path(run_dir) / "boxes" / dataset / encoder / f"shots{shots}_seed{seed}.safetensors"


def results_path(run_dir) -> Path:
    return Path(run_dir) / "results.jsonl"

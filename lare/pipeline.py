"""What the notebooks call: embedding sources, the embedding index, splits per (shots, seed),
and the bookkeeping of the run folder. Notebooks read only files that earlier notebooks wrote.

Run folder layout (``run_dir``)::

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

import numpy as np
import torch

from .cache import load_embeddings, save_embeddings
from .methods import EmbeddingSplits
from .splits import carve_validation, check_disjoint, kshot_subset, n_validation
from .synthetic import SyntheticSpec, make_synthetic
from .train import is_int as _is_int
from .utils import hash_config, write_json_atomic

# Evaluation splits and the Table 1 domain each stands for.
EVAL_DOMAINS = {"test": "in_domain", "ood": "out_of_domain"}
SOURCES = ("synthetic", "images", "byo")


class ParameterError(ValueError):
    """A bad notebook parameter, reported before any heavy work starts."""


def check_common(*, seeds, shots, encoders: dict, source: str, val_fraction: float) -> None:
    """Validate the parameters every notebook shares; every problem is listed in one error."""
    problems = []
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(_is_int(s) for s in seeds):
        problems.append(f"seeds must be a non-empty list of integers, got {seeds!r}")
    elif len(set(seeds)) != len(seeds):
        problems.append(f"seeds must not repeat, got {seeds!r}")
    if not isinstance(shots, (list, tuple)) or not shots or not all(_is_int(k) and k >= 0 for k in shots):
        problems.append(f"shots must be a non-empty list of integers >= 0 (0 = the full training set), got {shots!r}")
    if not isinstance(encoders, dict) or not encoders:
        problems.append(f"encoders must be a mapping such as {{coca: {{model: ..., pretrained: ...}}}}, got {encoders!r}")
    if source not in SOURCES:
        problems.append(f"source must be one of {SOURCES}, got {source!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        problems.append(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    if problems:
        raise ParameterError("bad parameters:\n  - " + "\n  - ".join(problems))


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


def make_or_load_split(run_dir, dataset: str, train_ids: list[str], train_labels: list[int],
                       eval_ids: dict[str, list[str]], *, shots: int, seed: int, val_fraction: float
                       ) -> dict[str, list[str]]:
    """The train / validation ids for (shots, seed), drawn once with a seeded generator and saved.

    Validation is carved from the training pool (never from a test set); with ``shots > 0`` the
    k-shot subset is drawn from what remains, so validation never shrinks the k shots. The saved
    file records what it was drawn from (pool ids and labels, validation fraction); if that
    changed, the split is drawn again rather than silently reused.
    """
    path = split_path(run_dir, dataset, shots, seed)
    key = split_key(train_ids, train_labels, shots=shots, seed=seed, val_fraction=val_fraction)
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is not None and saved.get("key") == key:
        split = {"train": saved["train"], "val": saved["val"]}
    else:
        train, val = carve_validation(train_ids, train_labels, val_fraction, seed)
        if shots > 0:
            label_of = dict(zip(train_ids, train_labels, strict=True))
            train = kshot_subset(train, [label_of[i] for i in train], shots, seed)
        split = {"train": train, "val": val}
        check_disjoint(**split, **eval_ids)
        write_json_atomic(path, {**split, "key": key})
    check_disjoint(**split, **eval_ids)
    return split


def split_key(train_ids, train_labels, *, shots: int, seed: int, val_fraction: float) -> str:
    """Identifies a split's inputs: the training pool (ids and labels) and the draw settings."""
    return hash_config({"pool": hash_config([list(map(str, train_ids)), [int(y) for y in train_labels]]),
                        "shots": shots, "seed": seed, "val_fraction": val_fraction})


def check_shots(data: EncoderData, shots: list[int], val_fraction: float) -> None:
    """Refuse, before any training, shot counts the training pool cannot give after the
    validation carve (the smallest class decides)."""
    counts = torch.bincount(data.sets["train"].labels)
    problem = shots_problem(int(counts[counts > 0].min()), shots, val_fraction)
    if problem:
        raise ParameterError(problem)


def shots_problem(smallest: int, shots: list[int], val_fraction: float) -> str | None:
    """Why ``shots`` cannot be drawn when the smallest class has ``smallest`` training items
    (validation is carved first, as :func:`lare.splits.carve_validation` does), or None."""
    left = smallest - n_validation(smallest, val_fraction)
    too_many = [k for k in shots if k > left]
    if not too_many:
        return None
    return (f"shots {too_many} exceed what the smallest class offers: it has {smallest} training items, {left} after "
            f"carving validation (val_fraction {val_fraction}); use shots <= {left}")


def encoder_splits(data: EncoderData, run_dir, dataset: str, *, shots: int, seed: int,
                   val_fraction: float) -> EmbeddingSplits:
    """The :class:`EmbeddingSplits` of one encoder for (shots, seed), ready for the methods."""
    train_all = data.sets["train"]
    evals = {name: s for name, s in data.sets.items() if name in EVAL_DOMAINS}
    split = make_or_load_split(run_dir, dataset, train_all.ids, train_all.labels.tolist(),
                               {n: s.ids for n, s in evals.items()}, shots=shots, seed=seed, val_fraction=val_fraction)
    tr, va = train_all.subset(split["train"]), train_all.subset(split["val"])
    return EmbeddingSplits(tr.embeddings, tr.labels, va.embeddings, va.labels,
                           {EVAL_DOMAINS[n]: (s.embeddings, s.labels) for n, s in evals.items()},
                           data.class_text, data.extra_text)


# ---------------------------------------------------------------- embedding sources
def _text_entry(cache_dir: Path, dataset: str, encoder: str, purpose: str, emb: torch.Tensor,
                names: list[str], manifest_base: dict) -> str:
    manifest = {**manifest_base, "dataset": dataset, "split": f"text-{purpose}", "n_items": len(names)}
    path = cache_dir / dataset / f"text-{purpose}" / f"{encoder}-{hash_config(manifest)}"
    return str(save_embeddings(path, manifest, emb, torch.arange(len(names)), names).path)


def write_synthetic(run_dir, cache_dir, dataset: str, encoder: str, spec: dict, *, noise: float,
                    world_seed: int = 1234, with_domains: bool = True) -> Path:
    """Generate one synthetic encoder's view of a dataset and write it in the cache format.

    ``with_domains=False`` gives a single-domain dataset (train / test), as CIFAR-100 for Figure 3.
    """
    sp = SyntheticSpec(**{**spec, "noise": noise})
    data = make_synthetic(sp, seed=int(round(noise * 1000)), world_seed=world_seed)
    base = {"format": 1, "model": f"synthetic-{encoder}", "synthetic_spec": sp.__dict__, "world_seed": world_seed}
    cache_dir = Path(cache_dir)
    splits = {}
    names = {"train": "train", "test": "test", **({"ood": "ood"} if with_domains else {})}
    for split, key in names.items():
        x, y = data[f"{key}_x"], data[f"{key}_y"]
        ids = [f"{split}/{i:06d}" for i in range(len(y))]
        manifest = {**base, "dataset": dataset, "split": split, "n_items": len(ids)}
        path = cache_dir / dataset / split / f"{encoder}-{hash_config(manifest)}"
        splits[split] = str(save_embeddings(path, manifest, x, y, ids).path)
    names_c = data["class_names"]
    class_text = _text_entry(cache_dir, dataset, encoder, "class", data["class_text"], names_c, base)
    extra = {k: _text_entry(cache_dir, dataset, encoder, k, data[f"{k}_text"], names_c, base)
             for k in ("photo", "painting")} if with_domains else {}
    return write_index(run_dir, dataset, encoder, splits=splits, class_text=class_text, class_names=names_c,
                       extra_text=extra, info={"source": "synthetic", "noise": noise, **base})


BYO_REQUIRED = {"embeddings": 2, "labels": 1, "split": 1, "class_names": 1, "class_text": 2}


def read_byo(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check a bring-your-own ``.npz`` (see the README for the layout)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bring-your-own embeddings file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except ValueError as err:  # object arrays need pickles, which we never load
        raise ValueError(f"{path}: {err}. Store plain numeric and string arrays (no Python objects); "
                         "class_names as a string array, e.g. np.array(names, dtype=str)") from err
    problems = [f"missing array {k!r} ({nd}-D)" for k, nd in BYO_REQUIRED.items() if k not in data]
    problems += [f"{k!r} must be {nd}-D, got shape {data[k].shape}" for k, nd in BYO_REQUIRED.items()
                 if k in data and data[k].ndim != nd]
    if not problems:
        n, d = data["embeddings"].shape
        c = len(data["class_names"])
        if len(data["labels"]) != n or len(data["split"]) != n:
            problems.append(f"labels and split must have one entry per embedding ({n})")
        if data["class_text"].shape != (c, d):
            problems.append(f"class_text must be (num classes, d) = ({c}, {d}), got {data['class_text'].shape}")
        if not np.issubdtype(data["labels"].dtype, np.integer):
            problems.append(f"labels must be integers, got dtype {data['labels'].dtype}")
        elif len(data["labels"]) and (data["labels"].min() < 0 or data["labels"].max() >= c):
            problems.append(f"labels must lie in [0, {c})")
        bad = set(map(str, np.unique(data["split"]))) - {"train", "test", "ood"}
        if bad or "train" not in set(map(str, data["split"])):
            problems.append(f"split values must be train / test / ood (train required), found {sorted(bad)}")
        if ("source_text" in data) != ("target_text" in data):
            problems.append("source_text and target_text (LADS prompts) must be given together")
        for k in ("source_text", "target_text"):
            if k in data and data[k].shape != (c, d):
                problems.append(f"{k} must be ({c}, {d}), got {data[k].shape}")
    if problems:
        raise ValueError(f"{path} is not a valid embeddings file:\n  - " + "\n  - ".join(problems))
    return data


def write_byo(run_dir, cache_dir, dataset: str, encoder: str, path: str | Path) -> Path:
    """Bring your own embeddings: convert a checked ``.npz`` into the cache format and index it."""
    data = read_byo(path)
    emb = torch.from_numpy(np.ascontiguousarray(data["embeddings"], dtype=np.float32))
    labels = torch.from_numpy(data["labels"].astype(np.int64))
    ids_all = [str(i) for i in data["ids"]] if "ids" in data else [f"{i:07d}" for i in range(len(labels))]
    names = [str(c) for c in data["class_names"]]
    base = {"format": 1, "model": f"byo-{encoder}", "source_file": str(Path(path).resolve())}
    cache_dir = Path(cache_dir)
    splits = {}
    for split in ("train", "test", "ood"):
        mask = np.asarray([str(s) == split for s in data["split"]])
        if not mask.any():
            continue
        ids = [i for i, m in zip(ids_all, mask, strict=True) if m]
        manifest = {**base, "dataset": dataset, "split": split, "n_items": len(ids)}
        p = cache_dir / dataset / split / f"{encoder}-{hash_config(manifest)}"
        splits[split] = str(save_embeddings(p, manifest, emb[torch.from_numpy(mask)], labels[torch.from_numpy(mask)], ids).path)
    class_text = _text_entry(cache_dir, dataset, encoder, "class", torch.from_numpy(data["class_text"]).float(), names, base)
    extra = {}
    if "source_text" in data and "target_text" in data:
        extra = {purpose: _text_entry(cache_dir, dataset, encoder, purpose, torch.from_numpy(data[k]).float(), names, base)
                 for purpose, k in (("photo", "source_text"), ("painting", "target_text"))}
    return write_index(run_dir, dataset, encoder, splits=splits, class_text=class_text, class_names=names,
                       extra_text=extra, info={"source": "byo", **base})


def write_images(run_dir, cache_dir, dataset: str, encoder: str, *, model: str, pretrained: str,
                 items: dict[str, list], class_names: list[str], templates: list[str],
                 domain_templates: dict[str, list[str]] | None = None, precision: str = "fp32",
                 batch_size: int = 64, num_workers: int = 0, device=None, progress: bool = True, loader=None,
                 chunk_size: int = 1024, repair: bool = False, skip_bad_images: bool = False) -> Path:
    """Embed real images with an open_clip model into the cache (resumable) and index them.

    ``items`` maps split names (train / test / ood) to :class:`lare.datasets.Item` lists;
    ``domain_templates`` (e.g. photo / painting prompts with one '{}') feed LADS.
    """
    from .cache import class_text_entry, extract_embeddings
    from .encoders import load_encoder

    if precision == "auto":  # mixed precision where it pays; the choice is recorded in the manifest
        precision = "bf16" if torch.device(device or "cpu").type == "cuda" else "fp32"
    enc = load_encoder(model, pretrained, device=device, precision=precision)
    splits, skipped = {}, {}
    for split, its in items.items():
        es = extract_embeddings(enc, its, cache_dir=cache_dir, dataset=dataset, split=split, label_names=class_names,
                                batch_size=batch_size, num_workers=num_workers, progress=progress, loader=loader,
                                chunk_size=chunk_size, repair=repair, skip_bad_images=skip_bad_images)
        splits[split] = str(es.path)
        if es.skipped:
            skipped[split] = es.skipped
            print(f"{encoder}/{split}: skipped {len(es.skipped)} images that do not decode, e.g. {es.skipped[:3]}")

    from .cache import _barrier, _dist

    def text(purpose, temps):
        return str(class_text_entry(enc, class_names, temps, cache_dir=cache_dir, purpose=purpose).path)

    path = index_path(run_dir, dataset, encoder)
    if _dist()[0] == 0:  # text embeddings and the index are small: one process writes them
        class_text = text("class", list(templates))
        extra = {k: text(k, list(v)) for k, v in (domain_templates or {}).items()}
        path = write_index(run_dir, dataset, encoder, splits=splits, class_text=class_text,
                           class_names=list(class_names), extra_text=extra,
                           info={"source": "images", **enc.info(), "skipped_images": skipped})
    _barrier()
    return path


# ---------------------------------------------------------------- notebook helpers
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def resolve(path: str | Path) -> Path:
    """Relative paths are taken from the repository root, wherever the notebook runs."""
    p = Path(path)
    return p if p.is_absolute() else project_root() / p


def data_root_from(param: str) -> str:
    """The data root: the parameter, unless it is the default "data" and LARE_DATA_ROOT is set."""
    import os

    return os.environ.get("LARE_DATA_ROOT", param) if param == "data" else param


def pick_device(device: str) -> torch.device:
    from .utils import resolve_device

    return resolve_device(None if device in ("auto", "", None) else device)


def extract(name: str, enc: dict, *, run_dir, cache_dir, data_root, dataset: str, source: str, with_domains: bool,
            synthetic: dict, byo: dict, templates, domain_templates, precision: str, batch_size: int, device,
            progress: bool, download: bool = True, num_workers: int = 0, chunk_size: int = 1024,
            repair_cache: bool = False, skip_bad_images: bool = False) -> Path:
    """Notebook 01 for one encoder: dispatch on ``source``.

    With ``source="images"``, ``dataset`` is a protocol dataset of :mod:`lare.sources` (``cub``:
    CUB-200-2011 train / test photos and CUB-200-Paintings as ``ood``; ``cifar100``), or any folder
    ``<data_root>/<dataset>/{train,test[,ood]}/<NNN.Class_Name>/*.jpg`` (``toy*`` ones are generated).
    """
    if source == "synthetic":
        if "noise" not in enc:
            raise ParameterError(f"encoder {name!r}: the synthetic source needs a 'noise' level (e.g. 0.6)")
        return write_synthetic(run_dir, cache_dir, dataset, name, synthetic, noise=float(enc["noise"]),
                               with_domains=with_domains)
    if source == "byo":
        if name not in byo:
            raise ParameterError(f"source 'byo' needs a .npz path for encoder {name!r} in the 'byo' mapping")
        return write_byo(run_dir, cache_dir, dataset, name, resolve(byo[name]))
    from .cache import _barrier, _dist
    from .datasets import imagefolder_items, make_toy_images
    from .sources import PROTOCOL_SOURCES, load_protocol

    if _dist()[1] > 1:  # under torchrun: rank 0 downloads / extracts / generates first, alone
        if _dist()[0] == 0:
            if dataset in PROTOCOL_SOURCES:
                load_protocol(dataset, data_root, allow_download=download)
            elif dataset.startswith("toy"):
                make_toy_images(Path(data_root) / dataset)
        _barrier()
    loader = None
    if dataset in PROTOCOL_SOURCES:
        items, class_names, loader = load_protocol(dataset, data_root, allow_download=download)
        if not with_domains:
            items.pop("ood", None)
    else:
        root = Path(data_root) / dataset
        if dataset.startswith("toy"):
            make_toy_images(root)
        items, class_names = {}, None
        for split in ("train", "test", "ood") if with_domains else ("train", "test"):
            items[split], names = imagefolder_items(root, split, domain="painting" if split == "ood" else "photo")
            if class_names is not None and names != class_names:
                raise ValueError(f"{root / split} has other classes than {root / 'train'}")
            class_names = names
    return write_images(run_dir, cache_dir, dataset, name, model=enc["model"], pretrained=enc.get("pretrained", "none"),
                        items=items, class_names=class_names, templates=templates,
                        domain_templates=domain_templates if with_domains else None, precision=precision,
                        batch_size=batch_size, num_workers=num_workers, device=device, progress=progress, loader=loader,
                        chunk_size=chunk_size, repair=repair_cache, skip_bad_images=skip_bad_images)


def summary(run_dir, dataset: str, encoders: list[str]):
    import pandas as pd

    rows = []
    for enc in encoders:
        d = load_encoder_data(run_dir, dataset, enc)
        for split, s in d.sets.items():
            rows.append({"encoder": enc, "split": split, "items": len(s), "dim": s.embeddings.shape[1],
                         "classes": len(d.index["class_names"]), "path": s.path})
    return pd.DataFrame(rows)


def _strip_seed(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "seed"}


def box_path(run_dir, dataset: str, encoder: str, shots: int, seed: int) -> Path:
    return Path(run_dir) / "boxes" / dataset / encoder / f"shots{shots}_seed{seed}.safetensors"


def train_all_boxes(run_dir, dataset: str, *, encoders: list[str], shots: list[int], seeds: list[int], box: dict,
                    val_fraction: float, device, progress: bool) -> list[Path]:
    """Notebook 02: one f_Box per (encoder, shots, seed); a checkpoint with the same settings is reused."""
    from tqdm.auto import tqdm

    from .box import BoxConfig, save_box, train_box

    BoxConfig(**box)  # reject bad settings before any work
    for enc in encoders:
        check_shots(load_encoder_data(run_dir, dataset, enc), shots, val_fraction)
    done = []
    units = [(e, k, s) for e in encoders for k in shots for s in seeds]
    for enc, k, seed in tqdm(units, desc="f_Box runs", disable=not progress):
        cfg = BoxConfig(**{**box, "seed": seed})
        path = box_path(run_dir, dataset, enc, k, seed)
        data = load_encoder_data(run_dir, dataset, enc)
        s = encoder_splits(data, run_dir, dataset, shots=k, seed=seed, val_fraction=val_fraction)
        # Reuse a checkpoint only if it was trained with these settings, embeddings and split.
        want = hash_config({"box": cfg.to_dict(), "val_fraction": val_fraction, "index": data.index,
                            "split": json.loads(split_path(run_dir, dataset, k, seed).read_text())["key"]})
        if path.is_file() and json.loads(path.with_suffix(".json").read_text()).get("config_hash") == want:
            done.append(path)
            continue
        res = train_box(s.train_x, s.train_y, s.class_text, cfg, val_x=s.val_x, val_y=s.val_y, device=device,
                        progress=False)
        save_box(res, path, extra={"config_hash": want, "encoder": enc, "shots": k, "seed": seed,
                                   "val_fraction": val_fraction})
        done.append(path)
    return done


def _record(run_dir, *, method, encoder, dataset, shots, seed, params, fn) -> list[dict]:
    from .results import append_rows, has_result, make_rows

    results = Path(run_dir) / "results.jsonl"
    if has_result(results, method=method, encoder=encoder, dataset=dataset, shots=shots, seed=seed, params=params):
        return []
    rows = make_rows(method=method, encoder=encoder, dataset=dataset, shots=shots, seed=seed,
                     metrics_by_domain=fn(), params=params)
    append_rows(results, rows)
    return rows


def _index_info(run_dir, dataset, enc) -> dict:
    return read_index(run_dir, dataset, enc)["info"]


def probe_all_lare(run_dir, dataset: str, *, encoders, shots, seeds, sampling: dict, probe: dict, val_fraction: float,
                   device, progress: bool):
    """Notebook 03: LARE step 2 for every trained f_Box; appends result rows (skipping recorded ones)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from .box import load_box
    from .methods import SamplingConfig, run_lare
    from .probe import ProbeConfig

    samp = SamplingConfig(**sampling)
    ProbeConfig(**probe)
    rows = []
    for enc, k, seed in tqdm([(e, k, s) for e in encoders for k in shots for s in seeds], desc="LARE probes",
                             disable=not progress):
        path = box_path(run_dir, dataset, enc, k, seed)
        if not path.is_file():
            raise FileNotFoundError(f"no f_Box at {path}: run notebook 02 (02_train_boxes) with the same encoders, shots and seeds")
        boxes = load_box(path, device)
        pcfg = ProbeConfig(**{**probe, "seed": seed})
        params = {"box": _strip_seed(boxes.config.to_dict()), "sampling": samp.to_dict(),
                  "probe": _strip_seed(pcfg.to_dict()), "val_fraction": val_fraction,
                  "embeddings": _index_info(run_dir, dataset, enc)}

        def fn(enc=enc, k=k, seed=seed, boxes=boxes, pcfg=pcfg):
            s = encoder_splits(load_encoder_data(run_dir, dataset, enc), run_dir, dataset, shots=k, seed=seed,
                               val_fraction=val_fraction)
            return run_lare(s, boxes.config, pcfg, samp, device=device, boxes=boxes)[0]

        rows += _record(run_dir, method="lare", encoder=enc, dataset=dataset, shots=k, seed=seed, params=params, fn=fn)
    return pd.DataFrame(rows)[["method", "encoder", "domain", "shots", "seed", "top1", "balanced_acc"]] if rows else pd.DataFrame()


def run_baselines(run_dir, dataset: str, *, encoders, lads_encoders, shots, seeds, probe: dict, lads: dict,
                  val_fraction: float, device, progress: bool):
    """Notebook 04: zero-shot and linear probe for every encoder; LADS where domain descriptions exist."""
    import pandas as pd
    from tqdm.auto import tqdm

    from .lads import LADSConfig
    from .methods import run_lads, run_linear_probe, run_zero_shot
    from .probe import ProbeConfig

    ProbeConfig(**probe)
    LADSConfig(**lads)
    for enc in encoders:
        check_shots(load_encoder_data(run_dir, dataset, enc), shots, val_fraction)
    rows = []
    units = [(e, k, s) for e in encoders for k in shots for s in seeds]
    for enc, k, seed in tqdm(units, desc="baselines", disable=not progress):
        data = load_encoder_data(run_dir, dataset, enc)
        info = _index_info(run_dir, dataset, enc)
        split = lambda enc=enc, k=k, seed=seed, data=data: encoder_splits(  # noqa: E731
            data, run_dir, dataset, shots=k, seed=seed, val_fraction=val_fraction)
        pcfg = ProbeConfig(**{**probe, "seed": seed})
        rows += _record(run_dir, method="zero-shot", encoder=enc, dataset=dataset, shots=k, seed=seed,
                        params={"embeddings": info}, fn=lambda split=split: run_zero_shot(split()))
        base = {"probe": _strip_seed(pcfg.to_dict()), "val_fraction": val_fraction, "embeddings": info}
        rows += _record(run_dir, method="linear-probe", encoder=enc, dataset=dataset, shots=k, seed=seed, params=base,
                        fn=lambda split=split, pcfg=pcfg: run_linear_probe(split(), pcfg, device=device)[0])
        if enc in lads_encoders and k == 0 and {"photo", "painting"} <= set(data.extra_text):
            lcfg = LADSConfig(**{**lads, "seed": seed})
            rows += _record(run_dir, method="lads", encoder=enc, dataset=dataset, shots=k, seed=seed,
                            params={**base, "lads": _strip_seed(lcfg.to_dict())},
                            fn=lambda split=split, pcfg=pcfg, lcfg=lcfg, data=data: run_lads(
                                split(), data.extra_text["photo"], data.extra_text["painting"], lcfg, pcfg,
                                device=device)[0])
    return pd.DataFrame(rows)[["method", "encoder", "domain", "shots", "seed", "top1", "balanced_acc"]] if rows else pd.DataFrame()


def aggregate_run(run_dir) -> Path:
    """results.jsonl -> results.csv (mean and std over seeds), in the run folder."""
    from .results import aggregate, read_rows, write_csv

    rows = read_rows(Path(run_dir) / "results.jsonl")
    if not rows:
        raise FileNotFoundError(f"no results in {Path(run_dir) / 'results.jsonl'}: run notebooks 03 and 04 first")
    out = Path(run_dir) / "results.csv"
    write_csv(aggregate(rows), out)
    return out


def make_table1(run_dir, *, figures: Path, dataset: str, compare_paper: bool, note: str) -> dict[str, Path]:
    """Notebook 05: aggregate the run's results into results.csv and write Table 1 under ``figures``."""
    import pandas as pd

    from .results import table1, write_csv, write_table1

    csv = aggregate_run(run_dir)
    agg = pd.read_csv(csv)
    folder = Path(figures)
    write_csv(agg, folder / "results.csv")
    t = table1(agg, dataset, with_paper=compare_paper)
    if t.empty:
        raise ValueError(f"no full-training-set results for dataset {dataset!r} in {csv}")
    title = f"Table 1: top-1 accuracy (%) on {dataset}, mean ± std over seeds" + (f" [{note}]" if note else "")
    return write_table1(t, folder, title=title)


def make_figure3(run_dir, *, figures: Path, dataset: str, note: str):
    """Notebook 06: Figure 3 from results.csv, as PNG and PDF under ``figures``."""
    import pandas as pd

    from .plots import figure3, save_figure

    csv = Path(run_dir) / "results.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"no {csv}: run notebook 05 (05_table1), which aggregates the results, first")
    title = f"Figure 3: few-shot accuracy, {dataset}" + (f"\n[{note}]" if note else "")
    fig = figure3(pd.read_csv(csv), dataset, title=title)
    return save_figure(fig, figures, "figure3"), fig


def plot_embeddings(run_dir, dataset: str, encoder: str):
    from .plots import embeddings_2d

    return embeddings_2d(load_encoder_data(run_dir, dataset, encoder).sets, f"{dataset} / {encoder} (PCA)")


def plot_box_training(box_file: Path):
    from .box import load_box
    from .plots import box_training

    return box_training(load_box(box_file, "cpu").history, Path(box_file).stem)


def plot_boxes_2d(run_dir, dataset: str, box_file: Path, *, sampling: dict):
    from .box import load_box, sample_boxes
    from .plots import boxes_2d

    meta = json.loads(Path(box_file).with_suffix(".json").read_text())
    data = load_encoder_data(run_dir, dataset, meta["encoder"])
    s = encoder_splits(data, run_dir, dataset, shots=meta["shots"], seed=meta["seed"], val_fraction=meta["val_fraction"])
    lower, upper = load_box(box_file, "cpu").boxes(s.train_x)
    g = torch.Generator().manual_seed(0)
    samples = sample_boxes(lower[:6], upper[:6], 64, generator=g)
    if sampling.get("renormalize", True):
        samples = torch.nn.functional.normalize(samples, dim=-1)
    return boxes_2d(s.train_x, s.train_y, lower, upper, samples)


def plot_accuracy(run_dir, dataset: str, methods: list[str] | None = None):
    import pandas as pd

    from .plots import accuracy_bars
    from .results import read_rows

    rows = pd.DataFrame(read_rows(Path(run_dir) / "results.jsonl"))
    rows = rows[rows["dataset"] == dataset]
    if methods:
        rows = rows[rows["method"].isin(methods)]
    return accuracy_bars(rows, f"{dataset}: mean top-1 over seeds")

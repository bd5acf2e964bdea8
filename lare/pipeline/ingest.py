"""Ingest: embeddings into the cache format and the run's index (what notebook 01 does).

Three sources: the built-in ``synthetic`` dataset, bring-your-own ``byo`` ``.npz`` files, and real
``images`` embedded with an open_clip model (resumable, keyed by everything that changes the
numbers). Each writes one index per (dataset, encoder) in the run folder (see :mod:`lare.pipeline.runfolder`).

Images can also be embedded from the command line, on one process or sharded with ``torchrun``:

    python -m lare.pipeline.ingest --profile paper --dataset cub [-p NAME VALUE]...
    torchrun --nproc_per_node 4 -m lare.pipeline.ingest --profile paper --dataset cub

That does what notebook 01 does for ``source: images`` (same parameters, :func:`lare.pipeline.params.load_params`:
the defaults, the profile's params file, then the -p values; same cache entries and index), so the notebook then
finds the cache complete. Under torchrun each rank embeds its own chunks on its own device (NCCL
on GPUs, gloo on CPUs) and rank 0 assembles one cache entry per split; the embeddings equal a
single-process run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from lare.core.encoders import load_encoder
from lare.data import byo
from lare.data.cache import CacheCorruptError, CacheMismatchError, is_complete, load_embeddings, save_embeddings
from lare.data.catalog import DATASETS, cache_name, load_dataset
from lare.data.datasets import imagefolder_items, make_toy_images
from lare.data.extraction import class_text_entry, dist_barrier, dist_rank_world, extract_embeddings
from lare.data.synthetic import SyntheticSpec, make_synthetic
from lare.pipeline.params import ParameterError, RunParams, load_params, open_clip_source, overrides_from, resolve
from lare.pipeline.preflight import check
from lare.pipeline.runfolder import index_path, write_index
from lare.provenance import ingest_fingerprint
from lare.utils import hash_config, sha256_file


def _store(path: Path, manifest: dict, x: torch.Tensor, y: torch.Tensor, ids: list[str]) -> str:
    """Write an entry, or keep the complete one already there under the same key (its files untouched)."""
    if is_complete(path):
        try:
            found = load_embeddings(path, manifest)
            if torch.equal(found.embeddings, x.float()) and torch.equal(found.labels, y.long()) and found.ids == ids:
                return str(path)
        except (CacheCorruptError, CacheMismatchError):
            pass  # written again below
    return str(save_embeddings(path, manifest, x, y, ids).path)


def _text_entry(cache_dir: Path, dataset: str, encoder: str, purpose: str, emb: torch.Tensor,
                names: list[str], manifest_base: dict) -> str:
    manifest = {**manifest_base, "dataset": dataset, "split": f"text-{purpose}", "n_items": len(names)}
    path = cache_dir / dataset / f"text-{purpose}" / f"{encoder}-{hash_config(manifest)}"
    return _store(path, manifest, emb, torch.arange(len(names)), names)


def write_synthetic(run_dir, cache_dir, dataset: str, encoder: str, spec: dict, *, noise: float,
                    world_seed: int = 1234, with_domains: bool = True) -> Path:
    """Generate one synthetic encoder's view of a dataset and write it in the cache format.

    ``with_domains=False`` gives a single-domain dataset (train / test), as CIFAR-100 for Figure 3.
    """
    sp = SyntheticSpec(**{**spec, "noise": noise})
    data = make_synthetic(sp, seed=int(round(noise * 1000)), world_seed=world_seed)
    base = {"format": 1, "model": f"synthetic-{encoder}", "synthetic_spec": sp.__dict__, "world_seed": world_seed,
            "ingest_code": ingest_fingerprint()}
    cache_dir = Path(cache_dir)
    splits = {}
    names = {"train": "train", "test": "test", **({"ood": "ood"} if with_domains else {})}
    for split, key in names.items():
        x, y = data[f"{key}_x"], data[f"{key}_y"]
        ids = [f"{split}/{i:06d}" for i in range(len(y))]
        manifest = {**base, "dataset": dataset, "split": split, "n_items": len(ids)}
        path = cache_dir / dataset / split / f"{encoder}-{hash_config(manifest)}"
        splits[split] = _store(path, manifest, x, y, ids)
    names_c = data["class_names"]
    class_text = _text_entry(cache_dir, dataset, encoder, "class", data["class_text"], names_c, base)
    extra = {k: _text_entry(cache_dir, dataset, encoder, k, data[f"{k}_text"], names_c, base)
             for k in ("photo", "painting")} if with_domains else {}
    return write_index(run_dir, dataset, encoder, splits=splits, class_text=class_text, class_names=names_c,
                       extra_text=extra, info={"source": "synthetic", "noise": noise, **base})


def read_byo(path: str | Path, norm: str = "normalize") -> dict[str, np.ndarray]:
    """Read and check a bring-your-own ``.npz`` (see the README for the layout and :mod:`lare.data.byo`):
    its arrays, with vectors of non-unit norm normalised (``norm="normalize"``) or refused."""
    return byo.read(path, norm).arrays


def write_byo(run_dir, cache_dir, dataset: str, encoder: str, path: str | Path, *, norm: str = "normalize") -> Path:
    """Bring your own embeddings: convert a checked ``.npz`` into the cache format and index it.

    The file's sha256, the policy for vectors of non-unit norm (``norm``) and what it normalised
    (each array's norm range before) are part of the manifests and of the index's ``info``, which
    every result records (and hashes, as ``embeddings_hash``)."""
    f = byo.read(path, norm)
    for note in f.notes:  # what the preflight noted, shown where the file is read too (notebook 01)
        print(f"{encoder}: {f.path}: {note}")
    data = f.arrays
    emb = torch.from_numpy(np.ascontiguousarray(data["embeddings"], dtype=np.float32))
    labels = torch.from_numpy(data["labels"].astype(np.int64))
    ids_all = [str(i) for i in data["ids"]] if "ids" in data else [f"{i:07d}" for i in range(len(labels))]
    names = [str(c) for c in data["class_names"]]
    # The file enters every key by its content: replaced in place, it gives new entries, boxes and rows.
    base = {"format": 1, "model": f"byo-{encoder}", "source_file": str(Path(path).resolve()),
            "source_sha256": sha256_file(path), "byo_norm": norm, "normalized": f.normalized,
            "ingest_code": ingest_fingerprint()}
    cache_dir = Path(cache_dir)
    splits = {}
    for split in ("train", "test", "ood"):
        mask = data["split"] == split
        if not mask.any():
            continue
        ids = [i for i, m in zip(ids_all, mask, strict=True) if m]
        manifest = {**base, "dataset": dataset, "split": split, "n_items": len(ids)}
        p = cache_dir / dataset / split / f"{encoder}-{hash_config(manifest)}"
        splits[split] = _store(p, manifest, emb[torch.from_numpy(mask)], labels[torch.from_numpy(mask)], ids)
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
                 chunk_size: int = 1024, repair: bool = False, skip_bad_images: bool = False,
                 cache_as: str | None = None) -> Path:
    """Embed real images with an open_clip model into the cache (resumable) and index them.

    ``items`` maps split names (train / test / ood) to :class:`lare.data.datasets.Item` lists;
    ``domain_templates`` (e.g. photo / painting prompts with one '{}') feed LADS. ``cache_as``: the
    dataset name of the cache entries (default ``dataset``), so datasets of the same images share them.
    """
    if precision == "auto":  # mixed precision where it pays; the choice is recorded in the manifest
        precision = "bf16" if torch.device(device or "cpu").type == "cuda" else "fp32"
    enc = load_encoder(model, pretrained, device=device, precision=precision)
    splits, skipped = {}, {}
    for split, its in items.items():
        es = extract_embeddings(enc, its, cache_dir=cache_dir, dataset=cache_as or dataset, split=split, label_names=class_names,
                                batch_size=batch_size, num_workers=num_workers, progress=progress, loader=loader,
                                chunk_size=chunk_size, repair=repair, skip_bad_images=skip_bad_images)
        splits[split] = str(es.path)
        if es.skipped:
            skipped[split] = es.skipped
            print(f"{encoder}/{split}: skipped {len(es.skipped)} images that do not decode, e.g. {es.skipped[:3]}")

    def text(purpose, temps):
        return str(class_text_entry(enc, class_names, temps, cache_dir=cache_dir, purpose=purpose).path)

    path = index_path(run_dir, dataset, encoder)
    if dist_rank_world()[0] == 0:  # text embeddings and the index are small: one process writes them
        class_text = text("class", list(templates))
        extra = {k: text(k, list(v)) for k, v in (domain_templates or {}).items()}
        path = write_index(run_dir, dataset, encoder, splits=splits, class_text=class_text,
                           class_names=list(class_names), extra_text=extra,
                           info={"source": "images", **enc.info(), "skipped_images": skipped})
    dist_barrier()
    return path


def extract(p: RunParams, name: str, *, device: torch.device | None = None) -> Path:
    """Notebook 01 for one encoder of the run: dispatch on ``p.source``; returns the index path.

    With ``source="images"``, ``p.dataset`` is a protocol dataset of :mod:`lare.data.sources` (``cub``:
    CUB-200-2011 train / test photos and CUB-200-Paintings as ``ood``; ``cifar100``), or any folder
    ``<data_root>/<dataset>/{train,test[,ood]}/<NNN.Class_Name>/*.jpg`` (``toy*`` ones are generated).
    """
    enc, run_dir, dataset = p.encoders[name], p.run_path, p.dataset
    if p.source == "synthetic":
        return write_synthetic(run_dir, p.cache_path, dataset, name, p.synthetic, noise=float(enc["noise"]),
                               with_domains=p.with_domains)
    if p.source == "byo":
        return write_byo(run_dir, p.cache_path, dataset, name, resolve(p.byo[name]), norm=p.byo_norm)
    data_root = p.data_path
    rank, world = dist_rank_world()
    if world > 1:  # under torchrun: rank 0 downloads / extracts / generates first, alone
        if rank == 0:
            if dataset in DATASETS:
                load_dataset(dataset, data_root, allow_download=p.download)
            elif dataset.startswith("toy"):
                make_toy_images(data_root / dataset)
        dist_barrier()
    loader = None
    if dataset in DATASETS:
        items, class_names, loader = load_dataset(dataset, data_root, allow_download=p.download)
        if not p.with_domains:  # one domain: no out-of-domain split (nor DomainNet's ood_<domain> ones)
            items = {k: v for k, v in items.items() if k != "ood" and not k.startswith("ood_")}
    else:
        root = data_root / dataset
        if dataset.startswith("toy"):
            make_toy_images(root)
        items, class_names = {}, None
        for split in ("train", "test", "ood") if p.with_domains else ("train", "test"):
            items[split], names = imagefolder_items(root, split, domain="painting" if split == "ood" else "photo")
            if class_names is not None and names != class_names:
                raise ValueError(f"{root / split} has other classes than {root / 'train'}")
            class_names = names
    model, pretrained = open_clip_source(enc)
    return write_images(run_dir, p.cache_path, dataset, name, model=model, pretrained=pretrained, items=items,
                        class_names=class_names, templates=p.templates,
                        domain_templates=p.domain_templates if p.with_domains else None, precision=p.precision,
                        batch_size=p.batch_size, num_workers=p.num_workers, device=device or p.torch_device,
                        progress=p.progress, loader=loader, chunk_size=p.chunk_size, repair=p.repair_cache,
                        skip_bad_images=p.skip_bad_images, cache_as=cache_name(dataset))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lare.pipeline.ingest",
                                 description="Embed a profile's images into the cache (one process, or sharded with torchrun).")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--dataset", required=True, help="a params file name of the profile, e.g. cub")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    try:
        p = load_params(args.profile, args.dataset, overrides_from([("-p", k, v) for k, v in args.p]))
        problems = check(p)
    except ParameterError as err:
        problems = err.problems
    else:
        if p.source != "images":
            problems.append(f"lare.pipeline.ingest embeds images; params/{args.profile}/{args.dataset}.yaml has source {p.source!r}")
    if problems:
        print("cannot extract:\n- " + "\n- ".join(problems), file=sys.stderr)
        return 1

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
    else:
        device = p.torch_device
    try:
        for name in p.encoders:
            path = extract(p, name, device=device)
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"{name}: {yaml.safe_dump({'index': str(path)}).strip()}")
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

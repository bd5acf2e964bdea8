"""The embedding store: safetensors tensors plus a JSON manifest, under a key derived from it.

Layout of one entry::

    <cache_dir>/<dataset>/<split>/<model>-<key>/
        manifest.json          the fields that identify the embeddings (the key is their hash)
        chunks/NNNNNN.safetensors   partial results while extraction runs (deleted at the end)
        embeddings.safetensors      "embeddings" (n, d) float32, "labels" (n,) int64
        ids.json                    the ordered item ids
        complete.json               sha256 of embeddings.safetensors, n, d: written last

Any change of a manifest field (model, pretrained tag, open_clip version, preprocessing,
precision, normalise flag, dataset, split, number of items, digest of the ordered ids, label
names) gives another key, so stale embeddings are never reused. Every file is written to a
temporary name and renamed into place; extraction writes one chunk at a time and, restarted
after an interruption, embeds only the chunks that are missing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .utils import atomic_path, hash_config, sha256_file, write_json_atomic

FORMAT_VERSION = 1
# The fields of Encoder.info() that identify embeddings (image entries also use "preprocessing").
ENCODER_FIELDS = ("model", "pretrained", "weights_id", "open_clip_version", "model_config_digest", "precision")
MANIFEST_FIELDS = ("format", *ENCODER_FIELDS, "preprocessing", "normalize", "dataset", "split", "n_items",
                   "ids_digest", "label_names")


class CacheMismatchError(ValueError):
    """A cache entry whose manifest differs from what was asked for."""


class CacheCorruptError(RuntimeError):
    """A cache entry whose files fail their checksum or cannot be read."""


class CacheWriteError(OSError):
    """The cache folder cannot be written (read-only, full); nothing half-written is left."""


def _writing(path: Path):
    """Turn an OSError while writing cache files into an error that says what to do."""
    import contextlib

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except CacheWriteError:
            raise
        except OSError as err:
            raise CacheWriteError(err.errno, f"cannot write to the cache folder {path} ({err.strerror or err}): is it "
                                  "read-only or full? Free space, fix the permissions or choose another cache_dir. "
                                  "Nothing half-written was left; finished chunks are kept") from err
    return guard()


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of the ordered ids: any change of membership or order changes it."""
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def make_manifest(encoder_info: dict[str, Any], *, dataset: str, split: str, ids: Sequence[str],
                  label_names: Sequence[str], normalize: bool = True) -> dict[str, Any]:
    """The manifest of an image-embedding entry. ``encoder_info`` is :meth:`Encoder.info`."""
    m = {"format": FORMAT_VERSION, **{k: encoder_info[k] for k in (*ENCODER_FIELDS, "preprocessing")},
         "normalize": bool(normalize), "dataset": dataset, "split": split, "n_items": len(ids),
         "ids_digest": ids_digest(ids), "label_names": list(label_names)}
    return m


def cache_key(manifest: dict[str, Any]) -> str:
    return hash_config(manifest)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))


def entry_dir(cache_dir: str | Path, manifest: dict[str, Any]) -> Path:
    return (Path(cache_dir) / _safe(manifest["dataset"]) / _safe(manifest["split"])
            / f"{_safe(manifest['model'])}-{cache_key(manifest)}")


def diff_manifest(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Names of the fields of ``expected`` whose value differs in ``found``."""
    return [k for k in expected if found.get(k) != expected[k]]


def _describe(diff: list[str], found: dict, expected: dict) -> str:
    def short(v):
        s = json.dumps(v, default=str)
        return s if len(s) <= 80 else s[:77] + "..."
    return "; ".join(f"{k}: cache has {short(found.get(k))}, expected {short(expected[k])}" for k in diff)


@dataclass
class EmbeddingSet:
    """Embeddings of one dataset split with their labels, ids and manifest."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    manifest: dict[str, Any]
    path: Path | None = None
    skipped: list[str] = field(default_factory=list)  # ids left out: images that do not decode

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, ids: Sequence[str]) -> EmbeddingSet:
        """The rows of the given ids, in that order (a KeyError names a missing id)."""
        pos = {i: n for n, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise KeyError(f"{len(missing)} ids not in {self.manifest.get('dataset')}/{self.manifest.get('split')}, "
                           f"e.g. {missing[:3]}")
        idx = torch.tensor([pos[i] for i in ids], dtype=torch.long)
        return EmbeddingSet(self.embeddings[idx], self.labels[idx], list(ids), self.manifest, self.path, self.skipped)


def is_complete(path: str | Path) -> bool:
    return (Path(path) / "complete.json").is_file()


def save_embeddings(path: str | Path, manifest: dict[str, Any], embeddings: torch.Tensor,
                    labels: torch.Tensor, ids: Sequence[str], *, skipped: Sequence[str] = ()) -> EmbeddingSet:
    """Write a complete entry at ``path`` (atomically, file by file; ``complete.json`` last).

    ``skipped``: ids of the manifest's items left out (images that do not decode); the manifest
    still describes every requested item, in order.
    """
    path = Path(path)
    if len(embeddings) != len(labels) or len(labels) != len(ids):
        raise ValueError(f"{len(embeddings)} embeddings, {len(labels)} labels and {len(ids)} ids must agree")
    if manifest.get("n_items") not in (None, len(ids) + len(skipped)) or (
            manifest.get("ids_digest") and not skipped and manifest["ids_digest"] != ids_digest(ids)):
        raise ValueError("the manifest does not describe these ids (n_items or ids_digest differ)")
    tensors = {"embeddings": embeddings.detach().float().contiguous().cpu(),
               "labels": labels.detach().long().contiguous().cpu()}
    with _writing(path):
        path.mkdir(parents=True, exist_ok=True)
        (path / "complete.json").unlink(missing_ok=True)
        write_json_atomic(path / "manifest.json", manifest)
        write_json_atomic(path / "ids.json", list(ids))
        with atomic_path(path / "embeddings.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json_atomic(path / "complete.json", {"sha256": sha256_file(path / "embeddings.safetensors"),
                                                   "n": len(ids), "dim": int(embeddings.shape[1]),
                                                   "skipped": list(skipped),
                                                   "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return EmbeddingSet(tensors["embeddings"], tensors["labels"], list(ids), manifest, path, list(skipped))


def load_embeddings(path: str | Path, expect: dict[str, Any] | None = None, *, verify: bool = True) -> EmbeddingSet:
    """Read a complete entry; refuse it if a field of ``expect`` differs or its checksum fails."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"no embedding cache at {path} (manifest.json missing); run the extraction first")
    manifest = _read_json(path / "manifest.json")
    if expect:
        diff = diff_manifest(manifest, expect)
        if diff:
            raise CacheMismatchError(f"refusing the embedding cache at {path}: {_describe(diff, manifest, expect)}. "
                                     "Re-extract with the current settings (a new cache entry is made beside it).")
    if not is_complete(path):
        raise CacheCorruptError(f"the embedding cache at {path} is incomplete (extraction did not finish); "
                                "run the extraction again to resume it")
    done = _read_json(path / "complete.json")
    # Read the bytes once, hash them and parse those same bytes: the tensors cannot differ from
    # what was verified (a memory-mapped file could still change under a running process).
    blob = (path / "embeddings.safetensors").read_bytes()
    if verify and hashlib.sha256(blob).hexdigest() != done["sha256"]:
        raise CacheCorruptError(f"{path / 'embeddings.safetensors'} fails its checksum (corrupted or truncated); "
                                f"delete {path} and extract again")
    try:
        tensors = safetensors_load(blob)
    except Exception as err:  # safetensors raises its own error types
        raise CacheCorruptError(f"cannot read {path / 'embeddings.safetensors'} ({err}); delete {path} and extract again") from err
    ids = _read_json(path / "ids.json")
    skipped = done.get("skipped", [])
    if len(ids) != len(tensors["embeddings"]) or (manifest.get("ids_digest") and not skipped
                                                   and ids_digest(ids) != manifest["ids_digest"]) or (
            manifest.get("n_items") is not None and len(ids) + len(skipped) != manifest["n_items"]):
        raise CacheCorruptError(f"ids.json at {path} does not match its embeddings or manifest; delete {path} and extract again")
    return EmbeddingSet(tensors["embeddings"], tensors["labels"], ids, manifest, path, skipped)


def _read_json(file: Path):
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CacheCorruptError(f"cannot read {file} ({err}); delete {file.parent} and extract again") from err


def open_entry(cache_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Create (or check) the entry folder for ``manifest``; refuse a folder holding another manifest."""
    path = entry_dir(cache_dir, manifest)
    mfile = path / "manifest.json"
    if mfile.is_file():
        found = _read_json(mfile)
        diff = diff_manifest(found, manifest)
        if diff:
            raise CacheMismatchError(f"the cache folder {path} holds other embeddings: {_describe(diff, found, manifest)}. "
                                     "Delete that folder to re-extract.")
    else:
        with _writing(path):
            path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(mfile, manifest)
    return path


def _chunk_path(path: Path, c: int, chunk_size: int) -> Path:
    # The chunk size is part of the path: chunk c of another size holds other items.
    return path / "chunks" / f"size{chunk_size}" / f"{c:06d}.safetensors"


def _read_chunk(file: Path, expected_rows: int, with_ok: bool = False):
    """A finished chunk's embeddings (and decode flags), or None when it is missing or unreadable
    (it is redone)."""
    if not file.is_file():
        return None
    try:
        data = load_file(str(file))
    except Exception:  # safetensors raises its own error types for damaged files
        return None
    emb = data["embeddings"]
    if len(emb) != expected_rows:
        return None
    if with_ok:
        return emb, data.get("ok", torch.ones(len(emb), dtype=torch.uint8)).bool()
    return emb


def _dist() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _ChunkBatches(torch.utils.data.Sampler):
    """Batches of item indices that never cross a chunk boundary, chunk after chunk.

    Batches are then the same whichever process embeds a chunk, so a sharded extraction gives
    exactly the embeddings of a single process.
    """

    def __init__(self, chunks: list[int], n: int, chunk_size: int, batch_size: int):
        self.plan = []  # (chunk, is the last batch of its chunk, indices)
        for c in chunks:
            lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
            starts = list(range(lo, hi, batch_size))
            self.plan += [(c, s == starts[-1], list(range(s, min(hi, s + batch_size)))) for s in starts]

    def __iter__(self):
        return (idx for _, _, idx in self.plan)

    def __len__(self) -> int:
        return len(self.plan)


def embed_chunks(encoder, items: Sequence, chunks: list[int], path: Path, *, chunk_size: int, batch_size: int,
                 num_workers: int, normalize: bool, loader=None, bar=None, skip_bad: bool = False) -> None:
    """Embed the given chunks with one DataLoader (decoding in workers) and write each chunk
    file as soon as it is complete; nothing but the current chunk is held in memory."""
    from .datasets import ImageFiles

    if not chunks:
        return
    sampler = _ChunkBatches(chunks, len(items), chunk_size, batch_size)
    batches = torch.utils.data.DataLoader(
        ImageFiles(items, encoder.preprocess, loader, skip_bad=skip_bad), batch_sampler=sampler, num_workers=num_workers,
        pin_memory=encoder.device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None)
    out: list[torch.Tensor] = []
    oks: list[torch.Tensor] = []
    for (c, last, idx), batch in zip(sampler.plan, batches, strict=True):
        pixels, ok = batch if skip_bad else (batch, torch.ones(len(idx), dtype=torch.bool))
        out.append(encoder.encode_image_batch(pixels, normalize=normalize))
        oks.append(ok.to(torch.uint8))
        if bar is not None:
            bar.update(len(pixels))
        if last:
            with _writing(path), atomic_path(_chunk_path(path, c, chunk_size)) as tmp:
                save_file({"embeddings": torch.cat(out).contiguous(), "ok": torch.cat(oks)}, str(tmp))
            out, oks = [], []


def extract_embeddings(encoder, items: Sequence, *, cache_dir: str | Path, dataset: str, split: str,
                       label_names: Sequence[str], batch_size: int = 64, chunk_size: int = 1024,
                       num_workers: int = 0, normalize: bool = True, progress: bool = True,
                       loader=None, repair: bool = False, skip_bad_images: bool = False) -> EmbeddingSet:
    """Embed ``items`` (see :class:`lare.datasets.Item`) into the cache, or load them if already there.

    Work is done in chunks of ``chunk_size`` items, each written atomically as soon as it is done;
    an interrupted extraction resumes at the first missing chunk and gives the same result.
    ``loader`` (item -> PIL image) replaces opening ``item.path`` (e.g. CIFAR-100's arrays).

    Under ``torchrun`` (an initialised torch.distributed group), rank r embeds the missing chunks
    c with ``c % world_size == r`` and writes its own chunk files; rank 0 then assembles the one
    entry (one manifest) and every rank returns it. The embeddings equal a single-process run.

    A complete entry that fails its checksum raises :class:`CacheCorruptError`; with
    ``repair=True`` its files are deleted and the split is extracted again.

    An image that does not decode stops the extraction with an error naming the file; with
    ``skip_bad_images=True`` it is left out instead and listed under ``skipped`` in the entry's
    ``complete.json`` (an entry with skipped images is refused when skipping is not allowed).
    """
    if chunk_size < 1 or batch_size < 1:
        raise ValueError("chunk_size and batch_size must be >= 1")
    rank, world = _dist()
    ids = [it.id for it in items]
    manifest = make_manifest(encoder.info(), dataset=dataset, split=split, ids=ids, label_names=label_names,
                             normalize=normalize)
    path = open_entry(cache_dir, manifest)
    if is_complete(path):
        try:
            found = load_embeddings(path, manifest)
            if found.skipped and not skip_bad_images:
                from .datasets import ImageDecodeError

                raise ImageDecodeError(f"the cache entry {path} was made without {len(found.skipped)} images that do not "
                                       f"decode, e.g. {found.skipped[:3]}; fix them (and delete {path}) or allow skipping")
            return found
        except CacheCorruptError:
            if not repair:
                raise
            if rank == 0:
                for name in ("complete.json", "embeddings.safetensors", "ids.json"):
                    (path / name).unlink(missing_ok=True)
            _barrier()

    n = len(items)
    n_chunks = (n + chunk_size - 1) // chunk_size
    rows = [min(chunk_size, n - c * chunk_size) for c in range(n_chunks)]
    todo = [c for c in range(n_chunks) if _read_chunk(_chunk_path(path, c, chunk_size), rows[c]) is None]
    mine = [c for c in todo if c % world == rank]
    desc = f"embed {dataset}/{split} with {encoder.model_name}" + (f" [rank {rank}/{world}]" if world > 1 else "")
    with tqdm(total=sum(rows[c] for c in mine), disable=not progress, unit="img", desc=desc) as bar:
        embed_chunks(encoder, items, mine, path, chunk_size=chunk_size, batch_size=batch_size,
                     num_workers=num_workers, normalize=normalize, loader=loader, bar=bar, skip_bad=skip_bad_images)
    _barrier()
    if rank == 0:
        parts = [_read_chunk(_chunk_path(path, c, chunk_size), rows[c], with_ok=True) for c in range(n_chunks)]
        missing = [c for c, p in enumerate(parts) if p is None]
        if missing:
            raise CacheCorruptError(f"chunks {missing[:5]} of {path} are missing after extraction; run it again")
        labels = torch.tensor([it.label for it in items], dtype=torch.long)
        emb = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, 0)
        ok = torch.cat([p[1] for p in parts]) if parts else torch.ones(0, dtype=torch.bool)
        skipped = [i for i, good in zip(ids, ok.tolist(), strict=True) if not good]
        if skipped and not skip_bad_images:  # chunks left by an earlier run that allowed skipping
            from .datasets import ImageDecodeError

            raise ImageDecodeError(f"{len(skipped)} images of {dataset}/{split} do not decode, e.g. {skipped[:3]} "
                                   f"(found in chunks under {path / 'chunks'}); fix them and delete those chunks, "
                                   "or allow skipping (skip_bad_images)")
        save_embeddings(path, manifest, emb[ok], labels[ok], [i for i, good in zip(ids, ok.tolist(), strict=True) if good],
                        skipped=skipped)
        shutil.rmtree(path / "chunks", ignore_errors=True)
    _barrier()
    return load_embeddings(path, manifest)


# ---------------------------------------------------------------- class text embeddings
def text_manifest(encoder_info: dict[str, Any], *, class_names: Sequence[str], templates: Sequence[str],
                  purpose: str = "class") -> dict[str, Any]:
    m = {"format": FORMAT_VERSION, **{k: encoder_info[k] for k in ENCODER_FIELDS},
         "normalize": True, "dataset": "text", "split": purpose, "templates": list(templates),
         "class_names": list(class_names)}
    return m


def cached_class_text(encoder, class_names: Sequence[str], templates: Sequence[str], *, cache_dir: str | Path,
                      purpose: str = "class") -> torch.Tensor:
    """Class text embeddings ``T(c)`` (see :func:`lare.encoders.class_text_embeddings`), cached."""
    return class_text_entry(encoder, class_names, templates, cache_dir=cache_dir, purpose=purpose).embeddings


def class_text_entry(encoder, class_names: Sequence[str], templates: Sequence[str], *, cache_dir: str | Path,
                     purpose: str = "class"):
    """The cache entry of :func:`cached_class_text` (its ``path`` goes into a run's embedding index)."""
    from .encoders import class_text_embeddings

    manifest = text_manifest(encoder.info(), class_names=class_names, templates=templates, purpose=purpose)
    path = open_entry(cache_dir, manifest)
    if is_complete(path):
        return load_embeddings(path, manifest)
    emb = class_text_embeddings(encoder, class_names, templates)
    ids = [f"{i}:{c}" for i, c in enumerate(class_names)]  # unique even if two classes share a name
    return save_embeddings(path, manifest, emb, torch.arange(len(class_names)), ids)

"""Extraction into the embedding store: open_clip embeddings of images, chunk by chunk, resumable.

Each split is embedded in chunks of ``chunk_size`` items; a chunk file is written atomically as
soon as it is complete, so an interrupted extraction resumes at the first missing chunk. Under
``torchrun`` each rank embeds its own chunks and rank 0 assembles one cache entry (see
:mod:`lare.data.cache` for the entry's layout and key). Class text embeddings are cached the same way.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lare.core.encoders import class_text_embeddings
from lare.data.cache import (
    ENCODER_FIELDS,
    FORMAT_VERSION,
    CacheCorruptError,
    EmbeddingSet,
    guard_writes,
    is_complete,
    load_embeddings,
    make_manifest,
    open_entry,
    save_embeddings,
)
from lare.data.datasets import ImageDecodeError, ImageFiles
from lare.utils import atomic_path


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


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def dist_barrier() -> None:
    """Wait for every rank of an initialised torch.distributed group (nothing on one process)."""
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
            with guard_writes(path), atomic_path(_chunk_path(path, c, chunk_size)) as tmp:
                save_file({"embeddings": torch.cat(out).contiguous(), "ok": torch.cat(oks)}, str(tmp))
            out, oks = [], []


def extract_embeddings(encoder, items: Sequence, *, cache_dir: str | Path, dataset: str, split: str,
                       label_names: Sequence[str], batch_size: int = 64, chunk_size: int = 1024,
                       num_workers: int = 0, normalize: bool = True, progress: bool = True,
                       loader=None, repair: bool = False, skip_bad_images: bool = False) -> EmbeddingSet:
    """Embed ``items`` (see :class:`lare.data.datasets.Item`) into the cache, or load them if already there.

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
    rank, world = dist_rank_world()
    ids = [it.id for it in items]
    manifest = make_manifest(encoder.info(), dataset=dataset, split=split, ids=ids, label_names=label_names,
                             normalize=normalize)
    path = open_entry(cache_dir, manifest)
    if is_complete(path):
        try:
            found = load_embeddings(path, manifest)
            if found.skipped and not skip_bad_images:

                raise ImageDecodeError(f"the cache entry {path} was made without {len(found.skipped)} images that do not "
                                       f"decode, e.g. {found.skipped[:3]}; fix them (and delete {path}) or allow skipping")
            return found
        except CacheCorruptError:
            if not repair:
                raise
            if rank == 0:
                for name in ("complete.json", "embeddings.safetensors", "ids.json"):
                    (path / name).unlink(missing_ok=True)
            dist_barrier()

    n = len(items)
    n_chunks = (n + chunk_size - 1) // chunk_size
    rows = [min(chunk_size, n - c * chunk_size) for c in range(n_chunks)]
    todo = [c for c in range(n_chunks) if _read_chunk(_chunk_path(path, c, chunk_size), rows[c]) is None]
    mine = [c for c in todo if c % world == rank]
    desc = f"embed {dataset}/{split} with {encoder.model_name}" + (f" [rank {rank}/{world}]" if world > 1 else "")
    with tqdm(total=sum(rows[c] for c in mine), disable=not progress, unit="img", desc=desc) as bar:
        embed_chunks(encoder, items, mine, path, chunk_size=chunk_size, batch_size=batch_size,
                     num_workers=num_workers, normalize=normalize, loader=loader, bar=bar, skip_bad=skip_bad_images)
    dist_barrier()
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

            raise ImageDecodeError(f"{len(skipped)} images of {dataset}/{split} do not decode, e.g. {skipped[:3]} "
                                   f"(found in chunks under {path / 'chunks'}); fix them and delete those chunks, "
                                   "or allow skipping (skip_bad_images)")
        save_embeddings(path, manifest, emb[ok], labels[ok], [i for i, good in zip(ids, ok.tolist(), strict=True) if good],
                        skipped=skipped)
        shutil.rmtree(path / "chunks", ignore_errors=True)
    dist_barrier()
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
    """Class text embeddings ``T(c)`` (see :func:`lare.core.encoders.class_text_embeddings`), cached."""
    return class_text_entry(encoder, class_names, templates, cache_dir=cache_dir, purpose=purpose).embeddings


def class_text_entry(encoder, class_names: Sequence[str], templates: Sequence[str], *, cache_dir: str | Path,
                     purpose: str = "class"):
    """The cache entry of :func:`cached_class_text` (its ``path`` goes into a run's embedding index)."""
    manifest = text_manifest(encoder.info(), class_names=class_names, templates=templates, purpose=purpose)
    path = open_entry(cache_dir, manifest)
    if is_complete(path):
        return load_embeddings(path, manifest)
    emb = class_text_embeddings(encoder, class_names, templates)
    ids = [f"{i}:{c}" for i, c in enumerate(class_names)]  # unique even if two classes share a name
    return save_embeddings(path, manifest, emb, torch.arange(len(class_names)), ids)

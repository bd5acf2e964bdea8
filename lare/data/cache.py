"""The embedding store: safetensors tensors plus a JSON manifest, under a key derived from it.

Layout of one entry::

    <cache_dir>/<dataset>/<split>/<model>-<key>/
        manifest.json          the fields that identify the embeddings (the key is their hash)
        chunks/NNNNNN.safetensors   partial results while extraction runs (deleted at the end)
        embeddings.safetensors      "embeddings" (n, d) float32, "labels" (n,) int64
        ids.json                    the ordered item ids
        complete.json               sha256 of embeddings.safetensors, n, d: written last

Any change of a manifest field (model, pretrained tag, open_clip version, preprocessing,
precision, the fingerprint of the extraction code (:func:`lare.provenance.extraction_fingerprint`),
normalise flag, dataset, split, number of items, digest of the ordered ids, label names) gives
another key, so stale embeddings are never reused. Every file is written to a
temporary name and renamed into place; extraction writes one chunk at a time and, restarted
after an interruption, embeds only the chunks that are missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file

from lare.utils import atomic_path, hash_config, sha256_file, write_json_atomic

FORMAT_VERSION = 1
# The fields of Encoder.info() that identify embeddings (image entries also use "preprocessing").
ENCODER_FIELDS = ("model", "pretrained", "weights_id", "open_clip_version", "model_config_digest", "precision",
                  "extraction_code")
MANIFEST_FIELDS = ("format", *ENCODER_FIELDS, "preprocessing", "normalize", "dataset", "split", "n_items",
                   "ids_digest", "label_names")


class CacheMismatchError(ValueError):
    """A cache entry whose manifest differs from what was asked for."""


class CacheCorruptError(RuntimeError):
    """A cache entry whose files fail their checksum or cannot be read."""


class CacheWriteError(OSError):
    """The cache folder cannot be written (read-only, full); nothing half-written is left."""


def guard_writes(path: Path):
    """Turn an OSError while writing cache files into an error that says what to do."""
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
    with guard_writes(path):
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
        with guard_writes(path):
            path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(mfile, manifest)
    return path

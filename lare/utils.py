"""Small shared helpers: devices, seeded generators, atomic writes, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A private generator: library code never touches the global RNG."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g


def nonfinite(name: str, values: torch.Tensor) -> str | None:
    """What is not finite in a float tensor: how many NaN and infinite values, in how many rows,
    and the first row ("class_text has 1 infinite value in 1 row (first: row 3)"); None if all are."""
    if not values.is_floating_point() or values.numel() == 0:
        return None
    bad = ~torch.isfinite(values)
    count = int(bad.sum())
    if not count:
        return None
    nan = int(torch.isnan(values).sum())
    kinds = " and ".join(f"{k} {what}" for k, what in ((nan, "NaN"), (count - nan, "infinite")) if k)
    rows = bad.reshape(len(values), -1).any(1).nonzero().flatten() if values.dim() else torch.zeros(1, dtype=torch.long)
    return (f"{name} has {kinds} value{'s' if count > 1 else ''} in {len(rows)} row{'s' if len(rows) > 1 else ''} "
            f"(first: row {int(rows[0])})")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, used for hashing configurations."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_config(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A crash mid-write therefore never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

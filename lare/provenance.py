"""Provenance: what code and which commit made a number, and the package versions behind it.

Two fingerprints key what the library computes, so that a change of code gives new numbers and
never reuses old ones under the same key:

- :func:`code_fingerprint`: every source file of the ``lare`` package. f_Box checkpoints, result
  rows and the notebook stamps carry it: after an edit to ``lare/`` they are recomputed.
- :func:`extraction_fingerprint`: only the modules that turn images into embeddings
  (:data:`EXTRACTION_MODULES`), so that the one expensive GPU step is not redone after edits
  elsewhere; :func:`ingest_fingerprint` likewise for the synthetic and bring-your-own converters.

A fingerprint hashes file contents (not modification times), so a fresh clone of the same commit
has the same fingerprints as the tree it came from. Each is computed once per process: it describes
the code this process imported (a kernel that keeps running after an edit still runs the old code),
and the keys of every unit then do not read the package's files again.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
EXTRACTION_MODULES = ("core/encoders.py", "data/extraction.py", "data/datasets.py", "data/cache.py")
INGEST_MODULES = ("pipeline/ingest.py", "data/byo.py", "data/synthetic.py", "data/cache.py")


def _digest(files: list[Path], root: Path = PACKAGE) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_files(root: Path = PACKAGE) -> list[Path]:
    """The package's source: its Python modules and the bundled model configs."""
    return [f for f in root.rglob("*") if f.is_file() and f.suffix in (".py", ".json") and "__pycache__" not in f.parts]


@cache
def code_fingerprint(root: Path = PACKAGE) -> str:
    """A hash of every source file of the package (16 hex digits)."""
    return _digest(code_files(root), root)


@cache
def extraction_fingerprint(root: Path = PACKAGE) -> str:
    """A hash of the modules that make image embeddings (:data:`EXTRACTION_MODULES`)."""
    return _digest([root / m for m in EXTRACTION_MODULES], root)


@cache
def ingest_fingerprint(root: Path = PACKAGE) -> str:
    """A hash of the modules that convert synthetic and bring-your-own data (:data:`INGEST_MODULES`)."""
    return _digest([root / m for m in INGEST_MODULES], root)


def _git(*args: str, cwd: Path = PACKAGE) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit (with ``-dirty`` when tracked files have changes), or ``"unknown"``."""
    cwd = Path(cwd or PACKAGE)
    try:
        dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
        return _git("rev-parse", "HEAD", cwd=cwd) + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def code_state(root: Path = PACKAGE) -> dict:
    """Which commit the package's code is at: ``code_commit`` (the last commit that changed the
    package's folder, so that committing results or docs does not change it), ``code_modified``
    (whether the package differs from that commit, untracked modules included) and
    ``code_fingerprint``. Outside a git checkout the commit is ``"unknown"``."""
    state = {"code_fingerprint": code_fingerprint(root), "code_commit": "unknown", "code_modified": False}
    try:
        top = Path(_git("rev-parse", "--show-toplevel", cwd=root))
        if not (top / root.relative_to(top)).is_dir():
            return state
        state["code_commit"] = _git("log", "-1", "--format=%H", "--", ".", cwd=root) or "unknown"
        state["code_modified"] = bool(_git("status", "--porcelain", "--", ".", cwd=root))
    except (OSError, ValueError, subprocess.CalledProcessError):
        pass
    return state


def package_versions() -> dict[str, str]:
    """Versions of the packages that change the numbers."""
    out = {"python": platform.python_version()}
    for name in ("torch", "open_clip_torch", "numpy", "lare"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out

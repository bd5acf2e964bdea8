"""A copy of the repository for tests that must not touch the working tree (imported by the tests).

The copy holds the files git tracks and the untracked ones it does not ignore (so not ``.venv``,
``runs/``, ``cache/``, ``data/``); with ``PYTHONPATH`` set to it, ``import lare`` finds the copy's
package, whose paths (run folders, figures, caches) then resolve inside the copy.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "runs", "cache", "data", "__pycache__", ".pytest_cache", ".ruff_cache"}


def repository_copy(dest: Path) -> Path:
    """Copy the repository's files to ``dest`` (created) and return it."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but the usual outputs
        listed = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if p.is_file() and not SKIP & set(p.relative_to(ROOT).parts)]
    dest.mkdir(parents=True, exist_ok=True)
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest

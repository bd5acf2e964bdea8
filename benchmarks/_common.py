"""Helpers shared by the benchmark scripts (timing, machine description, synthetic JPEGs)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benchmarks never download anything

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Wall seconds of one call of ``fn`` (synchronising the GPU before and after)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def work_folder(given: str, prefix: str) -> tuple[Path, object | None]:
    """``given`` as a folder, or a fresh temporary one; the second value (if any) has ``cleanup()``."""
    if given:
        return Path(given), None
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    return Path(tmp.name), tmp


def best_and_median(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def machine_line(device: torch.device | str = "cpu") -> str:
    """One line naming the machine: CPU count, torch threads, and the GPU if one is used."""
    dev = torch.device(device)
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"{os.cpu_count()} CPU cores", f"torch threads {torch.get_num_threads()}"]
    try:
        with open("/proc/loadavg") as f:
            parts.append("load avg " + " ".join(f.read().split()[:3]))
    except OSError:
        pass
    if dev.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(dev)}")
    return ", ".join(parts)


def header(title: str, device: torch.device | str = "cpu") -> None:
    print(f"=== {title} ===")
    print(f"machine: {machine_line(device)}")


# ---------------------------------------------------------------- synthetic JPEG files
# CUB-200-2011 images are mostly 500 pixels wide with heights around 333 to 500.
JPEG_SIZES = ((500, 375), (500, 333), (500, 400), (375, 500), (500, 500))


def _make_one_jpeg(args: tuple[str, int]) -> str:
    import numpy as np
    from PIL import Image, ImageFilter

    path, seed = args
    rng = np.random.default_rng(seed)
    w, h = JPEG_SIZES[seed % len(JPEG_SIZES)] if seed % 4 == 3 else (500, 375)
    # Smooth colour fields (upsampled coarse noise) with a little fine texture: JPEG-compresses
    # like a photograph, not like white noise (which would be far larger and slower to decode).
    coarse = rng.integers(0, 256, size=(h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 6, size=(h, w, 3)).astype(np.int16)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def make_jpegs(folder: str | Path, n: int, *, processes: int | None = None) -> list[Path]:
    """``n`` JPEG files (quality 90, about 500x375) under ``folder``; existing files are kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i:06d}.jpg" for i in range(n)]
    todo = [(str(p), i) for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        procs = processes or min(len(todo) // 64 + 1, os.cpu_count() or 1)
        if procs > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(procs) as pool:
                pool.map(_make_one_jpeg, todo, chunksize=32)
        else:
            for t in todo:
                _make_one_jpeg(t)
    return paths

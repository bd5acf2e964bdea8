"""Extraction benchmark: the full pipeline against the model's own forward pass, and peak memory.

Measured in one run, on the same loaded model, batch size and precision:

(a) forward: ``Encoder.encode_image_batch`` on pre-made, already preprocessed tensors (the same
    batches the pipeline forms: ``ceil(N / batch)`` batches, the last one partial);
(b) pipeline: ``lare.data.cache.extract_embeddings`` on N JPEG files on disk (decoded and resized in
    DataLoader workers, chunks written to a fresh cache folder each time, final entry assembled
    and checksummed), for each worker count asked for;
    ratio = pipeline images/s / forward images/s (target >= 0.9).
    Rounds alternate (a) and (b) so that load from other processes hits both alike; each figure
    is the best of the rounds (the median is printed beside it).
(c) memory: extraction of 256 and of 2,048 images, each in a fresh subprocess; the peak of the
    process tree (main process + DataLoader workers) sampled every 0.1 s with psutil (PSS, which
    counts pages shared by forked workers once) and the kernel's peak RSS of the main process
    (``ru_maxrss``). Ratio = peak(2,048) / peak(256) (target within 10%: <= 1.10).

    python benchmarks/bench_extraction.py                      # defaults: ViT-B-32, fp32, CPU
    python benchmarks/bench_extraction.py --precision bf16 --workers 1,2,3
    python benchmarks/bench_extraction.py --device cuda --model coca_ViT-L-14 --precision bf16 \
        --batch-size 128 --images 4096 --workers 8,12 --skip-memory
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benchmarks never download anything

import torch  # noqa: E402
from _common import header, make_jpegs, timed, work_folder  # noqa: E402

from lare.core.encoders import load_encoder  # noqa: E402
from lare.data.datasets import Item, open_image  # noqa: E402
from lare.data.extraction import extract_embeddings  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="JPEG files for the throughput test (default 256)")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model name (random weights)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk-size", type=int, default=1024, help="cache chunk size (extract_embeddings default)")
    ap.add_argument("--workers", default="1,2", help="comma-separated DataLoader worker counts to try (default 1,2)")
    ap.add_argument("--repeats", type=int, default=4, help="rounds of (forward, pipeline per worker count)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--image-dir", default="", help="where to write / reuse the JPEGs (default: a temp folder)")
    ap.add_argument("--skip-memory", action="store_true", help="skip the peak-memory test (c)")
    ap.add_argument("--memory-images", default="256,2048", help="image counts of the memory test (default 256,2048)")
    ap.add_argument("--memory-model", default="", help="model of the memory test (default: --model)")
    ap.add_argument("--memory-precision", default="bf16",
                    help="precision of the memory test (default bf16: faster on this CPU; does not change what is held)")
    ap.add_argument("--memory-workers", type=int, default=-1,
                    help="workers of the memory test (default: the best worker count of the throughput test)")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def items_of(paths) -> list[Item]:
    return [Item(id=f"img/{p.name}", path=str(p), label=i % 200) for i, p in enumerate(paths)]


# ---------------------------------------------------------------- (c) memory, in a child process
def memory_child(args) -> None:
    """Extract ``--images`` files once and print the peak memory as JSON (run as a subprocess)."""
    import resource

    import psutil

    if args.threads:
        torch.set_num_threads(args.threads)
    me = psutil.Process()
    peak = {"pss": 0, "rss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            pss = rss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                    pss, rss = pss + info.pss, rss + info.rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
            stop.wait(0.1)

    paths = sorted(Path(args.image_dir).glob("img_*.jpg"))[: args.images]
    enc = load_encoder(args.model, "none", device=args.device, precision=args.precision)
    items = items_of(paths)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    base = me.memory_full_info().pss
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        extract_embeddings(enc, items, cache_dir=cache, dataset="bench", split="mem", label_names=["x"] * 200,
                           batch_size=args.batch_size, chunk_size=args.chunk_size, num_workers=args.workers_one,
                           progress=False)
        wall = time.perf_counter() - t
    stop.set()
    thread.join()
    print(json.dumps({"images": len(items), "seconds": wall, "peak_tree_pss": peak["pss"], "peak_tree_rss": peak["rss"],
                      "pss_after_model_load": base,
                      "main_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "children_maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))


def run_memory(args, image_dir: Path, workers: int) -> dict[int, dict]:
    out = {}
    counts = [int(c) for c in args.memory_images.split(",")]
    for n in counts:
        cmd = [sys.executable, __file__, "--memory-child", "--image-dir", str(image_dir), "--images", str(n),
               "--model", args.memory_model or args.model, "--precision", args.memory_precision,
               "--batch-size", str(args.batch_size), "--chunk-size", str(args.chunk_size), "--workers", str(workers),
               "--device", args.device, "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"memory child for {n} images failed:\n{res.stderr[-3000:]}")
        out[n] = json.loads(res.stdout.strip().splitlines()[-1])
        r = out[n]
        print(f"  memory {n:5d} images: {r['seconds']:.1f} s, peak tree PSS {r['peak_tree_pss'] / 2**20:.0f} MiB "
              f"(after model load {r['pss_after_model_load'] / 2**20:.0f} MiB), peak tree RSS {r['peak_tree_rss'] / 2**20:.0f} MiB, "
              f"main ru_maxrss {r['main_maxrss'] / 2**20:.0f} MiB, largest child ru_maxrss {r['children_maxrss'] / 2**20:.0f} MiB",
              flush=True)
    return out


# ---------------------------------------------------------------- (a) and (b)
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        args.workers_one = int(args.workers)
        memory_child(args)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    workers = [int(w) for w in args.workers.split(",")]
    mem_counts = [] if args.skip_memory else [int(c) for c in args.memory_images.split(",")]
    header(f"extraction: {args.model}, random weights, {args.precision}, batch {args.batch_size}, {args.images} JPEGs", device)

    image_dir, tmp = work_folder(args.image_dir, "lare-bench-jpegs-")
    n_files = max([args.images, *mem_counts])
    t = time.perf_counter()
    paths = make_jpegs(image_dir, n_files)
    sizes = [p.stat().st_size for p in paths[: args.images]]
    print(f"JPEGs: {n_files} files in {image_dir} (mean {sum(sizes) / len(sizes) / 1024:.0f} KiB, quality 90, "
          f"mostly 500x375), made in {time.perf_counter() - t:.1f} s", flush=True)
    items = items_of(paths[: args.images])

    t = time.perf_counter()
    enc = load_encoder(args.model, "none", device=device, precision=args.precision)
    print(f"model loaded in {time.perf_counter() - t:.1f} s; preprocessing: {enc.preprocess!r}".replace("\n", " "), flush=True)

    # Pre-made tensors: the real preprocessed images, batched as the pipeline batches them.
    n, bs = len(items), args.batch_size
    first = torch.stack([enc.preprocess(open_image(it)) for it in items[:bs]])
    batches = [first[: min(bs, n - s)].clone() for s in range(0, n, bs)]
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
    print(f"pre-made tensors: {len(batches)} batches of {tuple(first.shape[1:])} ({math.ceil(n / bs)} per pass)", flush=True)

    def forward_pass():
        for b in batches:
            enc.encode_image_batch(b)

    def pipeline_pass(w: int, tag: str):
        with tempfile.TemporaryDirectory(prefix="lare-bench-cache-") as cache:
            emb = extract_embeddings(enc, items, cache_dir=cache, dataset="bench", split=tag, label_names=["x"] * 200,
                                     batch_size=bs, chunk_size=args.chunk_size, num_workers=w, progress=False)
            assert emb.embeddings.shape[0] == n

    # Warm-up: the first batches pay for allocator growth and kernel selection; read the files once.
    t = time.perf_counter()
    enc.encode_image_batch(batches[0])
    enc.encode_image_batch(batches[0])
    for p in paths[: args.images]:
        p.read_bytes()
    print(f"warm-up {time.perf_counter() - t:.1f} s", flush=True)

    fwd: list[float] = []
    pipe: dict[int, list[float]] = {w: [] for w in workers}
    for r in range(args.repeats):
        fwd.append(n / timed(forward_pass, device))
        line = f"round {r + 1}/{args.repeats}: forward {fwd[-1]:.2f} img/s"
        for w in workers:
            pipe[w].append(n / timed(lambda w=w, r=r: pipeline_pass(w, f"r{r}w{w}"), device))
            line += f", pipeline({w} workers) {pipe[w][-1]:.2f} img/s (x{pipe[w][-1] / fwd[-1]:.2f})"
        print(line, flush=True)

    f_best, f_med = max(fwd), statistics.median(fwd)  # throughput: the best round is the fastest
    results = {}
    for w in workers:
        p_best, p_med = max(pipe[w]), statistics.median(pipe[w])
        per_round = sorted(p / f for p, f in zip(pipe[w], fwd, strict=True))
        results[w] = (p_best, p_med, p_best / f_best, per_round[len(per_round) // 2])
    best_w = max(workers, key=lambda w: results[w][2])

    mem = {}
    if mem_counts:
        mw = args.memory_workers if args.memory_workers >= 0 else best_w
        print(f"memory test: {args.memory_model or args.model}, {args.memory_precision}, {mw} workers, "
              f"batch {bs}, chunk {args.chunk_size}, one subprocess per size", flush=True)
        mem = run_memory(args, image_dir, mw)

    print()
    print("--- summary: extraction ---")
    print(f"model {args.model} (random weights), {args.precision}, batch {bs}, device {device}, {n} JPEGs, "
          f"best of {args.repeats} rounds (median in brackets)")
    print(f"(a) forward on pre-made tensors: {f_best:.2f} img/s ({f_med:.2f})")
    for w in workers:
        p_best, p_med, ratio, ratio_med = results[w]
        ok = "meets" if ratio >= 0.9 else "MISSES"
        print(f"(b) pipeline, {w} worker(s):        {p_best:.2f} img/s ({p_med:.2f})  "
              f"ratio pipeline/forward = {ratio:.3f} (median of per-round ratios {ratio_med:.3f})  [{ok} target >= 0.9]")
    print(f"    best worker count: {best_w}")
    if len(mem) >= 2:
        lo, hi = min(mem), max(mem)
        for key, name in (("peak_tree_pss", "peak PSS, process tree"), ("main_maxrss", "peak RSS, main process")):
            ratio = mem[hi][key] / mem[lo][key]
            ok = "meets" if ratio <= 1.10 else "MISSES"
            print(f"(c) {name}: {lo} images {mem[lo][key] / 2**20:.0f} MiB, {hi} images {mem[hi][key] / 2**20:.0f} MiB, "
                  f"ratio {ratio:.3f}  [{ok} target <= 1.10]")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cost of the equal-budget search: N batched probe trials against one, and the demo profile with
the search (``protocol: tuned``) against without (``protocol: fixed``), printed in one run.

    python benchmarks/bench_search.py                      # both figures (the demo part: several minutes)
    python benchmarks/bench_search.py --skip-demo          # only the probe trials
    python benchmarks/bench_search.py --n 4795 --dim 768 --classes 200   # CUB-sized probe trials

Targets (issue "fair comparison"): 16 batched probe trials at most 3x the time of one; the demo
with search at most 2x the demo without. The probe part trains every trial for a fixed number of
epochs (patience larger than the budget), so both sides do the same number of steps per trial, on
full batches by default as the tuned protocol's probe trials do (``--batch 256``: the fixed recipe's).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch
from _common import REPO, best_and_median, header, timed, work_folder

from lare.core.probe import ProbeConfig, train_probe_trials


def probe_trials(n: int, n_val: int, dim: int, classes: int, trials: int, epochs: int, batch: int,
                 device: torch.device) -> float:
    """Seconds of ``trials`` probe trials trained as one batched model (random data, fixed epochs)."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    y = torch.randint(0, classes, (n,), generator=g)
    vx = torch.nn.functional.normalize(torch.randn(n_val, dim, generator=g), dim=-1)
    vy = torch.randint(0, classes, (n_val,), generator=g)
    configs = [ProbeConfig(lr=float(lr), weight_decay=1e-4, seed=0, epochs=epochs, patience=epochs + 1, batch_size=batch,
                           min_steps=0) for lr in torch.logspace(-3, -1, trials, dtype=torch.float64)]
    return timed(lambda: train_probe_trials(x, y, classes, configs, val_x=vx, val_y=vy, device=device), device)


def demo_seconds(root, protocol: str) -> float:
    """Wall seconds of ``./run_all.sh --profile demo -p protocol PROTOCOL`` into its own folders."""
    env = {**os.environ, "LARE_NO_SETUP": "1", "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    cmd = ["bash", str(REPO / "run_all.sh"), "--profile", "demo", "-p", "protocol", protocol, "-p", "run_dir",
           str(root / protocol / "run"), "-p", "cache_dir", str(root / protocol / "cache"), "-p", "figures_root",
           str(root / protocol / "figures"), "-p", "progress", "false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the demo ({protocol}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=960, help="training embeddings (default: the demo's 960)")
    ap.add_argument("--val", type=int, default=240)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--classes", type=int, default=40)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch", type=int, default=0, help="0 (default): full batches, as the tuned probe trains; 256: the fixed recipe's")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-demo", action="store_true", help="only the probe trials")
    ap.add_argument("--work-dir", default="", help="keep the demo runs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    header(f"search cost: {args.trials} batched probe trials vs 1 ({args.n} x {args.dim}, {args.classes} classes, "
           f"{args.epochs} epochs, batch {args.batch})", device)
    probe_trials(args.n, args.val, args.dim, args.classes, 2, 1, args.batch, device)  # warm-up
    one = [probe_trials(args.n, args.val, args.dim, args.classes, 1, args.epochs, args.batch, device) for _ in range(args.repeats)]
    many = [probe_trials(args.n, args.val, args.dim, args.classes, args.trials, args.epochs, args.batch, device)
            for _ in range(args.repeats)]
    (b1, m1), (bn, mn) = best_and_median(one), best_and_median(many)
    print(f"1 trial: best {b1:.3f} s, median {m1:.3f} s; {args.trials} batched trials: best {bn:.3f} s, median {mn:.3f} s")
    print(f"ratio {args.trials} batched trials / 1 trial: {bn / b1:.2f} (best), {mn / m1:.2f} (median); target <= 3")
    if not args.skip_demo:
        root, tmp = work_folder(args.work_dir, "lare-bench-search-")
        fixed = demo_seconds(root, "fixed")
        tuned = demo_seconds(root, "tuned")
        print(f"demo profile: protocol fixed {fixed:.1f} s, protocol tuned (search) {tuned:.1f} s")
        print(f"ratio demo with search / without: {tuned / fixed:.2f}; target <= 2")
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

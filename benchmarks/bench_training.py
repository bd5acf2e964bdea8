"""Training benchmark: f_Box and the linear probe on cached embeddings.

For each precision (``--precisions``, default fp32 and bf16) and batch size (256, 1024, 4096 and
the full training set) it measures, in one run:

- epoch time of the library (``lare.core.box.train_box`` / ``lare.core.probe.train_probe``, tensors on the
  device, index-slice batches, f_Box's fused loss node, fused AdamW, no validation split so that
  only training is timed);
- achieved FLOP/s = the matrix-multiply FLOPs the library performs per epoch (counted
  analytically below) / its epoch time, divided by the FLOP/s of plain ``torch.matmul`` calls of
  exactly those shapes in the same precision, timed on the same machine in the same run
  (target >= 0.5);
- the speed-up per epoch over a straightforward reference loop: ``DataLoader(TensorDataset(x, y),
  batch_size=256, shuffle=True)``, the same model, AdamW, float32 and the literal loss
  (``lare.core.losses.lare_loss_terms`` on ``BoxNet``'s corners), ``loss.item()`` per batch (as LADS
  does it) (target >= 3x), printed beside its ceiling: the reference's epoch time divided by the
  plain-matmul time of the library's epoch (what a loop with zero overhead would reach);
- convergence: final training loss and validation figures after the same number of epochs
  (``--epochs``, default 50, the paper profile's setting) for each precision and batch size and
  for the reference, so a reader can judge whether a large batch or bf16 "converges as well".

Timing: rounds interleave every configuration (reference, library at each precision and batch
size, plain matmul of each one's shapes), so load from other processes hits them alike; each
timed run lasts at least ``--min-run`` seconds; the best round is reported with the median beside it.
The data are synthetic unit vectors with class structure (``lare.data.synthetic``, noise 1.0 so the
probe does not reach 100%).

Matmul FLOPs per step with batch b (2*m*k*n per (m, k) x (k, n) product), x has no gradient:
  f_Box (Linear(d, h) -> ReLU -> Linear(h, 2d), class text T (C, d) fixed):
    forward  b*d*h, b*h*2d, 2 x b*d*C (logits of the upper and lower corners; the library takes the
             centre's logits as their mean, the reference computes a third product)
    backward h*b*d (dW1; no grad for x), 2d*b*h (dW2), b*2d*h (grad of the hidden layer),
             2 x b*C*d (grad of the corners; none for T; the reference: 3)
  probe (Linear(d, C)): forward b*d*C, backward C*b*d (dW; no grad for x).

    python benchmarks/bench_training.py                       # CPU, defaults
    python benchmarks/bench_training.py --epochs 20 --repeats 2 --precisions bf16
    python benchmarks/bench_training.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benchmarks never download anything

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import best_and_median, header, sync, timed  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lare.core.box import BoxConfig, BoxNet, train_box  # noqa: E402
from lare.core.losses import lare_loss_terms  # noqa: E402
from lare.core.probe import ProbeConfig, metrics, train_probe  # noqa: E402
from lare.core.train import seeded_init  # noqa: E402
from lare.data.synthetic import SyntheticSpec, make_synthetic  # noqa: E402

BOX = BoxConfig()  # the paper profile's f_Box settings (alpha 0.5, dot_normalized, minmax, scale 100, lr 1e-3)
PROBE = ProbeConfig(epochs=50, batch_size=256, lr=1e-3, weight_decay=0.05)  # the notebooks' probe settings


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6000, help="training embeddings (default 6000, CUB-sized)")
    ap.add_argument("--val", type=int, default=1200, help="held-out embeddings for the convergence figures")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--batch-sizes", default="256,1024,4096,0", help="comma-separated; 0 = full batch")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated training precisions of the library")
    ap.add_argument("--timing-epochs", type=int, default=3,
                    help="least epochs per timed run (epoch time = run time / epochs; more for fast configurations)")
    ap.add_argument("--min-run", type=float, default=1.0, help="least seconds per timed run (sets the epochs of fast ones)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each times every configuration once (best is reported)")
    ap.add_argument("--noise", type=float, default=1.0,
                    help="synthetic noise (1.0: a linear probe reaches about 85%% validation accuracy, not 100%%)")
    ap.add_argument("--epochs", type=int, default=50, help="epochs of the convergence runs (0: skip them)")
    ap.add_argument("--models", default="box,probe", help="which of box,probe to benchmark")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    return ap.parse_args(argv)


# ---------------------------------------------------------------- FLOP counting
def step_shapes(kind: str, b: int, d: int, c: int, h: int, logits: int = 2) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one training step of batch ``b``; ``logits``: how many
    corner-logit products f_Box computes (2 in the library, 3 in the literal reference)."""
    if kind == "box":
        return [(b, d, h), (b, h, 2 * d), *[(b, d, c)] * logits,          # forward
                (h, b, d), (2 * d, b, h), (b, 2 * d, h), *[(b, c, d)] * logits]  # backward
    return [(b, d, c), (c, b, d)]


def epoch_steps(n: int, batch_size: int) -> list[int]:
    """Batch sizes of one epoch as lare.core.train.batches splits it (the last one partial)."""
    step = n if not batch_size or batch_size >= n else batch_size
    return [min(step, n - s) for s in range(0, n, step)]


def flops_of(shapes) -> int:
    return sum(2 * m * k * n for m, k, n in shapes)


def matmul_plan(kind: str, steps: list[int], d: int, c: int, h: int, device, dtype=torch.float32) -> list[tuple]:
    """Pre-made operands of every product of one epoch (one set per distinct shape)."""
    ops = {}
    for b in set(steps):
        for m, k, n in step_shapes(kind, b, d, c, h):
            if (m, k, n) not in ops:
                ops[(m, k, n)] = (torch.randn(m, k, device=device, dtype=dtype),
                                  torch.randn(k, n, device=device, dtype=dtype),
                                  torch.empty(m, n, device=device, dtype=dtype))
    return [ops[s] for b in steps for s in step_shapes(kind, b, d, c, h)]


def run_plan(plan) -> None:
    """Plain torch.matmul over the products of one epoch."""
    for a, bm, out in plan:
        torch.matmul(a, bm, out=out)


# ---------------------------------------------------------------- the reference loop
def reference_epochs(kind: str, x, y, t, epochs: int, device, seed: int = 0) -> tuple[float, torch.nn.Module, float]:
    """The straightforward loop: DataLoader over a TensorDataset (CPU tensors, moved per batch),
    batch 256, shuffle, AdamW, loss.item() per batch. Returns (seconds, model, last epoch mean loss)."""
    torch.manual_seed(seed)
    if kind == "box":
        model = seeded_init(lambda: BoxNet(x.shape[1], BOX.hidden, BOX.activation, BOX.corners), seed).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=BOX.lr, weight_decay=BOX.weight_decay)
    else:
        model = seeded_init(lambda: torch.nn.Linear(x.shape[1], t.shape[0]), seed).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=PROBE.lr, weight_decay=PROBE.weight_decay)
    tt = t.to(device)
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=256, shuffle=True)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        running, count = 0.0, 0
        for bx, by in loader:
            bx, by = bx.to(device), by.to(device)
            if kind == "box":
                lower, upper = model(bx)
                loss = lare_loss_terms(lower, upper, tt, by, alpha=BOX.alpha, scale=BOX.scale,
                                       reduction=BOX.reduction, volume=BOX.volume)["total"]
            else:
                loss = F.cross_entropy(model(bx), by)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item() * len(by)
            count += len(by)
    sync(device)
    return time.perf_counter() - t0, model, running / count


# ---------------------------------------------------------------- library runs
def library_run(kind: str, x, y, t, batch_size: int, epochs: int, device, precision: str = "fp32"):
    """(model, last epoch's mean training loss) of the library's trainer, no validation split."""
    if kind == "box":
        cfg = BoxConfig(**{**BOX.to_dict(), "epochs": epochs, "batch_size": batch_size, "precision": precision})
        res = train_box(x, y, t, cfg, device=device, progress=False)
        return res.model, res.history[-1]["train_total"]
    cfg = ProbeConfig(**{**PROBE.to_dict(), "epochs": epochs, "batch_size": batch_size, "precision": precision})
    res = train_probe(x, y, t.shape[0], cfg, device=device, progress=False)
    return res.model, res.history[-1]["train_loss"]


@torch.no_grad()
def validation(kind: str, model, vx, vy, t, device) -> str:
    model.eval()
    vx, vy, t = vx.to(device), vy.to(device), t.to(device)
    if kind == "box":
        lower, upper = model(vx)
        terms = lare_loss_terms(lower, upper, t, vy, alpha=BOX.alpha, scale=BOX.scale, reduction=BOX.reduction,
                                volume=BOX.volume)
        centre_acc = metrics(((lower + upper) / 2 @ t.T).argmax(-1), vy, t.shape[0])["top1"]
        return f"val loss {terms['total'].item():.4f}, val box-centre top-1 {centre_acc:.1f}%"
    m = metrics(model(vx).argmax(-1), vy, t.shape[0])
    return f"val top-1 {m['top1']:.1f}%, val balanced {m['balanced_acc']:.1f}%"


def bench(kind: str, data, args, device, summary: list[str]) -> None:
    x, y, vx, vy, t = data
    n, d, c = x.shape[0], x.shape[1], t.shape[0]
    h = d
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    configs = [(p, s) for p in precisions for s in sizes]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    name = "f_Box" if kind == "box" else "linear probe"
    print(f"\n--- {name}: n={n}, d={d}, C={c}" + (f", hidden {h}" if kind == "box" else "") + " ---", flush=True)

    def label(cfg):
        p, s = cfg
        return f"{p} " + (f"batch {s}" if s else f"full batch ({n})")

    # Warm-up, and one epoch of each to size the timed runs: a run lasts at least --min-run seconds
    # (short runs drown in scheduler noise when other processes share the cores).
    for p in precisions:
        library_run(kind, x[:1024], y[:1024], t, 256, 1, device, p)
    reference_epochs(kind, x[:1024], y[:1024], t, 1, device)
    est_ref = reference_epochs(kind, x, y, t, 1, device)[0]
    e_ref = int(min(50, max(args.timing_epochs, -(-args.min_run // est_ref))))
    e_lib, plans = {}, {}
    for cfg in configs:
        p, s = cfg
        est = timed(lambda p=p, s=s: library_run(kind, x, y, t, s, 1, device, p), device)
        e_lib[cfg] = int(min(50, max(args.timing_epochs, -(-args.min_run // est))))
        plan = matmul_plan(kind, epoch_steps(n, s), d, c, h, device, dtypes[p])
        est_mm = timed(lambda plan=plan: run_plan(plan), device)
        plans[cfg] = (plan, int(max(1, -(-args.min_run // est_mm))))
    print(f"timed runs: reference {e_ref} epochs; library " + ", ".join(f"{label(k)} {e_lib[k]} epochs" for k in configs)
          + "; plain matmul " + ", ".join(f"{plans[k][1]} epoch(s)" for k in configs), flush=True)

    lib_times = {k: [] for k in configs}
    mm_times = {k: [] for k in configs}
    ref_times = []
    for r in range(args.repeats):
        line = f"round {r + 1}/{args.repeats} (s/epoch):"
        ref_times.append(reference_epochs(kind, x, y, t, e_ref, device)[0] / e_ref)
        line += f" reference {ref_times[-1]:.4f}"
        for k in configs:
            p, s = k
            e = e_lib[k]
            lib_times[k].append(timed(lambda p=p, s=s, e=e: library_run(kind, x, y, t, s, e, device, p), device) / e)
            plan, reps = plans[k]
            mm_times[k].append(timed(lambda plan=plan, reps=reps: [run_plan(plan) for _ in range(reps)], device) / reps)
            line += f", {label(k)} {lib_times[k][-1]:.4f} (matmul {mm_times[k][-1]:.4f})"
        print(line, flush=True)
    ref_best, ref_med = best_and_median(ref_times)
    print(f"reference loop (DataLoader, batch 256, fp32): {ref_best:.4f} s/epoch (median {ref_med:.4f})")

    for k in configs:
        steps = epoch_steps(n, k[1])
        flops = sum(flops_of(step_shapes(kind, b, d, c, h)) for b in steps)
        mm = min(mm_times[k])
        best, med = best_and_median(lib_times[k])
        ratio = mm / best
        speedup = ref_best / best
        line = (f"{name:12s} {label(k):23s}: {best:.4f} s/epoch (median {med:.4f}), {len(steps)} steps, "
                f"{flops / 1e9:.1f} GFLOP/epoch -> {flops / best / 1e9:.1f} GFLOP/s; plain {k[0]} matmul of the same shapes "
                f"{flops / mm / 1e9:.1f} GFLOP/s; ratio {ratio:.2f} [{'meets' if ratio >= 0.5 else 'MISSES'} >= 0.5]; "
                f"speed-up over reference {speedup:.2f}x [{'meets' if speedup >= 3 else 'MISSES'} >= 3x] "
                f"(ceiling: reference / plain matmul time = {ref_best / mm:.2f}x)")
        print(line, flush=True)
        summary.append(line)
    ref_flops = sum(flops_of(step_shapes(kind, b, d, c, h, logits=3)) for b in epoch_steps(n, 256))
    summary.append(f"{name:12s} reference loop          : {ref_best:.4f} s/epoch (median {ref_med:.4f}), DataLoader batch 256, "
                   f"fp32, {ref_flops / ref_best / 1e9:.1f} GFLOP/s")

    if args.epochs:
        print(f"convergence after {args.epochs} epochs (seed 0, same data; no validation-based selection):", flush=True)
        secs, model, loss = reference_epochs(kind, x, y, t, args.epochs, device)
        line = (f"{name:12s} reference fp32 batch 256 : train loss {loss:.4f}, {validation(kind, model, vx, vy, t, device)}, "
                f"{secs / args.epochs:.3f} s/epoch")
        print(line, flush=True)
        summary.append(line)
        for k in configs:
            t0 = time.perf_counter()
            model, loss = library_run(kind, x, y, t, k[1], args.epochs, device, k[0])
            secs = time.perf_counter() - t0
            line = (f"{name:12s} lare {label(k):20s}: train loss {loss:.4f}, {validation(kind, model, vx, vy, t, device)}, "
                    f"{secs / args.epochs:.3f} s/epoch")
            print(line, flush=True)
            summary.append(line)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    header("training on cached embeddings: f_Box and linear probe", device)
    per_class = -(-args.n // args.classes)
    spec = SyntheticSpec(num_classes=args.classes, dim=args.dim, n_train_per_class=per_class,
                         n_test_per_class=-(-args.val // args.classes), n_ood_per_class=1, noise=args.noise)
    data = make_synthetic(spec, seed=0)
    g = torch.Generator().manual_seed(0)
    tr = torch.randperm(len(data["train_y"]), generator=g)[: args.n]
    va = torch.randperm(len(data["test_y"]), generator=g)[: args.val]
    tensors = (data["train_x"][tr], data["train_y"][tr], data["test_x"][va], data["test_y"][va], data["class_text"])
    print(f"data: synthetic unit vectors with class structure (lare.data.synthetic), train {args.n}, val {args.val}, "
          f"d {args.dim}, {args.classes} classes, noise {args.noise}; timing: best of {args.repeats} interleaved rounds, "
          f"each run >= {args.timing_epochs} epochs and >= {args.min_run} s (run time / epochs, set-up included)")
    summary: list[str] = []
    for kind in args.models.split(","):
        bench(kind.strip(), tensors, args, device, summary)
    print("\n--- summary: training ---")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

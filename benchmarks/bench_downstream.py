"""Downstream benchmark: the whole `paper` profile after extraction, on synthetic caches of the real sizes.

Table 1 (CUB-200-2011 -> CUB-200-Paintings): train 5,994 / test 5,794 / paintings 3,047, 200 classes,
two encoders (clip, coca); zero-shot, linear probe, LADS (clip and coca) and LARE (coca and clip),
full training set, validation fraction 0.2.
Figure 3 (CIFAR-100): train 50,000 / test 10,000, 100 classes, encoder coca; zero-shot, linear probe
and LARE at 1, 2, 4, 8, 16 shots per class and the full set, validation fraction 0.1.
Every method runs once per seed (5 seeds: 0-4), as notebooks 02-04 do; embedding dimension 768.

The caches are written in the cache format (``lare.data.cache.save_embeddings`` + the embedding index)
from ``lare.data.synthetic.make_synthetic`` (unit vectors with class structure and a domain shift), then
read back with ``lare.pipeline.runfolder.load_encoder_data`` and split per (shots, seed) with
``lare.pipeline.runfolder.encoder_splits``; the methods are the functions of ``lare.compare.methods`` with the
profile's settings: the notebooks' parameters cell updated by ``params/<profile>/<dataset>.yaml``
(``lare.pipeline.params.load_params``, as the notebooks load them), read at run time.
Printed: total wall time, a breakdown per dataset and method (f_Box training and the LARE probe
separately), and mean accuracies as a sanity check (synthetic data: they mean nothing about
real images). Target: the whole profile within 15 minutes on 2 CPU cores.

    python benchmarks/bench_downstream.py            # 5 seeds, both datasets
    python benchmarks/bench_downstream.py --quick    # first seed only (the time of all seeds is extrapolated)
    python benchmarks/bench_downstream.py --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benchmarks never download anything

import torch  # noqa: E402
from _common import header, sync, work_folder  # noqa: E402

from lare.compare.methods import run_lads, run_lare, run_linear_probe, run_zero_shot  # noqa: E402
from lare.compare.registry import REGISTRY  # noqa: E402
from lare.core.box import train_box  # noqa: E402
from lare.data.cache import save_embeddings  # noqa: E402
from lare.data.synthetic import SyntheticSpec, make_synthetic  # noqa: E402
from lare.pipeline.params import RunParams, load_params  # noqa: E402
from lare.pipeline.runfolder import encoder_splits, load_encoder_data, write_index  # noqa: E402

# Sizes of the real caches; the synthetic noise stands for encoder quality (as in the demo profile).
SIZES = {
    "cub": {"sizes": {"train": 5994, "test": 5794, "ood": 3047}, "classes": 200, "noise": {"clip": 0.8, "coca": 0.6},
            "world_seed": 1234},
    "cifar100": {"sizes": {"train": 50000, "test": 10000}, "classes": 100, "noise": {"coca": 0.6}, "world_seed": 4321},
}


def profile_settings(profile: str, dataset: str, precision: str = "") -> RunParams:
    """What notebooks 02-04 would use: the schema's defaults updated by params/<profile>/<dataset>.yaml;
    ``precision`` (when given) replaces the training precision of f_Box, the probes and LADS."""
    over = {k: {"precision": precision} for k in ("box", "probe", "lads")} if precision else {}
    return load_params(profile, dataset, over)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper", help="params/<profile>/<dataset>.yaml gives the settings (default paper)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds (default: the profile's, paper: 0-4)")
    ap.add_argument("--precision", default="", choices=["", "fp32", "bf16"],
                    help="training precision of f_Box, the probes and LADS (default: the profile's, fp32)")
    ap.add_argument("--quick", action="store_true", help="the first seed only; the time of all seeds is extrapolated")
    ap.add_argument("--datasets", default="cub,cifar100")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2; 0 leaves torch's default)")
    ap.add_argument("--work-dir", default="", help="where to write the synthetic caches (default: a temp folder)")
    return ap.parse_args(argv)


def write_caches(root: Path, dataset: str, spec: dict, encoders: list[str], dim: int) -> None:
    """Synthetic embeddings of the real split sizes, written as the pipeline's caches and index."""
    sizes, c = spec["sizes"], spec["classes"]
    with_domains = "ood" in sizes
    per = {k: -(-n // c) for k, n in sizes.items()}
    for enc in encoders:
        noise = spec["noise"].get(enc, 0.7)
        sp = SyntheticSpec(num_classes=c, dim=dim, n_train_per_class=per["train"], n_test_per_class=per["test"],
                           n_ood_per_class=per.get("ood", 1), noise=noise)
        data = make_synthetic(sp, seed=int(round(noise * 1000)), world_seed=spec["world_seed"])
        g = torch.Generator().manual_seed(spec["world_seed"])
        paths = {}
        for split, n in sizes.items():
            x, y = data[f"{split}_x"], data[f"{split}_y"]
            keep = torch.randperm(len(y), generator=g)[:n].sort().values  # the real size, every class kept
            ids = [f"{split}/{i:06d}" for i in keep.tolist()]
            manifest = {"format": 1, "model": f"synthetic-{enc}", "dataset": dataset, "split": split, "n_items": n}
            paths[split] = str(save_embeddings(root / "cache" / dataset / split / enc, manifest, x[keep], y[keep], ids).path)
        names = data["class_names"]

        def text(purpose, emb, names=names, enc=enc):
            m = {"format": 1, "model": f"synthetic-{enc}", "dataset": dataset, "split": f"text-{purpose}", "n_items": len(names)}
            return str(save_embeddings(root / "cache" / dataset / f"text-{purpose}" / enc, m, emb,
                                       torch.arange(len(names)), names).path)

        extra = {k: text(k, data[f"{k}_text"]) for k in ("photo", "painting")} if with_domains else {}
        write_index(root / "run", dataset, enc, splits=paths, class_text=text("class", data["class_text"]),
                    class_names=names, extra_text=extra, info={"source": "synthetic-benchmark", "noise": noise})


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    datasets = [d.strip() for d in args.datasets.split(",")]
    settings = {ds: profile_settings(args.profile, ds, args.precision) for ds in datasets}
    all_seeds = sorted({s for ds in datasets for s in settings[ds].seeds})
    if args.seeds:
        all_seeds = [int(s) for s in args.seeds.split(",")]
    seeds = all_seeds[:1] if args.quick else all_seeds
    n_profile_seeds = len(settings[datasets[0]].seeds)
    header(f"downstream of the {args.profile} profile from caches: seeds {seeds}, datasets {datasets}", device)
    for ds in datasets:
        st = settings[ds]
        print(f"{ds} (params/{args.profile}/{ds}.yaml over the schema's defaults): shots {st.shots}, "
              f"val_fraction {st.val_fraction}, baselines {st.encoders_for('baseline_encoders')}, "
              f"lads {st.encoders_for('lads_encoders')}, lare {st.encoders_for('lare_encoders')}\n  box {st.box}\n"
              f"  sampling {st.sampling}\n  probe {st.probe}\n  lads {st.lads}", flush=True)

    root, tmp = work_folder(args.work_dir, "lare-bench-downstream-")

    t0 = time.perf_counter()
    for ds in datasets:
        write_caches(root, ds, SIZES[ds], list(settings[ds].encoders), args.dim)
    print(f"synthetic caches written in {time.perf_counter() - t0:.1f} s (not part of the profile's downstream)", flush=True)

    times: dict[tuple[str, str], float] = defaultdict(float)
    units: dict[tuple[str, str], int] = defaultdict(int)
    acc: dict[tuple, list[float]] = defaultdict(list)

    def clock(ds, method, fn):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times[(ds, method)] += time.perf_counter() - t
        units[(ds, method)] += 1
        return out

    def record(ds, method, enc, k, metrics):
        for dom, m in metrics.items():
            if dom in ("in_domain", "out_of_domain"):  # not the validation split, not LARE's box sizes
                acc[(ds, method, enc, k, dom)].append(m["top1"])

    t_start = time.perf_counter()
    run_dir = root / "run"
    for ds in datasets:
        st = settings[ds]
        # The encoders the notebooks visit: baselines, LADS and LARE each over their own list.
        encoders = [e for e in st.encoders if any(e in st.encoders_for(m.encoders_param) for m in REGISTRY.values())]
        sections = {"box": st.box, "sampling": st.sampling, "probe": st.probe, "lads": st.lads, "reference": st.reference}
        for enc in encoders:
            data = clock(ds, "load caches", lambda ds=ds, enc=enc: load_encoder_data(run_dir, ds, enc))
            for k in st.shots:
                for seed in seeds:
                    t_unit = time.perf_counter()
                    s = clock(ds, "splits", lambda data=data, ds=ds, k=k, seed=seed, vf=st.val_fraction: encoder_splits(
                        data, run_dir, ds, shots=k, seed=seed, val_fraction=vf).to(device))
                    cfg = {name: REGISTRY[name].make_config(sections, seed) for name in ("linear-probe", "lads", "lare")}
                    if enc in st.encoders_for("baseline_encoders"):
                        record(ds, "zero-shot", enc, k, clock(ds, "zero-shot", lambda s=s: run_zero_shot(s)))
                        record(ds, "linear-probe", enc, k, clock(ds, "linear-probe", lambda s=s, c=cfg: run_linear_probe(
                            s, c["linear-probe"], device)))
                    if enc in st.encoders_for("lads_encoders") and REGISTRY["lads"].applies(s.extra_text, k):
                        record(ds, "lads", enc, k, clock(ds, "lads (f_aug + probe)", lambda s=s, c=cfg:
                                                         run_lads(s, c["lads"], device)))
                    if enc in st.encoders_for("lare_encoders"):
                        c = cfg["lare"]
                        boxes = clock(ds, "lare f_Box (step 1)", lambda s=s, c=c: train_box(
                            s.train_x, s.train_y, s.class_text, c.box, val_x=s.val_x, val_y=s.val_y, device=device,
                            progress=False))
                        record(ds, "lare", enc, k, clock(ds, "lare probe (step 2)", lambda s=s, c=c, bx=boxes:
                                                         run_lare(dataclasses.replace(s, boxes=bx), c, device)))
                    print(f"  {ds} {enc} shots {k or 'full'} seed {seed}: {time.perf_counter() - t_unit:.1f} s "
                          f"(train {len(s.train_y)}, val {len(s.val_y)})", flush=True)
    total = time.perf_counter() - t_start

    print("\n--- summary: downstream ---")
    print(f"profile {args.profile}, device {device}, torch threads {torch.get_num_threads()}, seeds {seeds}")
    print(f"{'dataset':9s} {'method':22s} {'runs':>5s} {'total s':>9s} {'s/run':>8s}")
    per_seed = 0.0
    for (ds, method), secs in sorted(times.items(), key=lambda kv: (datasets.index(kv[0][0]), -kv[1])):
        print(f"{ds:9s} {method:22s} {units[(ds, method)]:5d} {secs:9.1f} {secs / units[(ds, method)]:8.2f}")
        if method != "load caches":
            per_seed += secs / len(seeds)
    print(f"total wall time of the downstream: {total:.1f} s ({total / 60:.2f} min) for {len(seeds)} seed(s)")
    if len(seeds) != n_profile_seeds:
        est = total - per_seed * len(seeds) + n_profile_seeds * per_seed
        print(f"extrapolated to the profile's {n_profile_seeds} seeds: {est:.0f} s ({est / 60:.1f} min) "
              f"[{'meets' if est <= 900 else 'MISSES'} target <= 15 min]")
    else:
        print(f"[{'meets' if total <= 900 else 'MISSES'} target <= 15 min]")
    print("mean top-1 (%) over seeds (synthetic data; a sanity check only):")
    for (ds, method, enc, k, dom), vals in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or 99)):
        print(f"  {ds:9s} {method:13s} {enc:5s} shots {k or 'full':>4} {dom:14s} {sum(vals) / len(vals):6.2f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end run of every method on the built-in SYNTHETIC embeddings: ``python -m lare.demo``.

The notebooks' path in one process, without papermill: synthetic embeddings for two "encoders"
are written in the cache format (:func:`lare.ingest.write_synthetic`), read back and split per
seed (:func:`lare.runfolder.encoder_splits`, splits saved in the run folder); zero-shot, the linear
probe, LADS and LARE run on them, and a table of mean +- std top-1 accuracy in-domain (photo) and
out-of-domain (painting) is printed. Numbers on synthetic data say nothing about real images.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from .box import BoxConfig, SamplingConfig
from .ingest import write_synthetic
from .lads import LADSConfig
from .methods import LADSMethodConfig, LAREConfig, run_lads, run_lare, run_linear_probe, run_zero_shot
from .probe import ProbeConfig
from .runfolder import encoder_splits, load_encoder_data

ENCODERS = {"clip": 0.8, "coca": 0.6}  # synthetic encoder -> noise level (CoCa: the better encoder)
DATASET = "synthetic_demo"


def run(run_dir: Path, seeds: list[int], epochs: int = 50, val_fraction: float = 0.2,
        precision: str = "fp32", progress: bool = False) -> pd.DataFrame:
    """One row per (encoder, method, domain, seed) with the metrics of :func:`lare.probe.metrics`."""
    rows, t0 = [], time.time()
    for enc, noise in ENCODERS.items():
        write_synthetic(run_dir, run_dir / "cache", DATASET, enc, {}, noise=noise)
        data = load_encoder_data(run_dir, DATASET, enc)
        for seed in seeds:
            s = encoder_splits(data, run_dir, DATASET, shots=0, seed=seed, val_fraction=val_fraction)
            train = {"epochs": epochs, "seed": seed, "precision": precision}
            probe = ProbeConfig(**train)
            results = {"zero-shot": run_zero_shot(s),
                       "linear probe": run_linear_probe(s, probe),
                       "LADS": run_lads(s, LADSMethodConfig(LADSConfig(**train), probe)),
                       "LARE": run_lare(s, LAREConfig(BoxConfig(**train), SamplingConfig(), probe))}
            for method, by_domain in results.items():
                for domain, m in by_domain.items():
                    if "top1" not in m:  # LARE also reports its box sizes
                        continue
                    rows.append({"encoder": enc, "method": method, "domain": domain, "seed": seed, **m})
            if progress:
                print(f"  {enc} seed {seed} done ({time.time() - t0:.0f} s)", flush=True)
    return pd.DataFrame(rows)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=50, help="epochs of f_Box, LADS and the probes (default 50)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="training precision (default fp32)")
    ap.add_argument("--run-dir", default="", help="keep the embeddings and splits here (default: a temporary folder)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    with tempfile.TemporaryDirectory() as tmp:
        df = run(Path(args.run_dir or tmp), args.seeds, args.epochs, precision=args.precision, progress=True)
    table = df.groupby(["encoder", "method", "domain"])["top1"].agg(["mean", "std"]).round(2).unstack("domain")
    print("\nSYNTHETIC data: top-1 accuracy (%), mean and std over seeds", args.seeds)
    print(table.to_string())
    return df


if __name__ == "__main__":
    main()

"""Embedding extraction from the command line, on one process or sharded with ``torchrun``.

    python -m lare.pipeline.extract --profile paper --dataset cub [-p NAME VALUE]...
    torchrun --nproc_per_node 4 -m lare.pipeline.extract --profile paper --dataset cub

It does what notebook 01 does for ``source: images`` (same parameters, :func:`lare.pipeline.params.load_params`:
the defaults, the profile's params file, then the -p values; same cache entries and index), so the notebook then
finds the cache complete. Under torchrun each rank embeds its own chunks on its own device (NCCL
on GPUs, gloo on CPUs) and rank 0 assembles one cache entry per split; the embeddings equal a
single-process run.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import yaml

from lare.pipeline.ingest import extract
from lare.pipeline.params import ParameterError, load_params, overrides_from
from lare.pipeline.preflight import check


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lare.pipeline.extract", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--dataset", required=True, help="a params file name of the profile, e.g. cub")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    try:
        p = load_params(args.profile, args.dataset, overrides_from([("-p", k, v) for k, v in args.p]))
        problems = check(p)
    except ParameterError as err:
        problems = err.problems
    else:
        if p.source != "images":
            problems.append(f"lare.pipeline.extract embeds images; params/{args.profile}/{args.dataset}.yaml has source {p.source!r}")
    if problems:
        print("cannot extract:\n- " + "\n- ".join(problems), file=sys.stderr)
        return 1

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
    else:
        device = p.torch_device
    try:
        for name in p.encoders:
            path = extract(p, name, device=device)
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"{name}: {yaml.safe_dump({'index': str(path)}).strip()}")
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

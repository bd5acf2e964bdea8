"""Embedding extraction from the command line, on one process or sharded with ``torchrun``.

    python -m lare.extract --profile paper --dataset cub [-p NAME VALUE]...
    torchrun --nproc_per_node 4 -m lare.extract --profile paper --dataset cub

It does what notebook 01 does for ``source: images`` (same parameters: the notebook defaults, the
profile's params file, then the -p values; same cache entries and index), so the notebook then
finds the cache complete. Under torchrun each rank embeds its own chunks on its own device (NCCL
on GPUs, gloo on CPUs) and rank 0 assembles one cache entry per split; the embeddings equal a
single-process run.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import yaml

from .pipeline import data_root_from, extract, project_root, resolve
from .preflight import check, merged_parameters, unknown_names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lare.extract", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--dataset", required=True, help="a params file name of the profile, e.g. cub")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    params_file = project_root() / "params" / args.profile / f"{args.dataset}.yaml"
    if not params_file.is_file():
        ap.error(f"no {params_file}")
    extra = [("-p", k, v) for k, v in args.p]
    problems = unknown_names(params_file, extra) + check(merged_parameters(params_file, extra))
    values = merged_parameters(params_file, extra)
    if values.get("source") != "images":
        problems.append(f"lare.extract embeds images; {params_file} has source {values.get('source')!r}")
    if problems:
        print("cannot extract:\n- " + "\n- ".join(problems), file=sys.stderr)
        return 1

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
    else:
        device = "cuda" if torch.cuda.is_available() and values.get("device", "auto") == "auto" else values.get("device", "cpu")
        device = "cpu" if device == "auto" else device
    try:
        for name, enc in values["encoders"].items():
            path = extract(name, enc, run_dir=resolve(values["run_dir"]), cache_dir=resolve(values["cache_dir"]),
                           data_root=resolve(data_root_from(values["data_root"])), dataset=values["dataset"],
                           source="images", with_domains=values["with_domains"], synthetic=values["synthetic"],
                           byo=values["byo"], templates=values["templates"], domain_templates=values["domain_templates"],
                           precision=values["precision"], batch_size=values["batch_size"], device=torch.device(device),
                           progress=values.get("progress", True), download=values.get("download", True),
                           num_workers=values.get("num_workers", 0), chunk_size=values.get("chunk_size", 1024),
                           repair_cache=values.get("repair_cache", False),
                           skip_bad_images=values.get("skip_bad_images", False))
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"{name}: {yaml.safe_dump({'index': str(path)}).strip()}")
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

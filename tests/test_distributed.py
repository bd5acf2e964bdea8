"""A 2-rank torchrun extraction on CPU (gloo) gives exactly the embeddings of one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lare.pipeline.runfolder import load_encoder_data

pytestmark = pytest.mark.slow  # end-to-end: ./run_tests.sh --all

ROOT = Path(__file__).resolve().parents[1]


def _extract(tmp_path, name, launcher):
    opts = ["--profile", "smoke", "--dataset", "toy_domains", "-p", "run_dir", str(tmp_path / name),
            "-p", "cache_dir", str(tmp_path / f"cache-{name}"), "-p", "data_root", str(tmp_path / "data"),
            "-p", "chunk_size", "4", "-p", "batch_size", "3", "-p", "progress", "False"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*launcher, "-m", "lare.pipeline.ingest", *opts], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / name


def test_two_rank_torchrun_equals_one_process(tmp_path):
    single = _extract(tmp_path, "single", [sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    sharded = _extract(tmp_path, "sharded", torchrun)
    for enc in ("clip", "coca"):
        a, b = load_encoder_data(single, "toy_domains", enc), load_encoder_data(sharded, "toy_domains", enc)
        assert set(a.sets) == {"train", "test", "ood"}
        for split in a.sets:
            assert len(a.sets[split]) > 4  # more than one chunk, so both ranks had work
            assert a.sets[split].ids == b.sets[split].ids
            assert torch.equal(a.sets[split].embeddings, b.sets[split].embeddings)
        # one manifest per split covers the whole dataset, and no chunk files are left behind
        assert not list((tmp_path / "cache-sharded").rglob("chunks"))
        assert torch.equal(a.class_text, b.class_text)

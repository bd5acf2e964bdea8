"""The benchmark scripts still run against the library (tiny sizes; the figures themselves are not
checked here: they are measurements, printed by the scripts, see benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end: ./run_tests.sh --all

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_bench_training_prints_every_figure(capsys):
    bench = _load("bench_training")
    rc = bench.main(["--n", "300", "--val", "60", "--dim", "16", "--classes", "6", "--batch-sizes", "64,0",
                     "--precisions", "fp32,bf16", "--repeats", "1", "--timing-epochs", "1", "--min-run", "0",
                     "--epochs", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    for model in ("f_Box", "linear probe"):
        for label in ("fp32 batch 64", "fp32 full batch (300)", "bf16 batch 64", "bf16 full batch (300)"):
            assert f"{model:12s} {label}" in out, f"{model} {label} missing:\n{out}"
    # 2 models x 2 precisions x 2 batch sizes, each printed when measured and again in the summary
    assert out.count("speed-up over reference") == 16 and out.count("GFLOP/s; ratio") == 16
    assert "reference fp32 batch 256 : train loss" in out and "lare bf16 full batch" in out


def test_bench_training_counts_the_reference_s_extra_logit_products():
    bench = _load("bench_training")
    lib = bench.flops_of(bench.step_shapes("box", 256, 768, 200, 768))
    ref = bench.flops_of(bench.step_shapes("box", 256, 768, 200, 768, logits=3))
    assert ref - lib == 2 * (2 * 256 * 768 * 200)  # one forward and one backward corner-logit product


def test_bench_downstream_runs_the_paper_settings_on_small_caches(capsys, monkeypatch):
    bench = _load("bench_downstream")
    small = {"cub": {"sizes": {"train": 120, "test": 40, "ood": 40}, "classes": 4, "noise": {"clip": 0.8, "coca": 0.6},
                     "world_seed": 1}}
    monkeypatch.setattr(bench, "SIZES", small)
    rc = bench.main(["--datasets", "cub", "--seeds", "0", "--dim", "16", "--threads", "1", "--precision", "bf16"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("precision='bf16'") >= 3  # the override reached box, probe and lads
    for method in ("lare f_Box (step 1)", "lads (f_aug + probe)", "lare probe (step 2)", "linear-probe", "zero-shot"):
        assert method in out
    assert "total wall time of the downstream" in out


def test_bench_extraction_pipeline_against_forward(tmp_path, capsys):
    bench = _load("bench_extraction")
    rc = bench.main(["--images", "8", "--model", "lare-tiny-clip", "--batch-size", "4", "--workers", "1",
                     "--repeats", "1", "--skip-memory", "--image-dir", str(tmp_path / "jpegs")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "(a) forward on pre-made tensors" in out and "ratio pipeline/forward" in out
    assert len(list((tmp_path / "jpegs").glob("*.jpg"))) == 8


def test_bench_search_prints_the_probe_trials_ratio(capsys):
    bench = _load("bench_search")
    rc = bench.main(["--n", "200", "--val", "50", "--dim", "16", "--classes", "5", "--trials", "4", "--epochs", "3",
                     "--repeats", "1", "--threads", "1", "--skip-demo"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "ratio 4 batched trials / 1 trial" in out and "target <= 3" in out

"""``python -m lare.demo``: every method on the synthetic embeddings through the pipeline's functions."""

from __future__ import annotations

import pandas as pd
import pytest

from lare import demo


def test_demo_runs_every_method_and_domain_reproducibly(tmp_path):
    df = demo.run(tmp_path / "a", seeds=[0], epochs=2)
    assert set(df["encoder"]) == set(demo.ENCODERS)
    assert set(df["method"]) == {"zero-shot", "linear probe", "LADS", "LARE"}
    assert set(df["domain"]) == {"in_domain", "out_of_domain", "validation"}
    assert len(df) == len(demo.ENCODERS) * 4 * 3
    assert df["top1"].between(0, 100).all() and df["top1"].max() > 10  # something was learnt
    # the splits are saved in the run folder, and the same seed gives the same numbers
    assert list((tmp_path / "a" / "splits" / demo.DATASET).glob("shots0_seed0.json"))
    again = demo.run(tmp_path / "b", seeds=[0], epochs=2)
    pd.testing.assert_frame_equal(df, again)


@pytest.mark.slow  # ./run_tests.sh --all
def test_demo_main_prints_the_table(tmp_path, capsys):
    df = demo.main(["--seeds", "1", "--epochs", "1", "--run-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "SYNTHETIC data: top-1 accuracy" in out and "LARE" in out
    assert set(df["seed"]) == {1}

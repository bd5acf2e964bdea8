"""The f_Box ablations (lare.compare.ablations): Gaussian noise and fixed boxes around each embedding in
place of f_Box's boxes, under LARE's sampling, probe, encoders, search and budget."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from lare.compare import ablations
from lare.compare.ablations import FixedBoxesConfig, GaussianNoiseConfig, GaussianSampler, fixed_box_sampler
from lare.compare.registry import REGISTRY, encoder_names, table1_rows, trial_settings
from lare.compare.search import SearchConfig, configs_of, trials_of
from lare.core.box import SamplingConfig
from lare.pipeline import experiment, ingest
from lare.pipeline.params import ParameterError, build, load_params

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ("gaussian-noise", "fixed-boxes")
SPEC = {"num_classes": 8, "dim": 32, "n_train_per_class": 12, "n_test_per_class": 5, "n_ood_per_class": 5}

pytestmark = pytest.mark.usefixtures("one_thread")


def params(run, **over):
    base = {"dataset": "abl", "run_dir": str(run / "run"), "cache_dir": str(run / "cache"), "device": "cpu",
            "progress": False, "seeds": [0, 1], "encoders": {"coca": {"noise": 0.6}}, "synthetic": SPEC,
            "search": {"trials": 4, "max_epochs": 30}, "sampling": {"draws": 2}}
    return build({**base, **over})


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    p = params(tmp_path_factory.mktemp("ablations"))
    ingest.extract(p, "coca")
    return p, experiment.unit_splits(p, "coca", 0, 0)


# ---------------------------------------------------------------- registered as LARE's peers
def test_the_ablations_are_registered_with_lares_encoders_sampling_and_paired_trials():
    lare = REGISTRY["lare"]
    for name, own in zip(ABLATIONS, ("gaussian_noise.scale", "fixed_boxes.width"), strict=True):
        m = REGISTRY[name]
        assert m.encoders_param == lare.encoders_param and "boxes" not in m.needs  # where LARE runs, without f_Box
        assert m.sections[1:] == ("sampling", "probe") and m.run_trials is not None
        assert set(m.space) == {"probe.lr", "probe.l2", "sampling.k", own}
        assert all(m.space[k] == lare.space[k] for k in ("probe.lr", "probe.l2", "sampling.k"))
        # trial t draws LARE's trial-t k, lr and l2: only the noise's size is the ablation's own
        mine, lares = trial_settings(name, 8), trial_settings("lare", 8)
        assert mine[0] == {} and len(mine) == 8
        for a, b in zip(mine[1:], lares[1:], strict=True):
            assert {k: a[k] for k in ("sampling.k", "probe.lr", "probe.l2")} == {k: b[k] for k in ("sampling.k", "probe.lr", "probe.l2")}
        assert len({t[own] for t in mine[1:]}) == 7


def test_their_settings_are_sections_of_the_run_with_documented_defaults(tmp_path):
    p = params(tmp_path)
    assert p.gaussian_noise == GaussianNoiseConfig() and p.fixed_boxes == FixedBoxesConfig()
    assert params(tmp_path, gaussian_noise={"scale": 0.5}).gaussian_noise.scale == 0.5
    for bad in ({"gaussian_noise": {"scale": 0}}, {"fixed_boxes": {"width": -1.0}}, {"gaussian_noise": {"scale": "big"}}):
        with pytest.raises(ParameterError, match="must be a finite number > 0"):
            params(tmp_path, **bad)
    with pytest.raises(ParameterError, match=r"gaussian_noise.scal .*did you mean scale"):
        params(tmp_path, gaussian_noise={"scal": 1.0})


@pytest.mark.parametrize("profile", ["demo", "paper", "arxiv", "smoke"])
def test_every_profile_runs_them_where_lare_runs_and_table1_shows_them(profile):
    for f in sorted((ROOT / "params" / profile).glob("*.yaml")):
        p = load_params(profile, f.stem)
        lare = p.encoders_for(REGISTRY["lare"].encoders_param)
        assert lare
        rows = {(m, r.encoder): r for m, r in table1_rows(encoder_names(p.encoders))}
        for name in ABLATIONS:
            assert p.encoders_for(REGISTRY[name].encoders_param) == lare
            assert name in experiment.baseline_methods()  # notebook 04 runs them
            for enc in lare:
                row = rows[(name, enc)]
                assert row.addition and encoder_names(p.encoders)[enc] in row.label and "no f_Box" in row.label


# ---------------------------------------------------------------- the samplers
def test_gaussian_samples_have_the_scale_asked_for_and_each_trial_its_own_generator():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(50, 64, generator=g), dim=-1)
    y = torch.arange(50) % 5
    scales = torch.tensor([0.1, 2.0])
    raw = GaussianSampler(x, y, scales, k=3, renormalize=False)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    sx, sy = raw(0, gens)
    assert sx.shape == (2, 150, 64) and torch.equal(sy[0], y.repeat_interleave(3)) and torch.equal(sy[1], sy[0])
    offsets = (sx - x.repeat_interleave(3, dim=0)).norm(dim=-1)
    rms = offsets.pow(2).mean(-1).sqrt()
    assert rms[0] == pytest.approx(0.1, rel=0.05) and rms[1] == pytest.approx(2.0, rel=0.05)
    # trial 1 alone draws what it draws among others (its own generator only)
    alone = GaussianSampler(x, y, scales[1:], k=3, renormalize=False)(0, [torch.Generator().manual_seed(2)])[0]
    torch.testing.assert_close(alone[0], sx[1])
    normed = GaussianSampler(x, y, scales, k=3)(0, [torch.Generator().manual_seed(s) for s in (1, 2)])[0]
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(2, 150))  # re-normalised, as LARE's samples
    fixed = GaussianSampler(x, y, scales, k=1, fresh=False)
    first = fixed(0, gens)[0].clone()
    assert torch.equal(fixed(1, gens)[0], first) and not torch.equal(raw(1, gens)[0], raw(2, gens)[0])
    with pytest.raises(ValueError, match="scales"):
        GaussianSampler(x, y, torch.tensor([0.0]))


def test_fixed_boxes_are_one_width_around_each_embedding_by_lares_sampler():
    x = torch.nn.functional.normalize(torch.randn(40, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    y = torch.arange(40) % 4
    widths = torch.tensor([0.4, 8.0])
    sampler = fixed_box_sampler(x, y, widths, SamplingConfig(k=5, renormalize=False))
    sx, sy = sampler(0, [torch.Generator().manual_seed(s) for s in (3, 4)])
    offsets = sx - x.repeat_interleave(5, dim=0)
    half = widths / (2 * math.sqrt(16))
    for i in range(2):  # inside the box, and filling it (uniform: the extremes come close to its faces)
        biggest = float(offsets[i].abs().max())
        assert 0.9 * float(half[i]) <= biggest <= float(half[i]) + 1e-6
        assert float(offsets[i].norm(dim=-1).pow(2).mean().sqrt()) == pytest.approx(float(widths[i]) / math.sqrt(12), rel=0.1)
    assert torch.equal(sy[0], y.repeat_interleave(5))


# ---------------------------------------------------------------- the same protocol and budget
@pytest.mark.parametrize("solver", ["adamw", "lbfgs"])
@pytest.mark.parametrize("method", ABLATIONS)
def test_batched_trials_equal_the_same_trials_one_by_one(unit, method, solver):
    p, s = unit
    p = dataclasses.replace(p, search=SearchConfig(trials=4, max_epochs=30, solver=solver))
    m = REGISTRY[method]
    configs = configs_of(m, {k: getattr(p, k) for k in m.sections}, trials_of(m, p.protocol, p.search), p.protocol,
                         p.search, 0)
    assert len(configs) == 4 and len({c.sampling.k for c in configs}) > 1  # grouped by k, as LARE's trials
    batched = m.run_trials(s, configs, "cpu")
    alone = [m.run(s, c, "cpu") for c in configs]
    assert len({repr(a) for a in alone}) > 1  # the trials differ, so the test can fail
    for b, a in zip(batched, alone, strict=True):
        assert b == a
    if solver == "lbfgs":
        assert all(set(a["probe"]) == {"l2"} for a in alone)  # the solver's choice, reported as LARE's is


def test_a_unit_searches_them_as_every_method_and_records_its_choice(unit):
    p, s = unit
    for name in ABLATIONS:
        m = REGISTRY[name]
        found = experiment.search_unit(m, s, p, {k: getattr(p, k) for k in m.sections}, 0)
        assert len(found["extra"]["trials"]) == p.search.trials
        assert found["extra"]["trials"][0]["settings"] == {}  # trial 0: the defaults
        assert set(found["metrics_by_domain"]) == {"in_domain", "out_of_domain"}
    params_ = experiment.method_params(REGISTRY["gaussian-noise"], p, {"x": 1})
    assert params_["gaussian_noise"] == {"scale": 1.0} and "gaussian_noise.scale" in params_["space"]


def test_noise_of_another_size_changes_the_result(unit):
    """The setting is used: samples all but on the embeddings, and all but unrelated to them, train other probes."""
    p, s = unit
    m = REGISTRY["gaussian-noise"]
    out = [m.run(s, m.make_config({**{k: getattr(p, k) for k in m.sections},
                                   "gaussian_noise": GaussianNoiseConfig(scale=v)}, 0), "cpu") for v in (0.03, 30.0)]
    assert out[0]["validation"] != out[1]["validation"] or out[0]["in_domain"] != out[1]["in_domain"]
    assert ablations.GAUSSIAN_NOISE is m


def test_the_demos_table1_shows_the_ablations_with_paired_intervals():
    """figures/demo/ as ./run_all.sh --profile demo writes it: both ablations on both encoders, each with
    its difference from the probe of the same encoder and its 95 % interval."""
    with open(ROOT / "figures" / "demo" / "table1.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    for label in ("Gaussian noise on CoCa (no f_Box)", "Fixed boxes on CoCa (no f_Box)",
                  "Gaussian noise on CLIP (no f_Box)", "Fixed boxes on CLIP (no f_Box)"):
        assert label in rows, f"{label}: regenerate figures/demo with ./run_all.sh --profile demo"
        for dom in ("In-domain", "Out-of-domain"):
            low, high = float(rows[label][f"{dom} vs probe low"]), float(rows[label][f"{dom} vs probe high"])
            assert low <= float(rows[label][f"{dom} vs probe mean"]) <= high

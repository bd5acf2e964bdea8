"""The fair comparison: converged training, the L-BFGS reference, the equal-budget search chosen on
in-domain validation only, batched trials equal to trials run one by one, paired intervals."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lare.compare.methods import run_lads, run_lare, run_linear_probe
from lare.compare.registry import HPARAMS, REGISTRY, trial_settings
from lare.compare.results import read_rows
from lare.compare.search import SearchConfig, configs_of, select, trials_of
from lare.compare.stats import paired_interval, t975
from lare.core.box import BoxConfig, train_box, train_box_trials
from lare.core.lads import LADSConfig, train_lads, train_lads_trials
from lare.core.probe import ProbeConfig, train_probe
from lare.core.train import LOSS_REL_TOL, EarlyStop
from lare.pipeline import experiment, ingest
from lare.pipeline.params import build
from lare.pipeline.runfolder import results_path

DS = "fair"
SPEC = {"num_classes": 40, "dim": 128, "n_train_per_class": 30, "n_test_per_class": 20, "n_ood_per_class": 15}  # the demo world


pytestmark = pytest.mark.usefixtures("one_thread")
FEW_DRAWS = {"draws": 2}  # lbfgs LARE: two weighted draws of box samples exercise the same path as 16, at a test's cost


def params(run, **over):
    base = {"dataset": DS, "run_dir": str(run / "run"), "cache_dir": str(run / "cache"), "device": "cpu",
            "progress": False, "seeds": [0, 1, 2], "encoders": {"clip": {"noise": 0.8}, "coca": {"noise": 0.6}},
            "synthetic": SPEC, "search": {"trials": 8}}
    return build({**base, **over})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fair")
    p = params(root)
    for e in p.encoders:
        ingest.extract(p, e)
    return root


def probe_gaps(p):
    """The linear probe and its L-BFGS reference on every unit of ``p``: mean top-1 per (method, encoder,
    domain), and the reference minus the probe per (encoder, domain), in and out of domain."""
    for e in p.encoders:
        ingest.extract(p, e)
    rows = experiment.run_methods(p, ["linear-probe", "linear-probe-lbfgs"])
    mean = rows.groupby(["method", "encoder", "domain"])["top1"].mean()
    return mean, {(enc, dom): mean["linear-probe-lbfgs", enc, dom] - mean["linear-probe", enc, dom]
                  for enc in p.encoders for dom in ("in_domain", "out_of_domain")}


@pytest.mark.slow  # ./run_tests.sh --all
@pytest.mark.parametrize("solver", ["lbfgs", "adamw"])
def test_tuned_linear_probe_is_within_one_point_of_the_lbfgs_reference(world, solver):
    """The default protocol's probe (search, converged trials, chosen on validation) against
    multinomial logistic regression solved with L-BFGS, in and out of domain, per encoder. With the
    default solver it is that regression (its l2 chosen the same way): the same numbers exactly."""
    p = params(world, search={"trials": 8, "solver": solver}, run_dir=str(world / f"run_{solver}"))
    assert p.protocol == "tuned" and SearchConfig().solver == "adamw"  # the defaults
    mean, gaps = probe_gaps(p)
    for key, gap in gaps.items():
        assert gap == 0.0 if solver == "lbfgs" else gap <= 1.0, (key, gap)
    if solver == "lbfgs":  # one trial (nothing to draw), and the l2 it solved for is recorded
        lp = [r for r in read_rows(results_path(p.run_path)) if r["method"] == "linear-probe"]
        assert lp and all(r["trial"] == 0 and len(r["trials"]) == 1 and set(r["selected"]) == {"probe.l2"} for r in lp)
        return
    # the fixed recipe (AdamW, 50 epochs, decoupled weight decay) is the under-trained probe the search replaces
    pf = params(world, protocol="fixed", run_dir=str(world / "fixed"))
    for e in pf.encoders:
        ingest.extract(pf, e)
    fixed = experiment.run_methods(pf, ["linear-probe"])
    assert fixed.groupby("domain")["top1"].mean()["out_of_domain"] < mean["linear-probe"].xs("out_of_domain", level=1).mean()


@pytest.mark.slow  # ./run_tests.sh --all
def test_tuned_linear_probe_is_near_the_lbfgs_reference_on_small_data(tmp_path):
    """Few items per class and a small validation split (100 classes, 8 items each: 2 per class for
    validation), where keeping each AdamW trial's best validation epoch fell 2 to 3.5 points below
    the reference: the default recipe (full batches to convergence, last epoch kept) is within 1."""
    small = {"num_classes": 100, "dim": 256, "n_train_per_class": 8, "n_test_per_class": 20, "n_ood_per_class": 15}
    _, gaps = probe_gaps(params(tmp_path, synthetic=small, dataset="small"))
    for key, gap in gaps.items():
        assert abs(gap) <= 1.0, (key, gap)


@pytest.mark.slow  # ./run_tests.sh --all
@pytest.mark.parametrize("solver", ["lbfgs", "adamw"])
@pytest.mark.parametrize("method", ["linear-probe", "lare", "lads"])
def test_selection_never_reads_the_out_of_domain_set(world, method, solver):
    """Permuting the out-of-domain labels changes no selected setting and no in-domain number."""
    p = params(world, search={"trials": 4, "solver": solver}, sampling=FEW_DRAWS)
    m = REGISTRY[method]
    s = experiment.unit_splits(p, "coca", 0, 0)
    x, y = s.evals["out_of_domain"]
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    shuffled = dataclasses.replace(s, evals={**s.evals, "out_of_domain": (x, y[perm])})
    sections = {k: getattr(p, k) for k in m.sections}
    a = experiment.search_unit(m, s, p, sections, 0)
    b = experiment.search_unit(m, shuffled, p, sections, 0)
    assert a["extra"]["trial"] == b["extra"]["trial"] and a["extra"]["selected"] == b["extra"]["selected"]
    assert a["metrics_by_domain"]["in_domain"] == b["metrics_by_domain"]["in_domain"]
    assert [t["validation"] for t in a["extra"]["trials"]] == [t["validation"] for t in b["extra"]["trials"]]
    assert a["metrics_by_domain"]["out_of_domain"] != b["metrics_by_domain"]["out_of_domain"]  # the labels did change


def test_select_reads_only_the_validation_scores():
    trials = [{"validation": {"top1": 50.0}, "out_of_domain": {"top1": 99.0}},
              {"validation": {"top1": 70.0}, "out_of_domain": {"top1": 10.0}},
              {"validation": {"top1": 70.0}, "out_of_domain": {"top1": 90.0}}]
    assert select(trials, "top1") == 1  # the best validation score, the first on ties
    assert select(trials, "top1", domain="out_of_domain") == 0


@pytest.mark.slow  # ./run_tests.sh --all
@pytest.mark.parametrize("solver", ["adamw", "lbfgs"])
@pytest.mark.parametrize("method", ["linear-probe", "lads", "lare"])
def test_batched_trials_equal_the_same_trials_one_by_one(world, method, solver):
    """The same metrics, exactly: the batched probe, f_Box (the same fused loss per trial) and LADS
    augmenter (its weighted cross-entropy per trial) take each trial's steps as it takes them alone;
    with the lbfgs solver each trial's draws of the augmenter are the draws it makes alone."""
    p = params(world, search={"trials": 4, "max_epochs": 40, "solver": solver}, sampling=FEW_DRAWS)
    m = REGISTRY[method]
    s = experiment.unit_splits(p, "coca", 0, 1)
    sections = {k: getattr(p, k) for k in m.sections}
    trials = trials_of(m, p.protocol, p.search)
    configs = configs_of(m, sections, trials, p.protocol, p.search, 1)
    assert len(configs) == (1 if (solver, method) == ("lbfgs", "linear-probe") else 4)
    batched = m.run_trials(s, configs, "cpu")
    alone = [m.run(s, c, "cpu") for c in configs]
    if solver == "lbfgs" and method != "linear-probe":  # the trials differ, so the test can fail
        assert len({a["validation"]["top1"] for a in alone}) > 1
    for b, a in zip(batched, alone, strict=True):
        for dom in a:
            for key in a[dom]:
                assert b[dom][key] == a[dom][key], (dom, key)


def test_lbfgs_lare_fits_draws_of_its_box_samples(world):
    """Under the lbfgs solver, LARE with fresh sampling solves the originals plus ``sampling.draws``
    draws of box samples (its probe generator's first epochs), each row weighted 1 / draws; the
    number of draws changes the result, and without fresh sampling the one fixed draw is used."""
    from lare.compare.methods import LAREConfig, evaluate, lare_boxes
    from lare.core.box import BoxSampler
    from lare.core.reference import reference_probe
    from lare.utils import make_generator

    p = params(world)
    s = experiment.unit_splits(p, "coca", 0, 0)
    probe = ProbeConfig(solver="lbfgs", l2_grid=(1e-2, 1e-3), seed=0)
    config = LAREConfig(probe=probe, sampling=dataclasses.replace(LAREConfig().sampling, draws=3))
    got = run_lare(s, config, "cpu")
    lower, upper = lare_boxes(s, config, "cpu").boxes(s.train_x)
    sampler, g = BoxSampler(lower, upper, s.train_y), make_generator(1)
    draws = [[t[0] for t in sampler(epoch, [g])] for epoch in range(3)]  # one trial's (N = 1) draws
    n = len(s.train_y)
    ref = reference_probe(torch.cat([s.train_x] + [d[0] for d in draws]), torch.cat([s.train_y] + [d[1] for d in draws]),
                          s.val_x, s.val_y, s.num_classes, l2_grid=probe.l2_grid,
                          sample_weight=torch.cat([torch.ones(n), torch.full((3 * n,), 1 / 3)]))
    expected = evaluate(ref.predict, s)
    assert got["probe"]["l2"] == ref.l2
    for dom in expected:
        assert got[dom] == expected[dom], dom
    one = run_lare(s, dataclasses.replace(config, sampling=dataclasses.replace(config.sampling, draws=1)), "cpu")
    assert any(one[dom] != got[dom] for dom in expected)
    fixed = run_lare(s, dataclasses.replace(config, sampling=dataclasses.replace(config.sampling, fresh=False)), "cpu")
    assert all(fixed[dom] == one[dom] for dom in expected)
    with pytest.raises(ValueError, match="sampling.draws"):
        dataclasses.replace(config.sampling, draws=0)


def test_batched_f_box_and_lads_weights_equal_one_by_one(world):
    p = params(world)
    s = experiment.unit_splits(p, "coca", 0, 2)
    box = [BoxConfig(alpha=a, scale=c, epochs=60, batch_size=64, patience=3, seed=2)
           for a, c in ((0.5, 100.0), (0.2, 20.0), (0.9, 40.0))]
    batched = train_box_trials(s.train_x, s.train_y, s.class_text, box, val_x=s.val_x, val_y=s.val_y)
    # trials stop at different epochs, so the later epochs run only the trials still going
    assert len({len(b.history) for b in batched}) > 1
    for cfg, b in zip(box, batched, strict=True):
        a = train_box(s.train_x, s.train_y, s.class_text, cfg, val_x=s.val_x, val_y=s.val_y, progress=False)
        assert (a.best_epoch, a.stopped_by, len(a.history)) == (b.best_epoch, b.stopped_by, len(b.history))
        for x, y in zip(a.boxes(s.train_x), b.boxes(s.train_x), strict=True):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)
    lads = [LADSConfig(domain_weight=w, epochs=8, batch_size=64, seed=2) for w in (0.5, 0.1)]
    src, tgt = s.extra_text["photo"], s.extra_text["painting"]
    for cfg, b in zip(lads, train_lads_trials(s.train_x, s.train_y, src, tgt, lads, val_x=s.val_x, val_y=s.val_y), strict=True):
        a = train_lads(s.train_x, s.train_y, src, tgt, cfg, val_x=s.val_x, val_y=s.val_y, progress=False)
        assert a.best_epoch == b.best_epoch
        torch.testing.assert_close(a.augment(s.train_x), b.augment(s.train_x), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="may differ only in"):
        train_box_trials(s.train_x, s.train_y, s.class_text, [box[0], dataclasses.replace(box[0], lr=0.1)])


def test_early_stopping_is_recorded(world):
    p = params(world)
    s = experiment.unit_splits(p, "coca", 0, 0)
    stuck = train_probe(s.train_x, s.train_y, s.num_classes, ProbeConfig(lr=1e-9, epochs=500, patience=3, min_steps=0),
                        val_x=s.val_x, val_y=s.val_y, progress=False)
    assert stuck.stopped_by == "patience" and len(stuck.history) == 4  # no gain after epoch 0
    full = train_probe(s.train_x, s.train_y, s.num_classes, ProbeConfig(epochs=5, patience=100, min_steps=0),
                       val_x=s.val_x, val_y=s.val_y, progress=False)
    assert full.stopped_by == "budget" and len(full.history) == 5
    box = train_box(s.train_x, s.train_y, s.class_text, BoxConfig(lr=1e-30, epochs=200, patience=2), val_x=s.val_x,
                    val_y=s.val_y, progress=False)
    assert box.stopped_by == "patience" and len(box.history) < 200


def test_search_spaces_and_equal_budgets():
    search = SearchConfig(trials=6)
    for name, space in HPARAMS.items():
        settings = trial_settings(name, search.trials, search.seed)
        assert settings[0] == {} and len(settings) == (search.trials if space else 1)
        for t in settings[1:]:
            assert set(t) == set(space)
    # paired: a setting two methods share takes the same value in the same trial
    lp, lare = trial_settings("linear-probe", 6), trial_settings("lare", 6)
    assert [t["probe.lr"] for t in lp[1:]] == [t["probe.lr"] for t in lare[1:]]
    # the lbfgs solver solves for l2 itself: the trials draw only the method's own settings, the same values
    assert trial_settings("linear-probe", 6, solver="lbfgs") == [{}]
    solved = trial_settings("lare", 6, solver="lbfgs")
    assert len(solved) == 6 and all(set(t) == {"box.alpha", "sampling.k", "box.scale"} for t in solved[1:])
    assert [t["box.alpha"] for t in solved[1:]] == [t["box.alpha"] for t in lare[1:]]


def test_paired_interval():
    mean, low, high = paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(t975(2) * 1.0 / math.sqrt(3))
    assert t975(1) == 12.706 and 1.96 < t975(200) < 1.98
    assert math.isnan(paired_interval([1.0])[1])


def test_fixed_protocol_runs_one_recipe(world):
    p = params(world, protocol="fixed")
    m = REGISTRY["lare"]
    sections = {k: getattr(p, k) for k in m.sections}
    (cfg,) = configs_of(m, sections, trials_of(m, p.protocol, p.search), p.protocol, p.search, 0)
    assert cfg.probe == dataclasses.replace(p.probe, seed=0) and cfg.box.patience == 0
    tuned = configs_of(m, sections, [{}], "tuned", p.search, 0)[0]
    assert tuned.box.patience == p.search.patience and tuned.probe.epochs == p.search.max_epochs
    assert cfg.probe.solver == tuned.probe.solver == "adamw"  # fixed: today's recipe; tuned: the search's solver
    # fixed: the best validation epoch of mini-batch AdamW; tuned: full batches to convergence, the last epoch, l2 only
    assert (cfg.probe.stop, cfg.probe.batch_size, cfg.probe.weight_decay) == ("val", 256, 0.05)
    assert (tuned.probe.stop, tuned.probe.batch_size, tuned.probe.weight_decay) == ("loss", 0, 0.0)
    assert (tuned.probe.lr, tuned.probe.l2) == (p.search.probe_lr, p.search.probe_l2)
    solved = configs_of(m, sections, [{}], "tuned", SearchConfig(solver="lbfgs"), 0)[0]
    assert solved.probe.solver == "lbfgs" and solved.box == tuned.box
    assert run_lare is m.run and run_linear_probe is REGISTRY["linear-probe"].run and run_lads is REGISTRY["lads"].run


def test_settings_tuned_replaces_are_refused_before_any_work():
    """Under ``tuned`` a user's ``-p probe.lr`` or ``-p box.epochs`` would play no part (the search's
    values replace them): the parameters are refused, naming what to set instead; under ``fixed``
    they are used. Settings that do play a part (probe.select, box.alpha, search.*) pass."""
    from lare.compare.search import BUDGET, PROBE_RECIPE
    from lare.pipeline.params import ParameterError, load_params
    from lare.pipeline.preflight import check_profile

    given = {"probe": {"lr": 0.5, "l2": 0.1, "select": "top1"}, "box": {"epochs": 3, "alpha": 0.3},
             "search": {"probe_lr": 0.05}}
    _, report = check_profile("demo", given, data=False)
    said = [x for n in report.values() for x in n]
    assert set(report) == {"synthetic_domains", "synthetic_fewshot"}
    for name, source in (("probe.lr", "probe_lr"), ("probe.l2", "probe_l2"), ("box.epochs", "max_epochs")):
        assert any(x.startswith(f"{name} is set") and f"search.{source} instead" in x and "-p protocol fixed" in x
                   for x in said), (name, said)
    assert not any(x.startswith(("probe.select", "box.alpha", "search.")) for x in said)  # these do play a part
    with pytest.raises(ParameterError, match="probe.lr is set"):
        load_params("demo", "synthetic_domains", {"probe": {"lr": 0.5}})  # what a notebook starts with
    loaded, report = check_profile("demo", {**given, "protocol": "fixed"}, data=False)
    assert not report and loaded["synthetic_domains"].probe.lr == 0.5
    # every field refused is one that the tuned recipe really replaces
    p = SearchConfig(max_epochs=7, patience=3, probe_lr=0.07, probe_l2=0.2)
    recipe = p.probe_recipe(ProbeConfig())
    for field, source in {**BUDGET, **PROBE_RECIPE}.items():
        assert getattr(recipe, field) == getattr(p, source)


def test_loss_patience_ignores_a_constant_added_to_the_loss():
    """A loss that creeps down by ever smaller steps stops at the same epoch whatever constant is
    added to it (f_Box's total crosses zero, where a tolerance relative to the loss would vanish)."""
    losses = [1.0 / (1 + e) for e in range(400)]  # falls fast, then creeps
    stops = []
    for shift in (0.0, -0.999, 10.0):
        early = EarlyStop(10, rel_tol=LOSS_REL_TOL)
        stops.append(next(e for e, v in enumerate(losses) if early.update(e, v + shift, steps=e + 1)))
    assert stops[0] == stops[1] == stops[2] < 399


def test_solver_settings_are_checked():
    with pytest.raises(ValueError, match="solver must be one of"):
        ProbeConfig(solver="sgd")
    with pytest.raises(ValueError, match="search.solver must be one of"):
        SearchConfig(solver="newton")
    for bad in ([], [0.1, -1.0], [float("nan")], "0.1"):
        with pytest.raises(ValueError, match="l2_grid"):
            ProbeConfig(l2_grid=bad)
    assert ProbeConfig(l2_grid=[1, 0.1]).l2_grid == (1.0, 0.1)  # a YAML list becomes the recorded tuple


def test_trial_draws_are_seeded_per_search_seed_trial_and_setting():
    """Raising ``search.trials`` adds trials and changes none; a setting two methods share takes the
    same value in the same trial of both; every value lies in its space; the search seed matters."""
    for method, space in HPARAMS.items():
        if not space:
            continue
        eight = trial_settings(method, 8, seed=3)
        assert trial_settings(method, 4, seed=3) == eight[:4] and trial_settings(method, 2, seed=3) == eight[:2]
        for t in eight[1:]:
            for name, s in space.items():
                v = t[name]
                assert v in s.choices if s.kind == "choice" else s.low <= v <= s.high, (name, v)
        other = trial_settings(method, 8, seed=4)
        for name in space:
            if space[name].kind != "choice":  # three choices may repeat by chance
                assert all(a[name] != b[name] for a, b in zip(eight[1:], other[1:], strict=True)), name
    for shared in ("probe.lr", "probe.l2"):
        per_method = [[t[shared] for t in trial_settings(m, 8, seed=3)[1:]] for m in ("linear-probe", "lads", "lare")]
        assert per_method[0] == per_method[1] == per_method[2] and len(set(per_method[0])) == 7
    alphas = [t["box.alpha"] for t in trial_settings("lare", 8, seed=3)[1:]]
    assert alphas == [t["box.alpha"] for t in trial_settings("lare", 8, seed=3, solver="lbfgs")[1:]]


def test_select_takes_the_first_on_ties_and_nan_as_worst():
    def trials(*scores):
        return [{"validation": {"top1": s}} for s in scores]

    assert select(trials(70.0, 70.0 + 1e-12, 60.0), "top1") == 0  # equal up to float rounding: the first
    assert select(trials(60.0, 70.0, 70.0), "top1") == 1
    for order in ((math.nan, 10.0, 20.0), (20.0, math.nan, 10.0), (10.0, 20.0, math.nan)):
        assert select(trials(*order), "top1") == order.index(20.0)  # NaN never wins, wherever it stands
    assert select(trials(math.nan, 5.0), "top1") == 1 and select(trials(math.nan, math.nan), "top1") == 0
    assert select([{}, {"validation": {"top1": 1.0}}], "top1") == 1  # a trial without the split: worst
    with pytest.raises(ValueError, match="no scores"):
        select([], "top1")

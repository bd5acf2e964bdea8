"""The probe's one trainer (lare.core.probe.train_probe_trials): N trials in one model equal the same
trials run alone (N = 1, what train_probe is), and one trial equals torch's AdamW written plainly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lare.core.box import BoxSampler
from lare.core.linear import batched_metrics
from lare.core.probe import FixedAugment, ProbeConfig, metrics, train_probe, train_probe_trials
from lare.core.train import batches, seeded_init
from lare.utils import make_generator

C, D = 5, 16
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_classes(n_per_class: int, seed: int, noise: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes around fixed means: validation accuracy keeps moving for a while."""
    mu = torch.randn(C, D, generator=make_generator(1234))
    y = torch.arange(C).repeat_interleave(n_per_class)
    return mu[y] + noise * torch.randn(len(y), D, generator=make_generator(seed)), y


@pytest.fixture(scope="module")
def data():
    x, y = gaussian_classes(30, seed=0)
    vx, vy = gaussian_classes(20, seed=1)
    return x, y, vx, vy


def trial_configs(lr, wd, seeds, *, max_epochs=25, patience=6, batch_size=32, min_steps=0, max_steps=0, l2=None,
                  stop="val", select="balanced_acc", precision="fp32") -> list[ProbeConfig]:
    """One ProbeConfig per trial, every setting written out (the tests do not follow the defaults)."""
    l2 = [0.0] * len(seeds) if l2 is None else [float(v) for v in l2]
    return [ProbeConfig(lr=float(a), weight_decay=float(w), seed=s, l2=c, epochs=max_epochs, patience=patience,
                        batch_size=batch_size, min_steps=min_steps, max_steps=max_steps, stop=stop, select=select,
                        precision=precision) for a, w, s, c in zip(lr, wd, seeds, l2, strict=True)]


def run(data, lr, wd, seeds, *, augment=None, validation=True, **kw):
    x, y, vx, vy = data
    val = {"val_x": vx, "val_y": vy} if validation else {}
    return train_probe_trials(x, y, C, trial_configs(lr, wd, seeds, **kw), augment=augment, device="cpu", **val)


# Four trials that stop at different times, by patience and by the budget.
LR, WD, SEEDS = [1e-3, 1e-2, 3e-2, 1e-1], [0.0, 0.05, 0.5, 0.01], [0, 1, 2, 3]


def augmenter(kind: str | None, x: torch.Tensor, y: torch.Tensor, trials: list[int], fresh: bool = True):
    """The same per-trial augmentation, restricted to ``trials`` (for the one-by-one runs)."""
    if kind is None:
        return None
    if kind == "box":
        radius = 0.1 * (1 + torch.arange(4.0)).view(4, 1, 1)  # boxes differ between trials
        return BoxSampler((x - radius)[trials], (x + radius)[trials], y, k=2, fresh=fresh, renormalize=False)
    ax = x + 0.5 * torch.randn(4, *x.shape, generator=make_generator(7))
    return FixedAugment(ax[trials], y.expand(4, -1)[trials])


L2 = [0.0, 1e-2, 1e-3, 0.1]  # the loss stop's objective includes the coupled l2


@pytest.mark.parametrize("batch_size", [32, 0], ids=["batches", "full"])  # full: no permutation, originals shared
@pytest.mark.parametrize("stop", ["val", "loss"])
@pytest.mark.parametrize("kind", [None, "box", "fixed"])
def test_batched_trials_equal_one_by_one(data, kind, stop, batch_size):
    x, y, vx, vy = data
    l2 = torch.tensor(L2 if stop == "loss" else [0.0] * 4)
    together = run(data, LR, WD, SEEDS, augment=augmenter(kind, x, y, [0, 1, 2, 3]), stop=stop, l2=l2,
                   batch_size=batch_size)
    assert set(together.stopped_by) == {"patience", "budget"}  # both ways of stopping are exercised
    if stop == "loss":  # the last epoch is kept
        assert together.best_epoch == [e - 1 for e in together.epochs]
        torch.testing.assert_close(together.weight, together.last_weight)
    for i in range(4):
        alone = run(data, LR[i:i + 1], WD[i:i + 1], SEEDS[i:i + 1], augment=augmenter(kind, x, y, [i]), stop=stop,
                    l2=l2[i:i + 1], batch_size=batch_size)
        assert together.best_epoch[i] == alone.best_epoch[0]
        assert together.epochs[i] == alone.epochs[0]
        assert together.steps[i] == alone.steps[0]
        assert together.stopped_by[i] == alone.stopped_by[0]
        assert together.best_score[i] == pytest.approx(alone.best_score[0], abs=1e-9)
        torch.testing.assert_close(together.weight[i], alone.weight[0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(together.bias[i], alone.bias[0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(together.last_weight[i], alone.last_weight[0], atol=2e-5, rtol=1e-4)
        assert together.evaluate(vx, vy)[i] == pytest.approx(alone.evaluate(vx, vy)[0], abs=1e-6)
        e = together.epochs[i]
        torch.testing.assert_close(together.history["train_loss"][:e, i], alone.history["train_loss"][:e, 0], atol=1e-5, rtol=1e-5)
        assert torch.isnan(together.history["train_loss"][e:, i]).all()  # nothing recorded once stopped


@pytest.mark.parametrize("batch_size", [32, 0], ids=["batches", "full"])
def test_trials_of_one_seed_share_one_box_draw(data, batch_size):
    """A search's trials share the unit's seed: one generator object serves them all, drawn once
    per epoch, and each trial still trains as it does alone."""
    x, y, vx, vy = data
    together = run(data, LR, WD, [3] * 4, augment=augmenter("box", x, y, [0, 1, 2, 3]), batch_size=batch_size)
    for i in range(4):
        alone = run(data, LR[i:i + 1], WD[i:i + 1], [3], augment=augmenter("box", x, y, [i]), batch_size=batch_size)
        assert (together.epochs[i], together.best_epoch[i]) == (alone.epochs[0], alone.best_epoch[0])
        torch.testing.assert_close(together.last_weight[i], alone.last_weight[0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(together.weight[i], alone.weight[0], atol=2e-5, rtol=1e-4)


def reference_loop(x, y, vx, vy, *, lr, wd, seed, epochs, batch_size, boxes=None, k=1):
    """Today's probe written plainly: nn.Linear + torch.optim.AdamW, the same permutation and sampling generators."""
    model = seeded_init(lambda: nn.Linear(D, C), seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, fused=False, foreach=False)
    order, sample = make_generator(seed, "cpu"), make_generator(seed + 1, "cpu")
    states, losses, scores = [], [], []
    for _ in range(epochs):
        ex, ey = x, y
        if boxes is not None:
            lower, upper = boxes
            u = torch.rand((len(x), k, D), generator=sample)
            s = F.normalize((lower.unsqueeze(1) + u * (upper - lower).unsqueeze(1)).reshape(-1, D), dim=-1)
            ex, ey = torch.cat([x, s]), torch.cat([y, y.repeat_interleave(k)])
        total = 0.0
        for idx in batches(len(ex), batch_size, order, CPU):
            loss = F.cross_entropy(model(ex[idx]), ey[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(ex))
        states.append((model.weight.detach().clone(), model.bias.detach().clone()))
        with torch.no_grad():
            scores.append(metrics(model(vx).argmax(-1), vy, C)["balanced_acc"])
    return states, losses, scores


@pytest.mark.parametrize("bs", [16, 0], ids=["batches", "full"])
@pytest.mark.parametrize("with_boxes", [False, True])
def test_single_trial_matches_torch_adamw(data, with_boxes, bs):
    x, y, vx, vy = data
    lr, wd, seed, epochs = 2e-2, 0.1, 5, 5
    boxes = (x - 0.2, x + 0.2) if with_boxes else None
    augment = BoxSampler(boxes[0][None], boxes[1][None], y, k=2) if with_boxes else None
    res = run(data, [lr], [wd], [seed], max_epochs=epochs, patience=100, batch_size=bs, augment=augment)
    states, losses, scores = reference_loop(x, y, vx, vy, lr=lr, wd=wd, seed=seed, epochs=epochs, batch_size=bs,
                                            boxes=boxes, k=2)
    assert res.stopped_by == ["budget"] and res.epochs == [epochs]
    assert res.steps == [epochs * (math.ceil(len(x) * (3 if with_boxes else 1) / bs) if bs else 1)]
    torch.testing.assert_close(res.last_weight[0].T, states[-1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.last_bias[0], states[-1][1], atol=1e-5, rtol=1e-5)
    rounded = [round(v, 4) for v in scores]  # equal accuracies from different per-class hits may differ in the last bits
    best = rounded.index(max(rounded))  # the first best epoch
    assert res.best_epoch == [best]
    torch.testing.assert_close(res.trial(0).weight.detach(), states[best][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.history["train_loss"][:, 0], torch.tensor(losses, dtype=torch.float64), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.history["val_balanced_acc"][:, 0], torch.tensor(scores, dtype=torch.float64), atol=1e-4, rtol=0)


def test_trial_that_cannot_improve_stops_by_patience(data):
    res = run(data, [1e-12], [0.0], [0], patience=3, max_epochs=20)
    assert res.stopped_by == ["patience"]
    assert res.best_epoch == [0] and res.epochs == [4]  # epochs 1, 2, 3 did not improve on epoch 0


def test_patience_beyond_the_budget_stops_by_budget(data):
    res = run(data, [1e-12], [0.0], [0], patience=50, max_epochs=6)
    assert res.stopped_by == ["budget"] and res.epochs == [6] and res.max_epochs == 6


def test_min_steps_delays_early_stopping(data):
    # 150 items in batches of 50: 3 steps per epoch; at least 20 steps means 7 epochs
    res = run(data, [1e-12], [0.0], [0], patience=2, max_epochs=10, batch_size=50, min_steps=20)
    assert res.stopped_by == ["patience"] and res.epochs == [7] and res.steps == [21]


def test_stopped_trial_is_frozen_while_others_train(data):
    # trial 0 moves a lot per step (large lr and weight decay) and stops early; trial 1 trains on
    lr, wd = [0.3, 1e-3], [0.5, 0.0]
    both = run(data, lr, wd, [0, 1], patience=2, max_epochs=40)
    alone = run(data, lr[:1], wd[:1], [0], patience=2, max_epochs=40)
    assert both.stopped_by[0] == "patience" and both.epochs[0] < both.epochs[1]
    assert both.epochs[0] == alone.epochs[0]
    torch.testing.assert_close(both.last_weight[0], alone.last_weight[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(both.last_bias[0], alone.last_bias[0], atol=2e-5, rtol=1e-4)
    # had it gone on, its weights would have moved far: the check above can fail
    longer = run(data, lr[:1], wd[:1], [0], patience=100, max_epochs=both.epochs[1])
    assert (longer.last_weight[0] - alone.last_weight[0]).abs().max() > 1e-2


def test_predict_evaluate_and_trial_agree(data):
    _, _, vx, vy = data
    res = run(data, LR, WD, SEEDS)
    pred = res.predict(vx)
    assert pred.shape == (4, len(vx))
    for i, m in enumerate(res.evaluate(vx, vy)):
        model = res.trial(i)
        assert isinstance(model, nn.Linear) and model.weight.shape == (C, D)
        assert torch.equal(model(vx).argmax(-1), pred[i])
        assert m == metrics(pred[i], vy, C)
        assert m[res.select] == pytest.approx(res.best_score[i], abs=1e-4)  # the best weights are the ones kept
    assert res.best_score[res.best_trial()] == max(res.best_score)


def test_batched_metrics_equal_probe_metrics():
    g = make_generator(3)
    labels = torch.randint(0, 6, (40,), generator=g)
    labels[labels == 4] = 5  # an absent class must not count in the balanced accuracy
    pred = torch.randint(0, 6, (3, 40), generator=g)
    pred[0] = labels  # one perfect row
    got = batched_metrics(pred, labels, 6)
    for i in range(3):
        want = metrics(pred[i], labels, 6)
        assert got["top1"][i].item() == pytest.approx(want["top1"], abs=1e-4)
        assert got["balanced_acc"][i].item() == pytest.approx(want["balanced_acc"], abs=1e-4)
    assert got["balanced_acc"][0].item() == 100.0


def test_box_sampler_draws_inside_each_trials_boxes():
    lower = torch.randn(3, 4, D, generator=make_generator(0))
    upper = lower + torch.rand(3, 4, D, generator=make_generator(1))
    labels = torch.tensor([0, 1, 2, 3])
    sampler = BoxSampler(lower, upper, labels, k=5, renormalize=False)
    gens = [make_generator(s) for s in (10, 11, 12)]
    s, sy = sampler(0, gens)
    assert s.shape == (3, 20, D) and sy.shape == (3, 20) and sampler.size == 20
    assert torch.equal(sy[1], labels.repeat_interleave(5))
    box = lambda t: t.repeat_interleave(5, dim=1)  # noqa: E731
    assert ((s >= box(lower)) & (s <= box(upper))).all()
    # trial 2 drew from its own generator only
    alone, _ = BoxSampler(lower[2:], upper[2:], labels, k=5, renormalize=False)(0, [make_generator(12)])
    assert torch.equal(alone[0], s[2])
    # one generator object for every trial: one draw of U, shared (the draws of equal seeds)
    one = make_generator(12)
    shared, _ = sampler(0, [one] * 3)
    assert torch.equal(shared[2], s[2])
    u = (shared - box(lower)) / box(upper - lower)
    torch.testing.assert_close(u[0], u[1])
    torch.testing.assert_close(u[0], u[2])
    unit, _ = BoxSampler(lower, upper, labels, k=2)(0, gens)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(3, 8))


# Settings a ProbeConfig itself refuses (raised when the trials' configs are built).
@pytest.mark.parametrize("change", [
    {"lr": [1e-2, -1.0]},
    {"seeds": [0, 1.5]},
    {"patience": -1},                              # 0 is valid: no early stopping
    {"select": "f1"},
    {"max_epochs": 0},
    {"batch_size": -1},
    {"l2": [1e-3, -1.0]},
    {"stop": "best"},
    {"precision": "fp16"},
])
def test_bad_trial_settings_raise(data, change):
    kw = {"lr": [1e-2, 1e-2], "wd": [0.0, 0.0], "seeds": [0, 1], "max_epochs": 2, **change}
    with pytest.raises(ValueError):
        run(data, kw.pop("lr"), kw.pop("wd"), kw.pop("seeds"), **kw)


# Inputs the trainer refuses before training.
@pytest.mark.parametrize("change", [
    {"configs": []},                                                    # no trials
    {"configs": [{"lr": 1e-2}]},                                        # not ProbeConfigs
    {"configs": trial_configs([1e-2, 1e-2], [0.0, 0.0], [0, 1])[:1] + trial_configs([1e-2], [0.0], [1], max_epochs=3)},
    {"configs": [ProbeConfig(solver="lbfgs")]},                         # solved by lare.core.reference, not trained
    {"train_x": torch.zeros(150, D, 1)},
    {"train_y": torch.zeros(149, dtype=torch.long)},
    {"val_x": torch.zeros(100, D + 1)},
    {"val_y": torch.full((100,), C)},               # label out of range
    {"augment": BoxSampler(torch.zeros(3, 150, D), torch.ones(3, 150, D), torch.zeros(150, dtype=torch.long))},
])
def test_bad_inputs_raise(data, change):
    x, y, vx, vy = data
    kw = {"train_x": x, "train_y": y, "configs": trial_configs([1e-2, 1e-2], [0.0, 0.0], [0, 1], max_epochs=2),
          "val_x": vx, "val_y": vy, "device": "cpu", **change}
    train_x, train_y, configs = kw.pop("train_x"), kw.pop("train_y"), kw.pop("configs")
    with pytest.raises(ValueError):
        train_probe_trials(train_x, train_y, C, configs, **kw)


def test_trials_that_differ_in_a_shared_setting_are_refused_by_name(data):
    x, y, vx, vy = data
    configs = trial_configs([1e-2], [0.0], [0]) + trial_configs([1e-2], [0.0], [1], batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        train_probe_trials(x, y, C, configs, val_x=vx, val_y=vy, device="cpu")


@pytest.mark.parametrize(("max_epochs", "min_steps", "max_steps", "epochs"),
                         [(25, 0, 28, 6), (5, 60, 0, 12), (25, 40, 45, 9)], ids=["cut", "stretched", "both"])
def test_step_bounds_cut_the_batched_trials_as_the_single_probe(data, max_epochs, min_steps, max_steps, epochs):
    """``max_steps`` and ``min_steps`` bound the trials' epochs (:func:`lare.core.train.effective_epochs`;
    150 rows in batches of 32: 5 steps an epoch): four trials together, each alone, and train_probe."""
    x, y, vx, vy = data
    kw = {"max_epochs": max_epochs, "patience": 100, "min_steps": min_steps}
    together = run(data, LR, WD, SEEDS, max_steps=max_steps, **kw)
    assert together.epochs == [epochs] * 4 and together.steps == [5 * epochs] * 4
    for i in range(4):
        alone = run(data, LR[i:i + 1], WD[i:i + 1], SEEDS[i:i + 1], max_steps=max_steps, **kw)
        (cfg,) = trial_configs(LR[i:i + 1], WD[i:i + 1], SEEDS[i:i + 1], max_steps=max_steps, **kw)
        single = train_probe(x, y, C, cfg, val_x=vx, val_y=vy, device="cpu", progress=False)
        assert len(single.history) == alone.epochs[0] == epochs
        assert single.best_epoch == alone.best_epoch[0] == together.best_epoch[i]
        for res, j in ((alone, 0), (together, i)):
            torch.testing.assert_close(res.trial(j).weight.detach(), single.model.weight.detach(), atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(res.trial(j).bias.detach(), single.model.bias.detach(), atol=2e-5, rtol=1e-4)
    unbounded = run(data, LR, WD, SEEDS, max_steps=0, **{**kw, "min_steps": 0})
    assert unbounded.epochs == [max_epochs] * 4 != together.epochs
    assert not torch.allclose(unbounded.last_weight, together.last_weight)


def test_best_trial_takes_the_first_on_ties_and_nan_as_worst(data):
    res = run(data, LR[:2], WD[:2], SEEDS[:2], max_epochs=2)
    for scores, want in (([50.0, 70.0, 70.0], 1), ([70.0 + 1e-12, 70.0], 0), ([math.nan, 10.0, 20.0], 2),
                         ([20.0, math.nan, 20.0], 0), ([math.nan, math.nan], 0), ([-math.inf, math.nan, 1.0], 2)):
        res.best_score = scores
        assert res.best_trial() == want, scores


@pytest.mark.parametrize("change", [{"max_steps": -1}, {"max_steps": 2.5}, {"min_steps": 10, "max_steps": 5}])
def test_bad_step_bounds_raise(data, change):
    with pytest.raises(ValueError, match="steps"):
        run(data, LR[:2], WD[:2], SEEDS[:2], **change)


# ---------------------------------------------------------------- what one run needs of the one trainer
@pytest.mark.parametrize("batch_size", [32, 0], ids=["batches", "full"])
@pytest.mark.parametrize("kind", [None, "box"])
def test_bf16_trials_equal_one_by_one_and_stay_near_fp32(data, kind, batch_size):
    """precision bf16: bfloat16 products, float32 weights and optimiser state; a trial among others
    trains as it does alone, and lands near its float32 twin but not on it (the setting acts)."""
    x, y, vx, vy = data
    kw = {"precision": "bf16", "batch_size": batch_size, "max_epochs": 10, "patience": 100}
    together = run(data, LR, WD, SEEDS, augment=augmenter(kind, x, y, [0, 1, 2, 3]), **kw)
    fp32 = run(data, LR, WD, SEEDS, augment=augmenter(kind, x, y, [0, 1, 2, 3]), **{**kw, "precision": "fp32"})
    assert together.weight.dtype == together.last_weight.dtype == torch.float32
    assert not torch.equal(together.last_weight, fp32.last_weight)
    off = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    for i in range(4):
        alone = run(data, LR[i:i + 1], WD[i:i + 1], SEEDS[i:i + 1], augment=augmenter(kind, x, y, [i]), **kw)
        # bf16 rounding: a trial among others (batched products) against alone, 2e-3 of its norm at most
        # measured; against float32, 0.04 (lr 3e-2 with weight decay 0.5, on full batches)
        assert off(together.last_weight[i], alone.last_weight[0]) < 1e-2
        assert off(together.last_weight[i], fp32.last_weight[i]) < 0.1
        torch.testing.assert_close(together.history["train_loss"][:, i], alone.history["train_loss"][:, 0], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("stop", ["val", "loss"])
def test_patience_zero_trains_every_epoch_of_the_budget(data, stop):
    # lr 1e-12 cannot move the weights: with patience 3 that trial stops early, with 0 it never does
    lr, wd, seeds = [1e-12, 1e-2], [0.0, 0.0], [0, 1]
    stuck = run(data, lr, wd, seeds, patience=3, max_epochs=20, stop=stop)
    assert stuck.stopped_by[0] == "patience" and stuck.epochs[0] < 20
    every = run(data, lr, wd, seeds, patience=0, max_epochs=20, stop=stop)
    assert every.stopped_by == ["budget", "budget"] and every.epochs == [20, 20] and every.steps == [100, 100]
    beyond = run(data, lr, wd, seeds, patience=1000, max_epochs=20, stop=stop)  # a patience no budget reaches
    assert every.best_epoch == beyond.best_epoch
    torch.testing.assert_close(every.weight, beyond.weight, rtol=0, atol=0)
    alone = run(data, lr[1:], wd[1:], seeds[1:], patience=0, max_epochs=20, stop=stop)
    assert alone.best_epoch[0] == every.best_epoch[1]
    torch.testing.assert_close(alone.weight[0], every.weight[1], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("stop", ["val", "loss"])
def test_without_a_validation_split_the_last_epoch_is_kept(data, stop):
    x, _, vx, vy = data
    patience = 6 if stop == "loss" else 1000  # val: nothing to stop on without a validation split
    blind = run(data, LR, WD, SEEDS, validation=False, stop=stop, l2=L2, patience=6)
    assert set(blind.history) == {"train_loss"} | ({"train_objective"} if stop == "loss" else set())
    assert blind.best_epoch == [e - 1 for e in blind.epochs]
    torch.testing.assert_close(blind.weight, blind.last_weight, rtol=0, atol=0)
    assert all(math.isnan(s) for s in blind.best_score)
    if stop == "val":
        assert blind.stopped_by == ["budget"] * 4 and blind.epochs == [25] * 4
    else:
        assert "patience" in blind.stopped_by  # the objective's patience needs no validation split
    # the validation split is only read, never trained on: the same epochs give the same last weights
    seen = run(data, LR, WD, SEEDS, stop=stop, l2=L2, patience=patience)
    assert seen.epochs == blind.epochs
    torch.testing.assert_close(seen.last_weight, blind.last_weight, rtol=0, atol=0)
    empty = train_probe_trials(x, data[1], C, trial_configs(LR, WD, SEEDS, stop=stop, l2=L2), val_x=vx[:0], val_y=vy[:0])
    torch.testing.assert_close(empty.weight, blind.weight, rtol=0, atol=0)
    for i in range(4):
        alone = run(data, LR[i:i + 1], WD[i:i + 1], SEEDS[i:i + 1], validation=False, stop=stop, l2=L2[i:i + 1], patience=6)
        assert (alone.epochs[0], alone.best_epoch[0]) == (blind.epochs[i], blind.best_epoch[i])
        torch.testing.assert_close(alone.weight[0], blind.weight[i], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("batch_size", [32, 0], ids=["batches", "full"])
def test_fixed_box_samples_are_the_first_epochs_draw(data, batch_size):
    """fresh False: every epoch trains on epoch 0's draw, each trial's first draw from its seed + 1."""
    x, y, _, _ = data
    fixed = run(data, LR, WD, SEEDS, augment=augmenter("box", x, y, [0, 1, 2, 3], fresh=False), batch_size=batch_size)
    first = augmenter("box", x, y, [0, 1, 2, 3])(0, [make_generator(s + 1) for s in SEEDS])
    same = run(data, LR, WD, SEEDS, augment=FixedAugment(*first), batch_size=batch_size)
    assert (fixed.epochs, fixed.best_epoch) == (same.epochs, same.best_epoch)
    torch.testing.assert_close(fixed.last_weight, same.last_weight, rtol=0, atol=0)
    fresh = run(data, LR, WD, SEEDS, augment=augmenter("box", x, y, [0, 1, 2, 3]), batch_size=batch_size)
    assert not torch.allclose(fresh.last_weight, fixed.last_weight)  # fresh draws train otherwise: the check can fail
    for i in range(4):
        alone = run(data, LR[i:i + 1], WD[i:i + 1], SEEDS[i:i + 1], augment=augmenter("box", x, y, [i], fresh=False),
                    batch_size=batch_size)
        assert (alone.epochs[0], alone.best_epoch[0]) == (fixed.epochs[i], fixed.best_epoch[i])
        torch.testing.assert_close(alone.last_weight[0], fixed.last_weight[i], atol=2e-5, rtol=1e-4)

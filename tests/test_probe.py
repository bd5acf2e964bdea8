"""Metrics, zero-shot classification, augmenters and the linear probe (lare.core.probe)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lare.core.box import BoxSampler
from lare.core.probe import (
    FixedAugment,
    ProbeConfig,
    metrics,
    train_probe,
    train_probe_trials,
    zero_shot_logits,
    zero_shot_predict,
)
from lare.core.reference import logreg_objective, solve_logreg


def blobs(n_per_class: int, num_classes: int = 3, dim: int = 5, spread: float = 0.3, seed: int = 0,
          classes=None):
    """Linearly separable Gaussian clusters at 3 * e_c (margin far above the noise)."""
    g = torch.Generator().manual_seed(seed)
    classes = list(range(num_classes)) if classes is None else classes
    y = torch.tensor(classes).repeat_interleave(n_per_class)
    centres = 3 * torch.eye(num_classes, dim)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    return x, y


def fit(x, y, num_classes, cfg, **kw):
    return train_probe(x, y, num_classes, cfg, device="cpu", progress=False, **kw)


# ---------------------------------------------------------------- metrics
def test_metrics_hand_example_imbalanced():
    # class 0: 6 items, all right; class 1: 2 items, 1 right; class 2: 2 items, 1 right
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 0, 2])
    m = metrics(pred, labels)
    assert m["top1"] == pytest.approx(100 * 8 / 10, abs=1e-4)
    assert m["balanced_acc"] == pytest.approx(100 * (1 + 0.5 + 0.5) / 3, abs=1e-4)
    # absent classes (3, 4) do not count in the balanced accuracy
    m5 = metrics(pred, labels, num_classes=5)
    assert m5 == pytest.approx(m, abs=1e-6)


def test_metrics_predicting_majority_class():
    labels = torch.tensor([0] * 9 + [1])
    pred = torch.zeros(10, dtype=torch.long)
    m = metrics(pred, labels)
    assert m["top1"] == pytest.approx(90.0, abs=1e-4)
    assert m["balanced_acc"] == pytest.approx(50.0, abs=1e-4)


def test_metrics_empty_raises():
    with pytest.raises(ValueError):
        metrics(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))


# ---------------------------------------------------------------- zero-shot
def test_zero_shot_classifies_text_prototypes():
    g = torch.Generator().manual_seed(0)
    # class text embeddings of very different norms: a correct classifier must use the cosine
    norms = torch.tensor([1.0, 8.0, 0.1, 3.0, 0.5]).unsqueeze(1)
    text = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=-1) * norms
    perm = torch.tensor([3, 0, 4, 1, 2, 2, 0])
    x = text[perm] * torch.tensor([0.2, 5.0, 1.0, 7.0, 0.3, 2.0, 1.0]).unsqueeze(1)
    assert torch.equal(zero_shot_predict(x, text), perm)
    logits = zero_shot_logits(x, text)
    assert logits.shape == (7, 5)
    assert torch.allclose(logits[torch.arange(7), perm], torch.ones(7), atol=1e-5)
    assert (logits <= 1 + 1e-5).all()


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs", [dict(epochs=0), dict(batch_size=-2), dict(lr=0.0), dict(select="f1"),
                                    dict(precision="fp16")])
def test_probe_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        ProbeConfig(**kwargs)


# ---------------------------------------------------------------- train_probe
FAST = ProbeConfig(epochs=60, batch_size=0, lr=5e-2, weight_decay=0.0, min_steps=0)


def test_train_probe_learns_separable_data():
    x, y = blobs(40)
    tx, ty = blobs(40, seed=1)
    res = fit(x, y, 3, FAST)
    m = res.evaluate(tx, ty)
    assert m["top1"] > 95 and m["balanced_acc"] > 95
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.best_epoch == FAST.epochs - 1  # no validation: the last epoch
    assert res.predict(tx).shape == ty.shape


@pytest.mark.parametrize("select", ["balanced_acc", "top1"])
def test_train_probe_selects_best_validation_epoch(select):
    # a hard, noisy, imbalanced problem so that the validation metric moves between epochs
    x, y = blobs(12, num_classes=4, dim=6, spread=2.5, seed=0)
    vx, vy = blobs(10, num_classes=4, dim=6, spread=2.5, seed=1)
    vx, vy = torch.cat([vx, vx[vy == 0]]), torch.cat([vy, vy[vy == 0]])  # class 0 over-represented
    cfg = ProbeConfig(epochs=40, batch_size=8, lr=5e-2, weight_decay=0.0, select=select)
    res = fit(x, y, 4, cfg, val_x=vx, val_y=vy)
    scores = [h[f"val_{select}"] for h in res.history]
    assert len(set(scores)) > 1, "validation metric should vary for the test to mean something"
    assert res.best_epoch == scores.index(max(scores))  # first epoch reaching the maximum
    # the returned weights are the selected epoch's
    m = res.evaluate(vx, vy)
    assert m["top1"] == pytest.approx(res.history[res.best_epoch]["val_top1"], abs=1e-4)
    assert m["balanced_acc"] == pytest.approx(res.history[res.best_epoch]["val_balanced_acc"], abs=1e-4)


def test_loss_stop_keeps_the_converged_last_epoch():
    """stop "loss": full-batch training runs until the regularised objective stops falling and keeps
    the last epoch, which is then the L-BFGS solution of the same objective (to the stop's tolerance),
    whatever the validation scores did; stop "val" keeps another, earlier epoch on the same run."""
    x, y = blobs(12, num_classes=4, dim=6, spread=2.5, seed=0)
    vx, vy = blobs(10, num_classes=4, dim=6, spread=2.5, seed=1)
    cfg = ProbeConfig(epochs=3000, batch_size=0, lr=5e-2, weight_decay=0.0, l2=1e-2, min_steps=0, patience=20, stop="loss")
    res = fit(x, y, 4, cfg, val_x=vx, val_y=vy)
    assert res.stopped_by == "patience" and len(res.history) < cfg.epochs  # stopped by the objective, not the budget
    assert res.best_epoch == len(res.history) - 1
    objective = [h["train_objective"] for h in res.history]
    assert objective[-1] < objective[0]
    exact = solve_logreg(x, y, 4, l2=1e-2)
    w, b = res.model.weight.detach().double(), res.model.bias.detach().double()
    mine = logreg_objective(x.double(), y, w, b, 1e-2).item()
    assert mine - exact.loss < 1e-3 * (objective[0] - exact.loss)  # converged: within the stop's tolerance
    assert (F.linear(x.double(), w, b).argmax(-1) == F.linear(x.double(), exact.weight, exact.bias).argmax(-1)).float().mean() > 0.97
    scores = [h["val_balanced_acc"] for h in res.history]
    assert max(scores) > scores[-1]  # the validation score was higher at some earlier epoch: not what is kept
    by_val = fit(x, y, 4, dataclasses.replace(cfg, stop="val"), val_x=vx, val_y=vy)
    assert by_val.best_epoch < len(by_val.history) - 1


def test_train_probe_deterministic_by_seed():
    x, y = blobs(20, spread=1.5)
    vx, vy = blobs(10, spread=1.5, seed=3)
    cfg = ProbeConfig(epochs=15, batch_size=16, lr=1e-2)
    a = fit(x, y, 3, cfg, val_x=vx, val_y=vy)
    b = fit(x, y, 3, cfg, val_x=vx, val_y=vy)
    c = fit(x, y, 3, ProbeConfig(epochs=15, batch_size=16, lr=1e-2, seed=5), val_x=vx, val_y=vy)
    assert a.history == b.history and a.best_epoch == b.best_epoch
    assert torch.equal(a.model.weight, b.model.weight) and torch.equal(a.model.bias, b.model.bias)
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in c.history]
    assert not torch.equal(a.model.weight, c.model.weight)


def test_train_probe_rejects_bad_shapes():
    x, y = blobs(5)
    with pytest.raises(ValueError):
        fit(x, y[:-1], 3, FAST)
    with pytest.raises(ValueError):
        fit(x[:, 0], y, 3, FAST)


# ---------------------------------------------------------------- BoxSampler
def boxes(n=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    return torch.minimum(a, b), torch.maximum(a, b), torch.tensor([2, 0, 1, 2])[:n]


def one(sampler, epoch, generator):
    """A one-trial sampler's draw (N = 1), without the trial dimension."""
    s, sy = sampler(epoch, [generator])
    assert s.shape[0] == sy.shape[0] == 1
    return s[0], sy[0]


def test_box_sampler_labels_and_alignment():
    lower, upper, labels = boxes()
    k = 3
    s, sy = BoxSampler(lower, upper, labels, k=k, renormalize=False)(0, [torch.Generator().manual_seed(0)])
    assert s.shape == (1, 4 * k, 6) and sy.shape == (1, 4 * k)
    s, sy = s[0], sy[0]
    assert s.shape == (4 * k, 6)
    assert sy.tolist() == [2, 2, 2, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    # row i*k + j is a sample of box i (so its label is box i's label)
    box_of_row = torch.arange(4).repeat_interleave(k)
    assert (s >= lower[box_of_row]).all() and (s <= upper[box_of_row]).all()


def test_box_sampler_renormalize_gives_unit_norms():
    lower, upper, labels = boxes()
    s, _ = one(BoxSampler(lower, upper, labels, k=5, renormalize=True), 0, torch.Generator().manual_seed(0))
    assert torch.allclose(s.norm(dim=-1), torch.ones(20), atol=1e-5)
    raw, _ = one(BoxSampler(lower, upper, labels, k=5, renormalize=False), 0, torch.Generator().manual_seed(0))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(20), atol=1e-2)
    assert torch.allclose(s, torch.nn.functional.normalize(raw, dim=-1), atol=1e-6)


def test_box_sampler_fresh_vs_fixed():
    lower, upper, labels = boxes()
    g = torch.Generator().manual_seed(0)
    fresh = BoxSampler(lower, upper, labels, k=2, fresh=True)
    a, _ = one(fresh, 0, g)
    b, _ = one(fresh, 1, g)
    assert not torch.equal(a, b)
    fixed = BoxSampler(lower, upper, labels, k=2, fresh=False)
    c, cy = one(fixed, 0, g)
    d, dy = one(fixed, 1, torch.Generator().manual_seed(99))
    assert torch.equal(c, d) and torch.equal(cy, dy)
    # same generator seed, same samples
    e, _ = one(BoxSampler(lower, upper, labels, k=2), 0, torch.Generator().manual_seed(0))
    assert torch.equal(a, e)
    # epoch 0 draws anew (a look at the samples before training does not become the training's draw)
    f, _ = one(fixed, 0, torch.Generator().manual_seed(0))
    assert torch.equal(f, e) and not torch.equal(f, c)


def test_box_sampler_length_mismatch_raises():
    lower, upper, labels = boxes()
    with pytest.raises(ValueError):
        BoxSampler(lower, upper, labels[:-1])


# ---------------------------------------------------------------- FixedAugment
def test_fixed_augment():
    x, y = torch.randn(5, 3), torch.arange(5)
    aug = FixedAugment(x, y)
    assert aug.size == 5
    for epoch in (0, 7):
        ax, ay = aug(epoch, [torch.Generator()])
        assert ax.shape == (1, 5, 3) and ay.shape == (1, 5)  # one trial (N = 1)
        assert torch.equal(ax[0], x) and torch.equal(ay[0], y)
    assert aug.to(torch.device("cpu")) is aug
    with pytest.raises(ValueError):
        FixedAugment(x, y[:-1])


def test_train_probe_uses_fixed_augment():
    """Class 2 appears only among the augmentations: the probe can only learn it from them."""
    x, y = blobs(30, classes=[0, 1])
    ax, ay = blobs(30, classes=[2], seed=1)
    tx, ty = blobs(30, seed=2)
    without = fit(x, y, 3, FAST)
    with_aug = fit(x, y, 3, FAST, augment=FixedAugment(ax, ay))
    recall2 = lambda res: (res.predict(tx)[ty == 2] == 2).float().mean().item()  # noqa: E731
    assert recall2(without) < 0.2
    assert recall2(with_aug) > 0.95
    assert with_aug.evaluate(tx, ty)["top1"] > 95


def test_train_probe_with_box_sampler():
    x, y = blobs(20)
    vx, vy = blobs(10, seed=1)
    lower, upper = x - 0.2, x + 0.2
    cfg = ProbeConfig(epochs=20, batch_size=32, lr=5e-2, weight_decay=0.0, min_steps=0)
    state = torch.get_rng_state()
    a = fit(x, y, 3, cfg, val_x=vx, val_y=vy, augment=BoxSampler(lower, upper, y, k=2, renormalize=False))
    assert torch.equal(torch.get_rng_state(), state)
    b = fit(x, y, 3, cfg, val_x=vx, val_y=vy, augment=BoxSampler(lower, upper, y, k=2, renormalize=False))
    plain = fit(x, y, 3, cfg, val_x=vx, val_y=vy)
    assert len(a.history) == 20
    assert a.history == b.history  # seeded box sampling
    assert a.history != plain.history  # the samples changed the training
    assert a.evaluate(vx, vy)["top1"] > 95


def test_train_probe_bf16_learns_and_matches_fp32():
    x, y = blobs(40)
    tx, ty = blobs(40, seed=1)
    bf = ProbeConfig(**{**FAST.to_dict(), "precision": "bf16"})
    r16, r16b, r32 = fit(x, y, 3, bf), fit(x, y, 3, bf), fit(x, y, 3, FAST)
    assert r16.history == r16b.history
    assert r16.model.weight.dtype == torch.float32
    assert r16.evaluate(tx, ty)["top1"] > 95
    assert abs(r16.history[-1]["train_loss"] - r32.history[-1]["train_loss"]) < 0.05


@pytest.mark.parametrize("stop", ["val", "loss"])
def test_train_probe_is_one_trial_of_the_one_trainer(stop):
    """train_probe is train_probe_trials with N = 1: the same weights, epochs and history, bit for bit."""
    x, y = blobs(12, num_classes=4, dim=6, spread=2.5, seed=0)
    vx, vy = blobs(10, num_classes=4, dim=6, spread=2.5, seed=1)
    cfg = ProbeConfig(epochs=30, batch_size=8, lr=5e-2, weight_decay=0.01, l2=1e-3, min_steps=0, patience=5, stop=stop)
    lower, upper = x - 0.3, x + 0.3
    single = fit(x, y, 4, cfg, val_x=vx, val_y=vy, augment=BoxSampler(lower, upper, y, k=2))
    trials = train_probe_trials(x, y, 4, [cfg], val_x=vx, val_y=vy, augment=BoxSampler(lower, upper, y, k=2), device="cpu")
    assert torch.equal(single.model.weight, trials.trial(0).weight) and torch.equal(single.model.bias, trials.trial(0).bias)
    assert (single.best_epoch, single.stopped_by, len(single.history)) == (trials.best_epoch[0], trials.stopped_by[0], trials.epochs[0])
    assert [h["train_loss"] for h in single.history] == trials.history["train_loss"][:, 0].tolist()
    assert [h["val_balanced_acc"] for h in single.history] == trials.history["val_balanced_acc"][:, 0].tolist()
    assert ("train_objective" in single.history[0]) == (stop == "loss")


def test_train_probe_shows_a_progress_bar(capsys):
    x, y = blobs(10)
    train_probe(x, y, 3, ProbeConfig(epochs=3, batch_size=0, min_steps=0), device="cpu", progress=True)
    assert "probe" in capsys.readouterr().err
    train_probe(x, y, 3, ProbeConfig(epochs=3, batch_size=0, min_steps=0), device="cpu", progress=False)
    assert "probe" not in capsys.readouterr().err

"""f_Box (lare.core.box.BoxNet), sampling inside boxes, BoxConfig, and step-1 training (train_box, the
one-trial case of train_box_trials, both through lare.core.train.minimise)."""

from __future__ import annotations

import math

import pytest
import torch

import lare.core.train
from lare.core.box import CORNER_MODES, BoxConfig, BoxNet, sample_boxes, train_box, train_box_trials
from lare.core.losses import lare_loss_terms
from lare.core.train import TrainingDiverged, seeded_init
from lare.data.synthetic import SyntheticSpec, make_synthetic

SPEC = SyntheticSpec(num_classes=8, dim=16, n_train_per_class=10, n_test_per_class=5, n_ood_per_class=2,
                     superclasses=2)
# Small, overfitting setting: the validation loss has a clear minimum before the last epoch.
CFG = BoxConfig(epochs=30, batch_size=32, lr=1e-2, seed=0, scale=100.0)  # scale 100: the validation loss rises before the end


@pytest.fixture(scope="module")
def data():
    return make_synthetic(SPEC, seed=0)


def fit(data, cfg=CFG, val=True):
    kw = dict(val_x=data["test_x"], val_y=data["test_y"]) if val else {}
    return train_box(data["train_x"], data["train_y"], data["class_text"], cfg, device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def trained(data):
    return fit(data)


def full_terms(model, x, y, text, cfg):
    model.eval()
    with torch.no_grad():
        lower, upper = model(x)
        return lare_loss_terms(lower, upper, text, y, alpha=cfg.alpha, scale=cfg.scale,
                               reduction=cfg.reduction, volume=cfg.volume)


# ---------------------------------------------------------------- BoxNet
@pytest.mark.parametrize("corners", CORNER_MODES)
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "silu"])
def test_boxnet_corners_are_ordered(corners, activation):
    torch.manual_seed(0)
    net = BoxNet(12, hidden=20, activation=activation, corners=corners)
    x = 3 * torch.randn(200, 12)
    lower, upper = net(x)
    assert lower.shape == upper.shape == (200, 12)
    assert (lower <= upper).all()
    assert (upper - lower).sum() > 0  # not all degenerate


def test_boxnet_minmax_is_elementwise_min_max_of_halves():
    torch.manual_seed(0)
    net = BoxNet(6, corners="minmax")
    x = torch.randn(10, 6)
    a, b = net.net(x).chunk(2, dim=-1)
    lower, upper = net(x)
    assert torch.equal(lower, torch.minimum(a, b))
    assert torch.equal(upper, torch.maximum(a, b))


def test_boxnet_center_width_is_centre_plus_softplus_halfwidth():
    torch.manual_seed(0)
    net = BoxNet(6, corners="center_width")
    x = torch.randn(10, 6)
    c, w = net.net(x).chunk(2, dim=-1)
    lower, upper = net(x)
    assert torch.allclose((lower + upper) / 2, c, atol=1e-6)
    # softplus(w) = log(1 + e^w), by hand
    half = torch.log1p(torch.exp(w))
    assert torch.allclose((upper - lower) / 2, half, atol=1e-6)
    assert (upper > lower).all()  # softplus > 0: strictly positive widths


def test_boxnet_architecture_and_validation():
    net = BoxNet(7)
    assert net.net[0].in_features == 7 and net.net[0].out_features == 7  # hidden defaults to d
    assert net.net[2].out_features == 14  # R^d -> R^{2d}
    assert BoxNet(7, hidden=3).net[0].out_features == 3
    with pytest.raises(ValueError, match="corners"):
        BoxNet(4, corners="x")
    with pytest.raises(ValueError, match="activation"):
        BoxNet(4, activation="sigmoidish")


# ---------------------------------------------------------------- sample_boxes
LO = [[-1.0, 0.0, 2.0], [0.5, 0.5, -3.0]]
HI = [[1.0, 0.1, 5.0], [0.6, 2.5, -1.0]]


def test_sample_boxes_shape_and_bounds():
    lower, upper = torch.tensor(LO), torch.tensor(HI)
    s = sample_boxes(lower, upper, 7, generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, 7, 3)
    assert s.dtype == lower.dtype
    assert (s >= lower.unsqueeze(1)).all() and (s <= upper.unsqueeze(1)).all()


def test_sample_boxes_uniform_moments():
    """k = 20000 draws per box; tolerances are 6 standard errors of the estimators.

    For U[lo, hi] with width w: the sample mean has s.e. w / sqrt(12 k) = 0.0020 w; the sample
    variance has s.e. sqrt((mu4 - sigma^4) / k) = w^2 / sqrt(180 k) = 0.00053 w^2 (mu4 = w^4 / 80,
    sigma^4 = w^4 / 144); the fraction below the midpoint has s.e. sqrt(0.25 / k) = 0.0035; the
    correlation between two dimensions has s.e. 1 / sqrt(k) = 0.0071.
    """
    k = 20000
    lower, upper = torch.tensor(LO, dtype=torch.float64), torch.tensor(HI, dtype=torch.float64)
    s = sample_boxes(lower, upper, k, generator=torch.Generator().manual_seed(123))
    w = upper - lower
    mean, var = s.mean(1), s.var(1)
    assert ((mean - (lower + upper) / 2).abs() <= 6 * w / math.sqrt(12 * k)).all()
    assert ((var - w ** 2 / 12).abs() <= 6 * w ** 2 / math.sqrt(180 * k)).all()
    below_mid = (s < ((lower + upper) / 2).unsqueeze(1)).double().mean(1)
    assert ((below_mid - 0.5).abs() <= 6 * 0.5 / math.sqrt(k)).all()
    # independent per dimension
    z = (s - mean.unsqueeze(1)) / var.sqrt().unsqueeze(1)
    corr01 = (z[:, :, 0] * z[:, :, 1]).mean(1)
    assert (corr01.abs() <= 6 / math.sqrt(k)).all()


def test_sample_boxes_seeded_generator():
    lower, upper = torch.tensor(LO), torch.tensor(HI)
    a = sample_boxes(lower, upper, 5, generator=torch.Generator().manual_seed(7))
    b = sample_boxes(lower, upper, 5, generator=torch.Generator().manual_seed(7))
    c = sample_boxes(lower, upper, 5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_boxes_with_generator_leaves_global_rng_alone():
    state = torch.get_rng_state()
    sample_boxes(torch.tensor(LO), torch.tensor(HI), 100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)


def test_sample_boxes_degenerate_box_is_the_point():
    p = torch.tensor([[0.3, -0.2, 0.9]])
    s = sample_boxes(p, p.clone(), 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, p.unsqueeze(1).expand(1, 4, 3))


@pytest.mark.parametrize("lower_shape, upper_shape", [((2, 3), (2, 4)), ((2, 3), (3, 3)), ((3,), (3,)),
                                                      ((2, 2, 3), (2, 2, 3))])
def test_sample_boxes_bad_shapes_raise(lower_shape, upper_shape):
    with pytest.raises(ValueError):
        sample_boxes(torch.zeros(lower_shape), torch.ones(upper_shape), 2)


def test_sample_boxes_bad_k_raises():
    with pytest.raises(ValueError, match="k"):
        sample_boxes(torch.zeros(2, 3), torch.ones(2, 3), 0)


# ---------------------------------------------------------------- BoxConfig
@pytest.mark.parametrize("kwargs", [
    dict(alpha=1.5), dict(alpha=-0.01), dict(corners="x"), dict(activation="softmax"), dict(volume="cube"),
    dict(reduction="max"), dict(epochs=0), dict(epochs=-3), dict(batch_size=-1), dict(lr=0.0), dict(lr=-1e-3),
    dict(scale=0.0), dict(scale=-100.0), dict(precision="fp16"), dict(precision="float32"),
])
def test_box_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        BoxConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(hidden=-3), dict(epochs=2.5), dict(seed=1.5), dict(scale=float("nan"))])
def test_box_config_rejects_values_that_fail_later(kwargs):
    with pytest.raises((ValueError, TypeError)):
        BoxConfig(**kwargs)


def test_box_config_defaults_and_dict():
    cfg = BoxConfig()
    assert 0 <= cfg.alpha <= 1
    assert cfg.volume == "dot_normalized"  # docs/method.md section 4: the default must keep boxes bounded
    d = cfg.to_dict()
    assert BoxConfig(**d) == cfg
    assert BoxConfig(alpha=0.0).alpha == 0.0 and BoxConfig(alpha=1.0).alpha == 1.0
    assert BoxConfig(batch_size=0).batch_size == 0  # 0 = full batch


# ---------------------------------------------------------------- train_box
def test_train_box_lowers_training_loss(data, trained):
    totals = [h["train_total"] for h in trained.history]
    assert len(totals) == CFG.epochs
    assert min(totals) < totals[0] and totals[-1] < totals[0]
    # the kept model is better on the full training set than the seeded initialisation
    init = seeded_init(lambda: BoxNet(SPEC.dim, CFG.hidden, CFG.activation, CFG.corners), CFG.seed)
    before = full_terms(init, data["train_x"], data["train_y"], data["class_text"], CFG)["total"].item()
    after = full_terms(trained.model, data["train_x"], data["train_y"], data["class_text"], CFG)["total"].item()
    assert after < before - 0.5


def test_train_box_history_keys(trained):
    row = trained.history[0]
    for split in ("train", "val"):
        for key in ("bv", "cc_plus", "cc_minus", "cc_center", "total"):
            assert math.isfinite(row[f"{split}_{key}"])
    assert [h["epoch"] for h in trained.history] == list(range(CFG.epochs))


def test_train_box_keeps_best_validation_epoch(data, trained):
    vals = [h["val_total"] for h in trained.history]
    assert trained.best_epoch == vals.index(min(vals))
    assert trained.best_epoch < CFG.epochs - 1, "setting chosen so that validation loss rises at the end"
    # patience 0 (the default): every epoch is trained although the validation loss rises
    assert trained.config.patience == 0 and trained.stopped_by == "budget" and len(trained.history) == CFG.epochs
    # the returned weights are the best epoch's, not the last epoch's
    got = full_terms(trained.model, data["test_x"], data["test_y"], data["class_text"], CFG)["total"].item()
    assert got == pytest.approx(vals[trained.best_epoch], rel=1e-5)
    assert got != pytest.approx(vals[-1], rel=1e-4)


def test_train_box_without_validation_keeps_last_epoch(data):
    res = fit(data, BoxConfig(epochs=4, batch_size=32, lr=1e-2), val=False)
    assert res.best_epoch == 3
    assert not any(k.startswith("val_") for k in res.history[-1])


@pytest.mark.parametrize("corners", CORNER_MODES)
def test_train_box_keeps_corners_ordered(data, corners):
    res = fit(data, BoxConfig(epochs=8, batch_size=32, lr=1e-2, corners=corners), val=False)
    for split in ("train_x", "test_x", "ood_x"):
        lower, upper = res.boxes(data[split])
        assert lower.shape == upper.shape == data[split].shape
        assert (lower <= upper).all()
        assert torch.isfinite(lower).all() and torch.isfinite(upper).all()


def test_train_box_is_deterministic_by_seed(data, trained):
    again = fit(data)
    assert again.best_epoch == trained.best_epoch
    assert again.history == trained.history
    for k, v in trained.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    other = fit(data, BoxConfig(epochs=CFG.epochs, batch_size=CFG.batch_size, lr=CFG.lr, seed=1))
    assert other.history != trained.history
    assert not torch.equal(other.model.net[0].weight, trained.model.net[0].weight)


def test_train_box_leaves_global_rng_untouched(data):
    cfg = BoxConfig(epochs=3, batch_size=32, lr=1e-2)
    torch.manual_seed(2024)
    state = torch.get_rng_state()
    a = fit(data, cfg)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # a different global state must not change the result
    b = fit(data, cfg)
    assert a.history == b.history
    assert torch.equal(a.model.net[0].weight, b.model.net[0].weight)


def test_train_box_rejects_bad_inputs(data):
    x, y, text = data["train_x"], data["train_y"], data["class_text"]
    with pytest.raises(ValueError):
        train_box(x, y[:-1], text, CFG, device="cpu", progress=False)
    with pytest.raises(ValueError):
        train_box(x, y, text[:, :-1], CFG, device="cpu", progress=False)
    with pytest.raises(ValueError):
        train_box(x, y + SPEC.num_classes, text, CFG, device="cpu", progress=False)
    with pytest.raises(ValueError):
        train_box(x, y, text, CFG, val_x=x[:5, :-1], val_y=y[:5], device="cpu", progress=False)


def test_train_box_bf16_matches_fp32_closely_and_is_deterministic(data):
    """bf16 autocast changes the numbers slightly, not the outcome; same seed, same numbers."""
    cfg32 = BoxConfig(epochs=15, batch_size=32, lr=1e-2, seed=0)
    cfg16 = BoxConfig(**{**cfg32.to_dict(), "precision": "bf16"})
    r32, r16a, r16b = fit(data, cfg32), fit(data, cfg16), fit(data, cfg16)
    assert r16a.config.to_dict()["precision"] == "bf16"  # recorded with the result
    assert r16a.history == r16b.history
    assert all(math.isfinite(h["train_total"]) for h in r16a.history)
    assert r16a.history != r32.history
    first32, last32 = r32.history[0]["train_total"], r32.history[-1]["train_total"]
    last16 = r16a.history[-1]["train_total"]
    assert last16 < first32 - 0.5 * (first32 - last32)  # it trains
    assert abs(last16 - last32) < 0.1 * abs(first32 - last32) + 0.02
    for p in r16a.model.parameters():
        assert p.dtype == torch.float32  # master weights stay float32
    lower, upper = r16a.boxes(data["test_x"])
    assert lower.dtype == torch.float32 and (upper >= lower).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_box_trials_together_equal_each_trial_alone_under_each_precision(data, precision, monkeypatch):
    """The one loop holds f_Box's inputs in the dtype ``precision`` gives (bf16: cast once), train_box
    is its one-trial call, and a trial trained beside another (N = 2) takes the epochs and boxes it
    takes alone (N = 1)."""
    seen = []
    real = lare.core.train.minimise

    def spy(model, terms, x, y, *, val, **kw):
        seen.append((model.trials, x.dtype, val[0].dtype))
        return real(model, terms, x, y, val=val, **kw)

    monkeypatch.setattr(lare.core.train, "minimise", spy)
    cfgs = [BoxConfig(epochs=12, batch_size=32, lr=1e-2, seed=0, patience=3, precision=precision, alpha=a, scale=s)
            for a, s in ((0.5, 100.0), (0.2, 20.0))]
    x, y, text = data["train_x"], data["train_y"], data["class_text"]
    val = dict(val_x=data["test_x"], val_y=data["test_y"])
    together = train_box_trials(x, y, text, cfgs, device="cpu", **val)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for cfg, b in zip(cfgs, together, strict=True):
        a = fit(data, cfg)
        assert seen[0] == (2, dtype, dtype) and seen[-1] == (1, dtype, dtype)
        assert (a.best_epoch, a.stopped_by, len(a.history)) == (b.best_epoch, b.stopped_by, len(b.history))
        # beside another trial bf16's batched products may round differently
        tol = 1e-6 if precision == "fp32" else 1e-3
        assert [h["val_total"] for h in b.history] == pytest.approx([h["val_total"] for h in a.history], abs=tol)
        for p, q in zip(a.boxes(data["test_x"]), b.boxes(data["test_x"]), strict=True):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5)


def test_box_trials_without_validation_keep_their_last_epoch(data):
    """No validation split: no early stopping, every trial keeps its last epoch, as one run does."""
    cfgs = [BoxConfig(epochs=5, batch_size=32, lr=1e-2, patience=2, alpha=a) for a in (0.5, 0.9)]
    res = train_box_trials(data["train_x"], data["train_y"], data["class_text"], cfgs, device="cpu")
    for cfg, r in zip(cfgs, res, strict=True):
        assert (r.best_epoch, r.stopped_by, len(r.history)) == (4, "budget", 5)
        assert not any(k.startswith("val_") for h in r.history for k in h)
        alone = fit(data, cfg, val=False)
        assert [h["train_total"] for h in r.history] == pytest.approx([h["train_total"] for h in alone.history], abs=1e-6)


def test_box_trials_refuse_configs_that_differ_beyond_the_loss_weights(data):
    cfg = BoxConfig(epochs=2)
    with pytest.raises(ValueError, match=r"may differ only in \['alpha', 'scale'\]; these differ too: \['lr'\]"):
        train_box_trials(data["train_x"], data["train_y"], data["class_text"], [cfg, BoxConfig(epochs=2, lr=0.1)])
    with pytest.raises(ValueError, match="no trials"):
        train_box_trials(data["train_x"], data["train_y"], data["class_text"], [])


def test_a_diverged_trial_is_named_among_those_trained_together(data):
    """Finite inputs and an absurd step size: every trial diverges, and the message says which and
    that the optimisation is to blame (the wording of one run, with the trials named)."""
    cfgs = [BoxConfig(epochs=2, lr=1e30, alpha=a) for a in (0.5, 0.9)]
    with pytest.raises(TrainingDiverged) as err:
        train_box_trials(data["train_x"], data["train_y"], data["class_text"], cfgs, val_x=data["test_x"],
                         val_y=data["test_y"], device="cpu")
    msg = str(err.value)
    assert msg.startswith("f_Box (trials 0, 1 of 2, numbered from 0): training diverged"), msg
    assert "although its inputs are finite" in msg and "lower the learning rate" in msg


@pytest.mark.parametrize("progress", [True, False])
def test_train_box_progress_bar(data, progress, capsys):
    fit_kw = dict(val_x=data["test_x"], val_y=data["test_y"], device="cpu", progress=progress)
    train_box(data["train_x"], data["train_y"], data["class_text"], BoxConfig(epochs=2), **fit_kw)
    assert ("f_Box" in capsys.readouterr().err) == progress

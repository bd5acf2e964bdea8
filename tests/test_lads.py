"""The LADS baseline (lare.core.lads): domain directions, its losses, training (train_lads, the one-trial
case of train_lads_trials) and augmentation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lare.core.lads import (
    LADSAugmenter,
    LADSConfig,
    domain_alignment_loss,
    domain_directions,
    inverse_frequency_weights,
    lads_class_consistency_loss,
    train_lads,
    train_lads_trials,
)
from lare.core.train import TrainingDiverged, seeded_init
from lare.data.synthetic import SyntheticSpec, make_synthetic

SPEC = SyntheticSpec(num_classes=10, dim=32, n_train_per_class=20, n_test_per_class=10, n_ood_per_class=5)
CFG = LADSConfig(epochs=20, batch_size=64, lr=1e-2)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(SPEC, seed=0)


def fit(data, cfg=CFG, val=True):
    kw = dict(val_x=data["test_x"], val_y=data["test_y"]) if val else {}
    return train_lads(data["train_x"], data["train_y"], data["photo_text"], data["painting_text"], cfg,
                      device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def trained(data):
    return fit(data)


# ---------------------------------------------------------------- pieces
def test_domain_directions_normalised_and_parallel():
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    dirs = domain_directions(src, tgt)
    assert dirs.shape == (4, 8)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(F.cosine_similarity(dirs, tgt - src, dim=-1), torch.ones(4), atol=1e-6)
    # hand example: target - source = (3, 4) -> (0.6, 0.8)
    got = domain_directions(torch.tensor([[1.0, 1.0]]), torch.tensor([[4.0, 5.0]]))
    assert torch.allclose(got, torch.tensor([[0.6, 0.8]]))
    with pytest.raises(ValueError):
        domain_directions(src, tgt[:, :-1])


def test_domain_alignment_loss_along_opposite_and_orthogonal():
    g = torch.Generator().manual_seed(0)
    dirs = F.normalize(torch.randn(3, 6, generator=g, dtype=torch.float64), dim=-1)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0])
    step = torch.tensor([0.5, 2.0, 0.1, 3.0, 1.0], dtype=torch.float64).unsqueeze(1)
    assert domain_alignment_loss(x, x + step * dirs[labels], dirs, labels).item() == pytest.approx(0.0, abs=1e-12)
    assert domain_alignment_loss(x, x - step * dirs[labels], dirs, labels).item() == pytest.approx(2.0, abs=1e-12)
    # a move orthogonal to the direction: cos = 0, loss 1
    r = torch.randn(5, 6, generator=g, dtype=torch.float64)
    d = dirs[labels]
    ortho = r - (r * d).sum(-1, keepdim=True) * d
    assert domain_alignment_loss(x, x + ortho, dirs, labels).item() == pytest.approx(1.0, abs=1e-9)
    # mixed: one item along (0), one opposite (2): mean 1
    mixed = x[:2] + torch.stack([d[0], -d[1]])
    assert domain_alignment_loss(x[:2], mixed, dirs, labels[:2]).item() == pytest.approx(1.0, abs=1e-12)


def test_inverse_frequency_weights_hand():
    # n = 6, classes present {0, 1, 2} (C_present = 3), counts 3, 1, 2; class 3 absent
    w = inverse_frequency_weights(torch.tensor([0, 0, 0, 1, 2, 2]), 4)
    assert w.tolist() == pytest.approx([6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2), 0.0])
    # balanced labels give weight 1 everywhere
    assert inverse_frequency_weights(torch.tensor([0, 1, 2, 0, 1, 2]), 3).tolist() == pytest.approx([1, 1, 1])


def test_lads_class_consistency_loss_hand():
    """Raw cosine logits; weighted CE = sum_i w_{y_i} l_i / sum_i w_{y_i}."""
    text = torch.tensor([[2.0, 0.0], [0.0, 5.0]], dtype=torch.float64)  # normalised: e0, e1
    aug = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)  # normalised: (0.6, 0.8), (1, 0)
    labels = torch.tensor([0, 1])
    # item 0: logits (0.6, 0.8), y = 0; item 1: logits (1, 0), y = 1
    l0 = -0.6 + math.log(math.exp(0.6) + math.exp(0.8))
    l1 = -0.0 + math.log(math.exp(1.0) + math.exp(0.0))
    assert lads_class_consistency_loss(aug, text, labels).item() == pytest.approx((l0 + l1) / 2, rel=1e-10)
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    got = lads_class_consistency_loss(aug, text, labels, w).item()
    assert got == pytest.approx((1 * l0 + 3 * l1) / 4, rel=1e-10)


def test_lads_augmenter_architecture():
    net = LADSAugmenter(16)
    assert [m.__class__.__name__ for m in net.net] == ["Linear", "ReLU", "Linear"]
    assert (net.net[0].in_features, net.net[0].out_features) == (16, 8)
    assert (net.net[2].in_features, net.net[2].out_features) == (8, 16)


@pytest.mark.parametrize("kwargs", [dict(domain_weight=1.5), dict(domain_weight=-0.1), dict(epochs=0),
                                    dict(lr=0.0), dict(batch_size=-1), dict(precision="half")])
def test_lads_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        LADSConfig(**kwargs)


# ---------------------------------------------------------------- training
def test_train_lads_lowers_the_loss(data, trained):
    totals = [h["train_total"] for h in trained.history]
    assert len(totals) == CFG.epochs
    assert totals[-1] < totals[0] - 0.1
    for key in ("train_domain", "train_class", "val_domain", "val_class", "val_total"):
        assert math.isfinite(trained.history[-1][key])
    # the kept model beats its own seeded initialisation on the full training set
    init = seeded_init(lambda: LADSAugmenter(SPEC.dim), CFG.seed)
    dirs = domain_directions(data["photo_text"], data["painting_text"])
    x, y = data["train_x"], data["train_y"]
    with torch.no_grad():
        before = domain_alignment_loss(x, init(x), dirs, y).item()
        after = domain_alignment_loss(x, trained.model(x), dirs, y).item()
    assert after < before


def test_train_lads_domain_only_aligns_with_direction(data):
    """With domain_weight = 1 only the alignment term is trained: cos(aug - x, dT(y)) -> 1."""
    res = fit(data, LADSConfig(domain_weight=1.0, epochs=20, batch_size=64, lr=1e-2), val=False)
    dirs = domain_directions(data["photo_text"], data["painting_text"])
    x, y = data["train_x"], data["train_y"]
    assert domain_alignment_loss(x, res.augment(x, normalize=False), dirs, y).item() < 0.1
    assert res.history[-1]["train_total"] == pytest.approx(res.history[-1]["train_domain"])


def test_train_lads_keeps_best_validation_epoch(trained):
    vals = [h["val_total"] for h in trained.history]
    assert trained.best_epoch == vals.index(min(vals))


def test_train_lads_is_deterministic_by_seed(data, trained):
    again = fit(data)
    assert again.history == trained.history
    for k, v in trained.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    other = fit(data, LADSConfig(epochs=CFG.epochs, batch_size=CFG.batch_size, lr=CFG.lr, seed=3))
    assert other.history != trained.history
    assert not torch.equal(other.model.net[0].weight, trained.model.net[0].weight)


def test_train_lads_leaves_global_rng_untouched(data):
    state = torch.get_rng_state()
    fit(data, LADSConfig(epochs=2, batch_size=64, lr=1e-2))
    assert torch.equal(torch.get_rng_state(), state)


def test_lads_augment_outputs(data, trained):
    x = data["ood_x"]
    out = trained.augment(x)
    assert out.shape == x.shape
    assert torch.allclose(out.norm(dim=-1), torch.ones(len(x)), atol=1e-5)
    raw = trained.augment(x, normalize=False)
    with torch.no_grad():
        assert torch.allclose(raw, trained.model(x))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(x)), atol=1e-3)
    assert torch.allclose(out, F.normalize(raw, dim=-1), atol=1e-6)


def test_train_lads_rejects_bad_inputs(data):
    x, y = data["train_x"], data["train_y"]
    with pytest.raises(ValueError):
        train_lads(x, y, data["photo_text"], data["painting_text"][:, :-1], CFG, device="cpu", progress=False)
    with pytest.raises(ValueError):
        train_lads(x, y + SPEC.num_classes, data["photo_text"], data["painting_text"], CFG, device="cpu",
                   progress=False)


def test_train_lads_bf16_trains_close_to_fp32(data, trained):
    res = fit(data, LADSConfig(**{**CFG.to_dict(), "precision": "bf16"}))
    assert res.config.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    t16, t32 = res.history[-1]["train_total"], trained.history[-1]["train_total"]
    first = trained.history[0]["train_total"]
    assert math.isfinite(t16) and t16 < first - 0.1
    assert abs(t16 - t32) < 0.1 * (first - t32) + 0.02


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lads_trials_together_equal_each_trial_alone_under_each_precision(data, precision):
    """Beside another trial (N = 2) an augmenter trains as it does alone (N = 1, train_lads) under
    either precision (the inputs stay float32 under bf16: x enters the alignment loss itself, not
    only through a product)."""
    cfgs = [LADSConfig(**{**CFG.to_dict(), "epochs": 8, "precision": precision, "domain_weight": w}) for w in (0.5, 0.2)]
    together = train_lads_trials(data["train_x"], data["train_y"], data["photo_text"], data["painting_text"], cfgs,
                                 val_x=data["test_x"], val_y=data["test_y"], device="cpu")
    for cfg, b in zip(cfgs, together, strict=True):
        a = fit(data, cfg)
        assert (a.best_epoch, len(a.history)) == (b.best_epoch, len(b.history))
        assert [h["val_total"] for h in b.history] == pytest.approx([h["val_total"] for h in a.history], abs=1e-6)
        torch.testing.assert_close(b.augment(data["test_x"]), a.augment(data["test_x"]), atol=1e-5, rtol=1e-5)
    assert together[0].history != together[1].history  # the trials differ, so the comparison can fail


def test_train_lads_without_validation_trains_every_epoch_and_keeps_the_last(data):
    res = fit(data, LADSConfig(epochs=4, batch_size=64, lr=1e-2, patience=1), val=False)
    assert (res.best_epoch, res.stopped_by, len(res.history)) == (3, "budget", 4)
    assert not any(k.startswith("val_") for h in res.history for k in h)


def test_train_lads_patience_zero_trains_every_epoch(trained):
    assert trained.config.patience == 0 and trained.stopped_by == "budget" and len(trained.history) == CFG.epochs


def test_train_lads_blames_non_finite_prompts_not_the_learning_rate(data):
    bad = data["painting_text"].clone()
    bad[2, 5] = float("nan")
    with pytest.raises(TrainingDiverged) as err:
        train_lads(data["train_x"], data["train_y"], data["photo_text"], bad, LADSConfig(epochs=2),
                   val_x=data["test_x"], val_y=data["test_y"], device="cpu", progress=False)
    msg = str(err.value)
    assert msg.startswith("LADS: the loss is not finite because the inputs are not: target_text has 1 NaN"), msg
    assert "the learning rate is not at fault" in msg


def test_lads_trials_refuse_configs_that_differ_beyond_the_domain_weight(data):
    with pytest.raises(ValueError, match=r"may differ only in \['domain_weight'\]; these differ too: \['seed'\]"):
        train_lads_trials(data["train_x"], data["train_y"], data["photo_text"], data["painting_text"],
                          [LADSConfig(epochs=2), LADSConfig(epochs=2, seed=1)])


@pytest.mark.parametrize("progress", [True, False])
def test_train_lads_progress_bar(data, progress, capsys):
    train_lads(data["train_x"], data["train_y"], data["photo_text"], data["painting_text"], LADSConfig(epochs=2),
               device="cpu", progress=progress)
    assert ("LADS" in capsys.readouterr().err) == progress

"""Eq. (1)-(5) of the paper (lare.core.losses) against hand computation on tiny tensors.

Fixture: n = 2 items, d = 3, C = 2 classes. Every expected value below is written out by hand
(dot products as literal numbers, cross-entropy with math.log/math.exp), never by calling the
formula under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from lare.core.losses import (
    VOLUME_FORMS,
    box_volume_loss,
    box_volume_variant,
    class_consistency_loss,
    corners_of,
    lare_loss,
    lare_loss_terms,
    lare_loss_terms_trials,
)

LOWER = [[0.1, -0.2, 0.3], [0.5, 0.0, -0.4]]
UPPER = [[0.4, 0.1, 0.5], [0.9, 0.3, 0.2]]
TEXT = [[1.0, 0.5, 0.0], [0.0, 1.0, -0.5]]  # T(0), T(1)
LABELS = [0, 1]

# Eq. (1) per item: X^+ . X^-
#   item 0: 0.4*0.1 + 0.1*(-0.2) + 0.5*0.3  = 0.04 - 0.02 + 0.15 = 0.17
#   item 1: 0.9*0.5 + 0.3*0.0    + 0.2*(-0.4) = 0.45 + 0 - 0.08  = 0.37
BV_ITEMS = [0.17, 0.37]

# Logits p . T(c), written as (logit of the true class, logit of the other class).
#   upper  item 0 [0.4, 0.1, 0.5]:   T0 = 0.4 + 0.05 = 0.45,   T1 = 0.1 - 0.25 = -0.15   (y = 0)
#   upper  item 1 [0.9, 0.3, 0.2]:   T0 = 0.9 + 0.15 = 1.05,   T1 = 0.3 - 0.1  = 0.2     (y = 1)
#   lower  item 0 [0.1, -0.2, 0.3]:  T0 = 0.1 - 0.1  = 0.0,    T1 = -0.2 - 0.15 = -0.35  (y = 0)
#   lower  item 1 [0.5, 0.0, -0.4]:  T0 = 0.5,                 T1 = 0.0 + 0.2 = 0.2      (y = 1)
#   centre item 0 [0.25, -0.05, 0.4]: T0 = 0.25 - 0.025 = 0.225, T1 = -0.05 - 0.2 = -0.25 (y = 0)
#   centre item 1 [0.7, 0.15, -0.1]:  T0 = 0.7 + 0.075 = 0.775,  T1 = 0.15 + 0.05 = 0.2  (y = 1)
UPPER_LOGITS = [(0.45, -0.15), (0.2, 1.05)]
LOWER_LOGITS = [(0.0, -0.35), (0.2, 0.5)]
CENTRE_LOGITS = [(0.225, -0.25), (0.2, 0.775)]


def ce2(true_logit: float, other_logit: float, scale: float = 1.0) -> float:
    """Two-class cross-entropy -log softmax(true), by hand."""
    a, b = scale * true_logit, scale * other_logit
    return -a + math.log(math.exp(a) + math.exp(b))


def hand_cc(logits, scale: float = 1.0) -> list[float]:
    return [ce2(t, o, scale) for t, o in logits]


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture
def inputs():
    return t(LOWER), t(UPPER), t(TEXT), torch.tensor(LABELS)


# ---------------------------------------------------------------- Eq. (1)
def test_box_volume_loss_sum_and_mean(inputs):
    lower, upper, _, _ = inputs
    assert box_volume_loss(lower, upper, reduction="sum").item() == pytest.approx(0.17 + 0.37, abs=1e-12)
    assert box_volume_loss(lower, upper, reduction="mean").item() == pytest.approx((0.17 + 0.37) / 2, abs=1e-12)
    # the default is the mean
    assert box_volume_loss(lower, upper).item() == pytest.approx(0.27, abs=1e-12)


def test_box_volume_loss_gradient_is_the_other_corner(inputs):
    """d/dX^+ of sum_i X^+_i . X^-_i is X^-, and vice versa (mean: divided by n)."""
    lower, upper, _, _ = inputs
    lower, upper = lower.clone().requires_grad_(), upper.clone().requires_grad_()
    box_volume_loss(lower, upper, reduction="sum").backward()
    assert torch.allclose(upper.grad, t(LOWER))
    assert torch.allclose(lower.grad, t(UPPER))
    lower.grad = upper.grad = None
    box_volume_loss(lower, upper, reduction="mean").backward()
    assert torch.allclose(upper.grad, t(LOWER) / 2)


# ---------------------------------------------------------------- Eq. (2)-(4)
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_class_consistency_loss_hand(inputs, scale):
    lower, upper, text, labels = inputs
    for points, logits in ((upper, UPPER_LOGITS), (lower, LOWER_LOGITS)):
        items = hand_cc(logits, scale)
        got_sum = class_consistency_loss(points, text, labels, scale=scale, reduction="sum").item()
        got_mean = class_consistency_loss(points, text, labels, scale=scale, reduction="mean").item()
        assert got_sum == pytest.approx(sum(items), rel=1e-10)
        assert got_mean == pytest.approx(sum(items) / 2, rel=1e-10)


def test_class_consistency_loss_rewards_the_right_class(inputs):
    """A point aligned with its class text has a lower CE than one aligned with another class."""
    _, _, text, _ = inputs
    y = torch.tensor([0])
    good = class_consistency_loss(text[:1] * 3, text, y).item()
    bad = class_consistency_loss(text[1:] * 3, text, y).item()
    assert good < bad


# ---------------------------------------------------------------- Eq. (5)
def hand_terms(alpha: float, scale: float = 1.0, reduction: str = "mean",
               upper_logits=UPPER_LOGITS, lower_logits=LOWER_LOGITS, centre_logits=CENTRE_LOGITS,
               bv_items=BV_ITEMS) -> dict[str, float]:
    red = sum if reduction == "sum" else (lambda v: sum(v) / len(v))
    bv = red(bv_items)
    cp = red(hand_cc(upper_logits, scale))
    cm = red(hand_cc(lower_logits, scale))
    cc = red(hand_cc(centre_logits, scale))
    total = (1 - alpha) * bv + alpha / 3 * cp + alpha / 3 * cm + alpha / 3 * cc
    return {"bv": bv, "cc_plus": cp, "cc_minus": cm, "cc_center": cc, "total": total}


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_lare_loss_terms_hand(inputs, alpha, reduction, scale):
    lower, upper, text, labels = inputs
    got = lare_loss_terms(lower, upper, text, labels, alpha=alpha, scale=scale, reduction=reduction)
    want = hand_terms(alpha, scale, reduction)
    assert set(got) == {"bv", "cc_plus", "cc_minus", "cc_center", "total"}
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value, rel=1e-10, abs=1e-12), key
    # lare_loss is the total of the literal (dot) form
    total = lare_loss(lower, upper, text, labels, alpha=alpha, scale=scale, reduction=reduction)
    assert total.item() == pytest.approx(want["total"], rel=1e-10, abs=1e-12)


def test_sum_is_n_times_mean(inputs):
    lower, upper, text, labels = inputs
    s = lare_loss_terms(lower, upper, text, labels, alpha=0.4, reduction="sum")
    m = lare_loss_terms(lower, upper, text, labels, alpha=0.4, reduction="mean")
    for key in s:
        assert s[key].item() == pytest.approx(2 * m[key].item(), rel=1e-12), key


def test_alpha_extremes_select_the_terms(inputs):
    lower, upper, text, labels = inputs
    a0 = lare_loss_terms(lower, upper, text, labels, alpha=0.0)
    a1 = lare_loss_terms(lower, upper, text, labels, alpha=1.0)
    assert a0["total"].item() == pytest.approx(0.27, abs=1e-12)  # only L_BV
    want = hand_terms(1.0)
    assert a1["total"].item() == pytest.approx((want["cc_plus"] + want["cc_minus"] + want["cc_center"]) / 3, rel=1e-10)


def test_cc_minus_is_the_lower_corner_not_the_centre(inputs):
    """The seed's typo prints L_CC twice; the fixed Eq. (5) must use the lower corner in L_CC-."""
    lower, upper, text, labels = inputs
    terms = lare_loss_terms(lower, upper, text, labels, alpha=0.5)
    assert terms["cc_minus"].item() == pytest.approx(sum(hand_cc(LOWER_LOGITS)) / 2, rel=1e-10)
    assert terms["cc_minus"].item() != pytest.approx(terms["cc_center"].item(), rel=1e-3)
    assert terms["cc_minus"].item() != pytest.approx(terms["cc_plus"].item(), rel=1e-3)


@pytest.mark.parametrize("alpha", [0.2, 0.9])
def test_changing_only_lower_changes_total_by_the_expected_amount(inputs, alpha):
    """Move lower[0, 0] from 0.1 to -0.3; only L_BV, L_CC- and L_CC (centre) may change.

    New values by hand (T1[0] = 0, so only the T0 logits of item 0 move):
      BV item 0: 0.4*(-0.3) + 0.1*(-0.2) + 0.5*0.3 = -0.12 - 0.02 + 0.15 = 0.01
      lower  item 0 [-0.3, -0.2, 0.3]:  T0 = -0.3 - 0.1 = -0.4,  T1 = -0.35
      centre item 0 [0.05, -0.05, 0.4]: T0 = 0.05 - 0.025 = 0.025, T1 = -0.25
    """
    lower, upper, text, labels = inputs
    lower2 = lower.clone()
    lower2[0, 0] = -0.3
    before = lare_loss_terms(lower, upper, text, labels, alpha=alpha)
    after = lare_loss_terms(lower2, upper, text, labels, alpha=alpha)

    d_bv = (0.01 - 0.17) / 2
    d_cm = (ce2(-0.4, -0.35) - ce2(0.0, -0.35)) / 2
    d_cc = (ce2(0.025, -0.25) - ce2(0.225, -0.25)) / 2
    assert after["cc_plus"].item() == before["cc_plus"].item()
    assert (after["bv"] - before["bv"]).item() == pytest.approx(d_bv, rel=1e-9)
    assert (after["cc_minus"] - before["cc_minus"]).item() == pytest.approx(d_cm, rel=1e-9)
    assert (after["cc_center"] - before["cc_center"]).item() == pytest.approx(d_cc, rel=1e-9)
    expected = (1 - alpha) * d_bv + alpha / 3 * d_cm + alpha / 3 * d_cc
    assert (after["total"] - before["total"]).item() == pytest.approx(expected, rel=1e-9)


def test_swapping_corners_swaps_cc_plus_and_cc_minus(inputs):
    lower, upper, text, labels = inputs
    a = lare_loss_terms(lower, upper, text, labels, alpha=0.6)
    b = lare_loss_terms(upper, lower, text, labels, alpha=0.6)
    assert b["cc_plus"].item() == pytest.approx(a["cc_minus"].item(), rel=1e-12)
    assert b["cc_minus"].item() == pytest.approx(a["cc_plus"].item(), rel=1e-12)
    assert b["total"].item() == pytest.approx(a["total"].item(), rel=1e-12)


# ---------------------------------------------------------------- volume variants
def test_box_volume_variant_forms_hand(inputs):
    lower, upper, _, _ = inputs
    assert box_volume_variant(lower, upper, form="dot", reduction="sum").item() == pytest.approx(0.54, abs=1e-12)
    # cosine of the corners: |l0|^2 = 0.14, |u0|^2 = 0.42, |l1|^2 = 0.41, |u1|^2 = 0.94
    cos = [0.17 / math.sqrt(0.14 * 0.42), 0.37 / math.sqrt(0.41 * 0.94)]
    got = box_volume_variant(lower, upper, form="dot_normalized", reduction="mean").item()
    assert got == pytest.approx(sum(cos) / 2, rel=1e-10)
    # widths: item 0 [0.3, 0.3, 0.2], item 1 [0.4, 0.3, 0.6]
    eps = 1e-6
    logv = [-sum(math.log(w + eps) for w in (0.3, 0.3, 0.2)), -sum(math.log(w + eps) for w in (0.4, 0.3, 0.6))]
    got = box_volume_variant(lower, upper, form="log_volume", reduction="sum", eps=eps).item()
    assert got == pytest.approx(sum(logv), rel=1e-9)
    got = box_volume_variant(lower, upper, form="log_volume", reduction="mean", eps=0.0).item()
    assert got == pytest.approx(-(math.log(0.3 * 0.3 * 0.2) + math.log(0.4 * 0.3 * 0.6)) / 2, rel=1e-9)


def test_log_volume_degenerate_box_uses_eps():
    x = torch.zeros(1, 4, dtype=torch.float64)
    got = box_volume_variant(x, x, form="log_volume", eps=1e-3).item()
    assert got == pytest.approx(-4 * math.log(1e-3), rel=1e-12)


def test_dot_normalized_is_bounded_for_huge_corners():
    g = torch.Generator().manual_seed(0)
    lower = 1e4 * torch.randn(64, 8, generator=g)
    upper = 1e4 * torch.randn(64, 8, generator=g)
    per_item = torch.stack([box_volume_variant(lower[i:i + 1], upper[i:i + 1], form="dot_normalized")
                            for i in range(64)])
    assert per_item.abs().max().item() <= 1 + 1e-6
    # ... and it is the cosine of the corners
    assert torch.allclose(per_item, torch.nn.functional.cosine_similarity(lower, upper, dim=-1), atol=1e-5)
    assert box_volume_variant(lower, upper, form="dot").abs().item() > 1e6  # the literal form is not


def test_lare_loss_terms_passes_volume_form(inputs):
    lower, upper, text, labels = inputs
    for form in VOLUME_FORMS:
        terms = lare_loss_terms(lower, upper, text, labels, alpha=0.25, volume=form, reduction="sum")
        assert terms["bv"].item() == pytest.approx(
            box_volume_variant(lower, upper, form=form, reduction="sum").item(), rel=1e-12)
        cc = hand_terms(0.25, reduction="sum")
        want = 0.75 * terms["bv"].item() + 0.25 / 3 * (cc["cc_plus"] + cc["cc_minus"] + cc["cc_center"])
        assert terms["total"].item() == pytest.approx(want, rel=1e-10)


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("alpha", [-0.1, 1.5, 2.0, float("nan")])
def test_alpha_outside_unit_interval_raises(inputs, alpha):
    lower, upper, text, labels = inputs
    with pytest.raises(ValueError, match="alpha"):
        lare_loss(lower, upper, text, labels, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        lare_loss_terms(lower, upper, text, labels, alpha=alpha)


def test_bad_reduction_raises(inputs):
    lower, upper, text, labels = inputs
    with pytest.raises(ValueError):
        box_volume_loss(lower, upper, reduction="max")
    with pytest.raises(ValueError):
        box_volume_variant(lower, upper, form="log_volume", reduction="median")
    with pytest.raises(ValueError):
        class_consistency_loss(upper, text, labels, reduction="bad")
    with pytest.raises(ValueError):
        lare_loss_terms(lower, upper, text, labels, alpha=0.5, reduction="avg")
    with pytest.raises(ValueError):
        lare_loss(lower, upper, text, labels, alpha=0.5, reduction="avg")


def test_bad_volume_form_raises(inputs):
    lower, upper, text, labels = inputs
    with pytest.raises(ValueError, match="volume"):
        box_volume_variant(lower, upper, form="cube")
    with pytest.raises(ValueError, match="volume"):
        lare_loss_terms(lower, upper, text, labels, alpha=0.5, volume="cube")


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("form", VOLUME_FORMS)
@pytest.mark.parametrize("degenerate", [False, True])
def test_finite_gradients(form, degenerate):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    lower = torch.minimum(a, b)
    upper = lower.clone() if degenerate else torch.maximum(a, b)  # degenerate: zero-width boxes
    lower.requires_grad_()
    upper.requires_grad_()
    text = torch.randn(3, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1])
    terms = lare_loss_terms(lower, upper, text, labels, alpha=0.5, scale=100.0, volume=form)
    terms["total"].backward()
    assert torch.isfinite(terms["total"])
    for grad in (lower.grad, upper.grad):
        assert grad is not None and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("form", VOLUME_FORMS)
def test_zero_corners_give_finite_gradients(form):
    lower = torch.zeros(2, 3, requires_grad=True)
    upper = torch.zeros(2, 3, requires_grad=True)
    box_volume_variant(lower, upper, form=form).backward()
    assert torch.isfinite(lower.grad).all() and torch.isfinite(upper.grad).all()


def test_log_volume_gradient_widens_the_box(inputs):
    """Gradient descent on -log(width) must raise the upper and lower the lower corner."""
    lower, upper, _, _ = inputs
    lower, upper = lower.clone().requires_grad_(), upper.clone().requires_grad_()
    box_volume_variant(lower, upper, form="log_volume", reduction="sum", eps=0.0).backward()
    # d/du -log(u - l) = -1/(u - l); d/dl = +1/(u - l)
    widths = t(UPPER) - t(LOWER)
    assert torch.allclose(upper.grad, -1 / widths)
    assert torch.allclose(lower.grad, 1 / widths)


# ---------------------------------------------------------------- the fused training form
FUSED_CASES = [(c, v, r) for c in ("minmax", "center_width") for v in VOLUME_FORMS for r in ("mean", "sum")]


def one_trial(out, text, labels, *, alpha, scale, **kw):
    """The fused training form (lare_loss_terms_trials) for one f_Box, N = 1, as train_box calls it:
    ``out`` (b, 2d), a float ``alpha`` and ``scale``; the terms as scalars."""
    terms = lare_loss_terms_trials(out.unsqueeze(0), text, labels, alpha=torch.tensor([alpha], dtype=torch.float64),
                                   scale=torch.tensor([scale], dtype=torch.float64), **kw)
    return {k: v[0] for k, v in terms.items()}


def _raw_output(n, d, corners, seed):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(n, 2 * d, generator=g, dtype=torch.float64)
    if corners == "minmax":
        out[:3, d:] = out[:3, :d]  # ties: torch.minimum's backward splits them, so must the fused one
    return out


@pytest.mark.parametrize("corners,volume,reduction", FUSED_CASES)
def test_fused_terms_equal_literal_terms_and_gradients(corners, volume, reduction):
    """The fused form (N = 1) == lare_loss_terms(*corners_of(out)) in value and in d/d out, float64."""
    n, d, c = 23, 12, 7
    g = torch.Generator().manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(c, d, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, c, (n,), generator=g)
    out = _raw_output(n, d, corners, seed=2)
    kw = dict(alpha=0.3, scale=7.0, reduction=reduction, volume=volume)
    o_ref, o_fused = out.clone().requires_grad_(), out.clone().requires_grad_()
    ref = lare_loss_terms(*corners_of(o_ref, corners), text, labels, **kw)
    fused = one_trial(o_fused, text, labels, corners=corners, **kw)
    assert set(fused) == set(ref)
    for k in ref:
        assert fused[k].item() == pytest.approx(ref[k].item(), rel=1e-10, abs=1e-12), k
    # a random weighting of all five outputs exercises every incoming gradient of the fused node
    w = torch.rand(len(ref), generator=g, dtype=torch.float64) + 0.1
    sum(wi * ref[k] for wi, k in zip(w, ref, strict=True)).backward()
    sum(wi * fused[k] for wi, k in zip(w, ref, strict=True)).backward()
    assert torch.allclose(o_fused.grad, o_ref.grad, rtol=1e-9, atol=1e-12)
    assert o_fused.grad.abs().sum() > 0


def test_fused_terms_pass_torch_gradcheck():
    n, d, c = 5, 4, 3
    g = torch.Generator().manual_seed(3)
    text = torch.randn(c, d, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0])
    for corners in ("minmax", "center_width"):
        out = torch.randn(n, 2 * d, generator=g, dtype=torch.float64, requires_grad=True)
        def fn(o, corners=corners):
            return one_trial(o, text, labels, corners=corners, alpha=0.4, scale=3.0,
                             volume="dot_normalized")["total"]
        assert torch.autograd.gradcheck(fn, (out,))


@pytest.mark.parametrize("corners,volume", [("minmax", "dot_normalized"), ("center_width", "log_volume"),
                                            ("center_width", "dot")])
def test_fused_terms_under_bf16_autocast_stay_close_to_float32(corners, volume):
    n, d, c = 64, 32, 10
    g = torch.Generator().manual_seed(4)
    text = torch.nn.functional.normalize(torch.randn(c, d, generator=g), dim=-1)
    labels = torch.randint(0, c, (n,), generator=g)
    out32 = torch.randn(n, 2 * d, generator=g) * 0.1
    kw = dict(corners=corners, alpha=0.5, scale=100.0, volume=volume)
    ref = one_trial(out32, text, labels, **kw)
    out16 = out32.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = one_trial(out16, text, labels, **kw)
    for k in ref:
        assert low[k].dtype == torch.float32  # reductions never in bf16
        assert low[k].item() == pytest.approx(ref[k].item(), rel=0.05, abs=0.05), k
    low["total"].backward()  # outside autocast, as a training step runs it
    assert out16.grad.dtype == torch.bfloat16 and torch.isfinite(out16.grad.float()).all()


@pytest.mark.parametrize("kwargs", [dict(corners="box"), dict(volume="cube"), dict(reduction="max"), dict(alpha=2.0)])
def test_fused_terms_reject_bad_options(kwargs):
    args = dict(corners="minmax", alpha=0.5, scale=1.0, reduction="mean", volume="dot")
    with pytest.raises(ValueError):
        one_trial(torch.zeros(2, 6), torch.zeros(3, 3), torch.tensor([0, 1]), **{**args, **kwargs})


@pytest.mark.parametrize("corners,volume,reduction", FUSED_CASES)
def test_trials_terms_equal_each_trials_fused_terms_and_gradients(corners, volume, reduction):
    """lare_loss_terms_trials on N stacked outputs == the same on each alone (N = 1), with each trial's
    alpha and scale, in value and in d/d out (float64): f_Box trials trained together minimise
    exactly the loss each trial minimises alone."""
    n, d, c, trials = 17, 6, 5, 3
    g = torch.Generator().manual_seed(7)
    text = torch.nn.functional.normalize(torch.randn(c, d, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, c, (n,), generator=g)
    out = torch.stack([_raw_output(n, d, corners, seed=10 + i) for i in range(trials)])
    alpha = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    scale = torch.tensor([10.0, 30.0, 100.0], dtype=torch.float64)
    o_all = out.clone().requires_grad_()
    batched = lare_loss_terms_trials(o_all, text, labels, corners=corners, alpha=alpha, scale=scale,
                                     reduction=reduction, volume=volume)
    batched["total"].sum().backward()
    for i in range(trials):
        o = out[i].clone().requires_grad_()
        alone = one_trial(o, text, labels, corners=corners, alpha=float(alpha[i]), scale=float(scale[i]),
                          reduction=reduction, volume=volume)
        for k in alone:
            assert batched[k][i].item() == pytest.approx(alone[k].item(), rel=1e-12, abs=1e-12), (i, k)
        alone["total"].backward()
        assert torch.allclose(o_all.grad[i], o.grad, rtol=1e-10, atol=1e-13)


def test_trials_terms_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="N, b, 2d"):
        lare_loss_terms_trials(torch.zeros(2, 4, 6), torch.zeros(3, 3), torch.zeros(4, dtype=torch.long), corners="minmax",
                               alpha=torch.tensor([0.5]), scale=torch.tensor([1.0, 1.0]))

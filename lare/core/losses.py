"""The LARE losses, Eq. (1)-(5) of the paper, written literally.

Shapes: ``lower``, ``upper`` and ``points`` are ``(n, d)``; ``class_text`` is ``(C, d)`` (one text
embedding T(c) per class); ``labels`` is ``(n,)`` of class indices.

``reduction="sum"`` is the paper's sum over items; ``"mean"`` divides by ``n`` so the balance
between the terms does not depend on the batch size. Variants that keep the boxes bounded
(normalised corners, log-volume) live in :func:`box_volume_variant` and are chosen by the training
configuration; the three public functions stay literal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum")
VOLUME_FORMS = ("dot", "dot_normalized", "log_volume")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def box_volume_loss(lower: torch.Tensor, upper: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Eq. (1): ``L_BV = sum_i X_i^+ . X_i^-``, the per-item dot product of the two corners.

    Minimising it pushes the corners apart (it is not a volume in the geometric sense; see
    :func:`box_volume_variant` for bounded alternatives).
    """
    return _reduce((upper * lower).sum(-1), reduction)


def class_consistency_loss(points: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor, *,
                           scale: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Eq. (2)-(4): ``CE(S[p . T], y)``: cross-entropy of the softmax over ``scale * p @ T^T``."""
    logits = scale * points @ class_text.T
    return _reduce(F.cross_entropy(logits, labels, reduction="none"), reduction)


def lare_loss(lower: torch.Tensor, upper: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor, *,
              alpha: float, scale: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Eq. (5) (typo fixed): ``(1-a) L_BV + a/3 L_CC+ + a/3 L_CC- + a/3 L_CC``, centre ``(X^- + X^+)/2``."""
    return lare_loss_terms(lower, upper, class_text, labels, alpha=alpha, scale=scale,
                           reduction=reduction)["total"]


def lare_loss_terms(lower: torch.Tensor, upper: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor,
                    *, alpha: float, scale: float = 1.0, reduction: str = "mean",
                    volume: str = "dot", eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """All terms of Eq. (5) as a dict (``bv``, ``cc_plus``, ``cc_minus``, ``cc_center``, ``total``).

    ``volume`` selects the form of the volume term: ``"dot"`` is Eq. (1) as written.
    """
    check_alpha(alpha)
    bv = box_volume_variant(lower, upper, form=volume, reduction=reduction, eps=eps)
    cc_plus = class_consistency_loss(upper, class_text, labels, scale=scale, reduction=reduction)
    cc_minus = class_consistency_loss(lower, class_text, labels, scale=scale, reduction=reduction)
    cc_center = class_consistency_loss((lower + upper) / 2, class_text, labels, scale=scale,
                                       reduction=reduction)
    return _with_total(bv, cc_plus, cc_minus, cc_center, alpha)


def _with_total(bv, cc_plus, cc_minus, cc_center, alpha) -> dict[str, torch.Tensor]:
    """Eq. (5) (typo fixed) from its four terms. ``alpha``: a float, or one value per trial (a tensor
    matching the terms), whose weights are formed in float64 as Python forms a float's."""
    w_bv, w_cc = 1 - alpha, alpha / 3
    if isinstance(alpha, torch.Tensor):
        a = alpha.to(torch.float64)
        w_bv, w_cc = (1 - a).to(bv.dtype), (a / 3).to(bv.dtype)
    total = w_bv * bv + w_cc * cc_plus + w_cc * cc_minus + w_cc * cc_center
    return {"bv": bv, "cc_plus": cc_plus, "cc_minus": cc_minus, "cc_center": cc_center, "total": total}


def box_volume_variant(lower: torch.Tensor, upper: torch.Tensor, *, form: str = "dot",
                       reduction: str = "mean", eps: float = 1e-6) -> torch.Tensor:
    """The volume term in one of the forms docs/method.md section 4 lists.

    - ``"dot"``: Eq. (1) literally, ``X^+ . X^-`` (unbounded below when the corners may grow).
    - ``"dot_normalized"``: Eq. (1) on L2-normalised corners, i.e. the cosine of the corners;
      bounded in [-1, 1], so the boxes cannot blow up.
    - ``"log_volume"``: ``-sum_j log(X^+_j - X^-_j + eps)``, the negative log of the box volume.
    """
    if form == "dot":
        return box_volume_loss(lower, upper, reduction=reduction)
    if form == "dot_normalized":
        return box_volume_loss(F.normalize(lower, dim=-1), F.normalize(upper, dim=-1), reduction=reduction)
    if form == "log_volume":
        return _reduce(-torch.log(upper - lower + eps).sum(-1), reduction)
    raise ValueError(f"volume form must be one of {VOLUME_FORMS}, got {form!r}")


def check_alpha(alpha: float) -> None:
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha weighs volume against class consistency and must lie in [0, 1], got {alpha}")


# ---------------------------------------------------------------- the training form
CORNER_FORMS = ("minmax", "center_width")


def corners_of(out: torch.Tensor, corners: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Ordered corners ``(X^-, X^+)`` from f_Box's raw ``(n, 2d)`` output (see :class:`lare.core.box.BoxNet`)."""
    a, b = out.chunk(2, dim=-1)
    if corners == "minmax":
        return torch.minimum(a, b), torch.maximum(a, b)
    if corners == "center_width":
        half = F.softplus(b)
        return a - half, a + half
    raise ValueError(f"corners must be one of {CORNER_FORMS}, got {corners!r}")


def _check_forms(corners: str, volume: str, reduction: str) -> None:
    if corners not in CORNER_FORMS:
        raise ValueError(f"corners must be one of {CORNER_FORMS}, got {corners!r}")
    if volume not in VOLUME_FORMS:
        raise ValueError(f"volume form must be one of {VOLUME_FORMS}, got {volume!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def lare_loss_terms_trials(out: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor, *, corners: str,
                           alpha: torch.Tensor, scale: torch.Tensor, reduction: str = "mean", volume: str = "dot",
                           eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """The terms of :func:`lare_loss_terms` for N f_Box trials straight from their raw outputs, with a
    hand-written backward: what :func:`lare.core.box.train_box_trials` (and so ``train_box``, N = 1)
    minimises; the literal functions above stay the reference.

    ``out`` (N, b, 2d): trial i's f_Box on the same batch; ``labels`` (b,); ``alpha`` and ``scale``
    (N,). Every term is (N,), trial i's being ``lare_loss_terms(*corners_of(out[i], corners), ...)``
    with ``alpha[i]``, ``scale[i]``, with the same gradients (``tests/test_losses.py`` checks both in
    float64 for every corner, volume and reduction form), in about half the memory passes: the
    corners, the three cross-entropies and the volume term are one autograd node, and the centre's
    logits are the mean of the corners' logits (the dot product is linear, so this is Eq. (4)
    exactly, with one matrix product fewer).

    Matrix products run in ``out``'s dtype (bfloat16 under autocast); softmaxes, norms and
    reductions in float32 (or float64 for float64 input). One edge differs from autograd: a
    corner with L2 norm under 1e-12 in the ``dot_normalized`` form gets the gradient of the
    unclamped norm.
    """
    if out.dim() != 3 or alpha.shape != (out.shape[0],) or scale.shape != (out.shape[0],):
        raise ValueError(f"out must be (N, b, 2d) with alpha and scale (N,), got {tuple(out.shape)}, "
                         f"{tuple(alpha.shape)}, {tuple(scale.shape)}")
    for a in alpha.tolist():
        check_alpha(a)
    _check_forms(corners, volume, reduction)
    terms = _FusedBoxLoss.apply(out, class_text, labels.expand(out.shape[0], -1), corners, volume, reduction,
                                scale.to(torch.float64), float(eps))
    return _with_total(*terms, alpha)


class _FusedBoxLoss(torch.autograd.Function):
    """``(out (N, n, 2d), T, y (N, n), scale (N,)) -> (L_BV, L_CC+, L_CC-, L_CC)``, each (N,): N
    independent groups (trials). Gradients for ``out`` only (T, y and scale are constants)."""

    @staticmethod
    def forward(ctx, out, class_text, labels, corners, volume, reduction, scale, eps):
        g, n = out.shape[:2]
        acc = torch.promote_types(out.dtype, torch.float32)  # softmax and reductions never in bf16
        lower, upper = corners_of(out, corners)
        a, b = out.chunk(2, dim=-1)
        if corners == "minmax":
            # share of each corner's gradient that goes to a: 1 where a is the lower corner, 0 where
            # it is the upper one, 1/2 on ties (as torch.minimum's backward splits them)
            corner_aux = torch.sign(b - a).add_(1).mul_(0.5)
        else:
            corner_aux = torch.sigmoid(b)  # d softplus(b) / db
        # CUDA autocast runs softplus in float32: keep every saved tensor in out's dtype, so that the
        # backward (which runs outside autocast) multiplies matching dtypes
        lower, upper, corner_aux = lower.to(out.dtype), upper.to(out.dtype), corner_aux.to(out.dtype)
        t = class_text.to(out.dtype)
        s = scale.to(device=out.device, dtype=acc).view(g, 1, 1)  # a float64 scale cast once, as Python's float is
        lu = (upper @ t.T).to(acc).mul_(s)
        ll = (lower @ t.T).to(acc).mul_(s)
        logp = torch.log_softmax(torch.stack([lu, ll, (lu + ll) * 0.5]), dim=-1)  # (3, N, n, C): +, -, centre
        index = labels.view(1, g, n, 1).expand(3, g, n, 1)
        nll = -logp.gather(-1, index).squeeze(-1)
        ce = nll.mean(-1) if reduction == "mean" else nll.sum(-1)

        saved = [lower, upper, corner_aux, logp, index, t]
        if volume == "dot":
            v = (lower * upper).sum(-1, dtype=acc)
        elif volume == "dot_normalized":
            nl = torch.linalg.vector_norm(lower, dim=-1, dtype=acc).clamp_min(1e-12)  # F.normalize's eps
            nu = torch.linalg.vector_norm(upper, dim=-1, dtype=acc).clamp_min(1e-12)
            v = (lower * upper).sum(-1, dtype=acc) / (nl * nu)
            saved += [nl, nu, v]
        else:
            width = upper - lower + eps
            v = -torch.log(width.to(acc)).sum(-1)
            saved += [width]
        bv = v.mean(-1) if reduction == "mean" else v.sum(-1)
        ctx.save_for_backward(*saved)
        ctx.cfg = (corners, volume, reduction, scale)
        return bv, ce[0], ce[1], ce[2]

    @staticmethod
    def backward(ctx, g_bv, g_plus, g_minus, g_center):
        corners, volume, reduction, scale = ctx.cfg
        lower, upper, corner_aux, logp, index, t, *vol = ctx.saved_tensors
        g, n, dt, acc = *lower.shape[:2], lower.dtype, logp.dtype
        r = 1.0 / n if reduction == "mean" else 1.0
        per = lambda v: v.view(g, 1, 1)  # noqa: E731  (N,) -> broadcast over (N, n, .)
        # d CE / d logits = softmax - one-hot; the centre's logits feed both corners' by halves
        p = logp.exp().scatter_add_(-1, index, torch.full(index.shape, -1.0, dtype=acc, device=index.device))
        share = p[2] * per(0.5 * g_center)
        rs = per((r * scale).to(device=p.device, dtype=acc))
        g_lu = (p[0] * per(g_plus)).add_(share).mul_(rs)
        g_ll = (p[1] * per(g_minus)).add_(share).mul_(rs)
        g_upper, g_lower = g_lu.to(dt) @ t, g_ll.to(dt) @ t

        k = g_bv * r
        if volume == "dot":
            g_lower.addcmul_(upper, per(k.to(dt)))
            g_upper.addcmul_(lower, per(k.to(dt)))
        elif volume == "dot_normalized":
            nl, nu, cos = vol  # d cos / d lower = upper / (|l| |u|) - cos * lower / |l|^2, and symmetrically
            k = k.view(g, 1)
            cross = (k / (nl * nu)).unsqueeze(-1).to(dt)
            g_lower.addcmul_(upper, cross).addcmul_(lower, (-k * cos / nl.square()).unsqueeze(-1).to(dt))
            g_upper.addcmul_(lower, cross).addcmul_(upper, (-k * cos / nu.square()).unsqueeze(-1).to(dt))
        else:
            (width,) = vol
            q = per(k.to(dt)) / width  # d(-log w)/d upper = -1/w, d/d lower = +1/w
            g_lower.add_(q)
            g_upper.sub_(q)

        g_out = torch.empty(g, n, 2 * lower.shape[-1], dtype=dt, device=lower.device)
        g_a, g_b = g_out.chunk(2, dim=-1)
        if corners == "minmax":
            diff = g_lower - g_upper
            torch.addcmul(g_upper, corner_aux, diff, out=g_a)
            torch.addcmul(g_lower, corner_aux, diff, value=-1, out=g_b)
        else:
            torch.add(g_lower, g_upper, out=g_a)
            torch.mul(g_upper - g_lower, corner_aux, out=g_b)
        return g_out, None, None, None, None, None, None, None

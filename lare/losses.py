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
    total = (1 - alpha) * bv + alpha / 3 * cc_plus + alpha / 3 * cc_minus + alpha / 3 * cc_center
    return {"bv": bv, "cc_plus": cc_plus, "cc_minus": cc_minus, "cc_center": cc_center, "total": total}


def box_volume_variant(lower: torch.Tensor, upper: torch.Tensor, *, form: str = "dot",
                       reduction: str = "mean", eps: float = 1e-6) -> torch.Tensor:
    """The volume term in one of the forms PAPER.md section 4 lists.

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

"""The LADS baseline (Dunlap et al., ICLR 2023): augment image embeddings towards one named domain.

``f_aug`` (Linear d -> d/2, ReLU, Linear d/2 -> d) is trained with

- domain alignment: ``1 - cos(f_aug(x) - x, dT(y))`` with ``dT(y)`` the L2-normalised difference of
  the target- and source-domain prompt embeddings of class ``y`` (e.g. "a painting of a {y} bird."
  minus "a photo of a {y} bird."),
- class consistency: cross-entropy of the raw cosine logits between the normalised ``f_aug(x)``
  and the source class prompts, with inverse-frequency class weights,
- total ``w * domain + (1 - w) * class`` (LADS: w = 0.5).

The probe is then trained on the originals plus one normalised augmentation per image.

:func:`train_lads_trials` trains a search's augmenters (differing in ``domain_weight``) together
through the one loop of :mod:`lare.core.train`; :func:`train_lads`, one run, is its one-trial case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lare.core.train import TrainingConfig, check_shared, check_xy, seeded_init, train_stacked
from lare.utils import resolve_device


class LADSAugmenter(nn.Module):
    """``f_aug``: Linear(d, d/2) -> ReLU -> Linear(d/2, d)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def domain_directions(source_text: torch.Tensor, target_text: torch.Tensor) -> torch.Tensor:
    """Per-class ``dT(c) = normalize(T_target(c) - T_source(c))``, shape ``(C, d)``."""
    if source_text.shape != target_text.shape:
        raise ValueError(f"source and target prompt embeddings differ in shape: {tuple(source_text.shape)} vs {tuple(target_text.shape)}")
    return F.normalize(target_text - source_text, dim=-1)


def domain_alignment_loss(x: torch.Tensor, aug: torch.Tensor, directions: torch.Tensor,
                          labels: torch.Tensor) -> torch.Tensor:
    """Mean over items of ``1 - cos(aug - x, dT(y))``: ``aug`` (n, d) gives a scalar, (N, n, d)
    (N trials' augmentations of the same ``x``) one value per trial."""
    return (1 - F.cosine_similarity(aug - x, directions[labels], dim=-1)).mean(-1)


def inverse_frequency_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class weights ``n / (C_present * n_c)`` (0 for absent classes), as LADS weights its CE."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    w = torch.zeros_like(counts)
    present = counts > 0
    w[present] = len(labels) / (present.sum() * counts[present])
    return w


def lads_class_consistency_loss(aug: torch.Tensor, source_text: torch.Tensor, labels: torch.Tensor,
                                class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted cross-entropy of raw cosine logits between ``normalize(aug)`` and the class prompts."""
    logits = F.normalize(aug, dim=-1) @ F.normalize(source_text, dim=-1).T
    return F.cross_entropy(logits, labels, weight=class_weights)


@dataclass(frozen=True)
class LADSConfig(TrainingConfig):
    """LADS training (its CUB configuration: AdamW lr 0.1, wd 0.005, 50 epochs, batch 256).

    domain_weight: weight of domain alignment; class consistency gets ``1 - domain_weight``.
    The training settings are those of :class:`lare.core.train.TrainingConfig`, with LADS's lr and
    weight decay. Model selection keeps the epoch with the lowest validation loss.
    """

    lr: float = 0.1
    weight_decay: float = 0.005
    domain_weight: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.domain_weight <= 1.0:
            raise ValueError(f"domain_weight must lie in [0, 1], got {self.domain_weight}")


@dataclass
class LADSResult:
    model: LADSAugmenter
    config: LADSConfig
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped_by: str = "budget"

    @torch.no_grad()
    def augment(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """One augmentation per embedding (normalised by default, as LADS feeds its probe)."""
        dev = next(self.model.parameters()).device
        out = self.model(x.to(dev, torch.float32))
        return F.normalize(out, dim=-1) if normalize else out


def train_lads_trials(train_x: torch.Tensor, train_y: torch.Tensor, source_text: torch.Tensor,
                      target_text: torch.Tensor, configs: list[LADSConfig], *, val_x: torch.Tensor | None = None,
                      val_y: torch.Tensor | None = None, device: str | torch.device | None = None,
                      progress: bool = False) -> list[LADSResult]:
    """The LADS augmenter for each config, trained together (:func:`lare.core.train.minimise`); the
    configs may differ in ``domain_weight`` only. ``target_text``: one prompt embedding per class of
    the domain to augment towards."""
    check_shared(configs, {"domain_weight"})
    cfg, dev = configs[0], resolve_device(device)
    check_xy(train_x, train_y, source_text, "train")
    # float32 even for bf16 training (unlike f_Box and the probe): the alignment loss uses x itself,
    # not only through a matrix product, so autocast casts it where it is multiplied and nowhere else
    x, y = train_x.to(dev, torch.float32), train_y.to(dev)
    src = source_text.to(dev, torch.float32)
    dirs = domain_directions(src, target_text.to(dev, torch.float32))
    weights = inverse_frequency_weights(y, src.shape[0])
    val = None
    if val_x is not None and val_y is not None and len(val_x) > 0:
        check_xy(val_x, val_y, source_text, "validation")
        val = (val_x.to(dev, torch.float32), val_y.to(dev))
    nets = [seeded_init(lambda: LADSAugmenter(x.shape[1]), cfg.seed) for _ in configs]
    # the loss weights formed in float64 and cast once, as Python floats are
    w64 = torch.tensor([c.domain_weight for c in configs], dtype=torch.float64)
    w_dom, w_cls = w64.to(dev, torch.float32), (1 - w64).to(dev, torch.float32)

    def terms(aug, bx, by, rows):  # aug: (N, b, d), N the running trials
        wd, wc = (w_dom, w_cls) if rows is None else (w_dom[rows], w_cls[rows])
        dom = domain_alignment_loss(bx, aug, dirs, by)
        # the class-weighted cross-entropy one trial at a time: its weighted mean then sums in the
        # order of a trial trained alone, so a trial's numbers do not depend on the others
        cls = torch.stack([lads_class_consistency_loss(a, src, by, weights) for a in aug])
        return {"domain": dom, "class": cls, "total": wd * dom + wc * cls}

    runs = train_stacked([m.net for m in nets], nn.ReLU(), terms, x, y, val=val, cfg=cfg, desc="LADS",
                         progress=progress, inputs={"source_text": src, "target_text": target_text})
    return [LADSResult(model=m.to(dev).eval(), config=c, best_epoch=r.best_epoch, history=r.history,
                       stopped_by=r.stopped_by) for m, c, r in zip(nets, configs, runs, strict=True)]


def train_lads(train_x: torch.Tensor, train_y: torch.Tensor, source_text: torch.Tensor,
               target_text: torch.Tensor, config: LADSConfig | None = None, *,
               val_x: torch.Tensor | None = None, val_y: torch.Tensor | None = None,
               device: str | torch.device | None = None, progress: bool = True) -> LADSResult:
    """Train ``f_aug`` towards the domain described by ``target_text`` (one prompt embedding per class):
    the one-trial case of :func:`train_lads_trials`."""
    (res,) = train_lads_trials(train_x, train_y, source_text, target_text, [config or LADSConfig()], val_x=val_x,
                               val_y=val_y, device=device, progress=progress)
    return res

"""The methods of Table 1 and Figure 3, each from embeddings to metrics per evaluation domain.

Every function takes an :class:`EmbeddingSplits` (train / validation / evaluation sets of one
encoder, plus its class text embeddings) and returns ``{domain: {"top1": ..., "balanced_acc": ...}}``
along with what it trained, so notebooks can plot it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .box import BoxConfig, BoxTrainResult, train_box
from .lads import LADSConfig, LADSResult, train_lads
from .probe import BoxSampler, FixedAugment, ProbeConfig, ProbeResult, metrics, train_probe, zero_shot_predict


@dataclass
class EmbeddingSplits:
    """One encoder's embeddings: training and validation sets, evaluation sets by domain name."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]]
    class_text: torch.Tensor
    extra_text: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.class_text.shape[0])

    def to(self, device: torch.device | str) -> EmbeddingSplits:
        """One transfer of everything to ``device`` (shared by every method and seed)."""
        mv = lambda t: t.to(device)  # noqa: E731
        return EmbeddingSplits(mv(self.train_x), mv(self.train_y), mv(self.val_x), mv(self.val_y),
                               {k: (mv(x), mv(y)) for k, (x, y) in self.evals.items()}, mv(self.class_text),
                               {k: mv(v) for k, v in self.extra_text.items()})


Metrics = dict[str, dict[str, float]]


def _evaluate(predict, splits: EmbeddingSplits) -> Metrics:
    return {name: metrics(predict(x), y, splits.num_classes) for name, (x, y) in splits.evals.items()}


def run_zero_shot(splits: EmbeddingSplits) -> Metrics:
    """Classify by cosine similarity to the class text embeddings (no training, no seed)."""
    return _evaluate(lambda x: zero_shot_predict(x, splits.class_text), splits)


def run_linear_probe(splits: EmbeddingSplits, probe: ProbeConfig, *, device=None,
                     progress: bool = False) -> tuple[Metrics, ProbeResult]:
    """The "fine-tuning" baseline: a linear probe on the original embeddings only."""
    res = train_probe(splits.train_x, splits.train_y, splits.num_classes, probe, val_x=splits.val_x,
                      val_y=splits.val_y, device=device, progress=progress)
    return _evaluate(res.predict, splits), res


@dataclass(frozen=True)
class SamplingConfig:
    """LARE step 2: k samples per training item, fresh every epoch or fixed, re-normalised or not.

    Default k = 1: on the synthetic data, k = 4 let box samples outnumber the real embeddings and
    cost accuracy in and out of domain, while k = 1 gained 2 to 4 points out of domain.
    """

    k: int = 1
    fresh: bool = True
    renormalize: bool = True

    def __post_init__(self):
        if int(self.k) < 1:
            raise ValueError(f"k (box samples per item) must be >= 1, got {self.k}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_lare(splits: EmbeddingSplits, box: BoxConfig, probe: ProbeConfig, sampling: SamplingConfig, *,
             device=None, progress: bool = False, boxes: BoxTrainResult | None = None
             ) -> tuple[Metrics, BoxTrainResult, ProbeResult]:
    """Step 1 (train f_Box, unless ``boxes`` is given) and step 2 (probe on originals + box samples)."""
    if boxes is None:
        boxes = train_box(splits.train_x, splits.train_y, splits.class_text, box, val_x=splits.val_x,
                          val_y=splits.val_y, device=device, progress=progress)
    lower, upper = boxes.boxes(splits.train_x)
    sampler = BoxSampler(lower, upper, splits.train_y, k=sampling.k, fresh=sampling.fresh,
                         renormalize=sampling.renormalize)
    res = train_probe(splits.train_x, splits.train_y, splits.num_classes, probe, val_x=splits.val_x,
                      val_y=splits.val_y, augment=sampler, device=device, progress=progress)
    return _evaluate(res.predict, splits), boxes, res


def run_lads(splits: EmbeddingSplits, source_text: torch.Tensor, target_text: torch.Tensor, lads: LADSConfig,
             probe: ProbeConfig, *, device=None, progress: bool = False) -> tuple[Metrics, LADSResult, ProbeResult]:
    """LADS: train f_aug towards the target domain, then probe on originals + one augmentation each."""
    aug = train_lads(splits.train_x, splits.train_y, source_text, target_text, lads, val_x=splits.val_x,
                     val_y=splits.val_y, device=device, progress=progress)
    extra = FixedAugment(aug.augment(splits.train_x), splits.train_y)
    res = train_probe(splits.train_x, splits.train_y, splits.num_classes, probe, val_x=splits.val_x,
                      val_y=splits.val_y, augment=extra, device=device, progress=progress)
    return _evaluate(res.predict, splits), aug, res

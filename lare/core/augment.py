"""Augmenters of the batched probe (:mod:`lare.core.trials`): each trial's extra training embeddings.

``augment(epoch, generators) -> (ax (N, m, d), ay (N, m))``: trial i's extras for this epoch,
drawn from ``generators[i]`` only, so a trial gets alone (N = 1) what it gets among others (trials
given one generator object share its stream: one draw serves them all). The
single-trial counterparts are :class:`lare.core.box.BoxSampler` and :class:`lare.core.probe.FixedAugment`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lare.core.train import is_int

# augment(epoch, generators) -> (ax (N, m, d), ay (N, m)): extra training embeddings per trial.
BatchedAugmenter = Callable[[int, list[torch.Generator]], tuple[torch.Tensor, torch.Tensor]]


class BatchedBoxSampler:
    """Per trial, ``k`` points drawn uniformly from each training item's box, every epoch.

    lower, upper: (N, n, d) box corners per trial (boxes may differ between trials; pass
    ``lower.expand(N, n, d)`` to share one set). labels: (n,). A sample is
    ``X^- + U (X^+ - X^-)`` with ``U ~ U[0, 1)^d``; trial i draws from ``generators[i]`` only, so
    its samples are those of :class:`lare.core.box.BoxSampler` with the same generator. Trials passed the
    same generator object share one draw of ``U`` (each still gets its own box corners).
    renormalize: project samples back onto the unit sphere, where the image embeddings live.
    """

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor, labels: torch.Tensor, *, k: int = 1,
                 renormalize: bool = True):
        if lower.dim() != 3 or lower.shape != upper.shape:
            raise ValueError(f"lower and upper must both be (N, n, d), got {tuple(lower.shape)} and {tuple(upper.shape)}")
        if labels.dim() != 1 or len(labels) != lower.shape[1]:
            raise ValueError(f"{lower.shape[1]} boxes per trial but labels of shape {tuple(labels.shape)}")
        if not is_int(k) or k < 1:
            raise ValueError(f"k (samples per box) must be an integer >= 1, got {k!r}")
        # the corners kept as lower and width (upper - lower, formed once rather than every epoch)
        self.lower, self.width, self.labels = lower, upper - lower, labels
        self.k, self.renormalize = k, bool(renormalize)

    @property
    def size(self) -> int:
        """Extra embeddings per trial and epoch."""
        return self.lower.shape[1] * self.k

    def to(self, device: torch.device) -> BatchedBoxSampler:
        self.lower, self.width, self.labels = (t.to(device) for t in (self.lower, self.width, self.labels))
        return self

    def __call__(self, epoch: int, generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        trials, n, d = self.lower.shape
        if len(generators) != trials:
            raise ValueError(f"{len(generators)} generators for {trials} trials of boxes")
        # One draw per trial from its own generator, the same call lare.core.box.sample_boxes makes; trials
        # given one generator object share its stream, so one draw serves them all (as equal seeds would).
        def draw(g: torch.Generator) -> torch.Tensor:
            return torch.rand((n, self.k, d), generator=g, device=self.lower.device, dtype=self.lower.dtype)

        if all(g is generators[0] for g in generators):
            u = draw(generators[0]).expand(trials, -1, -1, -1)
        else:
            u = torch.stack([draw(g) for g in generators])
        s = (self.lower.unsqueeze(2) + u * self.width.unsqueeze(2)).reshape(trials, n * self.k, d)
        if self.renormalize:  # F.normalize's numbers, in place (s is this call's own tensor)
            s = s.div_(torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_min_(1e-12))
        return s, self.labels.repeat_interleave(self.k).expand(trials, -1)


class FixedBatchedAugment:
    """A fixed set of extra embeddings per trial, the same every epoch: x (N, m, d), y (N, m)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if x.dim() != 3 or y.shape != x.shape[:2]:
            raise ValueError(f"x must be (N, m, d) and y (N, m), got {tuple(x.shape)} and {tuple(y.shape)}")
        self.x, self.y = x, y

    @property
    def size(self) -> int:
        return self.x.shape[1]

    def to(self, device: torch.device) -> FixedBatchedAugment:
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def __call__(self, epoch: int, generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

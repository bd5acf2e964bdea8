"""Step 1 of LARE: f_Box, sampling inside boxes, and training f_Box on cached embeddings.

f_Box maps an image embedding ``x`` in R^d to a box, an axis-aligned region given by its lowest
corner ``X^-`` and highest corner ``X^+``. It is a two-layer network R^d -> R^{2d}; how the 2d
outputs become ordered corners is an open choice of the paper (``corners``):

- ``"minmax"``: split the output into halves ``a, b``; ``X^- = min(a, b)``, ``X^+ = max(a, b)``.
- ``"center_width"``: halves ``c, w``; ``X^- = c - softplus(w)``, ``X^+ = c + softplus(w)``.

Step 2 draws training embeddings from the boxes (:class:`BoxSampler`, :class:`SamplingConfig`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lare.core.losses import CORNER_FORMS, REDUCTIONS, VOLUME_FORMS, check_alpha, corners_of, lare_loss_terms_fused
from lare.core.train import (
    LOSS_REL_TOL,
    EarlyStop,
    TrainingConfig,
    check_xy,
    compute_dtype,
    effective_epochs,
    is_int,
    minimise,
    seeded_init,
)
from lare.utils import atomic_path, resolve_device, write_json_atomic

CORNER_MODES = CORNER_FORMS
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class BoxNet(nn.Module):
    """f_Box: ``Linear(d, hidden) -> activation -> Linear(hidden, 2d)``, returning ``(lower, upper)``."""

    def __init__(self, dim: int, hidden: int | None = None, activation: str = "relu",
                 corners: str = "minmax"):
        super().__init__()
        if corners not in CORNER_MODES:
            raise ValueError(f"corners must be one of {CORNER_MODES}, got {corners!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        hidden = dim if hidden is None else hidden
        self.dim, self.hidden, self.corners, self.activation = dim, hidden, corners, activation
        self.net = nn.Sequential(nn.Linear(dim, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, 2 * dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return corners_of(self.net(x), self.corners)


def sample_boxes(lower: torch.Tensor, upper: torch.Tensor, k: int, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``k`` points uniformly inside each box: returns ``(n, k, d)``.

    Uniform per dimension: ``X^- + U * (X^+ - X^-)`` with ``U ~ U[0, 1)^d`` independent per point.
    """
    if lower.shape != upper.shape or lower.dim() != 2:
        raise ValueError(f"lower and upper must both be (n, d), got {tuple(lower.shape)} and {tuple(upper.shape)}")
    if k < 1:
        raise ValueError(f"k (samples per box) must be >= 1, got {k}")
    n, d = lower.shape
    u = torch.rand((n, k, d), generator=generator, device=lower.device, dtype=lower.dtype)
    return lower.unsqueeze(1) + u * (upper - lower).unsqueeze(1)


@dataclass(frozen=True)
class SamplingConfig:
    """LARE step 2: k samples per training item, fresh every epoch or fixed, re-normalised or not.

    Default k = 1: on the synthetic data, k = 4 let box samples outnumber the real embeddings and
    cost accuracy in and out of domain, while k = 1 gained 2 to 4 points out of domain.

    draws: only for the ``lbfgs`` probe solver, which fits one fixed set. With ``fresh`` it solves
    the originals plus ``draws`` draws of the samples, each draw's rows weighted ``1 / draws``: a
    sample average of the objective that fresh sampling trains on (originals and k samples per
    item, in the proportion of one epoch). Default 16: on the demo's few-shot world one draw left
    LARE's 1-shot probe at 28.7 % (3 seeds), 16 draws reached 39.4 %, 64 draws 40.6 %. Without
    ``fresh`` the solver uses one draw, the fixed set itself; the AdamW probe ignores ``draws``.
    """

    k: int = 1
    fresh: bool = True
    renormalize: bool = True
    draws: int = 16

    def __post_init__(self):
        if int(self.k) < 1:
            raise ValueError(f"k (box samples per item) must be >= 1, got {self.k}")
        if not is_int(self.draws) or self.draws < 1:
            raise ValueError(f"sampling.draws (box-sample draws for the lbfgs solver) must be an integer >= 1, "
                             f"got {self.draws!r}")

    @property
    def solver_draws(self) -> int:
        """Draws the ``lbfgs`` solver fits: ``draws`` with fresh sampling, else the one fixed draw."""
        return self.draws if self.fresh else 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class BoxSampler:
    """Extra training embeddings drawn uniformly from each training item's box (LARE step 2).

    k: samples per item and epoch. fresh: new samples every epoch (True) or one draw reused for
    all epochs (False). renormalize: project samples back onto the unit sphere, where the image
    embeddings live.
    """

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor, labels: torch.Tensor, *, k: int = 1,
                 fresh: bool = True, renormalize: bool = True):
        if len(lower) != len(labels):
            raise ValueError(f"{len(lower)} boxes but {len(labels)} labels")
        self.lower, self.upper, self.labels = lower, upper, labels
        self.k, self.fresh, self.renormalize = int(k), bool(fresh), bool(renormalize)
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def size(self) -> int:
        """Extra embeddings per epoch."""
        return len(self.lower) * self.k

    def to(self, device: torch.device) -> BoxSampler:
        self.lower, self.upper, self.labels = (t.to(device) for t in (self.lower, self.upper, self.labels))
        if self._fixed is not None:
            self._fixed = tuple(t.to(device) for t in self._fixed)
        return self

    def __call__(self, epoch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.fresh and self._fixed is not None:
            return self._fixed
        s = sample_boxes(self.lower, self.upper, self.k, generator=generator).reshape(-1, self.lower.shape[1])
        if self.renormalize:
            s = F.normalize(s, dim=-1)
        out = (s, self.labels.repeat_interleave(self.k))
        if not self.fresh:
            self._fixed = out
        return out


@dataclass(frozen=True)
class BoxConfig(TrainingConfig):
    """Every choice of step 1, with the defaults used by the pipeline (recorded with each result).

    alpha: weight of class consistency against box volume in Eq. (5), in [0, 1].
    hidden: f_Box hidden width (``None``: the embedding dimension d).
    activation: f_Box hidden activation (relu, gelu, tanh, silu).
    corners: how the 2d outputs become ordered corners (``minmax`` or ``center_width``).
    volume: form of the volume term: ``dot`` (Eq. (1) as written), ``dot_normalized`` (Eq. (1) on
        L2-normalised corners, bounded: the default, since the literal form lets the corners grow
        without bound), ``log_volume``.
    reduction: ``mean`` over items (default, batch-size independent) or ``sum`` (the paper's sum).
    scale: logit temperature of the class-consistency softmax. Default 100, the logit scale that
        CLIP and CoCa were trained with: with raw dot products (1.0, as LADS) the cross-entropy
        only falls by growing the corners, and the boxes blow up (seen on the synthetic data:
        mean box width about 3 per dimension at scale 1, about 0.2 at scale 100).
    The training settings (epochs 50, batch 256, lr 1e-3, no weight decay, seed, min_steps,
    max_steps, precision) are those of :class:`lare.core.train.TrainingConfig`.
    """

    alpha: float = 0.5
    hidden: int | None = None
    activation: str = "relu"
    corners: str = "minmax"
    volume: str = "dot_normalized"
    reduction: str = "mean"
    scale: float = 100.0

    def __post_init__(self):
        super().__post_init__()
        check_alpha(self.alpha)
        if self.corners not in CORNER_MODES:
            raise ValueError(f"corners must be one of {CORNER_MODES}, got {self.corners!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.volume not in VOLUME_FORMS:
            raise ValueError(f"volume must be one of {VOLUME_FORMS}, got {self.volume!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")
        if self.hidden is not None and (not isinstance(self.hidden, int) or isinstance(self.hidden, bool) or self.hidden < 1):
            raise ValueError(f"hidden must be a positive integer or None (= the embedding dimension), got {self.hidden!r}")


@dataclass
class BoxTrainResult:
    model: BoxNet
    config: BoxConfig
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped_by: str = "budget"  # what ended training: the epoch budget or early stopping's patience

    @torch.no_grad()
    def boxes(self, x: torch.Tensor, batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """Corners ``(lower, upper)`` for embeddings ``x`` (on the model's device)."""
        self.model.eval()
        dev = next(self.model.parameters()).device
        parts = [self.model(x[i:i + batch_size].to(dev, torch.float32)) for i in range(0, len(x), batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _terms(model: BoxNet, x, y, class_text, cfg: BoxConfig) -> dict[str, torch.Tensor]:
    # Eq. (5) on the raw output in one autograd node: same values and gradients as
    # lare_loss_terms(*model(x), ...), fewer passes over memory (see lare_loss_terms_fused)
    return lare_loss_terms_fused(model.net(x), class_text, y, corners=cfg.corners, alpha=cfg.alpha,
                                 scale=cfg.scale, reduction=cfg.reduction, volume=cfg.volume)


def train_box(train_x: torch.Tensor, train_y: torch.Tensor, class_text: torch.Tensor,
              config: BoxConfig | None = None, *, val_x: torch.Tensor | None = None,
              val_y: torch.Tensor | None = None, device: str | torch.device | None = None,
              progress: bool = True) -> BoxTrainResult:
    """Train f_Box on embeddings by minimising Eq. (5); keep the epoch with the lowest validation loss.

    All tensors move to ``device`` once (see :func:`lare.core.train.minimise`). Without a validation
    split the last epoch is kept. ``history`` holds, per epoch, the mean training terms
    (``bv``, ``cc_plus``, ``cc_minus``, ``cc_center``, ``total``) and the validation terms.
    """
    cfg = config or BoxConfig()
    dev = resolve_device(device)
    check_xy(train_x, train_y, class_text, "train")
    dtype = compute_dtype(cfg.precision)  # what autocast would cast the inputs to anyway, done once
    x, y, t = train_x.to(dev, dtype), train_y.to(dev), class_text.to(dev, torch.float32)
    has_val = val_x is not None and val_y is not None and len(val_x) > 0
    if has_val:
        check_xy(val_x, val_y, class_text, "validation")
        vx, vy = val_x.to(dev, dtype), val_y.to(dev)

    model = seeded_init(lambda: BoxNet(x.shape[1], cfg.hidden, cfg.activation, cfg.corners), cfg.seed).to(dev)
    early = EarlyStop(cfg.patience, cfg.min_steps, rel_tol=LOSS_REL_TOL)
    best_epoch, history = minimise(
        model, lambda bx, by: _terms(model, bx, by, t, cfg), x, y, val=(vx, vy) if has_val else None,
        epochs=effective_epochs(cfg.epochs, len(x), cfg.batch_size, cfg.min_steps, cfg.max_steps),
        batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        seed=cfg.seed, precision=cfg.precision, desc="f_Box", progress=progress, early=early, inputs={"class_text": t})
    return BoxTrainResult(model=model, config=cfg, best_epoch=best_epoch, history=history, stopped_by=early.stopped_by)


def save_box(result: BoxTrainResult, path: str | Path, extra: dict | None = None) -> None:
    """Write f_Box weights (safetensors) and, beside them, its config, best epoch and history (JSON)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    write_json_atomic(path.with_suffix(".json"), {"config": result.config.to_dict(), "dim": result.model.dim,
                                                  "best_epoch": result.best_epoch, "history": result.history,
                                                  "stopped_by": result.stopped_by,
                                                  **(extra or {})})


def load_box(path: str | Path, device: str | torch.device | None = None) -> BoxTrainResult:
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    cfg = BoxConfig(**meta["config"])
    model = BoxNet(meta["dim"], cfg.hidden, cfg.activation, cfg.corners)
    model.load_state_dict(load_file(str(path)))
    model.to(resolve_device(device)).eval()
    return BoxTrainResult(model=model, config=cfg, best_epoch=meta["best_epoch"], history=meta["history"],
                          stopped_by=meta.get("stopped_by", "budget"))

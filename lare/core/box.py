"""Step 1 of LARE: f_Box, sampling inside boxes, and training f_Box on cached embeddings.

f_Box maps an image embedding ``x`` in R^d to a box, an axis-aligned region given by its lowest
corner ``X^-`` and highest corner ``X^+``. It is a two-layer network R^d -> R^{2d}; how the 2d
outputs become ordered corners is an open choice of the paper (``corners``):

- ``"minmax"``: split the output into halves ``a, b``; ``X^- = min(a, b)``, ``X^+ = max(a, b)``.
- ``"center_width"``: halves ``c, w``; ``X^- = c - softplus(w)``, ``X^+ = c + softplus(w)``.

Training minimises Eq. (5) (:class:`BoxConfig`): :func:`train_box_trials` trains a search's trials
together through the one loop of :mod:`lare.core.train`, and :func:`train_box`, one run, is its
one-trial case.

Step 2 draws training embeddings from the boxes (:class:`BoxSampler`, for one run or N probe trials at
once; :class:`SamplingConfig`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lare.core.losses import CORNER_FORMS, REDUCTIONS, VOLUME_FORMS, check_alpha, corners_of, lare_loss_terms_trials
from lare.core.train import TrainingConfig, check_choice, check_shared, check_xy, compute_dtype, is_int, seeded_init, train_stacked
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

    Default k = 1, chosen by validation accuracy on a synthetic world that is not the demo's
    (``python scripts/derive_defaults.py``, docs/method.md section 4; LARE under the tuned
    protocol's trial 0, 3 seeds): k = 1 69.59 ± 1.61, 2 68.50 ± 0.93, 4 63.56 ± 1.39 (2 ties
    within one std, and a tie keeps the default). More samples per item outnumber the real
    embeddings.

    draws: only for the ``lbfgs`` probe solver, which fits one fixed set. With ``fresh`` it solves
    the originals plus ``draws`` draws of the samples, each draw's rows weighted ``1 / draws``: a
    sample average of the objective that fresh sampling trains on (originals and k samples per
    item, in the proportion of one epoch). Default 64, chosen the same way (under
    ``search.solver lbfgs``): 1 draw 58.24 ± 1.16, 4 64.72 ± 2.13, 16 68.22 ± 1.31, 64 70.61 ±
    0.51; the solve grows with the draws (``-p sampling.draws 16`` is about 3 times cheaper).
    Without ``fresh`` the solver uses one draw, the fixed set itself; the AdamW probe ignores
    ``draws``.
    """

    k: int = 1
    fresh: bool = True
    renormalize: bool = True
    draws: int = 64

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


class ItemSampler:
    """Extra training embeddings drawn around each of n training items, for N probe trials at once
    (one run: N = 1): the augmenter form :func:`lare.core.probe.train_probe_trials` takes.

    ``sampler(epoch, generators) -> (x (N, n k, d), y (N, n k))``: per trial ``k`` points per item
    (an item's k samples in a row), from noise drawn from ``generators[i]`` only, so a trial gets
    alone what it gets among others; trials given the same generator object share one draw of the
    noise. fresh: new samples every epoch (True) or epoch 0's draw reused for every later epoch
    (False). renormalize: project samples back onto the unit sphere, where the image embeddings live.
    A subclass says how one trial's noise is drawn (:meth:`noise`) and where it puts the points
    (:meth:`place`): :class:`BoxSampler` (LARE) and the ablations' samplers (:mod:`lare.compare.ablations`).
    """

    kind = "items"       # what the samples come from, for messages
    tensors: tuple = ()  # the attributes :meth:`to` moves

    def __init__(self, labels: torch.Tensor, trials: int, dim: int, *, k: int = 1, fresh: bool = True,
                 renormalize: bool = True):
        if not is_int(k) or k < 1:
            raise ValueError(f"k (samples per item) must be an integer >= 1, got {k!r}")
        self.labels, self.trials, self.dim = labels, trials, dim
        self.k, self.fresh, self.renormalize = k, bool(fresh), bool(renormalize)
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None  # fresh False: epoch 0's draw

    @property
    def size(self) -> int:
        """Extra embeddings per trial and epoch."""
        return len(self.labels) * self.k

    def to(self, device: torch.device) -> ItemSampler:
        for name in (*self.tensors, "labels"):
            setattr(self, name, getattr(self, name).to(device))
        if self._fixed is not None:
            self._fixed = tuple(t.to(device) for t in self._fixed)
        return self

    def noise(self, g: torch.Generator) -> torch.Tensor:
        """One trial's noise (n, k, d), drawn from ``g``."""
        raise NotImplementedError

    def place(self, noise: torch.Tensor) -> torch.Tensor:
        """The samples (N, n, k, d) for every trial's noise (N, n, k, d)."""
        raise NotImplementedError

    def __call__(self, epoch: int, generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.fresh and epoch > 0 and self._fixed is not None:
            return self._fixed
        if len(generators) != self.trials:
            raise ValueError(f"{len(generators)} generators for {self.trials} trials of {self.kind}")
        # trials given one generator object share its stream: one draw serves them all (as equal seeds would)
        if all(g is generators[0] for g in generators):
            u = self.noise(generators[0]).expand(self.trials, -1, -1, -1)
        else:
            u = torch.stack([self.noise(g) for g in generators])
        s = self.place(u).reshape(self.trials, self.size, self.dim)
        if self.renormalize:  # F.normalize's numbers, in place (s is this call's own tensor)
            s = s.div_(torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_min_(1e-12))
        out = (s, self.labels.repeat_interleave(self.k).expand(self.trials, -1))
        if not self.fresh:
            self._fixed = out
        return out


class BoxSampler(ItemSampler):
    """LARE step 2: per trial ``k`` points drawn uniformly from each training item's box,
    ``X^- + U (X^+ - X^-)`` with ``U ~ U[0, 1)^d`` (the draw :func:`sample_boxes` makes); see
    :class:`ItemSampler` for the call, ``fresh`` and ``renormalize``.

    lower, upper: (N, n, d) box corners per trial (boxes may differ between trials; pass
    ``lower.expand(N, n, d)`` to share one set), or (n, d): one trial. labels: (n,).
    """

    kind = "boxes"
    tensors = ("lower", "width")

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor, labels: torch.Tensor, *, k: int = 1,
                 fresh: bool = True, renormalize: bool = True):
        if lower.dim() == 2 and upper.dim() == 2:  # one trial's corners
            lower, upper = lower.unsqueeze(0), upper.unsqueeze(0)
        if lower.dim() != 3 or lower.shape != upper.shape:
            raise ValueError(f"lower and upper must both be (N, n, d) or (n, d), got {tuple(lower.shape)} and {tuple(upper.shape)}")
        if labels.dim() != 1 or len(labels) != lower.shape[1]:
            raise ValueError(f"{lower.shape[1]} boxes per trial but labels of shape {tuple(labels.shape)}")
        super().__init__(labels, lower.shape[0], lower.shape[2], k=k, fresh=fresh, renormalize=renormalize)
        # the corners kept as lower and width (upper - lower, formed once rather than every epoch)
        self.lower, self.width = lower, upper - lower

    def noise(self, g: torch.Generator) -> torch.Tensor:
        return torch.rand((self.lower.shape[1], self.k, self.dim), generator=g, device=self.lower.device,
                          dtype=self.lower.dtype)

    def place(self, noise: torch.Tensor) -> torch.Tensor:
        return self.lower.unsqueeze(2) + noise * self.width.unsqueeze(2)


@dataclass(frozen=True)
class BoxConfig(TrainingConfig):
    """Every choice of step 1, with the defaults used by the pipeline (recorded with each result).

    alpha: weight of class consistency against box volume in Eq. (5), in [0, 1].
    hidden: f_Box hidden width (``None``: the embedding dimension d).
    activation: f_Box hidden activation (relu, gelu, tanh, silu).
    corners: how the 2d outputs become ordered corners (``minmax`` or ``center_width``).
    volume: form of the volume term: ``dot`` (Eq. (1) as written; unbounded below, so the corners
        may grow without bound), ``dot_normalized`` (Eq. (1) on L2-normalised corners, bounded),
        ``log_volume``. Default ``dot_normalized``, chosen by validation accuracy on a synthetic
        world that is not the demo's (``python scripts/derive_defaults.py``, docs/method.md
        section 4): 69.59 ± 1.61 against 61.28 ± 1.48 (``dot``) and 61.49 ± 1.38 (``log_volume``).
    reduction: ``mean`` over items (default, batch-size independent) or ``sum`` (the paper's sum).
    scale: logit temperature of the class-consistency softmax. Default 1.0, the literal Eq. (2)-(4)
        (raw dot products, as LADS), chosen the same way: 1 69.59 ± 1.61, 10 68.08 ± 1.21, 30
        68.83 ± 1.16, 100 66.27 ± 0.82 (100 is the logit scale CLIP and CoCa were trained with; the
        tuned search's other trials draw the scale in [1, 100]). At 1 the cross-entropy only falls
        by growing the corners, so the boxes are wide (seen on the synthetic data: mean box width
        about 3 per dimension at scale 1, about 0.2 at scale 100).
    The training settings (epochs 50, batch 256, lr 1e-3, no weight decay, seed, min_steps,
    max_steps, precision) are those of :class:`lare.core.train.TrainingConfig`.
    """

    alpha: float = 0.5
    hidden: int | None = None
    activation: str = "relu"
    corners: str = "minmax"
    volume: str = "dot_normalized"
    reduction: str = "mean"
    scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_alpha(self.alpha)
        for name, options in (("corners", CORNER_MODES), ("activation", ACTIVATIONS), ("volume", VOLUME_FORMS),
                              ("reduction", REDUCTIONS)):
            check_choice(name, getattr(self, name), options)
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


def train_box_trials(train_x: torch.Tensor, train_y: torch.Tensor, class_text: torch.Tensor,
                     configs: list[BoxConfig], *, val_x: torch.Tensor | None = None, val_y: torch.Tensor | None = None,
                     device: str | torch.device | None = None, progress: bool = False) -> list[BoxTrainResult]:
    """f_Box for each config, trained together (:func:`lare.core.train.minimise`); the configs may
    differ in ``alpha`` and ``scale`` only. One config is one run (:func:`train_box`).

    Each trial minimises Eq. (5) in its fused form (:func:`lare.core.losses.lare_loss_terms_trials`:
    the values and gradients of the literal terms, fewer passes over memory) and keeps the epoch with
    the lowest validation loss (without a validation split, the last). ``history`` holds, per epoch,
    the mean training terms (``bv``, ``cc_plus``, ``cc_minus``, ``cc_center``, ``total``) and the
    validation terms.
    """
    check_shared(configs, {"alpha", "scale"})
    cfg, dev = configs[0], resolve_device(device)
    check_xy(train_x, train_y, class_text, "train")
    dtype = compute_dtype(cfg.precision)  # what autocast would cast the inputs to anyway, done once
    x, y, t = train_x.to(dev, dtype), train_y.to(dev), class_text.to(dev, torch.float32)
    val = None
    if val_x is not None and val_y is not None and len(val_x) > 0:
        check_xy(val_x, val_y, class_text, "validation")
        val = (val_x.to(dev, dtype), val_y.to(dev))
    # every trial starts from the same seeded network (the seed is shared)
    nets = [seeded_init(lambda: BoxNet(x.shape[1], cfg.hidden, cfg.activation, cfg.corners), cfg.seed) for _ in configs]
    # float64, cast once inside the loss, as a Python float would be
    alpha = torch.tensor([c.alpha for c in configs], dtype=torch.float64)
    scale = torch.tensor([c.scale for c in configs], dtype=torch.float64)

    def terms(out, bx, by, rows):
        pick = slice(None) if rows is None else rows.cpu()
        return lare_loss_terms_trials(out, t, by, corners=cfg.corners, alpha=alpha[pick], scale=scale[pick],
                                      reduction=cfg.reduction, volume=cfg.volume)

    runs = train_stacked([b.net for b in nets], ACTIVATIONS[cfg.activation](), terms, x, y, val=val, cfg=cfg,
                         desc="f_Box", progress=progress, inputs={"class_text": t})
    return [BoxTrainResult(model=b.to(dev).eval(), config=c, best_epoch=r.best_epoch, history=r.history,
                           stopped_by=r.stopped_by) for b, c, r in zip(nets, configs, runs, strict=True)]


def train_box(train_x: torch.Tensor, train_y: torch.Tensor, class_text: torch.Tensor,
              config: BoxConfig | None = None, *, val_x: torch.Tensor | None = None,
              val_y: torch.Tensor | None = None, device: str | torch.device | None = None,
              progress: bool = True) -> BoxTrainResult:
    """Train f_Box on embeddings by minimising Eq. (5); keep the epoch with the lowest validation loss.

    The one-trial case of :func:`train_box_trials` (see there). All tensors move to ``device`` once.
    """
    (res,) = train_box_trials(train_x, train_y, class_text, [config or BoxConfig()], val_x=val_x, val_y=val_y,
                              device=device, progress=progress)
    return res


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

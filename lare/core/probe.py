"""Classifiers on embeddings: zero-shot from class text, and the linear probe of step 2.

The linear probe (the paper's "fine-tuning": one fully connected layer on the frozen image
encoder) trains on cached embeddings kept on the device. It can be fed extra embeddings each
epoch by an *augmenter*: samples from LARE boxes (:class:`lare.core.box.BoxSampler`) or LADS
augmentations (:class:`FixedAugment`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lare.core.train import (
    LOSS_REL_TOL,
    SCORE_TIE_TOL,
    EarlyStop,
    TrainingConfig,
    autocast,
    batches,
    compute_dtype,
    effective_epochs,
    make_optimizer,
    seeded_init,
)
from lare.utils import make_generator, resolve_device

SELECT_METRICS = ("balanced_acc", "top1")
SOLVERS = ("adamw", "lbfgs")
STOPS = ("val", "loss")
DEFAULT_L2_GRID = tuple(10.0 ** (e / 2) for e in range(0, -13, -1))  # 1e0 .. 1e-6, two steps a decade: 13 values


def check_l2_grid(grid) -> tuple[float, ...]:
    """An L2 grid (``probe.l2_grid``, ``reference.l2_grid``) as the recorded tuple of floats, or a clear error."""
    if isinstance(grid, str) or not hasattr(grid, "__iter__"):
        raise ValueError(f"l2_grid must be a list of numbers >= 0, got {grid!r}")
    out = tuple(float(v) for v in grid)
    if not out or any(not (math.isfinite(v) and v >= 0) for v in out):
        raise ValueError(f"l2_grid must be a non-empty list of finite numbers >= 0, got {list(out)!r}")
    return out


# ---------------------------------------------------------------- metrics and zero-shot
def metrics(pred: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> dict[str, float]:
    """Top-1 accuracy and balanced accuracy (mean of per-class recall over classes present), in %."""
    pred, labels = pred.cpu(), labels.cpu()
    if len(labels) == 0:
        raise ValueError("cannot compute accuracy on an empty set")
    # float64: equal fractions reached with different per-class hits must compare equal (a search
    # breaks validation ties by the first epoch; float32 would make the later one win by 1e-6)
    correct = (pred == labels).double()
    num_classes = num_classes or int(labels.max()) + 1
    per_class_n = torch.bincount(labels, minlength=num_classes).double()
    per_class_hit = torch.bincount(labels, weights=correct, minlength=num_classes)
    present = per_class_n > 0
    balanced = (per_class_hit[present] / per_class_n[present]).mean()
    return {"top1": 100.0 * correct.mean().item(), "balanced_acc": 100.0 * balanced.item()}


def zero_shot_logits(x: torch.Tensor, class_text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each (re-normalised) image embedding to each class text embedding."""
    return F.normalize(x.float(), dim=-1) @ F.normalize(class_text.float(), dim=-1).T


def zero_shot_predict(x: torch.Tensor, class_text: torch.Tensor) -> torch.Tensor:
    return zero_shot_logits(x, class_text).argmax(-1)


# ---------------------------------------------------------------- augmenters
Augmenter = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


class FixedAugment:
    """A fixed set of extra embeddings (e.g. one LADS augmentation per training image)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} embeddings but {len(y)} labels")
        self.x, self.y = x, y

    @property
    def size(self) -> int:
        return len(self.x)

    def to(self, device: torch.device) -> FixedAugment:
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def __call__(self, epoch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


# ---------------------------------------------------------------- linear probe
@dataclass(frozen=True)
class ProbeConfig(TrainingConfig):
    """Linear probe training (recorded with each result).

    The training settings are those of :class:`lare.core.train.TrainingConfig`, with the defaults of
    LADS's probe (AdamW, lr 1e-3, weight decay 0.05, batch 256), 50 epochs and at least 200
    optimiser steps (a 1-shot set is one batch per epoch and would otherwise barely train);
    ``min_steps`` and ``max_steps`` count the originals plus the augmenter's extra embeddings;
    with ``bf16`` the model selection runs under autocast too, predictions afterwards in float32.
    select: validation metric for model selection (``balanced_acc`` as LADS, or ``top1``).
    l2: a coupled L2 penalty ``(l2 / 2) ||W||^2`` on the weight (not the bias) added to the loss, so
        with ``weight_decay`` 0 the probe minimises the regularised logistic-regression objective
        of the reference probe (:mod:`lare.core.reference`); AdamW's decoupled weight decay does not
        (its fixed point is another, per-coordinate regulariser). Default 0 (LADS's probe).
    solver: ``adamw`` (default: the recipe above, epochs of mini-batches, the best epoch kept) or
        ``lbfgs``: the probe is the multinomial logistic regression of :mod:`lare.core.reference`,
        solved to convergence with full-batch L-BFGS for every ``l2`` of ``l2_grid``, the one with
        the best validation ``select`` kept. The training settings (lr, epochs, batches, patience,
        weight decay, l2) then play no part, and an augmenter is drawn once (seeded by seed + 1)
        rather than every epoch: the fixed set is what the solver minimises over.
    l2_grid: the L2 strengths of the ``lbfgs`` solver (default 1e0 .. 1e-6, two a decade).
    stop: what ends an ``adamw`` training and which weights it keeps. ``val`` (default, LADS's
        recipe): early stopping on the validation ``select`` score, the best epoch kept.
        ``loss``: training runs until its objective (the epoch's mean cross-entropy plus the
        ``l2`` term) stops falling (by more than :data:`lare.core.train.LOSS_REL_TOL` of its fall
        since the first epoch, for ``patience`` epochs, after ``min_steps``), and the last
        weights are kept: a converged fit of its objective, which the validation split does not
        choose among epochs. With full batches (``batch_size`` 0) that is the objective's optimum
        up to the tolerance; the ``tuned`` protocol trains this way (:class:`lare.compare.search.SearchConfig`),
        because on small validation splits the best of many epochs is the luckiest, not the best.
    """

    weight_decay: float = 0.05
    min_steps: int = 200
    select: str = "balanced_acc"
    l2: float = 0.0
    solver: str = "adamw"
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    stop: str = "val"

    def __post_init__(self):
        super().__post_init__()
        if not math.isfinite(self.l2) or self.l2 < 0:
            raise ValueError(f"l2 must be a finite number >= 0, got {self.l2!r}")
        if self.select not in SELECT_METRICS:
            raise ValueError(f"select must be one of {SELECT_METRICS}, got {self.select!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.stop not in STOPS:
            raise ValueError(f"stop must be one of {STOPS} (val: best validation epoch; loss: converged, last epoch), "
                             f"got {self.stop!r}")
        object.__setattr__(self, "l2_grid", check_l2_grid(self.l2_grid))


@dataclass
class ProbeResult:
    model: nn.Linear
    config: ProbeConfig
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped_by: str = "budget"  # what ended training: the epoch budget or early stopping's patience

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        dev = self.model.weight.device
        return self.model(x.to(dev, torch.float32)).argmax(-1).cpu()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return metrics(self.predict(x), y, self.model.out_features)


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int,
                config: ProbeConfig | None = None, *, val_x: torch.Tensor | None = None,
                val_y: torch.Tensor | None = None, augment: Augmenter | None = None,
                device: str | torch.device | None = None, progress: bool = True) -> ProbeResult:
    """Train a linear classifier on embeddings (plus the augmenter's extra embeddings each epoch).

    ``config.stop`` ``val``: the epoch with the best validation ``config.select`` metric is kept
    (the last epoch when no validation split is given), and patience counts epochs without a
    better score. ``loss``: patience counts epochs without a fall of the training objective, and
    the last epoch is kept. All work is tensor slicing on ``device``: no DataLoader.
    """
    cfg = config or ProbeConfig()
    dev = resolve_device(device)
    if train_x.dim() != 2 or len(train_x) != len(train_y):
        raise ValueError(f"train embeddings must be (n, d) with n labels, got {tuple(train_x.shape)}, {tuple(train_y.shape)}")
    dtype = compute_dtype(cfg.precision)  # inputs only meet the linear layer: cast once, not per batch
    x, y = train_x.to(dev, dtype), train_y.to(dev)
    has_val = val_x is not None and val_y is not None and len(val_x) > 0
    if has_val:
        vx, vy = val_x.to(dev, dtype), val_y.to(dev)
    if augment is not None and hasattr(augment, "to"):
        augment = augment.to(dev)

    model = seeded_init(lambda: nn.Linear(x.shape[1], num_classes), cfg.seed).to(dev)
    opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, dev)
    order_gen = make_generator(cfg.seed, "cpu")
    sample_gen = make_generator(cfg.seed + 1, dev)

    history, best, best_epoch, best_state = [], -1.0, -1, None
    n_epoch = len(x) + (getattr(augment, "size", 0) if augment is not None else 0)
    epochs = effective_epochs(cfg.epochs, n_epoch, cfg.batch_size, cfg.min_steps, cfg.max_steps)
    on_loss = cfg.stop == "loss"
    early = EarlyStop(cfg.patience, cfg.min_steps, rel_tol=LOSS_REL_TOL) if on_loss else \
        EarlyStop(cfg.patience, cfg.min_steps, lower=False, abs_tol=SCORE_TIE_TOL)
    steps = 0
    bar = tqdm(range(epochs), desc="probe", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        ex, ey = x, y
        if augment is not None:
            ax, ay = augment(epoch, sample_gen)
            ex, ey = torch.cat([x, ax.to(dtype)]), torch.cat([y, ay])
        total, objective, count = torch.zeros((), device=dev), torch.zeros((), dtype=torch.float64, device=dev), 0
        for idx in batches(len(ex), cfg.batch_size, order_gen, dev):
            with autocast(dev, cfg.precision):
                loss = F.cross_entropy(model(ex[idx]), ey[idx])
            opt.zero_grad(set_to_none=True)
            full = loss + 0.5 * cfg.l2 * model.weight.pow(2).sum() if cfg.l2 else loss
            full.backward()
            opt.step()
            total += loss.detach() * len(idx)
            if on_loss:
                objective += full.detach().double() * len(idx)
            count += len(idx)
            steps += 1
        row = {"epoch": epoch, "train_loss": (total / count).item()}
        if on_loss:
            row["train_objective"] = (objective / count).item()
        if has_val:
            model.eval()
            with torch.no_grad(), autocast(dev, cfg.precision):
                row.update({f"val_{k}": v for k, v in metrics(model(vx).argmax(-1), vy, num_classes).items()})
            score = row[f"val_{cfg.select}"]
        else:
            score = epoch
        history.append(row)
        if on_loss:  # the latest epoch is the one kept
            best_epoch = epoch
        elif score > best + SCORE_TIE_TOL:
            best, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{row['train_loss']:.3f}")
        if (has_val or on_loss) and early.update(epoch, row["train_objective"] if on_loss else score, steps):
            break
    if not on_loss:
        model.load_state_dict(best_state)
    model.eval()
    return ProbeResult(model=model, config=cfg, best_epoch=best_epoch, history=history, stopped_by=early.stopped_by)

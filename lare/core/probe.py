"""Classifiers on embeddings: zero-shot from class text, and the linear probe of step 2 with its one trainer.

The linear probe (the paper's "fine-tuning": one fully connected layer on the frozen image
encoder) trains on cached embeddings kept on the device. :func:`train_probe_trials` is its only
trainer: N trials (a hyperparameter search; N = 1 for one run, which :func:`train_probe` is) held
as one (d + 1, N, C) parameter tensor and trained at once with the products, cross-entropy
gradients and AdamW step of :mod:`lare.core.linear`. Each epoch a trial can be fed extra embeddings
by an *augmenter*, ``augment(epoch, generators) -> (x (N, m, d), y (N, m))``: samples from LARE
boxes (:class:`lare.core.box.BoxSampler`) or a fixed set such as LADS augmentations
(:class:`FixedAugment`). Also here: the metrics (top-1, balanced accuracy) and zero-shot.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lare.core.linear import (
    adamw_step,
    batched_metrics,
    batched_predict,
    cross_entropy_grads,
    shared_cross_entropy_grads,
    split_cross_entropy_grads,
)
from lare.core.train import (
    LOSS_REL_TOL,
    SCORE_TIE_TOL,
    EarlyStop,
    TrainingConfig,
    check_choice,
    check_shared,
    compute_dtype,
    effective_epochs,
    first_best,
    is_int,
    seeded_init,
)
from lare.utils import make_generator, resolve_device

SELECT_METRICS = ("balanced_acc", "top1")
SOLVERS = ("adamw", "lbfgs")
STOPS = ("val", "loss")
DEFAULT_L2_GRID = tuple(10.0 ** (e / 2) for e in range(0, -13, -1))  # 1e0 .. 1e-6, two steps a decade: 13 values
# The settings in which the trials of one batched training may differ; they share every other.
TRIAL_FIELDS = ("lr", "weight_decay", "l2", "seed")


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
# augment(epoch, generators) -> (x (N, m, d), y (N, m)): each trial's extra training embeddings this
# epoch, trial i's drawn from generators[i] only (trials given one generator object share its draws).
Augmenter = Callable[[int, list[torch.Generator]], tuple[torch.Tensor, torch.Tensor]]


class FixedAugment:
    """The same extra embeddings every epoch (e.g. one LADS augmentation per training image), per
    trial: x (N, m, d) and y (N, m), or x (m, d) and y (m,) for one trial (N = 1)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if x.dim() == 2 and y.dim() == 1:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        if x.dim() != 3 or y.shape != x.shape[:2]:
            raise ValueError(f"x must be (N, m, d) and y (N, m), or (m, d) and (m,), got {tuple(x.shape)} and {tuple(y.shape)}")
        self.x, self.y = x, y

    @property
    def size(self) -> int:
        """Extra embeddings per trial and epoch."""
        return self.x.shape[1]

    def to(self, device: torch.device) -> FixedAugment:
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def __call__(self, epoch: int, generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


# ---------------------------------------------------------------- the probe's settings
@dataclass(frozen=True)
class ProbeConfig(TrainingConfig):
    """Linear probe training (recorded with each result).

    The training settings are those of :class:`lare.core.train.TrainingConfig`, with the defaults of
    LADS's probe (AdamW, lr 1e-3, weight decay 0.05, batch 256), 50 epochs and at least 200
    optimiser steps (a 1-shot set is one batch per epoch and would otherwise barely train);
    ``min_steps`` and ``max_steps`` count the originals plus the augmenter's extra embeddings.
    ``precision`` ``bf16``: the products (logits, weight gradients, validation logits) take
    bfloat16 inputs, where autocast would compute them; the weights, AdamW's state, the softmax and
    every reduction stay float32, and predictions afterwards are float32 (:func:`train_probe_trials`).
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
        check_choice("select", self.select, SELECT_METRICS)
        check_choice("solver", self.solver, SOLVERS)
        if self.stop not in STOPS:
            raise ValueError(f"stop must be one of {STOPS} (val: best validation epoch; loss: converged, last epoch), "
                             f"got {self.stop!r}")
        object.__setattr__(self, "l2_grid", check_l2_grid(self.l2_grid))


def shared_settings(config: ProbeConfig) -> tuple:
    """What the trials of one batched training share: every setting but :data:`TRIAL_FIELDS` (a
    hashable key, to group trials that can train together)."""
    return tuple((f.name, getattr(config, f.name)) for f in dataclasses.fields(config) if f.name not in TRIAL_FIELDS)


# ---------------------------------------------------------------- results
@dataclass
class TrialsResult:
    """N trained trials: kept weights, stopping record and per-epoch history.

    weight (N, d, C), bias (N, C): each trial's kept epoch (``stop`` val: its best validation
    epoch; loss, or no validation split: its last); last_weight, last_bias: where it stopped.
    best_epoch (the kept epoch), epochs (epochs run), steps (optimiser steps), stopped_by
    (``patience`` or ``budget``), best_score (validation ``select`` metric at best_epoch, in %; NaN
    without a validation split): one entry per trial. history: ``train_loss`` (and
    ``train_objective`` under stop loss; ``val_top1``, ``val_balanced_acc`` with a validation
    split), each (epochs, N) float64, NaN where a trial had already stopped.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    last_weight: torch.Tensor
    last_bias: torch.Tensor
    best_epoch: list[int]
    epochs: list[int]
    steps: list[int]
    stopped_by: list[str]
    best_score: list[float]
    history: dict[str, torch.Tensor]
    select: str
    configs: list[ProbeConfig]
    max_epochs: int

    @property
    def num_classes(self) -> int:
        return self.weight.shape[2]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (N, n) predicted by every trial's kept weights (float32)."""
        return batched_predict(x.to(self.weight.device, torch.float32), self.weight, self.bias).cpu()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, float]]:
        """Per trial ``{"top1", "balanced_acc"}`` in %, exactly :func:`metrics`."""
        return [metrics(p, y, self.num_classes) for p in self.predict(x)]

    def trial(self, i: int) -> nn.Linear:
        """Trial i's kept weights as a plain ``nn.Linear`` (on the device it trained on)."""
        d, c = self.weight.shape[1:]
        # no initialisation: it would draw from the global RNG, which the library never touches
        model = nn.utils.skip_init(nn.Linear, d, c, device=self.weight.device)
        with torch.no_grad():
            model.weight.copy_(self.weight[i].T)
            model.bias.copy_(self.bias[i])
        return model.eval()

    def best_trial(self) -> int:
        """Index of the trial with the highest validation score (the first within
        :data:`lare.core.train.SCORE_TIE_TOL` on ties, NaN as worst: :func:`lare.core.train.first_best`)."""
        return first_best(self.best_score, SCORE_TIE_TOL)


@dataclass
class ProbeResult:
    """One trained probe (:func:`train_probe`): its kept weights as an ``nn.Linear``."""

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


# ---------------------------------------------------------------- the trainer
def init_trials(d: int, num_classes: int, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (N, d, C) and biases (N, C): trial i starts as ``nn.Linear(d, C)`` seeded by seeds[i]."""
    layers = [seeded_init(lambda: nn.Linear(d, num_classes), s) for s in seeds]
    return torch.stack([m.weight.detach().T for m in layers]), torch.stack([m.bias.detach() for m in layers])


def epoch_batches(n: int, batch_size: int, generators: list[torch.Generator], device: torch.device) -> list[torch.Tensor]:
    """Index tensors (N, b) of this epoch's batches: row i follows the permutation trial i's
    generator draws, the same draw and split as :func:`lare.core.train.batches` (0: one full batch)."""
    if len(generators) > 1 and all(g is generators[0] for g in generators):  # one shared order: draw it once
        perm = torch.randperm(n, generator=generators[0], device=generators[0].device).to(device).expand(len(generators), -1)
    else:
        perm = torch.stack([torch.randperm(n, generator=g, device=g.device) for g in generators]).to(device)
    step = n if not batch_size or batch_size >= n else batch_size
    return list(perm.split(step, dim=1))


def pooled_index(idx: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Map per-trial indices into [originals (n), that trial's extras (m)] to rows of the pool
    ``cat([x, ax.reshape(N * m, d)])``, so the originals are stored once, not N times."""
    trial = torch.arange(len(idx), device=idx.device).unsqueeze(1)
    return torch.where(idx >= n, idx + trial * m, idx)


def _check_inputs(train_x, train_y, val_x, val_y, num_classes, configs) -> None:
    """Reject bad settings before any training starts."""
    if not is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not isinstance(configs, list | tuple) or not all(isinstance(c, ProbeConfig) for c in configs):
        raise ValueError(f"configs must be a list of ProbeConfig (one per trial), got {configs!r}")
    check_shared(configs, set(TRIAL_FIELDS))
    if configs[0].solver != "adamw":
        raise ValueError(f"the {configs[0].solver!r} solver is not trained here: it is solved by lare.core.reference")
    sets = [("train", train_x, train_y)] + ([("validation", val_x, val_y)] if val_x is not None else [])
    for name, x, y in sets:
        ok = y is not None and x.dim() == 2 and y.dim() == 1 and len(x) == len(y) and x.shape[1] == train_x.shape[-1]
        if not ok or (name == "train" and len(x) == 0):
            raise ValueError(f"{name} embeddings must be (n, d={train_x.shape[-1]}) with n labels (n > 0 for train), "
                             f"got {tuple(x.shape)}, {None if y is None else tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"{name} labels must be integers, got {y.dtype}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")


def _augment_batch(augment: Augmenter, epoch: int, generators: list[torch.Generator], trials: int, d: int,
                   num_classes: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """This epoch's extra embeddings (N, m, d) and labels (N, m), checked and on ``device``."""
    ax, ay = augment(epoch, generators)
    if ax.dim() != 3 or ax.shape[0] != trials or ax.shape[2] != d or ay.shape != ax.shape[:2]:
        raise ValueError(f"augment must return (N={trials}, m, d={d}) embeddings and (N, m) labels, "
                         f"got {tuple(ax.shape)} and {tuple(ay.shape)}")
    if ay.numel() and (int(ay.min()) < 0 or int(ay.max()) >= num_classes):
        raise ValueError(f"augment labels must lie in [0, {num_classes})")
    return ax.to(device, dtype), ay.to(device, torch.long)


def train_probe_trials(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, configs: list[ProbeConfig], *,
                       val_x: torch.Tensor | None = None, val_y: torch.Tensor | None = None,
                       augment: Augmenter | None = None, device: str | torch.device | None = None,
                       progress: bool = False) -> TrialsResult:
    """Train N = len(configs) linear probes at once: the probe's one trainer (one run is N = 1).

    The configs (``adamw`` solver) may differ in lr, weight decay, l2 and seed (:data:`TRIAL_FIELDS`)
    and share every other setting. Trial i: ``nn.Linear(d, C)`` initialised with its seed, AdamW
    with its lr and weight decay (on weight and bias), batches of ``batch_size`` in the order of a
    CPU generator seeded with its seed (0, or a size of at least the rows: one full batch, whose
    order plays no part, so none is drawn), augmentation from a generator on ``device`` seeded with
    seed + 1: alone (N = 1) a trial gives the numbers it gives among others, to float rounding. The
    weights are one (d + 1, N, C) tensor, a step is one batched product (with shared batches, one
    plain (b, d + 1) x (d + 1, N C) product; on full batches, one shared product for the originals
    and one batched product for each trial's extras) and one batched AdamW update.

    ``stop`` ``val``: after every epoch each running trial is scored on (val_x, val_y) by ``select``;
    its best epoch's weights are kept (the first on ties, within :data:`lare.core.train.SCORE_TIE_TOL`),
    and it stops ("patience") when it has not improved for ``patience`` epochs and has done at least
    ``min_steps`` optimiser steps; from then on its parameters and optimiser state are frozen while
    the others go on. ``loss``: patience counts epochs without a fall of the trial's training
    objective (its epoch's mean cross-entropy plus the l2 term, by more than
    :data:`lare.core.train.LOSS_REL_TOL` of its fall since the first epoch), and each trial keeps its
    last epoch. ``patience`` 0: no early stopping, every epoch of the budget. Without a validation
    split (None or empty) the last epoch is kept and nothing is scored (``val`` then never stops
    early). ``epochs`` is stretched or cut by :func:`lare.core.train.effective_epochs` to take at least
    ``min_steps`` and at most ``max_steps`` optimiser steps (the originals plus the augmenter's
    extras per epoch); trials still running at its end stop by "budget".

    ``precision`` ``bf16``: the inputs are held in bfloat16 and every product (logits, weight
    gradients, validation logits) takes bfloat16 operands, as autocast computes ``nn.Linear``;
    the weights, AdamW's state, the softmax, the l2 term and every reduction stay float32.
    ``l2``: a coupled penalty ``(l2 / 2) ||W||^2`` on the weight (not the bias), added to the
    gradient before Adam as ``torch.optim.Adam(weight_decay=...)`` does: with weight_decay 0 a trial
    then minimises the objective of :mod:`lare.core.reference`. The history's train_loss is the
    cross-entropy alone. augment: see :data:`Augmenter` (:class:`lare.core.box.BoxSampler`,
    :class:`FixedAugment`); an augmenter with ``fresh`` False reuses its first draw every epoch.
    """
    _check_inputs(train_x, train_y, val_x, val_y, num_classes, configs)
    p, dev = configs[0], resolve_device(device)
    dtype = compute_dtype(p.precision)  # inputs only meet products: cast once, not per step
    seeds = [c.seed for c in configs]
    trials, (n, d) = len(configs), train_x.shape
    x, y = train_x.to(dev, dtype), train_y.to(dev, torch.long)
    has_val = val_x is not None and len(val_x) > 0
    if has_val:
        vx, vy = val_x.to(dev, dtype), val_y.to(dev, torch.long)
    lr64, wd64, l2 = (torch.tensor([getattr(c, k) for c in configs], dtype=torch.float64) for k in ("lr", "weight_decay", "l2"))
    lr64, wd64 = lr64.to(dev), wd64.to(dev)
    # Coupled L2 on the weight rows of theta only (the bias row is not penalised).
    l2_rows = torch.cat([l2.view(1, -1, 1).expand(d, trials, 1), torch.zeros(1, trials, 1)]).to(dev, torch.float32) \
        if bool((l2 > 0).any()) else None
    if augment is not None and hasattr(augment, "to"):
        augment = augment.to(dev)
    on_loss, select, patience, min_steps = p.stop == "loss", p.select, p.patience, p.min_steps
    keep_last = on_loss or not has_val  # the kept epoch is the last: theta itself, no copy
    half_l2 = (0.5 * l2).to(dev, torch.float32)

    # One tensor for all parameters, theta (d + 1, N, C): rows :d every trial's weight, row d the
    # biases, so each step is one AdamW pass (elementwise, so the same numbers as two), and with
    # shared batches the N maps are one (d + 1, N C) matrix without a copy.
    w0, b0 = init_trials(d, num_classes, seeds)
    theta = torch.cat([w0, b0.unsqueeze(1)], dim=1).permute(1, 0, 2).contiguous().to(dev)
    weight, bias = theta[:d].permute(1, 0, 2), theta[d]  # views (N, d, C), (N, C)
    x1 = torch.cat([x, torch.ones(n, 1, device=dev, dtype=dtype)], dim=1)
    exp_avg, exp_avg_sq = torch.zeros_like(theta), torch.zeros_like(theta)
    step = torch.zeros(trials, dtype=torch.float64, device=dev)
    shared = len(set(seeds)) == 1  # the same seed: the same batch order, so the same batches
    order_gens = [make_generator(seeds[0], "cpu")] * trials if shared else [make_generator(s, "cpu") for s in seeds]
    # equal seeds draw equal samples: one generator object then serves every trial, drawn once per epoch
    sample_gens = [make_generator(seeds[0] + 1, dev)] * trials if shared else [make_generator(s + 1, dev) for s in seeds]

    m = getattr(augment, "size", 0) if augment is not None else 0
    epochs = effective_epochs(p.epochs, n + m, p.batch_size, min_steps, p.max_steps)
    best_theta = None if keep_last else theta.clone()
    best = torch.full((trials,), -math.inf, dtype=torch.float64, device=dev)
    no_score = torch.full((trials,), math.nan, dtype=torch.float64, device=dev)
    best_epoch, since_best = (torch.full((trials,), v, dtype=torch.long, device=dev) for v in (-1, 0))
    active = torch.ones(trials, dtype=torch.bool, device=dev)
    never = torch.zeros(trials, dtype=torch.bool, device=dev)
    stop_epoch = torch.full((trials,), epochs, dtype=torch.long, device=dev)
    rows = {k: [] for k in ("train_loss",) + (("train_objective",) if on_loss else ())
            + (("val_top1", "val_balanced_acc") if has_val else ())}
    if on_loss:  # the objective's patience per trial (patience 0: never)
        early = [EarlyStop(patience, min_steps, rel_tol=LOSS_REL_TOL) for _ in range(trials)]

    frozen = running_idx = None  # the stopped and running trials' indices, once some trial has stopped
    bar = tqdm(range(epochs), desc="probe" if trials == 1 else f"probe x{trials}", disable=not progress, leave=False)
    for epoch in bar:
        pool, pool_y, m = x, y.unsqueeze(0).expand(trials, -1), 0
        if augment is not None:
            ax, ay = _augment_batch(augment, epoch, sample_gens, trials, d, num_classes, dev, dtype)
            m = ax.shape[1]
        # A full batch is every row, whatever their order: no permutation, no pool, no gather (None below).
        full = not p.batch_size or p.batch_size >= n + m
        if m and not full:
            pool, pool_y = torch.cat([x, ax.reshape(-1, d)]), torch.cat([pool_y, ay], dim=1)
        total = torch.zeros(trials, dtype=torch.float64, device=dev)
        objective = torch.zeros(trials, dtype=torch.float64, device=dev)
        for idx in [None] if full else epoch_batches(n + m, p.batch_size, order_gens, dev):
            count = n + m if idx is None else idx.shape[1]
            one_batch = not m and (idx is None or shared)  # every trial sees the same rows
            if one_batch:
                rows_x1, rows_y = (x1, y) if idx is None else (x1[idx[0]], y[idx[0]])
            if one_batch and frozen is None:
                loss, grad = shared_cross_entropy_grads(rows_x1, rows_y, theta)
            elif one_batch:  # only the running trials' products (the frozen ones' grads: 0)
                loss_run, grad_run = shared_cross_entropy_grads(rows_x1, rows_y, theta.index_select(1, running_idx))
                loss = torch.zeros(trials, device=dev).index_copy_(0, running_idx, loss_run)
                grad = torch.zeros_like(theta).index_copy_(1, running_idx, grad_run)
            elif idx is None:  # the originals shared, each trial's extras its own
                loss, grad = split_cross_entropy_grads(x1, y, ax, ay, theta)
            else:
                xb, yb = pool[pooled_index(idx, n, m) if m else idx], pool_y.gather(1, idx)
                loss, grad_w, grad_b = cross_entropy_grads(xb, yb, weight, bias)
                grad = torch.cat([grad_w.permute(1, 0, 2), grad_b.unsqueeze(0)])
            if on_loss:  # the objective at the parameters this step starts from
                objective += (loss + half_l2 * theta[:d].pow(2).sum((0, 2))).to(torch.float64) * count
            if l2_rows is not None:
                grad += l2_rows * theta  # torch.optim.Adam's weight_decay: grad + l2 * W
            step += active.to(step.dtype)
            adamw_step(theta, grad, exp_avg, exp_avg_sq, step, lr64, wd64, frozen)
            total += loss.to(torch.float64) * count
        logged = [("train_loss", total / (n + m))]
        score = no_score
        if has_val:
            val = batched_metrics(batched_predict(vx, weight, bias), vy, num_classes)
            score = val[select]
            logged += [("val_top1", val["top1"]), ("val_balanced_acc", val["balanced_acc"])]

        # Early stopping bookkeeping, all (N,) tensors: improve, count, stop.
        if on_loss:  # keep the latest epoch; patience on the objective's fall
            improved = active
            obj = objective / (n + m)
            logged.append(("train_objective", obj))
            stopping = torch.tensor([a and e.update(epoch, v, int(s)) for a, e, v, s in
                                     zip(active.tolist(), early, obj.tolist(), step.tolist(), strict=True)], device=dev)
        elif not has_val:  # nothing to score: the latest epoch is kept, nothing stops early
            improved, stopping = active, never
        else:
            improved = active & (score > best + SCORE_TIE_TOL)
            since_best = torch.where(improved, 0, since_best + active.long())
            stopping = active & (since_best >= patience) & (step >= min_steps) if patience else never
        best = torch.where(improved, score, best)
        best_epoch = torch.where(improved, epoch, best_epoch)
        if not keep_last:
            best_theta = torch.where(improved.view(1, -1, 1), theta, best_theta)
        nan = torch.full_like(total, math.nan)
        for k, v in logged:
            rows[k].append(torch.where(active, v, nan))
        stop_epoch = torch.where(stopping, epoch + 1, stop_epoch)
        active &= ~stopping
        running = int(active.sum())
        frozen = None if running == trials else (~active).nonzero().squeeze(1)
        running_idx = None if frozen is None else active.nonzero().squeeze(1)
        if progress and trials == 1:
            bar.set_postfix(loss=f"{total[0].item() / (n + m):.3f}")
        elif progress:
            bar.set_postfix(running=running)
        if running == 0:
            break

    kept = theta if keep_last else best_theta
    return TrialsResult(
        weight=kept[:d].permute(1, 0, 2).contiguous(), bias=kept[d].contiguous(), last_weight=weight.contiguous(),
        last_bias=bias.contiguous(), best_epoch=best_epoch.tolist(), epochs=stop_epoch.tolist(), steps=[int(s) for s in step.tolist()],
        stopped_by=["budget" if a else "patience" for a in active.tolist()],  # only early stopping clears a trial's flag
        best_score=best.tolist(), history={k: torch.stack(v).cpu() for k, v in rows.items()}, select=select,
        configs=list(configs), max_epochs=epochs)


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int,
                config: ProbeConfig | None = None, *, val_x: torch.Tensor | None = None,
                val_y: torch.Tensor | None = None, augment: Augmenter | None = None,
                device: str | torch.device | None = None, progress: bool = True) -> ProbeResult:
    """Train one linear classifier on embeddings (plus the augmenter's extra embeddings each epoch):
    :func:`train_probe_trials` with one trial (N = 1), its kept weights as an ``nn.Linear``.

    ``config.stop`` ``val``: the epoch with the best validation ``config.select`` metric is kept
    (the last epoch when no validation split is given), and patience counts epochs without a
    better score. ``loss``: patience counts epochs without a fall of the training objective, and
    the last epoch is kept. ``history``: one dict per epoch (``epoch``, ``train_loss``, and
    ``train_objective`` under stop loss, ``val_top1`` and ``val_balanced_acc`` with a validation
    split). A 2-d augmenter (a :class:`lare.core.box.BoxSampler` on (n, d) corners, a
    :class:`FixedAugment` on (m, d)) is one trial's.
    """
    cfg = config or ProbeConfig()
    res = train_probe_trials(train_x, train_y, num_classes, [cfg], val_x=val_x, val_y=val_y, augment=augment,
                             device=device, progress=progress)
    history = [{"epoch": e, **{k: v[e, 0].item() for k, v in res.history.items()}} for e in range(res.epochs[0])]
    return ProbeResult(model=res.trial(0), config=cfg, best_epoch=res.best_epoch[0], history=history,
                       stopped_by=res.stopped_by[0])

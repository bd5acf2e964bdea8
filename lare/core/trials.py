"""N linear-probe trials (a hyperparameter search) trained as one batched model.

A trial is one run of today's linear probe (:func:`lare.core.probe.train_probe`): ``nn.Linear(d, C)``
seeded by its seed, AdamW with its own lr and weight decay, its own batch order, the epoch with
the best validation score kept. N trials share every product: the weights and biases are one
(d + 1, N, C) tensor, a step is one batched product (with shared batches, one plain (b, d + 1) x
(d + 1, N C) product; on full batches, one shared product for the originals and one batched
product for each trial's extras) and one batched AdamW update, validation one product per epoch.
Trial i sees exactly what it sees alone (N = 1). Each trial stops on its own (early stopping with
``patience``); a stopped trial is frozen (its update masked) while the others go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lare.core.augment import BatchedAugmenter
from lare.core.linear import (
    adamw_step,
    batched_metrics,
    batched_predict,
    cross_entropy_grads,
    shared_cross_entropy_grads,
    split_cross_entropy_grads,
)
from lare.core.probe import SELECT_METRICS, STOPS, metrics
from lare.core.train import LOSS_REL_TOL, SCORE_TIE_TOL, EarlyStop, effective_epochs, first_best, is_int, seeded_init
from lare.utils import make_generator, resolve_device

# Scores closer than this (in percentage points) tie: the same balanced accuracy reached with
# different per-class hits can differ by float rounding (1e-14), which must not count as a gain.
TIE_TOL = SCORE_TIE_TOL


# ---------------------------------------------------------------- setup
def init_trials(d: int, num_classes: int, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (N, d, C) and biases (N, C): trial i starts as ``nn.Linear(d, C)`` seeded by seeds[i] (today's probe)."""
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


# ---------------------------------------------------------------- result
@dataclass
class TrialsResult:
    """N trained trials: best-epoch weights, stopping record and per-epoch history.

    weight (N, d, C), bias (N, C): each trial's best epoch; last_weight, last_bias: where it stopped.
    best_epoch, epochs (epochs run), steps (optimiser steps), stopped_by (``patience`` or
    ``budget``), best_score (validation ``select`` metric at best_epoch, in %): one entry per trial.
    history: ``train_loss``, ``val_top1``, ``val_balanced_acc``, each (epochs, N) float64, NaN
    where a trial had already stopped.
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
    lr: list[float]
    weight_decay: list[float]
    l2: list[float]
    seeds: list[int]
    max_epochs: int

    @property
    def num_classes(self) -> int:
        return self.weight.shape[2]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (N, n) predicted by every trial's best weights."""
        return batched_predict(x.to(self.weight.device, torch.float32), self.weight, self.bias).cpu()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, float]]:
        """Per trial ``{"top1", "balanced_acc"}`` in %, exactly :func:`lare.core.probe.metrics`."""
        return [metrics(p, y, self.num_classes) for p in self.predict(x)]

    def trial(self, i: int) -> nn.Linear:
        """Trial i's best weights as a plain ``nn.Linear`` (on the device it trained on)."""
        d, c = self.weight.shape[1:]
        model = nn.Linear(d, c, device=self.weight.device)
        with torch.no_grad():
            model.weight.copy_(self.weight[i].T)
            model.bias.copy_(self.bias[i])
        return model.eval()

    def best_trial(self) -> int:
        """Index of the trial with the highest validation score (the first within :data:`TIE_TOL` on
        ties, NaN as worst: :func:`lare.core.train.first_best`)."""
        return first_best(self.best_score, TIE_TOL)


# ---------------------------------------------------------------- training
def _check_inputs(train_x, train_y, val_x, val_y, num_classes, lr, weight_decay, l2, seeds, max_epochs, patience,
                  batch_size, select, min_steps, stop, max_steps) -> None:
    """Reject bad settings before any training starts."""
    if not is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    for name, x, y in (("train", train_x, train_y), ("validation", val_x, val_y)):
        if x.dim() != 2 or y.dim() != 1 or len(x) != len(y) or len(x) == 0 or x.shape[1] != train_x.shape[1]:
            raise ValueError(f"{name} embeddings must be (n, d={train_x.shape[-1]}) with n > 0 labels, "
                             f"got {tuple(x.shape)}, {tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"{name} labels must be integers, got {y.dtype}")
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    if not isinstance(seeds, list | tuple) or not seeds or not all(is_int(s) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    for name, v in (("lr", lr), ("weight_decay", weight_decay), ("l2", l2)):
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or len(v) != len(seeds):
            raise ValueError(f"{name} must be a 1-d tensor with one value per seed ({len(seeds)}), got {v!r}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} must be finite, got {v.tolist()}")
    if (lr <= 0).any() or (weight_decay < 0).any() or (l2 < 0).any():
        raise ValueError(f"lr must be > 0, weight_decay and l2 >= 0, got {lr.tolist()}, {weight_decay.tolist()}, {l2.tolist()}")
    for name, v, low in (("patience", patience, 1), ("max_epochs", max_epochs, 1), ("batch_size (0: full batch)", batch_size, 0),
                         ("min_steps", min_steps, 0), ("max_steps (0: no bound)", max_steps, 0)):
        if not is_int(v) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    if min_steps and max_steps and min_steps > max_steps:
        raise ValueError(f"min_steps ({min_steps}) must not exceed max_steps ({max_steps})")
    if select not in SELECT_METRICS:
        raise ValueError(f"select must be one of {SELECT_METRICS}, got {select!r}")
    if stop not in STOPS:
        raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")


def _augment_batch(augment: BatchedAugmenter, epoch: int, generators: list[torch.Generator], trials: int, d: int,
                   num_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """This epoch's extra embeddings (N, m, d) and labels (N, m), checked and on ``device``."""
    ax, ay = augment(epoch, generators)
    if ax.dim() != 3 or ax.shape[0] != trials or ax.shape[2] != d or ay.shape != ax.shape[:2]:
        raise ValueError(f"augment must return (N={trials}, m, d={d}) embeddings and (N, m) labels, "
                         f"got {tuple(ax.shape)} and {tuple(ay.shape)}")
    if ay.numel() and (int(ay.min()) < 0 or int(ay.max()) >= num_classes):
        raise ValueError(f"augment labels must lie in [0, {num_classes})")
    return ax.to(device, torch.float32), ay.to(device, torch.long)


def train_probe_trials(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, *, lr: torch.Tensor,
                       weight_decay: torch.Tensor, seeds: list[int], val_x: torch.Tensor, val_y: torch.Tensor,
                       max_epochs: int = 200, patience: int = 10, batch_size: int = 256, select: str = "balanced_acc",
                       augment: BatchedAugmenter | None = None, min_steps: int = 0, l2: torch.Tensor | None = None,
                       stop: str = "val", max_steps: int = 0, device: str | torch.device | None = None,
                       progress: bool = False) -> TrialsResult:
    """Train N = len(seeds) linear probes at once, each stopped early on the validation split.

    Trial i: ``nn.Linear(d, C)`` initialised with seeds[i], AdamW with lr[i] and weight_decay[i]
    (on weight and bias, as today's probe), batches of ``batch_size`` in the order of a CPU
    generator seeded with seeds[i] (0, or a size of at least the rows: one full batch, whose order
    plays no part, so none is drawn: the same gradients as :func:`lare.core.probe.train_probe`'s to
    float rounding), augmentation from a generator on ``device`` seeded with seeds[i] + 1: alone
    (N = 1) the trial gives the same numbers. Float32.

    After every epoch each running trial is scored on (val_x, val_y) by ``select``
    (``balanced_acc`` or ``top1``); its best epoch's weights are kept (the first on ties, within
    :data:`TIE_TOL`). A trial stops ("patience") when it has not improved for ``patience``
    epochs and has done at least ``min_steps`` optimiser steps; from then on its parameters and
    optimiser state are frozen. ``max_epochs`` is stretched or cut by :func:`lare.core.train.effective_epochs`,
    as :func:`lare.core.probe.train_probe` does, to take at least ``min_steps`` and at most ``max_steps``
    optimiser steps (0: no bound; the originals plus the augmenter's extras per epoch); trials still
    running at its end stop by "budget".
    ``stop`` ``loss`` (:attr:`lare.core.probe.ProbeConfig.stop`): patience counts epochs without a fall
    of the trial's training objective (its epoch's mean cross-entropy plus the l2 term, by more
    than :data:`lare.core.train.LOSS_REL_TOL` of its fall since the first epoch), and each trial keeps
    its last epoch; ``best_epoch`` and ``best_score`` are then that epoch's.

    augment: ``augment(epoch, generators) -> (ax (N, m, d), ay (N, m))``, each trial's extra
    embeddings for this epoch (:class:`lare.core.augment.BatchedBoxSampler`, :class:`lare.core.augment.FixedBatchedAugment`).
    l2: optional (N,) coupled penalty ``(l2 / 2) ||W||^2`` on the weight (not the bias), added to
    the gradient before Adam as ``torch.optim.Adam(weight_decay=...)`` does: with weight_decay 0 a
    trial then minimises the objective of :mod:`lare.core.reference`, which AdamW's decoupled decay
    does not (its fixed point is a different, per-coordinate regulariser). None: today's probe.
    The history's train_loss is the cross-entropy alone.
    """
    if l2 is None and isinstance(seeds, list | tuple):
        l2 = torch.zeros(len(seeds))
    _check_inputs(train_x, train_y, val_x, val_y, num_classes, lr, weight_decay, l2, seeds, max_epochs, patience,
                  batch_size, select, min_steps, stop, max_steps)
    dev = resolve_device(device)
    trials, (n, d) = len(seeds), train_x.shape
    x, y = train_x.to(dev, torch.float32), train_y.to(dev, torch.long)
    vx, vy = val_x.to(dev, torch.float32), val_y.to(dev, torch.long)
    lr64, wd64 = lr.to(dev, torch.float64), weight_decay.to(dev, torch.float64)
    # Coupled L2 on the weight rows of theta only (the bias row is not penalised).
    l2_rows = torch.cat([l2.view(1, -1, 1).expand(d, trials, 1), torch.zeros(1, trials, 1)]).to(dev, torch.float32) \
        if bool((l2 > 0).any()) else None
    if augment is not None and hasattr(augment, "to"):
        augment = augment.to(dev)
    on_loss = stop == "loss"
    half_l2 = (0.5 * l2).to(dev, torch.float32)

    # One tensor for all parameters, theta (d + 1, N, C): rows :d every trial's weight, row d the
    # biases, so each step is one AdamW pass (elementwise, so the same numbers as two), and with
    # shared batches the N maps are one (d + 1, N C) matrix without a copy.
    w0, b0 = init_trials(d, num_classes, list(seeds))
    theta = torch.cat([w0, b0.unsqueeze(1)], dim=1).permute(1, 0, 2).contiguous().to(dev)
    weight, bias = theta[:d].permute(1, 0, 2), theta[d]  # views (N, d, C), (N, C)
    x1 = torch.cat([x, torch.ones(n, 1, device=dev)], dim=1)
    exp_avg, exp_avg_sq = torch.zeros_like(theta), torch.zeros_like(theta)
    step = torch.zeros(trials, dtype=torch.float64, device=dev)
    shared = len(set(seeds)) == 1  # the same seed: the same batch order, so the same batches
    order_gens = [make_generator(seeds[0], "cpu")] * trials if shared else [make_generator(s, "cpu") for s in seeds]
    # equal seeds draw equal samples: one generator object then serves every trial, drawn once per epoch
    sample_gens = [make_generator(seeds[0] + 1, dev)] * trials if shared else [make_generator(s + 1, dev) for s in seeds]

    m = getattr(augment, "size", 0) if augment is not None else 0
    epochs = effective_epochs(max_epochs, n + m, batch_size, min_steps, max_steps)
    # loss: the kept epoch is the last, theta itself (a stopped trial's parameters stay frozen), so no copy is kept
    best_theta = None if on_loss else theta.clone()
    best = torch.full((trials,), -math.inf, dtype=torch.float64, device=dev)
    best_epoch, since_best = (torch.full((trials,), v, dtype=torch.long, device=dev) for v in (-1, 0))
    active = torch.ones(trials, dtype=torch.bool, device=dev)
    stop_epoch = torch.full((trials,), epochs, dtype=torch.long, device=dev)
    rows = {k: [] for k in ("train_loss", "val_top1", "val_balanced_acc")}
    if on_loss:  # the objective's patience per trial: the single probe's EarlyStop, one per trial (as lare.core.batched)
        rows["train_objective"] = []
        early = [EarlyStop(patience, min_steps, rel_tol=LOSS_REL_TOL) for _ in range(trials)]

    frozen = running_idx = None  # the stopped and running trials' indices, once some trial has stopped
    bar = tqdm(range(epochs), desc=f"probe x{trials}", disable=not progress, leave=False)
    for epoch in bar:
        pool, pool_y, m = x, y.unsqueeze(0).expand(trials, -1), 0
        if augment is not None:
            ax, ay = _augment_batch(augment, epoch, sample_gens, trials, d, num_classes, dev)
            m = ax.shape[1]
        # A full batch is every row, whatever their order: no permutation, no pool, no gather (None below).
        full = not batch_size or batch_size >= n + m
        if m and not full:
            pool, pool_y = torch.cat([x, ax.reshape(-1, d)]), torch.cat([pool_y, ay], dim=1)
        total = torch.zeros(trials, dtype=torch.float64, device=dev)
        objective = torch.zeros(trials, dtype=torch.float64, device=dev)
        for idx in [None] if full else epoch_batches(n + m, batch_size, order_gens, dev):
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
            if on_loss:  # the objective at the parameters this step starts from, as the single probe adds it
                objective += (loss + half_l2 * theta[:d].pow(2).sum((0, 2))).to(torch.float64) * count
            if l2_rows is not None:
                grad += l2_rows * theta  # torch.optim.Adam's weight_decay: grad + l2 * W
            step += active.to(step.dtype)
            adamw_step(theta, grad, exp_avg, exp_avg_sq, step, lr64, wd64, frozen)
            total += loss.to(torch.float64) * count
        val = batched_metrics(batched_predict(vx, weight, bias), vy, num_classes)

        # Early stopping bookkeeping, all (N,) tensors: improve, count, stop.
        score = val[select]
        if on_loss:  # keep the latest epoch; patience on the objective's fall
            improved = active
            obj = objective / (n + m)
            stopping = torch.tensor([a and e.update(epoch, v, int(s)) for a, e, v, s in
                                     zip(active.tolist(), early, obj.tolist(), step.tolist(), strict=True)], device=dev)
        else:
            improved = active & (score > best + TIE_TOL)
            since_best = torch.where(improved, 0, since_best + active.long())
            stopping = active & (since_best >= patience) & (step >= min_steps)
        best = torch.where(improved, score, best)
        best_epoch = torch.where(improved, epoch, best_epoch)
        if not on_loss:
            best_theta = torch.where(improved.view(1, -1, 1), theta, best_theta)
        nan = torch.full_like(total, math.nan)
        logged = [("train_loss", total / (n + m)), ("val_top1", val["top1"]), ("val_balanced_acc", val["balanced_acc"])]
        for k, v in logged + ([("train_objective", obj)] if on_loss else []):
            rows[k].append(torch.where(active, v, nan))
        stop_epoch = torch.where(stopping, epoch + 1, stop_epoch)
        active &= ~stopping
        running = int(active.sum())
        frozen = None if running == trials else (~active).nonzero().squeeze(1)
        running_idx = None if frozen is None else active.nonzero().squeeze(1)
        bar.set_postfix(running=running)
        if running == 0:
            break

    kept = theta if on_loss else best_theta
    return TrialsResult(
        weight=kept[:d].permute(1, 0, 2).contiguous(), bias=kept[d].contiguous(), last_weight=weight.contiguous(),
        last_bias=bias.contiguous(), best_epoch=best_epoch.tolist(), epochs=stop_epoch.tolist(), steps=[int(s) for s in step.tolist()],
        stopped_by=["budget" if a else "patience" for a in active.tolist()],  # only early stopping clears a trial's flag
        best_score=best.tolist(), history={k: torch.stack(v).cpu() for k, v in rows.items()}, select=select,
        lr=lr.tolist(), weight_decay=weight_decay.tolist(), l2=l2.tolist(), seeds=list(seeds), max_epochs=epochs)

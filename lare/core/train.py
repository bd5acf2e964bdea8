"""The one training loop shared by f_Box and LADS: minimise a dict of loss terms on tensors.

Tensors stay on the device; batches are index slices of a seeded permutation (no DataLoader,
no per-sample Python). The epoch with the lowest validation ``total`` is kept (the first on ties; a
NaN loss never; the last epoch when there is no validation split).

``precision="bf16"`` runs the forward pass under bfloat16 autocast (about twice the matrix
throughput of float32 on CPUs with AVX512-BF16 or AMX and on recent GPUs); weights, the AdamW
state and the loss reductions stay float32. It changes the numbers slightly, so it is a recorded
setting of every config, never switched on behind the user's back.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lare.utils import make_generator, nonfinite

TermsFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (training on cached embeddings), got {precision!r}")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype inputs are held in for ``precision`` (autocast would cast them to it anyway)."""
    check_precision(precision)
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: torch.device, precision: str):
    """bfloat16 autocast for ``bf16``, nothing for ``fp32``."""
    if compute_dtype(precision) == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; the fused kernel (one pass over all parameters per step) where torch has one."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


def is_int(v) -> bool:
    """An int that is not a bool (YAML's true must not pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def check_training(epochs: int, batch_size: int, lr: float, seed: int = 0, weight_decay: float = 0.0,
                   min_steps: int = 0, max_steps: int = 0) -> None:
    """Reject bad optimisation settings at configuration time, not halfway through training."""
    for name, v in (("min_steps", min_steps), ("max_steps", max_steps)):
        if not is_int(v) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0 (0: no bound), got {v!r}")
    if min_steps and max_steps and min_steps > max_steps:
        raise ValueError(f"min_steps ({min_steps}) must not exceed max_steps ({max_steps})")
    if not is_int(epochs) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not is_int(batch_size) or batch_size < 0:
        raise ValueError(f"batch_size must be an integer >= 0 (0 means full batch), got {batch_size!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")


@dataclass(frozen=True)
class TrainingConfig:
    """The optimisation settings f_Box, LADS and the probe share (each config sets its own defaults).

    epochs, batch_size (0: full batch), lr, weight_decay: AdamW.
    seed: initialisation and batch order (and box sampling in the probe).
    min_steps, max_steps: bounds on the optimiser steps (0: none); the epochs are stretched or cut
        to meet them (:func:`effective_epochs`), so tiny few-shot sets still train and large sets
        stay affordable.
    patience: early stopping: training ends when the validation score has not improved for this
        many epochs (never before ``min_steps``); ``epochs`` is then the budget. 0 (default): train
        every epoch, today's fixed recipe. The result records whether patience or the budget
        ended it (``stopped_by``).
    precision: ``fp32`` (default) or ``bf16``: the forward pass under bfloat16 autocast; weights,
        optimiser state, softmaxes and reductions stay float32 (see the module docstring).
    """

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    min_steps: int = 0
    max_steps: int = 0
    precision: str = "fp32"
    patience: int = 0

    def __post_init__(self):
        check_precision(self.precision)
        if not is_int(self.patience) or self.patience < 0:
            raise ValueError(f"patience must be an integer >= 0 (0: no early stopping), got {self.patience!r}")
        check_training(self.epochs, self.batch_size, self.lr, self.seed, self.weight_decay, self.min_steps,
                       self.max_steps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Index tensors of a seeded random permutation, ``batch_size`` at a time (0: all at once)."""
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    step = n if not batch_size or batch_size >= n else batch_size
    return perm.split(step)


def effective_epochs(epochs: int, n: int, batch_size: int, min_steps: int = 0, max_steps: int = 0) -> int:
    """``epochs``, stretched so that training takes at least ``min_steps`` optimiser steps (a
    1-shot set is one batch per epoch) and cut so that it takes at most ``max_steps`` (50 epochs of
    45,000 CIFAR-100 embeddings are 8,800 steps). 0 leaves a side unbounded."""
    per_epoch = max(1, math.ceil(n / batch_size)) if batch_size else 1
    e = epochs
    if min_steps:
        e = max(e, math.ceil(min_steps / per_epoch))
    if max_steps:
        e = min(e, max(1, math.ceil(max_steps / per_epoch)))
    return e


def seeded_init(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with a seeded initialisation, leaving the caller's global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


# A validation loss counts as progressing only if it falls by more than 0.1 % of its fall so far
# (see EarlyStop): measured against the loss's own value, a loss whose terms cancel near zero (f_Box's
# bounded volume term against its cross-entropies) would need ever smaller gains and never stop.
LOSS_REL_TOL = 1e-3
# Validation accuracies closer than this (percentage points) tie: the same balanced accuracy reached
# with different per-class hits can differ by float rounding (1e-14), which must not count as a gain.
SCORE_TIE_TOL = 1e-9


def first_best(scores, tol: float = SCORE_TIE_TOL) -> int:
    """The index of the highest score, the library's rule for every choice among trials: the first
    (lowest index) of those within ``tol`` of the highest; NaN counts as worst (as -inf), since
    ``max`` over NaN depends on the order. All NaN or -inf: index 0."""
    if not len(scores):
        raise ValueError("nothing to choose from: no scores")
    clean = [-math.inf if math.isnan(s) else s for s in map(float, scores)]
    top = max(clean)
    return next(i for i, s in enumerate(clean) if s >= top - tol)


class EarlyStop:
    """Patience on a validation score: ``update(epoch, score, steps)`` is True (stop) after
    ``patience`` epochs without progress, once ``min_steps`` optimiser steps are done (``patience``
    0: never). Progress is a score better than the last progress by more than ``rel_tol`` times
    the gain since the first epoch (a scale that no constant added to the loss changes), or by
    more than ``abs_tol``: losses that creep down by 1e-6 an epoch would otherwise never stop (the
    best epoch is still tracked exactly by the caller). ``lower``: lower scores are better (losses)."""

    def __init__(self, patience: int, min_steps: int = 0, *, lower: bool = True, rel_tol: float = 0.0,
                 abs_tol: float = 0.0):
        self.patience, self.min_steps, self.lower, self.rel_tol, self.abs_tol = patience, min_steps, lower, rel_tol, abs_tol
        self.first, self.ref, self.ref_epoch, self.stopped_by = None, None, 0, "budget"

    def update(self, epoch: int, score: float, steps: int) -> bool:
        if self.first is None or not math.isfinite(self.first):
            self.first = score
        margin = max(self.rel_tol * abs(self.ref - self.first), self.abs_tol) if self.ref is not None else 0.0
        if self.ref is None or (score < self.ref - margin if self.lower else score > self.ref + margin):
            self.ref, self.ref_epoch = score, epoch
        if self.patience and epoch - self.ref_epoch >= self.patience and steps >= self.min_steps:
            self.stopped_by = "patience"
            return True
        return False


class TrainingDiverged(FloatingPointError):
    """Every validation loss was NaN or infinite; the message says whether the inputs are to blame."""


def diverged_message(what: str, inputs: dict[str, torch.Tensor]) -> str:
    """Why a training gave no finite loss: non-finite ``inputs`` (named, counted, first row), or,
    when every input is finite, the optimisation itself (then: the learning rate or logit scale)."""
    bad = [m for name, v in inputs.items() if (m := nonfinite(name, v))]
    if bad:
        return (f"{what}: the loss is not finite because the inputs are not: {'; '.join(bad)}. Fix them where the "
                "embeddings come from (a bring-your-own .npz: the preflight names such values); the learning rate is not "
                "at fault")
    return (f"{what}: training diverged (every validation loss was NaN or infinite) although its inputs are finite "
            f"({', '.join(inputs)}): lower the learning rate or the logit scale")


def minimise(model: nn.Module, terms: TermsFn, x: torch.Tensor, y: torch.Tensor, *,
             val: tuple[torch.Tensor, torch.Tensor] | None, epochs: int, batch_size: int, lr: float,
             weight_decay: float, seed: int, desc: str, progress: bool,
             precision: str = "fp32", early: EarlyStop | None = None,
             inputs: dict[str, torch.Tensor] | None = None) -> tuple[int, list[dict]]:
    """AdamW on ``terms(x_batch, y_batch)["total"]``; loads the best epoch's weights into ``model``.

    Returns ``(best_epoch, history)``; ``history`` has per epoch the mean training terms
    (``train_*``) and the validation terms (``val_*``). ``early`` stops on the validation loss.
    ``inputs``: the tensors ``terms`` reads besides ``x`` (class text...), checked for non-finite
    values when no epoch gives a finite validation loss (:class:`TrainingDiverged`).
    """
    steps = 0
    opt = make_optimizer(model.parameters(), lr, weight_decay, x.device)
    gen = make_generator(seed, "cpu")
    history, best, best_epoch, best_state = [], float("inf"), -1, None
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        sums, count = {}, 0
        for idx in batches(len(x), batch_size, gen, x.device):
            with autocast(x.device, precision):
                t = terms(x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            t["total"].backward()
            opt.step()
            for k, v in t.items():
                sums[k] = sums.get(k, 0.0) + v.detach() * len(idx)
            count += len(idx)
            steps += 1
        row = {"epoch": epoch, **{f"train_{k}": (v / count).item() for k, v in sums.items()}}
        if val is not None:
            model.eval()
            with torch.no_grad(), autocast(x.device, precision):
                row.update({f"val_{k}": v.item() for k, v in terms(*val).items()})
            score = row["val_total"]
        else:
            score = -epoch  # no validation: the last epoch wins
        history.append(row)
        if score < best:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{row['train_total']:.4f}")
        if early is not None and val is not None and early.update(epoch, score, steps):
            break
    if best_state is None:
        seen = {"training embeddings": x, **({"validation embeddings": val[0]} if val is not None else {}), **(inputs or {})}
        raise TrainingDiverged(diverged_message(desc, seen))
    model.load_state_dict(best_state)
    model.eval()
    return best_epoch, history


def check_xy(x: torch.Tensor, y: torch.Tensor, class_text: torch.Tensor, name: str) -> None:
    """Shapes and label range of an embedding set against the class text embeddings."""
    if x.dim() != 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"{name} embeddings must be (n, d) with n labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if class_text.dim() != 2 or class_text.shape[1] != x.shape[1]:
        raise ValueError(f"class_text must be (C, {x.shape[1]}), got {tuple(class_text.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= class_text.shape[0]):
        raise ValueError(f"{name} labels must lie in [0, {class_text.shape[0]}), got [{int(y.min())}, {int(y.max())}]")

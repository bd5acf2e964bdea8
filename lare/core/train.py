"""The one training loop of f_Box and the LADS augmenter, and the settings every trainer shares.

:func:`minimise` trains N trials of a two-layer network at once (N = 1: a single run; N > 1: a
search's trials, which share the data, the seed and the optimiser settings and differ in loss
weights). Their networks are stacked into ``(N, ...)`` weight tensors (:class:`StackedMLP`), so a
step is one batched product; the loss is the sum of the trials' losses, whose gradients do not mix,
and AdamW is element-wise, so trial i takes the steps it would take alone, up to the rounding of
batched products. Tensors stay on the device; batches are index slices of a seeded permutation (no
DataLoader, no per-sample Python). Each trial keeps the epoch with the lowest validation ``total``
(the first on ties; a NaN loss never; the last epoch when there is no validation split) and stops on
its own patience (:class:`EarlyStop`).

``precision="bf16"`` runs the forward pass under bfloat16 autocast (about twice the matrix
throughput of float32 on CPUs with AVX512-BF16 or AMX and on recent GPUs); weights, the AdamW
state and the loss reductions stay float32. It changes the numbers slightly, so it is a recorded
setting of every config, never switched on behind the user's back.

Also here: :class:`TrainingConfig` (the optimisation settings of f_Box, LADS and the probe), the
epoch bounds (:func:`effective_epochs`), seeded initialisation, the library's rule for choosing
among trials (:func:`first_best`) and the message of a diverged training (:func:`diverged_message`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lare.utils import make_generator, nonfinite

# terms(out, x, y, rows) -> {name: (n_rows,)}: the loss terms of the trials in ``rows`` (None: all),
# ``out`` (n_rows, b, out_dim) being their networks' outputs on the batch ``x`` with labels ``y``
TermsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], dict[str, torch.Tensor]]
PRECISIONS = ("fp32", "bf16")


def check_choice(name: str, value, options) -> None:
    """Refuse a setting that is not one of ``options``, naming them."""
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options) if isinstance(options, dict) else options}, got {value!r}")


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


class StackedMLP(nn.Module):
    """N two-layer networks ``Linear(d, h) -> act -> Linear(h, out)`` as (N, ...) weight tensors,
    each starting from the weights of the ``nn.Sequential`` it is built from."""

    def __init__(self, nets: list[nn.Sequential], activation: nn.Module):
        super().__init__()
        first, last = [n[0] for n in nets], [n[2] for n in nets]
        self.w1 = nn.Parameter(torch.stack([m.weight.detach().T for m in first]).contiguous())
        self.b1 = nn.Parameter(torch.stack([m.bias.detach() for m in first]).unsqueeze(1).contiguous())
        self.w2 = nn.Parameter(torch.stack([m.weight.detach().T for m in last]).contiguous())
        self.b2 = nn.Parameter(torch.stack([m.bias.detach() for m in last]).unsqueeze(1).contiguous())
        self.act = activation

    @property
    def trials(self) -> int:
        return self.w1.shape[0]

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (b, d) shared by the trials, or (n, b, d); returns (n, b, out). ``rows``: the trials to
        run (None: all), so trials that have stopped cost nothing."""
        w1, b1, w2, b2 = (self.w1, self.b1, self.w2, self.b2) if rows is None else \
            (p[rows] for p in (self.w1, self.b1, self.w2, self.b2))
        if x.dim() == 2:
            x = x.expand(w1.shape[0], *x.shape)
        return torch.baddbmm(b2, self.act(torch.baddbmm(b1, x, w1)), w2)


@torch.no_grad()
def load_trial(net: nn.Sequential, state: dict[str, torch.Tensor]) -> nn.Sequential:
    """One trial's slice of a :class:`StackedMLP` state (``w1``, ``b1``, ``w2``, ``b2``) copied into
    ``net``, the single network's layout."""
    net[0].weight.copy_(state["w1"].T)
    net[0].bias.copy_(state["b1"][0])
    net[2].weight.copy_(state["w2"].T)
    net[2].bias.copy_(state["b2"][0])
    return net


def differing(configs: list, varying: set[str]) -> list[str]:
    """The fields besides ``varying`` in which the configs (dataclasses) differ from the first."""
    base = dataclasses.asdict(configs[0])
    return sorted({k for c in configs[1:] for k, v in dataclasses.asdict(c).items() if k not in varying and v != base[k]})


def check_shared(configs: list, varying: set[str]) -> None:
    """Trials trained together share every setting but the loss weights ``varying``."""
    if not configs:
        raise ValueError("no trials given")
    if diff := differing(configs, varying):
        raise ValueError(f"trials trained together may differ only in {sorted(varying)}; these differ too: {diff}")


@dataclass
class TrialRun:
    """How one trial of :func:`minimise` went: its best epoch's weights (its slice of the
    :class:`StackedMLP` state), that epoch, what ended it (``budget`` or ``patience``) and its
    per-epoch history (``epoch``, ``train_*`` and ``val_*`` terms)."""

    state: dict[str, torch.Tensor]
    best_epoch: int
    stopped_by: str
    history: list[dict]


def minimise(model: StackedMLP, terms: TermsFn, x: torch.Tensor, y: torch.Tensor, *,
             val: tuple[torch.Tensor, torch.Tensor] | None, cfg: TrainingConfig, desc: str, progress: bool = False,
             inputs: dict[str, torch.Tensor] | None = None) -> list[TrialRun]:
    """AdamW (``cfg``'s settings) on the sum of the trials' ``terms(...)["total"]``; one
    :class:`TrialRun` per trial of ``model``.

    Per trial the best epoch by validation total (the first on ties, a NaN total never; without
    ``val`` the last epoch), kept until its patience runs out (``cfg.patience``, 0: every epoch). A
    stopped trial is no longer computed (its parameters drift under weight decay, but its best state
    is already kept); the loop ends when all have stopped. ``desc``: the progress bar's label and
    the name in errors. ``inputs``: the tensors ``terms`` reads besides ``x`` (class text...),
    checked for non-finite values when a trial gives no finite validation loss
    (:class:`TrainingDiverged`).
    """
    dev, n = x.device, model.trials
    opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, dev)
    gen = make_generator(cfg.seed, "cpu")
    epochs = effective_epochs(cfg.epochs, len(x), cfg.batch_size, cfg.min_steps, cfg.max_steps)
    best, best_epoch, states = [math.inf] * n, [-1] * n, [None] * n
    history: list[list[dict]] = [[] for _ in range(n)]
    early = [EarlyStop(cfg.patience, cfg.min_steps, rel_tol=LOSS_REL_TOL) for _ in range(n)]
    active, steps = [True] * n, 0
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        running = [i for i in range(n) if active[i]]
        rows = None if len(running) == n else torch.tensor(running, device=dev)
        model.train()
        sums = None
        for idx in batches(len(x), cfg.batch_size, gen, dev):
            bx, by = x[idx], y[idx]
            with autocast(dev, cfg.precision):
                t = terms(model(bx, rows), bx, by, rows)
            opt.zero_grad(set_to_none=True)
            t["total"].sum().backward()
            opt.step()
            steps += 1
            part = {k: v.detach().float() * len(idx) for k, v in t.items()}
            sums = part if sums is None else {k: sums[k] + part[k] for k in sums}
        vt = None
        if val is not None:
            model.eval()
            with torch.no_grad(), autocast(dev, cfg.precision):
                vt = {k: v.float().cpu() for k, v in terms(model(val[0], rows), *val, rows).items()}
        train = {k: (v / len(x)).cpu() for k, v in sums.items()}
        for j, i in enumerate(running):  # j: the trial's place among this epoch's rows
            row = {"epoch": epoch, **{f"train_{k}": float(v[j]) for k, v in train.items()}}
            score = -epoch  # no validation: the last epoch wins
            if vt is not None:
                row.update({f"val_{k}": float(v[j]) for k, v in vt.items()})
                score = row["val_total"]
            history[i].append(row)
            if score < best[i]:
                best[i], best_epoch[i] = score, epoch
                states[i] = {k: v.detach()[i].clone() for k, v in model.state_dict().items()}
            if vt is not None and early[i].update(epoch, score, steps):
                active[i] = False
        bar.set_postfix(loss=f"{float(train['total'].min()):.4f}", **({"running": f"{len(running)}/{n}"} if n > 1 else {}))
        if not any(active):
            break
    if bad := [i for i in range(n) if states[i] is None]:
        what = desc if n == 1 else f"{desc} (trial{'s' * (len(bad) > 1)} {', '.join(map(str, bad))} of {n}, numbered from 0)"
        seen = {"training embeddings": x, **({"validation embeddings": val[0]} if val is not None else {}), **(inputs or {})}
        raise TrainingDiverged(diverged_message(what, seen))
    model.eval()
    return [TrialRun(states[i], best_epoch[i], early[i].stopped_by, history[i]) for i in range(n)]


def train_stacked(nets: list[nn.Sequential], activation: nn.Module, terms: TermsFn, x: torch.Tensor,
                  y: torch.Tensor, *, val: tuple[torch.Tensor, torch.Tensor] | None, cfg: TrainingConfig, desc: str,
                  progress: bool = False, inputs: dict[str, torch.Tensor] | None = None) -> list[TrialRun]:
    """Train ``nets`` (two-layer ``nn.Sequential``, one per trial) together by :func:`minimise` and
    load each trial's best epoch into its own network (in place, on ``x``'s device, in eval mode)."""
    runs = minimise(StackedMLP(nets, activation).to(x.device), terms, x, y, val=val, cfg=cfg, desc=desc,
                    progress=progress, inputs=inputs)
    for net, run in zip(nets, runs, strict=True):
        load_trial(net.to(x.device), run.state).eval()
    return runs


def check_xy(x: torch.Tensor, y: torch.Tensor, class_text: torch.Tensor, name: str) -> None:
    """Shapes and label range of an embedding set against the class text embeddings."""
    if x.dim() != 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"{name} embeddings must be (n, d) with n labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if class_text.dim() != 2 or class_text.shape[1] != x.shape[1]:
        raise ValueError(f"class_text must be (C, {x.shape[1]}), got {tuple(class_text.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= class_text.shape[0]):
        raise ValueError(f"{name} labels must lie in [0, {class_text.shape[0]}), got [{int(y.min())}, {int(y.max())}]")

"""Search spaces: the settings a search may change, their spaces, and how each trial draws them.

Each setting is named ``section.field`` (``probe.lr``, ``box.alpha``): its default is the config
class's own (:mod:`lare.pipeline.params` nests them), and its search space is declared by the
method itself (``Method.space``, in the module that defines the method; :mod:`lare.compare.registry`
collects them as ``HPARAMS``, after DomainBed's ``hparams_registry.py``). A search of ``trials``
trials gives every method the same budget: trial 0 is the defaults, trials 1.. draw each setting
from its space with a generator seeded by (search seed, trial, setting name), so a setting two
methods share (the probe's learning rate and l2, LARE's samples per item) takes the same value in
the same trial of both: the comparison is paired. A trial's draw does not depend on the number of
trials, so a larger search adds trials and changes none.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lare.utils import make_generator


@dataclass(frozen=True)
class Space:
    """``log``: log-uniform in [low, high]; ``uniform``: uniform in [low, high]; ``choice``: one of ``choices``.
    A value is drawn from ``u`` uniform in [0, 1) (see :func:`draw_trials` for how ``u`` is drawn)."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def value(self, u: float):
        if self.kind == "log":
            return float(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))
        if self.kind == "uniform":
            return float(self.low + u * (self.high - self.low))
        return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        return f"{'log-uniform' if self.kind == 'log' else 'uniform'} in [{self.low:g}, {self.high:g}]"


# The probe's coupled l2 is its weight decay: with it a trial minimises regularised logistic
# regression, the L-BFGS reference's objective, which AdamW's decoupled weight decay does not (its
# fixed point is a per-coordinate regulariser), so the tuned protocol turns that decay off
# (search.probe_weight_decay; by validation, scripts/derive_defaults.py, decay 0.05 ties). The tuned
# trials train on full batches to convergence (search.probe_stop "loss"), which lr 1e-2 .. 1e-1
# reaches within the budget; l2 reaches 1, where small noisy sets find their optimum.
PROBE = {"probe.lr": Space("log", 1e-2, 1e-1), "probe.l2": Space("log", 1e-5, 1.0)}
# Samples per training item, for LARE and every method that augments as it does (the f_Box
# ablations): one space, so trial t of each draws the same k (paired, as the probe's settings).
SAMPLES_PER_ITEM = {"sampling.k": Space("choice", choices=(1, 2, 4))}


def _setting_seed(seed: int, trial: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{trial}/{name}".encode()).digest()[:6], "big")


def _uniform(seed: int, trial: int, name: str) -> float:
    """Trial ``trial``'s u in [0, 1) for setting ``name``: the first draw of its own generator."""
    return float(torch.rand(1, generator=make_generator(_setting_seed(seed, trial, name)), dtype=torch.float64))


def space_of(space: Mapping[str, Space], solver: str = "adamw") -> dict[str, Space]:
    """The settings a search draws from a method's ``space``: with the ``lbfgs`` probe solver the
    probe's training settings play no part (its l2 is solved for on a grid), so only the method's
    own remain."""
    return {k: v for k, v in space.items() if k not in PROBE} if solver == "lbfgs" else dict(space)


def draw_trials(space: Mapping[str, Space], trials: int, seed: int = 0, solver: str = "adamw") -> list[dict]:
    """The settings of each trial of a method with search space ``space``:
    ``[{}, {"probe.lr": ..., ...}, ...]`` (trial 0: defaults).

    Trial t >= 1 draws each setting independently from its space, from one uniform ``u`` of a
    generator seeded by (search ``seed``, t, setting name) alone. So ``draw_trials(s, 4)`` is a
    prefix of ``draw_trials(s, 8)`` (raising ``search.trials`` adds trials and changes none), and
    a setting shared by two methods takes the same value in the same trial of both, whatever the
    other settings drawn (``solver``: see :func:`space_of`). The draws are plain random, not
    stratified: a stratified draw depends on the number of trials. A method with nothing to draw
    has one trial: more would repeat it."""
    space = space_of(space, solver)
    if trials < 1:
        raise ValueError(f"a search needs at least one trial, got {trials}")
    if not space:
        return [{}]
    return [{}] + [{name: s.value(_uniform(seed, t, name)) for name, s in space.items()} for t in range(1, trials)]


def describe(space: Mapping[str, Space]) -> dict[str, str]:
    """A space in words, setting by setting (what a result row records of its search)."""
    return {name: s.describe() for name, s in space.items()}

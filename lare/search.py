"""The two protocols of a comparison: ``fixed`` (one recipe per method) and ``tuned`` (an equal-budget
hyperparameter search with model selection on in-domain validation only).

``tuned``: every method with a search space (:mod:`lare.hparams`) gets ``search.trials`` trials per
unit (dataset, encoder, shots, seed); trial 0 is the defaults. Every trainer of a trial (f_Box, the
LADS augmenter, the probe) trains until its validation score stops improving for
``search.patience`` epochs, within ``search.max_epochs``. The trial with the best validation score
(the probe's ``select`` metric on the validation split carved from the training pool) is the
method's result; the evaluation sets (in-domain test, out-of-domain) are never read for a choice.
Every trial's scores are kept with the row, so an *oracle* selection (on the out-of-domain set)
can be reported beside it, labelled as such, as DomainBed does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .hparams import trial_settings
from .methods import VALIDATION, Method, Metrics
from .probe import SOLVERS
from .train import is_int

PROTOCOLS = ("tuned", "fixed")
TRAINERS = ("box", "probe", "lads")  # the sections that train (and so take the search's patience and budget)


@dataclass(frozen=True)
class SearchConfig:
    """trials: per method and unit, the same for every method. seed: the draws of the search spaces.
    patience, max_epochs: early stopping of every trainer, and the budget of epochs it may use.
    solver: how every method's probe is trained under ``tuned`` (it sets ``probe.solver``):
    ``adamw`` (default): the AdamW probe with early stopping, its lr, weight decay and l2 drawn by
    the trials, N trials trained as one batched model. ``lbfgs``: every method's classifier solved
    to convergence for each l2 of ``probe.l2_grid``, the l2 chosen on validation (the reference
    probe's solver), augmenters drawn once; the trials then draw only each method's own settings
    (the linear probe has none: one trial, the reference's numbers)."""

    trials: int = 8
    seed: int = 0
    patience: int = 10
    max_epochs: int = 300
    solver: str = "adamw"

    def __post_init__(self):
        for name in ("trials", "patience", "max_epochs"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"search.solver must be one of {SOLVERS}, got {self.solver!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def with_settings(sections: dict, settings: dict) -> dict:
    """``sections`` with dotted settings (``probe.lr``) applied."""
    out = dict(sections)
    for name, value in settings.items():
        section, key = name.split(".", 1)
        out[section] = dataclasses.replace(out[section], **{key: value})
    return out


def protocol_sections(sections: dict, protocol: str, search: SearchConfig) -> dict:
    """The base sections of a protocol: ``tuned`` trains every trainer to convergence (patience,
    within the budget); ``fixed`` leaves today's recipe as it is."""
    if protocol == "fixed":
        return dict(sections)
    out = {k: dataclasses.replace(v, epochs=search.max_epochs, patience=search.patience) if k in TRAINERS else v
           for k, v in sections.items()}
    if "probe" in out:
        out["probe"] = dataclasses.replace(out["probe"], solver=search.solver)
    return out


def trials_of(m: Method, protocol: str, search: SearchConfig) -> list[dict]:
    """Each trial's settings for method ``m`` (fixed: the one default trial)."""
    return trial_settings(m.name, search.trials, search.seed, search.solver) if protocol == "tuned" else [{}]


def configs_of(m: Method, sections: dict, trials: list[dict], protocol: str, search: SearchConfig, seed: int) -> list:
    base = protocol_sections(sections, protocol, search)
    return [m.make_config(with_settings(base, s), seed) for s in trials]


def run_trials(m: Method, splits, configs: list, device) -> list[Metrics]:
    """Every trial's metrics (the validation split among them), batched where the method can."""
    if m.run_trials is not None and len(configs) > 1:
        return m.run_trials(splits, configs, device)
    return [m.run(splits, c, device) for c in configs]


def select(trials: list[Metrics], metric: str, domain: str = VALIDATION) -> int:
    """The trial with the best ``metric`` on ``domain`` (the validation split; the first on ties)."""
    scores = [t[domain][metric] if domain in t else float("-inf") for t in trials]
    return max(range(len(trials)), key=lambda i: (scores[i], -i))

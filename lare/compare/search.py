"""The two protocols of a comparison: ``fixed`` (one recipe per method) and ``tuned`` (an equal-budget
hyperparameter search with model selection on in-domain validation only).

``tuned``: every method with a search space (``Method.space``, drawn by :mod:`lare.compare.space`)
gets ``search.trials`` trials per unit (dataset, encoder, shots, seed); trial 0 is the defaults.
Every trainer of a trial (f_Box, the LADS augmenter, the probe) trains until its validation score stops improving for
``search.patience`` epochs, within ``search.max_epochs``. The trial with the best validation score
(the probe's ``select`` metric on the validation split carved from the training pool; the first on
ties, NaN as worst: :func:`select`) is the method's result; the evaluation sets (in-domain test,
out-of-domain) are never read for a choice.
Every trial's scores are kept with the row, so an *oracle* selection (on the out-of-domain set)
can be reported beside it, labelled as such, as DomainBed does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lare.compare.methods import VALIDATION, Method, Metrics
from lare.compare.space import draw_trials
from lare.core.probe import SOLVERS, ProbeConfig
from lare.core.train import first_best, is_int

PROTOCOLS = ("tuned", "fixed")
# What ``tuned`` sets in the sections, field: the SearchConfig field it takes (a value given for one
# of these fields under ``tuned`` would play no part, so it is refused, see :func:`replaced_under_tuned`).
BUDGET = {"epochs": "max_epochs", "patience": "patience"}  # every trainer's (TRAINERS)
PROBE_RECIPE = {"solver": "solver", "stop": "probe_stop", "batch_size": "probe_batch_size",
                "weight_decay": "probe_weight_decay", "lr": "probe_lr", "l2": "probe_l2"}
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
    (the linear probe has none: one trial, the reference's numbers).
    probe_stop, probe_batch_size, probe_weight_decay, probe_lr, probe_l2: the ``adamw`` probe recipe
    under ``tuned`` (they set ``probe.stop``, ``probe.batch_size``, ...; ``probe_lr`` and
    ``probe_l2`` are trial 0's, the other trials draw theirs). By default every trial trains on
    full batches until its objective stops falling and keeps its last epoch (``stop: loss``), with
    the coupled ``l2`` as its only regulariser (AdamW's decoupled decay off): each trial is then a
    converged fit of regularised logistic regression on its rows, and the validation split chooses
    among trials only (keeping each trial's best validation epoch, ``probe_stop: val``, the fixed
    recipe's rule, lets the validation split pick among noisy epochs as well). These values were
    chosen by validation accuracy on a synthetic world that is not the demo's
    (``python scripts/derive_defaults.py``, docs/method.md section 4): trial 0's ``probe_lr`` and
    ``probe_l2`` on a grid of 12 (0.03 and 1e-3: 66.07 ± 1.21; the best mean, 0.01 and 1e-3, 66.31
    ± 1.22, ties within one std), and the recipe by nested validation of the whole search (78.19 ±
    1.18; ``probe_stop: val`` 77.62, ``probe_batch_size`` 256 77.61, ``probe_weight_decay`` 0.05
    78.12, all within one std: the default kept)."""

    trials: int = 8
    seed: int = 0
    patience: int = 10
    max_epochs: int = 300
    solver: str = "adamw"
    probe_stop: str = "loss"
    probe_batch_size: int = 0
    probe_weight_decay: float = 0.0
    probe_lr: float = 0.03
    probe_l2: float = 1e-3

    def __post_init__(self):
        for name in ("trials", "patience", "max_epochs"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"search.solver must be one of {SOLVERS}, got {self.solver!r}")
        try:  # the probe recipe's values, checked as the probe's own
            self.probe_recipe(ProbeConfig())
        except ValueError as err:
            raise ValueError(f"search.probe_*: {err}") from None

    def probe_recipe(self, probe: ProbeConfig) -> ProbeConfig:
        """``probe`` as the ``tuned`` protocol trains it: this search's solver, budget and probe recipe."""
        return dataclasses.replace(probe, **{f: getattr(self, s) for f, s in {**BUDGET, **PROBE_RECIPE}.items()})

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
    budget = {f: getattr(search, s) for f, s in BUDGET.items()}
    return {k: search.probe_recipe(v) if k == "probe" else dataclasses.replace(v, **budget) if k in TRAINERS else v
            for k, v in sections.items()}


def replaced_under_tuned(given: dict) -> list[str]:
    """Why settings in ``given`` (raw values, nested: a profile file with the ``-f`` / ``-p`` values
    over it) cannot be used under ``tuned``, which replaces them by the search's (:data:`BUDGET`,
    :data:`PROBE_RECIPE`): one problem per field, naming the ``search.*`` field to set instead."""
    out = []
    for section in TRAINERS:
        fields = given.get(section)
        for field in fields if isinstance(fields, dict) else {}:
            source = BUDGET.get(field) or (PROBE_RECIPE.get(field) if section == "probe" else None)
            if source:
                out.append(f"{section}.{field} is set, but protocol 'tuned' replaces it by search.{source}: set "
                           f"search.{source} instead (-p search.{source} VALUE), or use -p protocol fixed to train with "
                           f"{section}.{field}")
    return out


def trials_of(m: Method, protocol: str, search: SearchConfig) -> list[dict]:
    """Each trial's settings for method ``m``, drawn from its own space (fixed: the one default trial)."""
    return draw_trials(m.space, search.trials, search.seed, search.solver) if protocol == "tuned" else [{}]


def configs_of(m: Method, sections: dict, trials: list[dict], protocol: str, search: SearchConfig, seed: int) -> list:
    base = protocol_sections(sections, protocol, search)
    return [m.make_config(with_settings(base, s), seed) for s in trials]


def run_trials(m: Method, splits, configs: list, device) -> list[Metrics]:
    """Every trial's metrics (the validation split among them), batched where the method can."""
    if m.run_trials is not None and len(configs) > 1:
        return m.run_trials(splits, configs, device)
    return [m.run(splits, c, device) for c in configs]


def select(trials: list[Metrics], metric: str, domain: str = VALIDATION) -> int:
    """The trial with the best ``metric`` on ``domain`` (the validation split), by the library's
    tie rule (:func:`lare.core.train.first_best`): the first of those within ``SCORE_TIE_TOL`` of the
    best; a NaN score, or a trial without ``domain``, counts as worst."""
    return first_best([t[domain][metric] if domain in t else -math.inf for t in trials])

"""The registry: every method the experiment loop runs, in Table 1's order, and what is derived from it.

``REGISTRY`` holds the built-in methods of :mod:`lare.compare.methods`, then one line per method
that lives in a module of its own (a new method is one such module and one line here: see
docs/library.md, "Adding a method"). Each method declares its search space (``Method.space``);
``HPARAMS`` collects them, and :func:`trial_settings` draws a method's trials from its space
(:mod:`lare.compare.space`), so every registered method gets the same search and budget.

Table 1 has a row per (method, encoder) that ran: the paper's rows on the paper's encoders keep the
paper's names and numbers, any other row is named from the method's ``label`` and the encoder's
display name (:func:`encoder_name`).
"""

from __future__ import annotations

from collections.abc import Mapping

from lare.compare import ablations
from lare.compare.methods import BUILTIN, PAPER_ENCODERS, Method, TableRow
from lare.compare.space import Space, draw_trials

REGISTRY: dict[str, Method] = {m.name: m for m in (
    *BUILTIN,
    ablations.GAUSSIAN_NOISE,  # LARE without f_Box: Gaussian noise around each embedding
    ablations.FIXED_BOXES,     # LARE without f_Box: a box of one width around each embedding
)}

HPARAMS: dict[str, dict[str, Space]] = {name: dict(m.space) for name, m in REGISTRY.items()}

def get(name: str) -> Method:
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def encoder_name(key: str, entry: Mapping | None = None) -> str:
    """An encoder's display name in tables and figures: its entry's ``name`` (``encoders: {siglip:
    {model: ..., name: SigLIP}}``), else the paper's name of the keys clip and coca, else the key."""
    name = (entry or {}).get("name") if isinstance(entry, Mapping) else None
    return str(name) if name else PAPER_ENCODERS.get(key, key)


def encoder_names(encoders: Mapping[str, Mapping]) -> dict[str, str]:
    """The display name of every encoder of a run's ``encoders`` mapping, in its order."""
    return {key: encoder_name(key, entry) for key, entry in encoders.items()}


def table1_rows(encoders: Mapping[str, str] | None = None) -> list[tuple[str, TableRow]]:
    """(method, row) in Table 1 order: the paper's rows in registry order, then the additions (in
    registry order, a method's own rows first, then its rows on the other encoders in their order).

    ``encoders``: encoder key -> display name; every (method, encoder) gets a row (the paper's own
    rows where the paper's encoder keys go by the paper's names). None: only the rows the methods
    declare themselves (the paper's encoders)."""
    rows = []
    for m in REGISTRY.values():
        own = [r for r in m.rows if encoders is None or encoders.get(r.encoder) == PAPER_ENCODERS.get(r.encoder)]
        rows += [(m.name, r) for r in own]
        if encoders is not None:
            have = {r.encoder for r in own}
            rows += [(m.name, m.row(key, name)) for key, name in encoders.items() if key not in have]
    return [x for x in rows if not x[1].addition] + [x for x in rows if x[1].addition]


def trial_settings(method: str, trials: int, seed: int = 0, solver: str = "adamw") -> list[dict]:
    """The settings of each trial of a registered method (trial 0: its defaults), drawn from its space
    by :func:`lare.compare.space.draw_trials`."""
    return draw_trials(get(method).space, trials, seed, solver)


def table() -> list[dict]:
    """Every method's search space as rows (method, setting, space), for the docs and the notebooks."""
    return [{"method": name, "setting": setting, "space": s.describe()} for name, space in HPARAMS.items()
            for setting, s in space.items()]

#!/usr/bin/env python3
"""Derive the library's data-chosen defaults by VALIDATION accuracy on a synthetic world that is not
the demo's.

Some defaults cannot be read off the method and were set by measuring (``box.volume``,
``box.scale``, ``sampling.k``, ``sampling.draws``, the ``tuned`` search's trial-0 probe values
``search.probe_lr`` / ``search.probe_l2``, and its probe recipe ``search.probe_stop``,
``search.probe_batch_size``, ``search.probe_weight_decay`` with ``probe.min_steps``). Measured on
the demo's own world, by its test or out-of-domain accuracy, that would be selection on the data
Table 1 is reported on. This script makes those choices again, as a search would make them:

- on a SEPARATE synthetic world: the demo profile's settings (``params/demo``: the classes,
  sizes and noise levels, the CoCa-like encoder, the domains world and the few-shot world) with
  another world seed (:data:`WORLD_SEED`; the demo's is the default world seed of
  :func:`lare.pipeline.ingest.write_synthetic`, which no profile changes);
- by validation accuracy only: each unit's splits are drawn as the pipeline draws them
  (:func:`lare.pipeline.experiment.unit_splits`: the validation split is carved from the training
  pool), and the test and out-of-domain sets are removed from them before any method runs, so no
  number here can come from them;
- under the protocol that produces the numbers: the default ``tuned`` protocol's trial 0 for the
  settings trial 0 uses (its recipe: full batches, trained to convergence), run through the
  registry's own trial runner (``lare.compare.search.configs_of`` / ``run_trials``);
- over a few seeds (the unit seeds: validation carve, k-shot draw, initialisation, sampling).

The probe recipe is the exception to "validation accuracy": one of its candidates
(``probe_stop: val``) picks each trial's epoch on the validation split, so its validation score
is biased upwards by that choice. For that study the pipeline's validation split is held out and
the whole search (``search.trials`` trials, their selection included) runs on the remaining
training pool with a validation split carved from it again (nested validation,
:func:`nested_splits`); the held-out validation split scores the selected trial. Still nothing
but the training pool is read.

The score of a candidate on one seed is the validation balanced accuracy (the metric the search
selects with, ``probe.select``; the synthetic validation splits are class-balanced, so it equals
top-1 here), averaged over the units (and methods) of the study.

Selection rule (:func:`choose`): the candidate with the highest mean over seeds wins, unless it
is a tie: every candidate whose mean lies within one standard deviation (over seeds, of the best
candidate's scores) of the best mean is tied with it, and among tied candidates the current
default is kept if it is one of them, else the simplest (candidates are listed simplest first).

Run it (about 13 minutes on one core, 8 of them for ``sampling.draws``, whose L-BFGS solves on the
domains world fit up to 64 draws of box samples):

    OMP_NUM_THREADS=1 python scripts/derive_defaults.py --out figures/derive_defaults.md
    python scripts/sync_docs.py      # docs/method.md includes figures/derive_defaults.md
    OMP_NUM_THREADS=1 python scripts/derive_defaults.py --only box.volume sampling.k --seeds 0 1 2 3 4

A default whose study chooses another value is changed in its dataclass by hand, and the script run
again until it keeps every default (each study changes one setting, the others at their defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere, without installing the package
    sys.path.insert(0, str(ROOT))

WORLD_SEED = 2025          # the world of this study; the demo's is demo_world_seed() (1234)
ENCODER = "coca"           # the CoCa-like synthetic encoder of params/demo
SEEDS = (0, 1, 2)
METHOD_LABEL = {"linear-probe": "linear probe", "lare": "LARE", "lads": "LADS"}


# ---------------------------------------------------------------- the selection rule
def mean_std(scores: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single score)."""
    return statistics.fmean(scores), (statistics.stdev(scores) if len(scores) > 1 else 0.0)


def choose(scores: dict[Any, Sequence[float]], current: Any) -> Any:
    """The chosen candidate from per-seed validation scores (``candidate -> [score per seed]``, the
    candidates in order, simplest first).

    The best is the highest mean. Every candidate whose mean is within one standard deviation of
    the best candidate's scores (over seeds) ties with it; among the tied, ``current`` (the default
    today) is kept if it is one of them, else the first listed (the simplest)."""
    return choose_from_stats({c: mean_std(s) for c, s in scores.items()}, current)


def choose_from_stats(stats: dict[Any, tuple[float, float]], current: Any) -> Any:
    """:func:`choose` from each candidate's (mean, std) over seeds, the candidates in order."""
    if not stats:
        raise ValueError("no candidates to choose from")
    best = max(stats, key=lambda c: stats[c][0])  # the first listed on an exact tie
    top, tol = stats[best]
    tied = [c for c in stats if stats[c][0] >= top - tol]
    return current if current in tied else tied[0]


# ---------------------------------------------------------------- the world and its units
def demo_world_seed() -> int:
    """The demo's world seed: the default of ``write_synthetic`` (the run parameters have none)."""
    from lare.pipeline.ingest import write_synthetic

    return int(inspect.signature(write_synthetic).parameters["world_seed"].default)


@dataclass(frozen=True)
class Unit:
    """One unit of the study: a dataset of the demo profile and a shot count (0: the full pool)."""

    dataset: str
    shots: int

    @property
    def label(self) -> str:
        return f"{'domains' if self.dataset == 'synthetic_domains' else 'fewshot'}/{self.shots or 'full'}"


DOMAINS_FULL = Unit("synthetic_domains", 0)
FEWSHOT_1, FEWSHOT_8 = Unit("synthetic_fewshot", 1), Unit("synthetic_fewshot", 8)


class World:
    """The demo profile's two datasets, generated with ``world_seed`` into a run folder of its own."""

    def __init__(self, run_dir: Path, world_seed: int):
        from lare.pipeline.ingest import write_synthetic

        self.run_dir, self.world_seed = Path(run_dir), world_seed
        self.base = {"run_dir": str(self.run_dir), "cache_dir": str(self.run_dir / "cache"), "progress": False,
                     "device": "cpu"}
        for dataset in ("synthetic_domains", "synthetic_fewshot"):
            p = self.params(dataset)
            write_synthetic(p.run_path, p.cache_path, dataset, ENCODER, p.synthetic,
                            noise=float(p.encoders[ENCODER]["noise"]), world_seed=world_seed,
                            with_domains=p.with_domains)

    def params(self, dataset: str, overrides: dict | None = None):
        """The demo profile's parameters of ``dataset`` with ``overrides`` (checked as any run's)."""
        from lare.pipeline.params import deep_merge, load_params

        return load_params("demo", dataset, deep_merge(self.base, overrides or {}))

    def splits(self, unit: Unit, seed: int):
        """The unit's splits as the pipeline draws them, WITHOUT its evaluation sets (test, out of
        domain): only the training and validation parts of the training pool remain."""
        from lare.pipeline.experiment import unit_splits

        s = unit_splits(self.params(unit.dataset), ENCODER, unit.shots, seed)
        return dataclasses.replace(s, evals={})


HELD_OUT = "held_out"


def nested_splits(splits, fraction: float, seed: int):
    """Nested validation: the unit's validation split becomes a held-out evaluation set, and a
    validation split is carved again (stratified, ``fraction``, as the pipeline carves) from the
    unit's training part, on which the methods train and select."""
    import torch

    from lare.data.splits import carve_validation

    labels = splits.train_y.tolist()
    train, val = carve_validation([str(i) for i in range(len(labels))], labels, fraction, seed)
    tr, va = (torch.tensor(sorted(int(i) for i in ids)) for ids in (train, val))
    return dataclasses.replace(splits, train_x=splits.train_x[tr], train_y=splits.train_y[tr],
                               val_x=splits.train_x[va], val_y=splits.train_y[va],
                               evals={HELD_OUT: (splits.val_x, splits.val_y)})


# ---------------------------------------------------------------- the studies
@dataclass(frozen=True)
class Study:
    """One default under study.

    name: the parameter(s), as the docs name them. candidates: the values, simplest first (the
    current default is added when missing). current: reads today's default off the parameters.
    overrides: a candidate's run-parameter overrides. methods, units: what runs. search: run the
    whole search (every trial, selection on a nested validation split, see :func:`nested_splits`)
    instead of trial 0. fmt: a candidate as shown."""

    name: str
    candidates: tuple
    current: Callable[[Any], Any]
    overrides: Callable[[Any], dict]
    methods: tuple[str, ...]
    units: tuple[Unit, ...]
    search: bool = False
    fmt: Callable[[Any], str] = str
    why: str = ""


def _recipe(p) -> tuple:
    """The tuned search's probe recipe: (probe_stop, probe_batch_size, probe_weight_decay, probe.min_steps)."""
    return p.search.probe_stop, p.search.probe_batch_size, p.search.probe_weight_decay, p.probe.min_steps


def _recipe_candidates(current: tuple) -> tuple:
    """Today's recipe and one change of each of its four settings."""
    stop, batch, decay, steps = current
    return (current, ("val" if stop == "loss" else "loss", batch, decay, steps),
            (stop, 256 if batch == 0 else 0, decay, steps), (stop, batch, 0.05 if decay == 0 else 0.0, steps),
            (stop, batch, decay, 0 if steps else 200))


STUDIES: tuple[Study, ...] = (
    Study("box.volume", ("dot", "dot_normalized", "log_volume"), lambda p: p.box.volume,
          lambda v: {"box": {"volume": v}}, ("lare",), (DOMAINS_FULL, FEWSHOT_1, FEWSHOT_8),
          why="the form of L_BV (dot: Eq. (1) as written)"),
    Study("box.scale", (1.0, 10.0, 30.0, 100.0), lambda p: p.box.scale,
          lambda v: {"box": {"scale": v}}, ("lare",), (DOMAINS_FULL, FEWSHOT_1, FEWSHOT_8), fmt=lambda v: f"{v:g}",
          why="the class-consistency temperature (1: the literal softmax; trial 0's, the others draw it in [1, 100])"),
    Study("sampling.k", (1, 2, 4), lambda p: p.sampling.k,
          lambda v: {"sampling": {"k": v}}, ("lare",), (DOMAINS_FULL, FEWSHOT_1, FEWSHOT_8),
          why="box samples per item and epoch (trial 0's; the others draw it from 1, 2, 4)"),
    Study("sampling.draws", (1, 4, 16, 64), lambda p: p.sampling.draws,
          lambda v: {"search": {"solver": "lbfgs"}, "sampling": {"draws": v}}, ("lare",),
          (DOMAINS_FULL, FEWSHOT_1, FEWSHOT_8),
          why="box-sample draws the lbfgs solver fits (under -p search.solver lbfgs)"),
    Study("search.probe_lr / search.probe_l2",
          tuple((lr, l2) for lr in (0.01, 0.03, 0.1) for l2 in (1e-4, 1e-3, 1e-2, 1e-1)),
          lambda p: (p.search.probe_lr, p.search.probe_l2),
          lambda v: {"search": {"probe_lr": v[0], "probe_l2": v[1]}}, ("linear-probe", "lare"),
          (DOMAINS_FULL, FEWSHOT_1, FEWSHOT_8), fmt=lambda v: f"lr {v[0]:g}, l2 {v[1]:g}",
          why="trial 0's probe learning rate and coupled l2 (every method's probe)"),
    Study("search.probe_stop / probe_batch_size / probe_weight_decay, probe.min_steps", (), _recipe,
          lambda v: {"search": {"probe_stop": v[0], "probe_batch_size": v[1], "probe_weight_decay": v[2]},
                     "probe": {"min_steps": v[3]}},
          ("linear-probe", "lare"), (DOMAINS_FULL, FEWSHOT_8), search=True,
          fmt=lambda v: f"stop {v[0]}, batch {v[1]}, decay {v[2]:g}, min_steps {v[3]}",
          why="the tuned protocol's probe recipe; the whole search scored by nested validation"),
)


def candidates_of(study: Study, current: Any) -> tuple:
    cands = study.candidates or _recipe_candidates(current)
    return cands if current in cands else (*cands, current)


def run_study(study: Study, world: World, seeds: Sequence[int], log=print) -> dict:
    """Every candidate's score per seed (and per unit and method, for the table)."""
    from lare.compare.search import configs_of, run_trials, select, trials_of

    try:  # the registry's home (lare.compare.methods before the registry module existed)
        from lare.compare.registry import REGISTRY
    except ImportError:  # pragma: no cover
        from lare.compare.methods import REGISTRY
    from lare.compare.methods import VALIDATION

    current = study.current(world.params("synthetic_domains"))
    cands = candidates_of(study, current)
    per_seed = {c: [] for c in cands}
    cells = {c: {} for c in cands}  # candidate -> (unit, method) -> [score per seed]
    for seed in seeds:
        scores = {c: [] for c in cands}
        for unit in study.units:
            base = world.splits(unit, seed)
            params = {c: world.params(unit.dataset, study.overrides(c)) for c in cands}
            metric = params[current].probe.select
            splits = nested_splits(base, params[current].val_fraction, 10_000 + seed) if study.search else base
            for name in study.methods:
                m = REGISTRY[name]
                if not m.applies(splits.extra_text, unit.shots):
                    continue
                # every candidate's configs in one call: the trials of one unit train together where
                # the method can batch them (the same numbers as one by one)
                configs, trials = [], {}
                for c in cands:
                    p = params[c]
                    t = trials_of(m, p.protocol, p.search) if study.search else [{}]  # trial 0: the defaults
                    sections = {k: getattr(p, k) for k in m.sections}
                    trials[c] = range(len(configs), len(configs) + len(t))
                    configs += configs_of(m, sections, t, p.protocol, p.search, seed)
                results = run_trials(m, splits, configs, "cpu")
                for c in cands:
                    res = [results[i] for i in trials[c]]
                    if study.search:  # the search's choice on the nested validation split, scored held out
                        score = res[select(res, metric)][HELD_OUT][metric]
                    else:
                        score = res[0][VALIDATION][metric]
                    if set(res[0]) - {VALIDATION, HELD_OUT, "boxes", "probe"}:
                        raise AssertionError(f"an evaluation set reached the study: {sorted(res[0])}")
                    scores[c].append(score)
                    cells[c].setdefault((unit.label, name), []).append(score)
        for c in cands:
            per_seed[c].append(statistics.fmean(scores[c]))
        log(f"  seed {seed} done")
    return {"current": current, "candidates": cands, "per_seed": per_seed, "cells": cells,
            "chosen": choose(per_seed, current)}


# The label the docs' figure check reads (tests/test_docs.py): the test named checks these tables
CHECKED = "<!-- checked: tests/test_derive_defaults.py::test_the_committed_output_follows_the_rule_and_the_code -->"
CHOSEN, DEFAULT = " **chosen**", " (default)"
RULE = ("the highest mean wins; every candidate within one std (of the best candidate's scores over seeds) of the "
        "best mean ties with it, and a tie keeps the current default, else the simplest candidate (listed first)")


def render(study: Study, result: dict, seeds: Sequence[int], world_seed: int, label: str = "") -> str:
    """One study as Markdown: what ran, then per candidate its mean score per unit (and method) and
    its mean +- std over seeds (of the per-seed mean over the units), the default and the choice marked."""
    cands, cur, chosen = result["candidates"], result["current"], result["chosen"]
    columns = list(next(iter(result["cells"].values())))
    head = [f"{u} {METHOD_LABEL[m]}" if len(study.methods) > 1 else u for u, m in columns]
    score = ("held-out validation balanced accuracy (%) of the search's choice (nested validation)" if study.search
             else "validation balanced accuracy (%)")
    lines = [f"**{study.name}**: {study.why}. {', '.join(METHOD_LABEL[m] for m in study.methods)}; "
             f"{'the tuned search, every trial' if study.search else 'the tuned protocol, trial 0'}; {score}; "
             f"world seed {world_seed}, seeds {', '.join(map(str, seeds))}.{label}",
             "",
             "| candidate | " + " | ".join(head) + " | mean ± std |",
             "|---|" + "---|" * (len(head) + 1)]
    for c in cands:
        m, s = mean_std(result["per_seed"][c])
        name = study.fmt(c) + (DEFAULT if c == cur else "") + (CHOSEN if c == chosen else "")
        cols = [f"{statistics.fmean(result['cells'][c][col]):.2f}" for col in columns]
        lines.append(f"| {name} | " + " | ".join(cols) + f" | {m:.2f} ± {s:.2f} |")
    verdict = "kept" if chosen == cur else f"changed from {study.fmt(cur)}"
    lines += ["", f"Chosen: {study.fmt(chosen)} ({verdict})."]
    return "\n".join(lines)


def report(results: list[tuple[Study, dict]], seeds: Sequence[int], world_seed: int, label: str = "",
           command: str = "python scripts/derive_defaults.py") -> str:
    """Every study's table, after a paragraph saying how they were made (what ``--out`` writes)."""
    head = (f"Written by `OMP_NUM_THREADS=1 {command}`: "
            f"the demo profile's synthetic datasets with world seed {world_seed} (the demo's is {demo_world_seed()}), "
            f"the CoCa-like encoder, seeds {', '.join(map(str, seeds))}; their test and out-of-domain sets are never "
            f"read. A candidate's score on a seed is its mean over the units (and methods); the tables give that "
            f"mean per unit and its mean ± std over seeds. Rule: {RULE}.")
    return "\n\n".join([head] + [render(st, r, seeds, world_seed, label) for st, r in results]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="unit seeds (default 0 1 2)")
    ap.add_argument("--world-seed", type=int, default=WORLD_SEED, help=f"the synthetic world (default {WORLD_SEED})")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="studies whose name contains one of these (e.g. box.volume sampling.k probe_lr)")
    ap.add_argument("--out", default=None, metavar="FILE",
                    help="also write the tables as Markdown to FILE (figures/derive_defaults.md, which\n"
                         "docs/method.md includes: then run python scripts/sync_docs.py)")
    ap.add_argument("--run-dir", default=None, help="run folder of the study's world (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    demo = demo_world_seed()
    if args.world_seed == demo:
        ap.error(f"--world-seed {demo} is the demo's world: choosing defaults there is selection on its test data")
    studies = [s for s in STUDIES if not args.only or any(o in s.name for o in args.only)]
    if not studies:
        ap.error(f"no study matches {args.only}; studies: {[s.name for s in STUDIES]}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="derive-defaults-") as tmp:
        world = World(Path(args.run_dir or tmp), args.world_seed)
        print(f"synthetic world {args.world_seed} (the demo's is {demo}), demo profile settings, encoder {ENCODER!r}, "
              f"seeds {args.seeds}; test and out-of-domain sets never read\n")
        results = []
        for study in studies:
            t = time.perf_counter()
            print(f"{study.name} ...", flush=True)
            result = run_study(study, world, args.seeds, log=lambda s: print(s, flush=True))
            print(render(study, result, args.seeds, args.world_seed))
            print(f"({time.perf_counter() - t:.0f} s)\n", flush=True)
            results.append((study, result))
    print(f"summary (rule: {RULE})")
    for study, r in results:
        change = "kept" if r["chosen"] == r["current"] else "CHANGE"
        print(f"  {study.name}: default {study.fmt(r['current'])}, chosen {study.fmt(r['chosen'])} ({change})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python scripts/derive_defaults.py", *(argv if argv is not None else sys.argv[1:])])
        Path(args.out).write_text(report(results, args.seeds, args.world_seed, f" {CHECKED}", command))
        print(f"wrote {args.out}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

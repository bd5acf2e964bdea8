"""The experiment loops: units of work (encoder, shots, seed) x methods of the registry.

- :func:`train_boxes` (notebook 02): LARE's step 1, one f_Box per unit, saved in the run folder;
  a checkpoint trained with the same settings, embeddings and split is reused.
- :func:`run_methods` (notebooks 03 and 04): every requested method of :data:`lare.compare.registry.REGISTRY`
  on every unit it applies to, one result row per evaluation domain; rows already recorded with the
  same parameters are not computed again.
- :func:`make_table1`, :func:`make_figure3` (notebooks 05 and 06): aggregation and outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from lare.compare.methods import OOD_PREFIX, VALIDATION, EmbeddingSplits, Method
from lare.compare.registry import REGISTRY, encoder_name, encoder_names, get
from lare.compare.results import (
    aggregate,
    append_rows,
    code_caption,
    has_result,
    make_rows,
    oracle_rows,
    read_rows,
    table1,
    write_csv,
    write_table1,
)
from lare.compare.search import configs_of, protocol_sections, run_trials, select, trials_of
from lare.compare.space import describe
from lare.compare.tables import arxiv_tables
from lare.core.box import BoxTrainResult, load_box, save_box, train_box
from lare.core.train import TrainingDiverged
from lare.pipeline.figures import figure3, save_figure, sensitivity
from lare.pipeline.params import RunParams
from lare.pipeline.runfolder import (
    EVAL_DOMAINS,
    EncoderData,
    box_path,
    check_shots,
    encoder_splits,
    load_encoder_data,
    results_path,
    split_path,
)
from lare.provenance import code_fingerprint, code_state
from lare.utils import hash_config, nonfinite

ROW_COLUMNS = ["method", "encoder", "domain", "shots", "seed", "top1", "balanced_acc"]


def _strip_seed(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "seed"}


def units(p: RunParams, encoders: list[str]) -> list[tuple[str, int, int]]:
    """(encoder, shots, seed) for every encoder, shot setting and seed of the run."""
    return [(e, k, s) for e in encoders for k in p.shots for s in p.seeds]


def unit_splits(p: RunParams, encoder: str, shots: int, seed: int):
    """The :class:`lare.compare.methods.EmbeddingSplits` of one unit (its split drawn once and saved)."""
    data = load_encoder_data(p.run_path, p.dataset, encoder)
    return encoder_splits(data, p.run_path, p.dataset, shots=shots, seed=seed, val_fraction=p.val_fraction)


class NonFiniteInputs(ValueError):
    """A unit whose embeddings or text embeddings hold NaN or infinite values: refused before training."""


def unit_label(p: RunParams, method: str, encoder: str, shots: int, seed: int) -> str:
    return f"{method} on dataset {p.dataset!r}, encoder {encoder!r}, shots {shots}, seed {seed}"


def unit_inputs(s: EmbeddingSplits) -> dict[str, torch.Tensor]:
    """Every tensor the methods read for one unit, by name."""
    return {"training embeddings": s.train_x, "validation embeddings": s.val_x, "class_text": s.class_text,
            **{f"{domain} embeddings": x for domain, (x, _) in s.evals.items()},
            **{f"{k} prompt embeddings": v for k, v in s.extra_text.items()}}


def _nonfinite_inputs(s: EmbeddingSplits) -> list[str]:
    return [m for name, v in unit_inputs(s).items() if (m := nonfinite(name, v))]


def check_unit_inputs(label: str, s: EmbeddingSplits) -> None:
    """Refuse a unit whose inputs are not finite: training on them gives NaN, evaluating them wrong numbers."""
    if bad := _nonfinite_inputs(s):
        raise NonFiniteInputs(f"{label}: its inputs hold non-finite values: {'; '.join(bad)}. Nothing was trained: fix "
                              "them where the embeddings come from (your .npz, which the preflight checks, or the "
                              "encoder's output) and run notebook 01 again")


@contextlib.contextmanager
def unit_guard(label: str, s: EmbeddingSplits):
    """A loss or gradient that is not finite during one unit stops with the unit's name and the likely
    cause: the inputs (named) when they are not finite, else the optimisation itself."""
    try:
        yield
    except TrainingDiverged as err:  # a trainer that already checked its inputs and says why
        raise TrainingDiverged(f"{label} stopped on a non-finite loss: {err}") from err
    except FloatingPointError as err:
        bad = _nonfinite_inputs(s)
        cause = (f"its inputs hold non-finite values: {'; '.join(bad)}; fix them (the learning rate is not at fault)" if bad
                 else f"its inputs are finite ({', '.join(unit_inputs(s))}), so the training itself diverged: lower the "
                      "learning rate (probe.lr, box.lr, lads.lr) or the logit scale (box.scale)")
        raise TrainingDiverged(f"{label} stopped on a non-finite loss: {err}\n  cause: {cause}") from err


def _check_shots(p: RunParams, encoders: list[str]) -> None:
    for enc in encoders:
        check_shots(load_encoder_data(p.run_path, p.dataset, enc), p.shots, p.val_fraction)


# ---------------------------------------------------------------- step 1 of LARE
def unit_box_config(p: RunParams, seed: int):
    """The f_Box settings notebook 02 trains with: the run's ``box`` under its protocol (the tuned
    protocol trains to convergence), with the unit's seed; the search's trial 0."""
    return dataclasses.replace(protocol_sections({"box": p.box}, p.protocol, p.search)["box"], seed=seed)


def box_key(p: RunParams, data: EncoderData, shots: int, seed: int) -> str:
    """What a saved f_Box must have been trained with to be reused: settings, embeddings, split and
    the library code (:func:`lare.provenance.code_fingerprint`)."""
    split = json.loads(split_path(p.run_path, p.dataset, shots, seed).read_text())["key"]
    box = unit_box_config(p, seed)
    return hash_config({"box": box.to_dict(), "val_fraction": p.val_fraction, "index": data.index, "split": split,
                        "code": code_fingerprint()})


def saved_box_key(path: Path) -> str | None:
    """The key a saved f_Box was trained with (None: no checkpoint there)."""
    return json.loads(path.with_suffix(".json").read_text()).get("config_hash") if path.is_file() else None


def train_boxes(p: RunParams, *, force: bool = False) -> list[Path]:
    """Notebook 02: one f_Box per (LARE encoder, shots, seed); returns the checkpoint paths. A saved
    f_Box of the same key (:func:`box_key`) is reused unless ``force``."""
    encoders = p.encoders_for(get("lare").encoders_param)
    _check_shots(p, encoders)
    done, code = [], code_state()
    for enc, k, seed in tqdm(units(p, encoders), desc="f_Box runs", disable=not p.progress):
        s = unit_splits(p, enc, k, seed)
        path = box_path(p.run_path, p.dataset, enc, k, seed)
        want = box_key(p, load_encoder_data(p.run_path, p.dataset, enc), k, seed)
        if not force and saved_box_key(path) == want:
            done.append(path)
            continue
        label = unit_label(p, "f_Box (LARE step 1)", enc, k, seed)
        check_unit_inputs(label, s)
        with unit_guard(label, s):
            res = train_box(s.train_x, s.train_y, s.class_text, unit_box_config(p, seed), val_x=s.val_x,
                            val_y=s.val_y, device=p.torch_device, progress=False)
        save_box(res, path, extra={"config_hash": want, "encoder": enc, "shots": k, "seed": seed,
                                   "val_fraction": p.val_fraction, **code})
        done.append(path)
    return done


def trained_boxes(p: RunParams, encoder: str, shots: int, seed: int) -> BoxTrainResult:
    """The f_Box notebook 02 saved for a unit, refused when it was trained with other settings."""
    path = box_path(p.run_path, p.dataset, encoder, shots, seed)
    if not path.is_file():
        raise FileNotFoundError(f"no f_Box at {path}: run notebook 02 (02_train_boxes) with the same encoders, "
                                "shots and seeds")
    want = box_key(p, load_encoder_data(p.run_path, p.dataset, encoder), shots, seed)
    if saved_box_key(path) != want:
        raise ValueError(f"the f_Box at {path} was trained with other settings, embeddings or split than this run's: "
                         "run notebook 02 (02_train_boxes) again with these parameters")
    return load_box(path, p.torch_device)


# ---------------------------------------------------------------- methods x units
def method_params(m: Method, p: RunParams, embeddings: dict) -> dict:
    """What a result row records (and hashes): the method's settings, the protocol, the embeddings
    (``embeddings``: the ``info`` of the encoder's index)."""
    params = {k: _strip_seed(dataclasses.asdict(getattr(p, k))) for k in m.sections}
    params["protocol"] = p.protocol
    if m.config is not None:
        params["val_fraction"] = p.val_fraction
        if p.protocol == "tuned" and m.space:
            params["search"] = p.search.to_dict()
            params["space"] = describe(m.space)
    params["embeddings"] = embeddings
    return params


def run_methods(p: RunParams, methods: list[str], *, force: bool = False) -> pd.DataFrame:
    """Notebooks 03 and 04: each method on each unit it applies to; returns the new result rows. A
    unit whose rows are recorded with the same parameters, embeddings and code is skipped unless
    ``force``; rows computed again replace the old ones (:func:`lare.compare.results.append_rows`)."""
    chosen = [get(name) for name in methods]
    encoders = [e for e in p.encoders if any(e in p.encoders_for(m.encoders_param) for m in chosen)]
    _check_shots(p, encoders)
    sections = {k: getattr(p, k) for m in chosen for k in m.sections}
    results, rows, code = results_path(p.run_path), [], code_state()
    for enc, k, seed in tqdm(units(p, encoders), desc=", ".join(methods), disable=not p.progress):
        data = load_encoder_data(p.run_path, p.dataset, enc)
        splits = None
        for m in chosen:
            if enc not in p.encoders_for(m.encoders_param) or not m.applies(data.extra_text, k):
                continue
            params = method_params(m, p, data.index["info"])
            key = {"method": m.name, "encoder": enc, "dataset": p.dataset, "shots": k, "seed": seed}
            if not force and has_result(results, **key, params=params, code=code["code_fingerprint"]):
                continue
            if splits is None:
                splits = unit_splits(p, enc, k, seed)
                check_unit_inputs(unit_label(p, ", ".join(methods), enc, k, seed), splits)
            s = dataclasses.replace(splits, boxes=trained_boxes(p, enc, k, seed)) if "boxes" in m.needs else splits
            with unit_guard(unit_label(p, m.name, enc, k, seed), s):
                found = search_unit(m, s, p, sections, seed)
            new = make_rows(**key, params=params, code=code, **found)
            append_rows(results, new, replace=force)
            rows += new
    return pd.DataFrame(rows)[ROW_COLUMNS] if rows else pd.DataFrame(columns=ROW_COLUMNS)


def search_unit(m: Method, splits, p: RunParams, sections: dict, seed: int) -> dict:
    """One method on one unit under the run's protocol: every trial, the one chosen on the validation
    split, and what the row records of the choice (every trial's settings and scores included)."""
    trials = trials_of(m, p.protocol, p.search)
    results = run_trials(m, splits, configs_of(m, sections, trials, p.protocol, p.search, seed), p.torch_device)
    best = select(results, p.probe.select)
    chosen = results[best]
    return {"metrics_by_domain": {d: v for d, v in chosen.items() if d in EVAL_DOMAINS.values() or d.startswith(OOD_PREFIX)},
            "extra": {"trial": best, "selected": {**trials[best], **solved(chosen)},
                      "val_score": chosen.get(VALIDATION, {}).get(p.probe.select),
                      "trials": [{"settings": t, **r} for t, r in zip(trials, results, strict=True)]}}


def solved(metrics: dict) -> dict:
    """What the ``lbfgs`` probe chose by itself (its l2), as settings: ``{"probe.l2": ...}`` or ``{}``."""
    return {f"probe.{k}": v for k, v in metrics.get("probe", {}).items()}


def baseline_methods() -> list[str]:
    """Every registered method but LARE (notebook 04)."""
    return [name for name in REGISTRY if name != "lare"]


# ---------------------------------------------------------------- outputs
def aggregate_run(run_dir) -> Path:
    """results.jsonl -> results.csv (mean and std over seeds), in the run folder."""
    rows = read_rows(results_path(run_dir))
    if not rows:
        raise FileNotFoundError(f"no results in {results_path(run_dir)}: run notebooks 03 and 04 first")
    out = Path(run_dir) / "results.csv"
    write_csv(aggregate(rows), out)
    return out


def make_table1(p: RunParams) -> dict[str, Path]:
    """Notebook 05: aggregate the run's results into results.csv and write Table 1 under the figures folder."""
    csv = aggregate_run(p.run_path)
    agg = pd.read_csv(csv)
    write_csv(agg, p.figures_path / "results.csv")
    names = encoder_names(p.encoders)  # notebook 05 runs with Table 1's dataset file: its encoders' display names
    t = table1(agg, p.table1_dataset, with_paper=p.compare_paper, encoders=names)
    if t.empty:
        raise ValueError(f"no full-training-set results for dataset {p.table1_dataset!r} in {csv}")
    note = f" [{p.title_note}]" if p.title_note else ""
    code = f"; {code_caption(agg[agg['dataset'] == p.table1_dataset])}"
    paths = write_table1(t, p.figures_path, title=f"Table 1: top-1 accuracy (%) on {p.table1_dataset}, mean ± std over "
                                                  f"seeds; vs probe: difference from the linear probe of the same "
                                                  f"encoder, paired over seeds{note}{code}")
    # DomainNet, CIFAR-100-LT
    paths.update(arxiv_tables(read_rows(results_path(p.run_path)), p.figures_path, f"{note}; {code_caption(agg)}", names))
    oracle = oracle_rows(read_rows(results_path(p.run_path)))
    if oracle:  # the search's trials chosen on the target domain: an upper bound, never a result
        t_oracle = table1(aggregate(oracle), p.table1_dataset, encoders=names)
        if not t_oracle.empty:
            paths.update({f"oracle_{k}": v for k, v in write_table1(
                t_oracle, p.figures_path, stem="table1_oracle",
                title=f"ORACLE selection (the trial with the best out-of-domain accuracy; not a valid result): "
                      f"top-1 accuracy (%) on {p.table1_dataset}{note}{code}").items()})
    return paths


def lare_trials(p: RunParams, dataset: str) -> pd.DataFrame:
    """Every LARE trial of the search on ``dataset`` (full training set): its settings, its mean box
    log-width and its accuracy per domain, one row per (encoder, seed, trial, domain)."""
    defaults = {k: dataclasses.asdict(getattr(p, k.split(".")[0]))[k.split(".")[1]] for k in get("lare").space}
    out = []
    for r in read_rows(results_path(p.run_path)):
        if r["method"] != "lare" or r["dataset"] != dataset or r["shots"] != 0 or len(r.get("trials") or []) < 2:
            continue
        for i, t in enumerate(r["trials"]):
            settings = {**defaults, **t["settings"]}
            out.append({"encoder": r["encoder"], "seed": r["seed"], "trial": i, "domain": r["domain"],
                        "top1": t[r["domain"]]["top1"], "log_width": t.get("boxes", {}).get("log_width"),
                        "alpha": settings["box.alpha"], "k": settings["sampling.k"], "scale": settings["box.scale"],
                        "selected": i == r["trial"]})
    return pd.DataFrame(out)


def make_sensitivity(p: RunParams):
    """Notebook 07: LARE's accuracy against alpha, k and the mean box width of its search's trials."""
    df = lare_trials(p, p.table1_dataset)
    if df.empty:  # the fixed protocol has one trial per unit: nothing to vary
        print(f"no LARE search trials for {p.table1_dataset!r} in this run: the sensitivity study reads the trials of "
              "the tuned protocol (protocol: tuned, search.trials >= 2)")
        return None, None, df
    note = f"\n[{p.title_note}]" if p.title_note else ""
    fig = sensitivity(df, title=f"LARE sensitivity on {p.table1_dataset}: search trials, mean and 95% CI over seeds{note}")
    return save_figure(fig, p.figures_path, "sensitivity"), fig, df


def fewshot_missing(p: RunParams) -> str | None:
    """Why Figure 3 cannot be drawn yet (no aggregated results, or none with shots > 0 for the
    few-shot dataset), with what to run; None when it can."""
    csv = p.run_path / "results.csv"
    if csv.is_file():
        agg = pd.read_csv(csv)
        if ((agg["dataset"] == p.fewshot_dataset) & (agg["shots"] > 0)).any():
            return None
    return (f"Figure 3 needs few-shot results (shots > 0) for dataset {p.fewshot_dataset!r} in {csv}, and there are none "
            f"yet: run notebooks 01-04 with dataset = {p.fewshot_dataset!r} and then 05 (or the whole profile: "
            f"./run_all.sh --profile {p.profile})")


def figure3_encoder(p: RunParams, agg: pd.DataFrame) -> str:
    """The encoder Figure 3 draws: ``figure3_encoder`` when given; else coca (the paper's) when the
    few-shot dataset has LARE results on it, else the first encoder with LARE results there (in the
    run's order, then sorted; without any LARE result, the first encoder with results)."""
    if p.figure3_encoder:
        return p.figure3_encoder
    sub = agg[agg["dataset"] == p.fewshot_dataset]
    found = [e for e in dict.fromkeys([*p.encoders, *sorted(sub["encoder"].unique())]) if e in set(sub["encoder"])]
    with_lare = [e for e in found if ((sub["encoder"] == e) & (sub["method"] == "lare")).any()]
    candidates = with_lare or found
    if not candidates:
        raise ValueError(f"no results for dataset {p.fewshot_dataset!r} in the aggregated CSV: run notebooks 01-05 for it")
    return "coca" if "coca" in candidates else candidates[0]


def make_figure3(p: RunParams):
    """Notebook 06: Figure 3 from results.csv, as PNG and PDF under the figures folder, for the encoder
    of :func:`figure3_encoder`."""
    csv = p.run_path / "results.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"no {csv}: run notebook 05 (05_table1), which aggregates the results, first")
    note = f"\n[{p.title_note}]" if p.title_note else ""
    agg = pd.read_csv(csv)
    enc = figure3_encoder(p, agg)
    name = encoder_name(enc, p.encoders.get(enc))
    fig = figure3(agg, p.fewshot_dataset, encoder=enc, name=name,
                  title=f"Figure 3: few-shot accuracy, {p.fewshot_dataset}{note}")
    return save_figure(fig, p.figures_path, "figure3"), fig

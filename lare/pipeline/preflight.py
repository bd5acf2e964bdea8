"""Check a profile's parameters, datasets and encoders before any notebook runs.

``python -m lare.pipeline.preflight --profile paper [-f FILE] [-p NAME VALUE] [-r NAME VALUE]`` takes the
options ``run_all.sh`` takes, merges them with the profile's files through the parameter schema
(:mod:`lare.pipeline.params`), and reports every problem at once: bad parameters, missing or damaged
datasets (with what to download, from where and where to put it; what notebook 01 will read is
opened: :mod:`lare.data.treecheck`), every array of bring-your-own files (:mod:`lare.data.byo`), unknown
models or tags, and weights that cannot be had offline. Exit status 1 if any; whatever the files
hold, the answer is a report, never a traceback. Notes (embeddings that get normalised, a Table 1
dataset without an out-of-domain split) stop nothing and are printed with the verdict.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import open_clip
from huggingface_hub import scan_cache_dir

from lare.core.encoders import WEIGHT_SUFFIXES, EncoderError, check_pretrained, resolve_model_name
from lare.data import byo
from lare.data.catalog import DATASETS, check_sources
from lare.data.sources import CUB, cub_items, network_reachable
from lare.data.treecheck import imagefolder_problems, tree_problems
from lare.pipeline.params import (
    ParameterError,
    RunParams,
    dataset_files,
    load_params,
    open_clip_source,
    overrides_from,
    profiles,
    resolve,
)
from lare.pipeline.runfolder import shots_problem


def encoder_problems(p: RunParams, files: bool = True) -> list[str]:
    """Every open_clip encoder's ``model`` and ``pretrained`` as open_clip takes them, checked without
    building or downloading anything: the model is a name in open_clip's registry (or a model-config
    JSON that exists, or ``hf-hub:org/name``), the tag is one of that model's (or ``hf-hub:``, a
    weights file that exists, ``none``); each problem names the nearest valid names or tags.
    ``files=False``: names and tags only, not whether the files named exist (a check of the
    parameters alone, as for another machine)."""
    if p.source != "images":
        return []  # synthetic and bring-your-own embeddings: 'model' is only a label
    out = []
    for name, enc in p.encoders.items():
        if not isinstance(enc, dict) or "model" not in enc:
            continue  # reported with the parameters
        model, pretrained = open_clip_source(enc)
        if not files and (model.endswith(".json") or pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained):
            continue  # a file of this machine: the data checks look for it
        try:
            check_pretrained(resolve_model_name(model), pretrained)
        except EncoderError as err:
            out.append(f"encoder {name!r}: {err}")
    return out


def _weights_problems(model: str, pretrained: str) -> list[str]:
    """Can the weights be had? Cached, a local file, or downloadable (network allowed and up)."""
    try:
        name = resolve_model_name(model)
        weights = check_pretrained(name, pretrained)
    except EncoderError as err:
        return [str(err)]
    if name.startswith("hf-hub:"):  # a hub model brings its own weights
        weights = name
    if weights is None or os.path.isfile(weights):
        return []
    hub = None
    if weights.startswith("hf-hub:"):
        hub = weights[len("hf-hub:"):]
    else:
        cfg = open_clip.get_pretrained_cfg(name, weights) or {}
        hub = cfg.get("hf_hub", "").strip("/") or None
    if hub:
        try:
            cached = any(r.repo_id == hub.split("/", 2)[0] + "/" + hub.split("/", 2)[1] for r in scan_cache_dir().repos)
        except Exception:  # no cache folder yet
            cached = False
        if cached:
            return []
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if offline or not network_reachable("https://huggingface.co"):
        why = "HF_HUB_OFFLINE is set" if offline else "the network is not reachable"
        return [f"weights {model} / {pretrained} are not in the local cache and {why}: download them once with "
                f"network access (open_clip.create_model('{model}', pretrained='{pretrained}')), or pass a local "
                "checkpoint file as 'pretrained'"]
    return []


def smallest_train_class(p: RunParams, byo_files: dict[str, byo.ByoFile] | None = None) -> int | None:
    """Training items of the smallest class, read cheaply from what is on disk (None: unknown)."""
    try:
        if p.source == "synthetic":
            return int(p.synthetic.get("n_train_per_class", 30))
        if p.source == "byo":
            counts = [f.smallest_train_class() for f in (byo_files or {}).values()]
            return min((c for c in counts if c is not None), default=None)
        root = p.data_path
        if p.dataset == "cub":
            items, _ = cub_items(root / CUB.folder)
            return int(np.bincount([it.label for it in items["train"]]).min())
        if p.dataset == "cifar100":
            with open(root / "cifar-100-python" / "train", "rb") as f:
                return int(np.bincount(pickle.load(f, encoding="latin1")["fine_labels"]).min())
        train = root / p.dataset / "train"
        if p.dataset.startswith("toy") and not train.is_dir():
            return 6  # make_toy_images' default
        return min(sum(1 for _ in d.iterdir()) for d in train.iterdir() if d.is_dir())
    except Exception:  # whatever the data holds, its problem is reported by the data checks
        return None


def ood_notice(p: RunParams, byo_files: dict[str, byo.ByoFile]) -> str | None:
    """What to say when Table 1's dataset has no out-of-domain split (None: it has one, or this is
    not Table 1's dataset)."""
    if p.dataset != p.table1_dataset:
        return None
    why = None
    if not p.with_domains:
        why = "with_domains is false"
    elif p.source == "byo":
        lacking = [f"{f.path} (encoder {name!r})" for name, f in byo_files.items() if f.ok and "ood" not in f.splits]
        why = f"no 'ood' rows in {', '.join(lacking)}" if lacking else None
    elif p.source == "images" and p.dataset == "cifar100":
        why = "CIFAR-100 has one domain"
    if why is None:
        return None
    return (f"dataset {p.dataset!r} is Table 1's (table1_dataset) but has no out-of-domain split ({why}): Table 1 will "
            "show in-domain accuracy only, with the out-of-domain column marked 'not measured'")


def byo_problems(p: RunParams, notes: list[str]) -> tuple[list[str], dict[str, byo.ByoFile]]:
    """Every problem of every bring-your-own file, per file (its path heads its list)."""
    problems, files = [], {}
    for name in p.encoders:
        if name not in p.byo:
            continue  # reported with the parameters
        f = files[name] = byo.inspect(resolve(p.byo[name]), p.byo_norm)
        if not f.ok:
            problems.append(f"encoder {name!r}: {byo.ByoError(f.path, f.problems)}")
        notes += [f"encoder {name!r}: {f.path}: {x}" for x in f.notes]
    return problems, files


def check(p: RunParams, notes: list[str] | None = None) -> list[str]:
    """Every problem with one dataset's data and encoders (its parameters are already typed and
    checked); what is worth saying but stops nothing goes to ``notes``."""
    notes = [] if notes is None else notes
    problems, files = byo_problems(p, notes) if p.source == "byo" else ([], {})
    if p.source == "images":
        root = p.data_path
        if p.dataset in DATASETS:
            missing = check_sources(p.dataset, root, allow_download=p.download)
            problems += missing or tree_problems(p.dataset, root, skip_bad_images=p.skip_bad_images)
        elif p.dataset.startswith("toy"):
            pass  # generated by notebook 01
        elif (root / p.dataset).is_dir():
            splits = ("train", "test", "ood") if p.with_domains else ("train", "test")
            problems += imagefolder_problems(root / p.dataset, splits, skip_bad_images=p.skip_bad_images)
        else:
            problems.append(f"dataset {p.dataset!r}: no folder {root / p.dataset} (expected train/ and test/ with "
                            f"NNN.Class_Name/ image folders), and it is not one of {sorted(DATASETS)}")
        for name, enc in p.encoders.items():
            problems += [f"encoder {name!r}: {x}" for x in _weights_problems(*open_clip_source(enc))]
    smallest = smallest_train_class(p, files)
    if smallest is not None and (problem := shots_problem(smallest, p.shots, p.val_fraction)):
        problems.append(problem)
    if notice := ood_notice(p, files):
        notes.append(notice)
    return problems


def check_profile(profile: str, overrides: dict | None = None, *, root: Path | None = None, data: bool = True,
                  notes: dict[str, list[str]] | None = None) -> tuple[dict[str, RunParams], dict[str, list[str]]]:
    """The typed parameters of every dataset of a profile, and the problems per dataset file
    (parameters always; data and encoders too with ``data=True``). ``notes``, when given, receives
    per dataset file what stops nothing but is worth saying (e.g. embeddings that get normalised)."""
    notes = {} if notes is None else notes
    files = dataset_files(profile, root)
    if not files:
        known = profiles(root)
        return {}, {"profile": [f"unknown profile {profile!r}: no parameter files in params/{profile}/; "
                                f"profiles: {', '.join(known) or '(none)'}"]}
    loaded, report = {}, {}
    for f in files:
        try:
            loaded[f.stem] = load_params(profile, f.stem, overrides, root=root)
        except ParameterError as err:
            report[f.stem] = err.problems
    names = {p.dataset for p in loaded.values()}
    for stem, p in loaded.items():
        said: list[str] = []
        try:  # without the data checks, the encoders' names and tags are still checked (no download, no model built)
            problems = check(p, said) if data else encoder_problems(p, files=False)
        except Exception as err:  # a check that met something unforeseen still says which dataset, and no traceback
            problems = [f"the data checks of {stem} stopped on {type(err).__name__}: {err}"]
        for key in ("table1_dataset", "fewshot_dataset"):
            if getattr(p, key) not in names:
                problems.append(f"{key} {getattr(p, key)!r} is not a dataset of profile {profile} ({sorted(names)})")
        problems += figure3_problems(p, loaded)
        if problems:
            report[stem] = problems
        if said:
            notes[stem] = said
    return loaded, report


def figure3_problems(p: RunParams, loaded: dict[str, RunParams]) -> list[str]:
    """A ``figure3_encoder`` that names no encoder LARE runs on in Figure 3's dataset."""
    fewshot = next((q for q in loaded.values() if q.dataset == p.fewshot_dataset), None)
    if not p.figure3_encoder or fewshot is None:
        return []  # "": chosen from the results (coca, the paper's, else the first); a missing dataset is reported
    lare = fewshot.encoders_for("lare_encoders")
    if p.figure3_encoder in lare:
        return []
    return [f"figure3_encoder {p.figure3_encoder!r} is not an encoder LARE runs on in Figure 3's dataset "
            f"{p.fewshot_dataset!r} ({lare}): name one of them (-p figure3_encoder NAME), or leave it empty for coca "
            "(the paper's) or else the first"]


def format_report(profile: str, report: dict[str, list[str]], notes: dict[str, list[str]] | None = None) -> str:
    lines = [f"preflight: profile {profile} cannot run yet; nothing was started. Problems:"]
    for name, problems in report.items():
        lines += ["", f"[{name}]"] + ["- " + x.replace("\n", "\n  ") for x in problems]
        lines += ["- note: " + x.replace("\n", "\n  ") for x in (notes or {}).get(name, [])]
    return "\n".join(lines)


def format_notes(notes: dict[str, list[str]]) -> str:
    """Notes of a profile that can run (empty string: none)."""
    lines = []
    for name, said in notes.items():
        lines += [f"preflight note [{name}]: " + x.replace("\n", "\n  ") for x in said]
    return "\n".join(lines)


def parse_options(argv: list[str]) -> list[tuple[str, ...]]:
    """``-f FILE``, ``-p NAME VALUE``, ``-r NAME VALUE`` in the order given (other words are skipped)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "-f" and i + 1 < len(argv):
            out.append(("-f", argv[i + 1]))
            i += 2
        elif argv[i] in ("-p", "-r") and i + 2 < len(argv):
            out.append((argv[i], argv[i + 1], argv[i + 2]))
            i += 3
        else:
            i += 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lare.pipeline.preflight", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper")
    args, _ = ap.parse_known_args(argv)
    try:
        overrides = overrides_from(parse_options(list(argv if argv is not None else sys.argv[1:])))
    except ParameterError as err:
        print(f"preflight: {err}", file=sys.stderr)
        return 1
    notes: dict[str, list[str]] = {}
    try:
        loaded, report = check_profile(args.profile, overrides, notes=notes)
    except Exception as err:  # e.g. an unreadable params folder: a message, never a traceback
        print(f"preflight: cannot check profile {args.profile}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if report:
        print(format_report(args.profile, report, notes), file=sys.stderr)
        return 1
    if notes:
        print(format_notes(notes))
    print(f"preflight: profile {args.profile} ready ({len(loaded)} dataset file(s) checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

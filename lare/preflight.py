"""Check a profile's parameters, datasets and encoders before any notebook runs.

``python -m lare.preflight --profile paper [-f FILE] [-p NAME VALUE] [-r NAME VALUE]`` takes the
options ``run_all.sh`` forwards to papermill, merges them as papermill does (the notebook's
defaults, the profile's file, the extra files, then the -p/-r values), and reports every problem
at once: bad parameters, missing or damaged datasets (with what to download, from where and where
to put it), unknown models or tags, and weights that cannot be had offline. Exit status 1 if any.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

import yaml

from .pipeline import ParameterError, check_common, data_root_from, project_root, resolve, shots_problem

NOTEBOOK_WITH_ALL_PARAMETERS = "01_extract_embeddings.ipynb"


def _parameters_cell(path: Path | None = None) -> list[ast.AnnAssign]:
    import nbformat

    nb = nbformat.read(path or project_root() / "notebooks" / NOTEBOOK_WITH_ALL_PARAMETERS, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return [n for n in ast.parse(cell.source).body if isinstance(n, ast.AnnAssign)]


def notebook_defaults(path: Path | None = None) -> dict:
    """The literal defaults of the notebooks' `parameters` cell."""
    return {n.target.id: ast.literal_eval(n.value) for n in _parameters_cell(path)}


TYPES = {"str": (str,), "bool": (bool,), "int": (int,), "float": (float, int), "list": (list,), "dict": (dict,)}


def type_problems(values: dict) -> list[str]:
    """Values whose type differs from the parameter's annotation (e.g. ``-p seeds 3``)."""
    out = []
    for node in _parameters_cell():
        name, want = node.target.id, ast.unparse(node.annotation)
        if name not in values or want not in TYPES:
            continue
        v = values[name]
        ok = isinstance(v, TYPES[want]) and not (want in ("int", "float") and isinstance(v, bool))
        if not ok:
            out.append(f"parameter {name!r} must be a {want}, got {v!r} ({type(v).__name__})")
    return out


def unknown_names(params_file: Path, extra: list[tuple[str, ...]]) -> list[str]:
    """Parameter names no notebook knows (typos papermill would silently ignore), with suggestions."""
    import difflib

    known = set(notebook_defaults())
    given = set(yaml.safe_load(params_file.read_text()) or {})
    for opt in extra:
        given |= set(yaml.safe_load(Path(opt[1]).read_text()) or {}) if opt[0] == "-f" else {opt[1]}
    return [f"unknown parameter {name!r}" + (f" (did you mean {', '.join(near)}?)"
                                             if (near := difflib.get_close_matches(name, known, n=3)) else "")
            for name in sorted(given - known)]


def merged_parameters(params_file: Path, extra: list[tuple[str, ...]]) -> dict:
    values = notebook_defaults()
    values.update(yaml.safe_load(params_file.read_text()) or {})
    for opt in extra:
        if opt[0] == "-f":
            values.update(yaml.safe_load(Path(opt[1]).read_text()) or {})
    for opt in extra:
        if opt[0] == "-p":
            values[opt[1]] = yaml_value(opt[2])  # run_all.sh gives -p values to papermill as YAML
        elif opt[0] == "-r":
            values[opt[1]] = opt[2]
    return values


def yaml_value(raw: str):
    """A -p value read as YAML, as run_all.sh passes it on; not YAML at all: the plain string."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _weights_problems(model: str, pretrained: str) -> list[str]:
    """Can the weights be had? Cached, a local file, or downloadable (network allowed and up)."""
    import open_clip

    from .encoders import EncoderError, check_pretrained, resolve_model_name
    from .sources import network_reachable

    try:
        name = resolve_model_name(model)
        weights = check_pretrained(name, pretrained)
    except EncoderError as err:
        return [str(err)]
    if weights is None or os.path.isfile(weights):
        return []
    hub = None
    if weights.startswith("hf-hub:"):
        hub = weights[len("hf-hub:"):]
    else:
        cfg = open_clip.get_pretrained_cfg(name, weights) or {}
        hub = cfg.get("hf_hub", "").strip("/") or None
    if hub:
        from huggingface_hub import scan_cache_dir

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


def smallest_train_class(values: dict) -> int | None:
    """Training items of the smallest class, read cheaply from what is on disk (None: unknown)."""
    import numpy as np

    source, dataset = values.get("source"), str(values.get("dataset"))
    try:
        if source == "synthetic":
            return int((values.get("synthetic") or {}).get("n_train_per_class", 30))
        if source == "byo":
            z = np.load(resolve(next(iter((values.get("byo") or {}).values()))), allow_pickle=False)
            labels = z["labels"][np.asarray([str(v) == "train" for v in z["split"]])]
            return int(np.bincount(labels)[np.bincount(labels) > 0].min())
        root = resolve(data_root_from(values.get("data_root", "data")))
        if dataset == "cub":
            from .sources import CUB, cub_items

            items, _ = cub_items(root / CUB.folder)
            return int(np.bincount([it.label for it in items["train"]]).min())
        if dataset == "cifar100":
            import pickle

            with open(root / "cifar-100-python" / "train", "rb") as f:
                return int(np.bincount(pickle.load(f, encoding="latin1")["fine_labels"]).min())
        train = root / dataset / "train"
        if dataset.startswith("toy") and not train.is_dir():
            return 6  # make_toy_images' default
        return min(sum(1 for _ in d.iterdir()) for d in train.iterdir() if d.is_dir())
    except (OSError, KeyError, ValueError, StopIteration, RuntimeError):
        return None  # the data problem itself is reported elsewhere


def check(values: dict) -> list[str]:
    """Every problem with one dataset's merged parameters (empty: ready to run)."""
    from .box import BoxConfig
    from .lads import LADSConfig
    from .methods import SamplingConfig
    from .probe import ProbeConfig

    problems = type_problems(values)
    try:
        check_common(seeds=values.get("seeds"), shots=values.get("shots"), encoders=values.get("encoders"),
                     source=values.get("source"), val_fraction=values.get("val_fraction"))
    except ParameterError as err:
        problems += str(err).split("\n  - ")[1:]
    for key, cls in (("box", BoxConfig), ("probe", ProbeConfig), ("lads", LADSConfig), ("sampling", SamplingConfig)):
        try:
            cls(**(values.get(key) or {}))
        except (TypeError, ValueError) as err:
            problems.append(f"{key}: {err}")
    encoders = values.get("encoders") or {}
    for key in ("lare_encoders", "lads_encoders", "baseline_encoders"):
        unknown = [e for e in values.get(key) or [] if e not in encoders]
        if unknown:
            problems.append(f"{key} names encoders that 'encoders' does not define: {unknown}")
    source, dataset = values.get("source"), values.get("dataset")
    shots, vf = values.get("shots"), values.get("val_fraction")
    if isinstance(shots, list) and all(isinstance(k, int) for k in shots) and isinstance(vf, float) and 0 < vf < 1:
        smallest = smallest_train_class(values)
        if smallest is not None and (problem := shots_problem(smallest, shots, vf)):
            problems.append(problem)
    if source == "images":
        from .sources import PROTOCOL_SOURCES, check_sources

        root = resolve(data_root_from(values.get("data_root", "data")))
        if dataset in PROTOCOL_SOURCES:
            problems += check_sources(dataset, root, allow_download=bool(values.get("download", True)))
        elif not str(dataset).startswith("toy") and not (root / str(dataset)).is_dir():
            problems.append(f"dataset {dataset!r}: no folder {root / str(dataset)} (expected train/ and test/ with "
                            f"NNN.Class_Name/ image folders), and it is not one of {sorted(PROTOCOL_SOURCES)}")
        if isinstance(encoders, dict):
            for name, enc in encoders.items():
                if not isinstance(enc, dict) or "model" not in enc:
                    problems.append(f"encoder {name!r} needs a 'model' (and 'pretrained')")
                    continue
                problems += [f"encoder {name!r}: {p}" for p in _weights_problems(enc["model"], str(enc.get("pretrained", "none")))]
    elif source == "byo":
        from .pipeline import read_byo

        for name in encoders:
            path = (values.get("byo") or {}).get(name)
            if path is None:
                problems.append(f"source 'byo': no .npz given for encoder {name!r} in the 'byo' mapping")
                continue
            try:
                read_byo(resolve(path))
            except (OSError, ValueError) as err:
                problems.append(f"encoder {name!r}: {err}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lare.preflight", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper")
    ap.add_argument("-f", dest="extra", action="append", nargs=1, type=str, default=[])
    ap.add_argument("-p", dest="extra", action="append", nargs=2)
    ap.add_argument("-r", dest="extra", action="append", nargs=2)
    args, _ = ap.parse_known_args(argv)
    # Rebuild the options in order with their flag, as papermill receives them.
    raw = list(argv if argv is not None else sys.argv[1:])
    extra, i = [], 0
    while i < len(raw):
        if raw[i] == "-f":
            extra.append(("-f", raw[i + 1]))
            i += 2
        elif raw[i] in ("-p", "-r"):
            extra.append((raw[i], raw[i + 1], raw[i + 2]))
            i += 3
        else:
            i += 1
    files = sorted((project_root() / "params" / args.profile).glob("*.yaml"))
    if not files:
        print(f"preflight: no parameter files in params/{args.profile}/", file=sys.stderr)
        return 1
    report = {}
    names = {str(merged_parameters(f, extra).get("dataset")) for f in files}
    for f in files:
        values = merged_parameters(f, extra)
        problems = unknown_names(f, extra) + check(values)
        for key in ("table1_dataset", "fewshot_dataset"):
            if values.get(key) not in names:
                problems.append(f"{key} {values.get(key)!r} is not a dataset of profile {args.profile} ({sorted(names)})")
        if problems:
            report[f.stem] = problems
    if not report:
        print(f"preflight: profile {args.profile} ready ({len(files)} dataset file(s) checked)")
        return 0
    print(f"preflight: profile {args.profile} cannot run yet; nothing was started. Problems:", file=sys.stderr)
    for name, problems in report.items():
        print(f"\n[{name}]", file=sys.stderr)
        for p in problems:
            print("- " + p.replace("\n", "\n  "), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

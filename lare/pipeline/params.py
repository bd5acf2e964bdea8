"""One typed parameter schema for a run: defaults live here and in the method configs, nowhere else.

A run's parameters for one dataset come from, in order (each deep-merged over the last):

1. the defaults of :class:`RunParams` and of the method configs it nests (:class:`BoxConfig`,
   :class:`SamplingConfig`, :class:`ProbeConfig`, :class:`LADSConfig`);
2. the profile's file ``params/<profile>/<dataset>.yaml`` (only what differs from the defaults);
3. the ``overrides``: ``-f`` files, then ``-p NAME VALUE`` values (YAML-typed, dotted names reach
   inside mappings: ``-p box.alpha 0.3``), then ``-r NAME VALUE`` strings.

Deep merge: ``-p box '{alpha: 0.3}'`` changes only ``box.alpha``. In the free mappings
(``encoders``, ``byo``, ``synthetic``, ``domain_templates``) a ``null`` value removes an entry.
:func:`build` reports unknown names (with suggestions), wrong types and bad values all at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from lare.compare.ablations import FixedBoxesConfig, GaussianNoiseConfig
from lare.compare.methods import ReferenceConfig
from lare.compare.registry import encoder_names
from lare.compare.search import PROTOCOLS, SearchConfig, replaced_under_tuned
from lare.core.box import BoxConfig, SamplingConfig
from lare.core.encoders import WEIGHT_SUFFIXES
from lare.core.lads import LADSConfig
from lare.core.probe import ProbeConfig
from lare.core.train import is_int
from lare.data.byo import NORM_POLICIES
from lare.data.synthetic import SyntheticSpec
from lare.utils import resolve_device

SOURCES = ("synthetic", "images", "byo")
EXTRACT_PRECISIONS = ("fp32", "bf16", "fp16", "auto")
FREE_MAPPINGS = ("encoders", "byo", "synthetic", "domain_templates")


class ParameterError(ValueError):
    """Bad parameters, reported (all at once) before any heavy work starts."""

    def __init__(self, problems: list[str], where: str = ""):
        self.problems = list(problems)
        head = f"bad parameters{f' ({where})' if where else ''}:"
        super().__init__(head + "\n  - " + "\n  - ".join(p.replace("\n", "\n    ") for p in self.problems))


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def resolve(path: str | Path) -> Path:
    """Relative paths are taken from the repository root, wherever the notebook runs."""
    p = Path(path)
    return p if p.is_absolute() else project_root() / p


def open_clip_source(enc: dict) -> tuple[str, str]:
    """An encoder entry's ``model`` and ``pretrained`` as open_clip takes them (``pretrained``
    ``none``: random weights), a relative path to a model-config JSON or a weights file taken from
    the repository root (as every other path of a run), wherever the notebook runs."""
    model, pretrained = str(enc["model"]), str(enc.get("pretrained", "none"))

    def local(path: str, is_file: bool) -> str:
        return str(resolve(path)) if is_file and not path.startswith("hf-hub:") and not Path(path).is_absolute() else path

    weights_file = pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained
    return local(model, model.endswith(".json")), local(pretrained, weights_file)


def data_root_from(param: str) -> str:
    """The data root: the parameter, unless it is the default "data" and LARE_DATA_ROOT is set."""
    return os.environ.get("LARE_DATA_ROOT", param) if param == "data" else param


@dataclass(frozen=True)
class RunParams:
    """Every parameter of a run for one dataset, with its default (the ``demo`` profile's)."""

    # --- where things are ---
    profile: str = "demo"              # a folder of params/: names the run folder and the figures folder
    dataset: str = "synthetic_domains"  # this dataset's name (one params file per dataset)
    run_dir: str = ""                  # run folder ("": runs/<profile>; relative paths: from the repository root)
    cache_dir: str = "cache"           # embedding cache (shared by runs; keyed by every field that matters)
    data_root: str = "data"            # where datasets live (source images); LARE_DATA_ROOT overrides "data"
    download: bool = True              # download missing datasets when the network allows
    # --- where embeddings come from ---
    source: str = "synthetic"          # synthetic | images | byo (bring your own .npz, see README)
    with_domains: bool = True          # True: photo train/test + painting "ood" split (Table 1); False: one domain (Figure 3)
    synthetic: dict = field(default_factory=lambda: {  # lare.data.synthetic.SyntheticSpec fields (noise: per encoder)
        "num_classes": 40, "dim": 128, "n_train_per_class": 30, "n_test_per_class": 20, "n_ood_per_class": 15})
    encoders: dict = field(default_factory=dict)  # key -> {model, pretrained[, name][, noise (synthetic)]}; set by the profile
    byo: dict = field(default_factory=dict)  # encoder -> path of a .npz (source byo)
    byo_norm: str = "normalize"        # byo vectors whose L2 norm is not 1 (beyond 1e-3): normalize (recorded) | refuse
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])  # class prompts T(y), averaged
    domain_templates: dict = field(default_factory=lambda: {  # domain prompts for LADS
        "photo": ["a photo of a {}."], "painting": ["a painting of a {}."]})
    precision: str = "fp32"            # autocast when encoding images: fp32 | bf16 | fp16 (GPU) | auto (bf16 on GPU)
    batch_size: int = 64               # images per forward pass
    num_workers: int = 0               # DataLoader workers decoding images (0: in the main process)
    chunk_size: int = 1024             # images per cache chunk (the unit of resumption and of torchrun sharding)
    repair_cache: bool = False         # re-extract a cache entry that fails its checksum (else: stop and say so)
    skip_bad_images: bool = False      # leave out images that do not decode (recorded); else stop and name the file
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    # --- protocol ---
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # validation carve, k-shot draw, init, sampling
    shots: list[int] = field(default_factory=lambda: [0])  # labelled images per class; 0 = the full training set
    val_fraction: float = 0.2          # validation carved from the training pool, for model selection
    lare_encoders: list[str] = field(default_factory=list)  # encoders LARE runs on ([]: every encoder)
    lads_encoders: list[str] = field(default_factory=list)  # encoders LADS runs on ([]: every encoder)
    baseline_encoders: list[str] = field(default_factory=list)  # zero-shot and linear probe ([]: every encoder)
    # --- method settings (each a dataclass with documented defaults) ---
    box: BoxConfig = field(default_factory=BoxConfig)                  # step 1: f_Box and Eq. (5)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)   # step 2: samples drawn from the boxes
    probe: ProbeConfig = field(default_factory=ProbeConfig)            # the linear probe of every method
    lads: LADSConfig = field(default_factory=LADSConfig)               # the LADS augmenter
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)  # the L-BFGS reference probe
    gaussian_noise: GaussianNoiseConfig = field(default_factory=GaussianNoiseConfig)  # ablation: noise instead of f_Box
    fixed_boxes: FixedBoxesConfig = field(default_factory=FixedBoxesConfig)  # ablation: boxes of one width, no f_Box
    # --- protocol of the comparison (lare.compare.search) ---
    protocol: str = "tuned"            # tuned: equal-budget search, selection on validation | fixed: one recipe
    search: SearchConfig = field(default_factory=SearchConfig)         # trials, seed, patience, max_epochs, solver, probe_*
    # --- outputs ---
    figures_root: str = "figures"      # tables and figures go to <figures_root>/<profile>/
    table1_dataset: str = "synthetic_domains"   # dataset of Table 1
    fewshot_dataset: str = "synthetic_fewshot"  # dataset of Figure 3
    figure3_encoder: str = ""          # the encoder Figure 3 draws ("": coca, the paper's, else the first LARE encoder)
    compare_paper: bool = False        # put the paper's numbers beside ours (paper profile)
    title_note: str = "SYNTHETIC data"  # shown in table and figure titles
    progress: bool = True              # progress bars

    # --- resolved locations ---
    @property
    def run_path(self) -> Path:
        return resolve(self.run_dir or f"runs/{self.profile}")

    @property
    def cache_path(self) -> Path:
        return resolve(self.cache_dir)

    @property
    def data_path(self) -> Path:
        return resolve(data_root_from(self.data_root))

    @property
    def figures_path(self) -> Path:
        return resolve(self.figures_root) / self.profile

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(None if self.device in ("auto", "") else self.device)

    def encoders_for(self, key: str) -> list[str]:
        """The encoders named by ``key`` (e.g. ``lare_encoders``); an empty list means every encoder."""
        return list(getattr(self, key)) or list(self.encoders)

    def to_dict(self) -> dict:
        """Plain values (the method configs as mappings), as recorded and hashed."""
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(RunParams)}
_HINTS = typing.get_type_hints(RunParams)
# The config sections (box, sampling, probe, ...): every field of RunParams that is a config dataclass,
# so a method's own settings need one field above and nothing else here.
SECTIONS = {name: hint for name, hint in _HINTS.items() if dataclasses.is_dataclass(hint)}


# ---------------------------------------------------------------- merging
def deep_merge(base: dict, over: dict, *, _path: str = "") -> dict:
    """``over`` merged into a copy of ``base``: mappings recursively, everything else replaced.

    In a free mapping (``encoders``, ``byo``, ...) a ``None`` value removes the entry.
    """
    out = dict(base)
    free = _path.split(".")[0] in FREE_MAPPINGS
    for k, v in over.items():
        here = f"{_path}.{k}" if _path else str(k)
        if v is None and free and _path:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v, _path=here)
        else:
            out[k] = v
    return out


def dotted(name: str, value: Any) -> dict:
    """``("probe.lr", 0.01)`` -> ``{"probe": {"lr": 0.01}}``."""
    for part in reversed(name.split(".")[1:]):
        value = {part: value}
    return {name.split(".")[0]: value}


def yaml_value(raw: str) -> Any:
    """A ``-p`` value read as YAML (7 an int, 0.5 a float, "[0, 1]" a list); not YAML: the string."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def read_yaml(path: str | Path) -> dict:
    """A parameter file as a mapping (empty file: nothing), with a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError([f"parameter file {path} does not exist"])
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParameterError([f"{path} is not valid YAML: {err}"]) from err
    if not isinstance(values, dict):
        raise ParameterError([f"{path} must hold a mapping of parameter names to values, got {type(values).__name__}"])
    return values


def overrides_from(options: list[tuple[str, ...]]) -> dict:
    """The ``-f FILE`` / ``-p NAME VALUE`` / ``-r NAME VALUE`` options as one mapping: the files in
    order, then the values in order (a value always wins over a file, as papermill does)."""
    out: dict = {}
    for opt in options:
        if opt[0] == "-f":
            out = deep_merge(out, read_yaml(opt[1]))
    for opt in options:
        if opt[0] in ("-p", "-r"):
            out = deep_merge(out, dotted(opt[1], yaml_value(opt[2]) if opt[0] == "-p" else opt[2]))
    return out


def profile_dir(profile: str, root: Path | None = None) -> Path:
    return (root or project_root()) / "params" / profile


def profiles(root: Path | None = None) -> list[str]:
    """The profiles: folders of ``params/`` holding at least one ``.yaml`` file."""
    base = (root or project_root()) / "params"
    return sorted(d.name for d in base.iterdir() if d.is_dir() and any(d.glob("*.yaml"))) if base.is_dir() else []


def dataset_files(profile: str, root: Path | None = None) -> list[Path]:
    """The dataset files of a profile, in sorted order (a file's name is its dataset's name)."""
    return sorted(profile_dir(profile, root).glob("*.yaml"))


def merged_values(profile: str, dataset: str, overrides: dict | None = None, *, root: Path | None = None) -> dict:
    """The profile file's values for ``dataset`` with ``overrides`` deep-merged over them (raw, unchecked)."""
    path = profile_dir(profile, root) / f"{dataset}.yaml"
    if not path.is_file():
        known = [p.stem for p in dataset_files(profile, root)]
        raise ParameterError([f"no parameter file {path}" + (f"; profile {profile!r} has {known}" if known else
                                                            f"; profiles: {profiles(root)}")])
    values = deep_merge({"dataset": dataset}, read_yaml(path))
    return deep_merge({**values, "profile": profile}, overrides or {})


def load_params(profile: str = "demo", dataset: str = "synthetic_domains", overrides: dict | None = None, *,
                root: Path | None = None) -> RunParams:
    """The typed, checked parameters of one dataset of a profile (what every notebook starts with)."""
    return build(merged_values(profile, dataset, overrides, root=root), where=f"{profile}/{dataset}")


# ---------------------------------------------------------------- checking
def _suggest(name: str, known) -> str:
    near = difflib.get_close_matches(name, list(known), n=3)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def _type_ok(value: Any, hint) -> bool:
    origin = typing.get_origin(hint) or hint
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and (item is Any or all(_type_ok(v, item) for v in value))
    return isinstance(value, origin)


def _type_name(hint) -> str:
    return (typing.get_origin(hint) or hint).__name__


def _section(name: str, cls, given: Any, problems: list[str]):
    if not isinstance(given, dict):
        problems.append(f"{name} must be a mapping of {cls.__name__} settings (e.g. {name}.lr), got {given!r}")
        return cls()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in given if k not in known]
    problems += [f"unknown setting {name}.{k}{_suggest(k, known)}" for k in unknown]
    try:
        return cls(**{k: v for k, v in given.items() if k in known})
    except (TypeError, ValueError) as err:
        problems.append(f"{name}: {err}")
        return cls()


def build(values: dict, *, where: str = "") -> RunParams:
    """:class:`RunParams` from merged raw values, or a :class:`ParameterError` listing every problem."""
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name not in FIELDS:
            problems.append(f"unknown parameter {name!r}{_suggest(name, FIELDS)}")
        elif name in SECTIONS:
            default = dataclasses.asdict(SECTIONS[name]())
            merged = deep_merge(default, value) if isinstance(value, dict) else value
            kwargs[name] = _section(name, SECTIONS[name], merged, problems)
        elif not _type_ok(value, _HINTS[name]):
            problems.append(f"parameter {name!r} must be a {_type_name(_HINTS[name])}, got {value!r} ({type(value).__name__})")
        else:
            kwargs[name] = float(value) if _HINTS[name] is float else value
    for name in ("synthetic", "domain_templates"):  # these merge into their defaults too (encoders, byo: no default)
        if isinstance(kwargs.get(name), dict):
            kwargs[name] = deep_merge(FIELDS[name].default_factory(), kwargs[name], _path=name)
    params = RunParams(**kwargs)
    problems += value_problems(params)
    if params.protocol == "tuned":  # a setting the protocol replaces would silently do nothing: refuse it
        problems += replaced_under_tuned(values)
    if problems:
        raise ParameterError(problems, where)
    return params


def value_problems(p: RunParams) -> list[str]:
    """What is wrong with well-typed values (each problem says what to do)."""
    out = []
    if not p.seeds:
        out.append(f"seeds must be a non-empty list of integers, got {p.seeds!r}")
    elif len(set(p.seeds)) != len(p.seeds):
        out.append(f"seeds must not repeat, got {p.seeds!r}")
    if not p.shots or any(k < 0 for k in p.shots):
        out.append(f"shots must be a non-empty list of integers >= 0 (0 = the full training set), got {p.shots!r}")
    if not 0 < p.val_fraction < 1:
        out.append(f"val_fraction must lie in (0, 1), got {p.val_fraction!r}")
    if p.protocol not in PROTOCOLS:
        out.append(f"protocol must be one of {PROTOCOLS}, got {p.protocol!r}")
    if p.source not in SOURCES:
        out.append(f"source must be one of {SOURCES}, got {p.source!r}")
    if p.precision not in EXTRACT_PRECISIONS:
        out.append(f"precision (image encoding) must be one of {EXTRACT_PRECISIONS}, got {p.precision!r}")
    for name in ("batch_size", "chunk_size"):
        if getattr(p, name) < 1:
            out.append(f"{name} must be >= 1, got {getattr(p, name)}")
    if p.num_workers < 0:
        out.append(f"num_workers must be >= 0, got {p.num_workers}")
    if not p.encoders:
        out.append("encoders must be a mapping such as {coca: {model: ..., pretrained: ...}}, got an empty one")
    for name in p.encoders:
        if not isinstance(name, str) or not name.strip() or name.startswith(".") or any(c in name for c in "/\\"):
            out.append(f"encoder key {name!r} names files of the run folder: use letters, digits, '-' or '_' "
                       "(a display name with spaces or slashes goes in its entry's 'name')")
    shown = list(encoder_names(p.encoders).values())
    if len(set(shown)) < len(shown):
        out.append(f"two encoders share a display name ({shown}): give each its own 'name', so Table 1 can tell them apart")
    for name, enc in p.encoders.items():
        if not isinstance(enc, dict):
            out.append(f"encoder {name!r} must be a mapping such as {{model: ..., pretrained: ...}}, got {enc!r}")
        elif p.source == "synthetic" and "noise" not in enc:
            out.append(f"encoder {name!r}: the synthetic source needs a 'noise' level (e.g. 0.6)")
        elif p.source == "images" and "model" not in enc:
            out.append(f"encoder {name!r} needs a 'model' (and 'pretrained')")
        if isinstance(enc, dict) and "name" in enc and not (isinstance(enc["name"], str) and enc["name"].strip()):
            out.append(f"encoder {name!r}: 'name' (its display name in tables and figures) must be a non-empty string, "
                       f"got {enc['name']!r}; leave it out to show {name!r}")
    for key in ("lare_encoders", "lads_encoders", "baseline_encoders"):
        unknown = [e for e in getattr(p, key) if e not in p.encoders]
        if unknown:
            out.append(f"{key} names encoders that 'encoders' does not define: {unknown}")
    spec_fields = {f.name for f in dataclasses.fields(SyntheticSpec)} - {"noise"}
    out += [f"unknown setting synthetic.{k}{_suggest(k, spec_fields)}" for k in p.synthetic if k not in spec_fields]
    if p.byo_norm not in NORM_POLICIES:
        out.append(f"byo_norm (bring-your-own vectors whose norm is not 1) must be one of {NORM_POLICIES}, got {p.byo_norm!r}")
    if p.source == "byo":
        out += [f"source 'byo': no .npz given for encoder {name!r} in the 'byo' mapping" for name in p.encoders
                if name not in p.byo]
        out += [f"byo.{name} must be the path of a .npz file, got {path!r}" for name, path in p.byo.items()
                if not isinstance(path, str | os.PathLike) or not str(path)]
    return out

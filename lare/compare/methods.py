"""The methods of Table 1 and Figure 3, each one :class:`Method` entry (the registry that holds them
all is :mod:`lare.compare.registry`).

An entry holds the method's name (the ``method`` column of the results), the config sections it
reads from the run's parameters (``probe``, ``box``, ...), what it needs beyond a training set
(class text, domain prompts, trained boxes, the full training set), its search space, its Table 1
row on any encoder (and the paper's rows, with the paper's names and numbers), and one
``run(splits, config, device) -> metrics`` function. The experiment loop
(:mod:`lare.pipeline.experiment`) runs units x methods through this interface only, and Table 1 is keyed
off the registry, so a new method is one module with its entry and one line in the registry
(docs/library.md, "Adding a method"). (DomainBed's ``algorithms.py`` + ``hparams_registry.py`` is the model.)

``metrics`` is ``{domain: {"top1": ..., "balanced_acc": ...}}`` per evaluation domain, and for the
``validation`` split (carved from the training pool), on which a search selects. A method may also
give ``run_trials(splits, configs, device) -> [metrics]``: its trials of one unit trained as one
batched model, with the same numbers as ``run`` on each config (up to float rounding). Step 2 of
every method, one run or N trials, is :func:`probe_trials` (the probe's one trainer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lare.compare.space import PROBE, SAMPLES_PER_ITEM, Space
from lare.core.box import BoxConfig, BoxSampler, BoxTrainResult, SamplingConfig, train_box, train_box_trials
from lare.core.lads import LADSConfig, train_lads, train_lads_trials
from lare.core.probe import (
    DEFAULT_L2_GRID,
    SELECT_METRICS,
    Augmenter,
    FixedAugment,
    ProbeConfig,
    check_l2_grid,
    metrics,
    shared_settings,
    train_probe_trials,
    zero_shot_predict,
)
from lare.core.reference import reference_probe
from lare.data.longtail import group_accuracy
from lare.utils import make_generator, resolve_device

Metrics = dict[str, dict[str, float]]
VALIDATION = "validation"  # the metrics' key for the validation split, on which a search selects
OUT_OF_DOMAIN, OOD_PREFIX = "out_of_domain", "ood_"  # one target domain / each of several (their mean is the former)
DOMAIN_PROMPTS = ("photo", "painting")  # the source and target domain descriptions LADS reads


@dataclass
class EmbeddingSplits:
    """One encoder's embeddings for one (shots, seed): training and validation sets, evaluation sets by
    domain name, class text embeddings, optional domain prompt embeddings and trained boxes."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]]
    class_text: torch.Tensor
    extra_text: dict[str, torch.Tensor] = field(default_factory=dict)
    boxes: BoxTrainResult | None = None  # f_Box of step 1 for this unit (notebook 02), when trained
    class_groups: list[str] | None = None  # CIFAR-100-LT: head / medium / tail per class, reported too

    @property
    def num_classes(self) -> int:
        return int(self.class_text.shape[0])

    def to(self, device: torch.device | str) -> EmbeddingSplits:
        """One transfer of everything to ``device`` (shared by every method and seed)."""
        mv = lambda t: t.to(device)  # noqa: E731
        return dataclasses.replace(self, train_x=mv(self.train_x), train_y=mv(self.train_y), val_x=mv(self.val_x),
                                   val_y=mv(self.val_y), evals={k: (mv(x), mv(y)) for k, (x, y) in self.evals.items()},
                                   class_text=mv(self.class_text), extra_text={k: mv(v) for k, v in self.extra_text.items()})


def score(pred: torch.Tensor, labels: torch.Tensor, splits: EmbeddingSplits) -> dict[str, float]:
    """Top-1 and balanced accuracy of predictions, and with class groups (CIFAR-100-LT) the accuracy
    on the head, medium and tail classes."""
    out = metrics(pred, labels, splits.num_classes)
    return {**out, **group_accuracy(pred, labels, splits.class_groups)} if splits.class_groups else out


def with_mean_ood(out: Metrics) -> Metrics:
    """Several target domains (``ood_<domain>``, e.g. DomainNet's clipart, painting, real): their mean
    is the out-of-domain result (each stays reported)."""
    targets = [v for k, v in out.items() if k.startswith(OOD_PREFIX)]
    if targets and OUT_OF_DOMAIN not in out:
        out[OUT_OF_DOMAIN] = {k: sum(t[k] for t in targets) / len(targets) for k in targets[0]}
    return out


def evaluate(predict: Callable[[torch.Tensor], torch.Tensor], splits: EmbeddingSplits) -> Metrics:
    """Metrics per evaluation domain, and on the validation split (what a search may select on)."""
    out = {name: score(predict(x), y, splits) for name, (x, y) in splits.evals.items()}
    if len(splits.val_y):
        out[VALIDATION] = score(predict(splits.val_x), splits.val_y, splits)
    return with_mean_ood(out)


# ---------------------------------------------------------------- method configs
@dataclass(frozen=True)
class LADSMethodConfig:
    """LADS: its augmenter (``lads``) and the probe trained on originals + augmentations."""

    lads: LADSConfig = field(default_factory=LADSConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass(frozen=True)
class LAREConfig:
    """LARE: step 1 (``box``: f_Box and Eq. (5)), step 2 (``sampling`` from the boxes, ``probe``)."""

    box: BoxConfig = field(default_factory=BoxConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass(frozen=True)
class ReferenceConfig:
    """The reference linear probe (the CLIP paper's protocol): multinomial logistic regression solved
    to convergence with L-BFGS (``tol`` on the gradient norm, at most ``max_iter`` iterations), its
    L2 strength chosen on the validation split by ``select`` from ``l2_grid``."""

    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    select: str = "balanced_acc"
    max_iter: int = 1000
    tol: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "l2_grid", check_l2_grid(self.l2_grid))
        if self.select not in SELECT_METRICS:
            raise ValueError(f"select must be one of {SELECT_METRICS}, got {self.select!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- the methods
def run_zero_shot(splits: EmbeddingSplits, config: None = None, device=None) -> Metrics:
    """Classify by cosine similarity to the class text embeddings (no training, no seed)."""
    return evaluate(lambda x: zero_shot_predict(x, splits.class_text), splits)


def solved_probe(splits: EmbeddingSplits, config: ProbeConfig, extra: tuple[torch.Tensor, torch.Tensor] | None,
                 device=None, draws: int = 1) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """The ``lbfgs`` solver's probe: logistic regression on the originals plus ``extra`` (a fixed set
    from an augmenter: ``draws`` draws, one after another, each row weighted ``1 / draws``), solved
    for every l2 of ``config.l2_grid``, the best on validation kept. Returns its predict function
    and what it chose (``{"l2": ...}``)."""
    x, y, weight = splits.train_x, splits.train_y, None
    if extra is not None:
        x, y = torch.cat([x, extra[0].to(x.device, x.dtype)]), torch.cat([y, extra[1].to(y.device)])
        if draws > 1:
            n = len(splits.train_y)
            weight = torch.cat([torch.ones(n, dtype=torch.float64), torch.full((len(y) - n,), 1.0 / draws, dtype=torch.float64)])
    res = reference_probe(x, y, splits.val_x, splits.val_y, splits.num_classes, l2_grid=config.l2_grid,
                          select=config.select, device=device, sample_weight=weight)
    return res.predict, {"l2": res.l2}


def _drawn(augment: Augmenter, generators: list[torch.Generator], dev, draws: int = 1):
    """An augmenter's first ``draws`` epochs (its generators advancing) for the ``lbfgs`` solver, on
    ``dev``, joined along the rows: (N, m * draws, d) and (N, m * draws)."""
    augment = augment.to(dev) if hasattr(augment, "to") else augment
    parts = [augment(epoch, generators) for epoch in range(draws)]
    return tuple(torch.cat([p[i] for p in parts], dim=1) for i in (0, 1))


def probe_trials(splits: EmbeddingSplits, probes: list[ProbeConfig], device=None, augment: Augmenter | None = None,
                 draws: int = 1) -> list[Metrics]:
    """Step 2 of every method: N probe trials of one unit on the originals plus the augmenter's
    embeddings, each evaluated (:func:`evaluate`'s metrics); one run is N = 1 (:func:`fit_probe`).

    probes: the trials' configs, all of one solver. ``adamw``: they may differ in lr, weight decay,
    l2 and seed and share every other setting (:data:`lare.core.probe.TRIAL_FIELDS`); they train as
    one batched model (:func:`lare.core.probe.train_probe_trials`, the probe's one trainer).
    ``lbfgs``: each trial is solved on its own (:func:`solved_probe`) on its augmenter row drawn
    ``draws`` times from its own generator (seed + 1: the draws the AdamW trainer makes for its
    first epochs), and the l2 it chose is reported under ``"probe"``.
    augment: ``augment(epoch, generators) -> (x (N, m, d), y (N, m))``, row i trial i's extra
    training embeddings for that epoch, drawn from ``generators[i]`` only (see
    :data:`lare.core.probe.Augmenter`: :class:`lare.core.box.BoxSampler`,
    :class:`lare.core.probe.FixedAugment`, or any callable of that form, with an optional ``size``
    (m, which the step bounds count) and ``to(device)``); None: the originals alone.
    """
    if not probes or len({c.solver for c in probes}) > 1:
        raise ValueError(f"probe trials need one solver for all, got {[c.solver for c in probes]}")
    if probes[0].solver == "lbfgs":
        dev = resolve_device(device)
        extra = None if augment is None else _drawn(augment, [make_generator(c.seed + 1, dev) for c in probes], dev, draws)
        out = []
        for i, c in enumerate(probes):
            predict, chosen = solved_probe(splits, c, None if extra is None else (extra[0][i], extra[1][i]), device, draws)
            out.append({**evaluate(predict, splits), "probe": chosen})
        return out
    res = train_probe_trials(splits.train_x, splits.train_y, splits.num_classes, probes, val_x=splits.val_x,
                             val_y=splits.val_y, augment=augment, device=device)
    sets = {**splits.evals, **({VALIDATION: (splits.val_x, splits.val_y)} if len(splits.val_y) else {})}
    preds = {name: res.predict(x) for name, (x, _) in sets.items()}  # (N, n) per set: every trial at once
    return [with_mean_ood({name: score(preds[name][i], y, splits) for name, (_, y) in sets.items()})
            for i in range(len(probes))]


def fit_probe(splits: EmbeddingSplits, config: ProbeConfig, device=None, augment: Augmenter | None = None,
              draws: int = 1) -> Metrics:
    """Step 2 of one run: :func:`probe_trials` with one trial (a 2-d augmenter, such as a
    :class:`lare.core.box.BoxSampler` on (n, d) corners, is that trial's)."""
    return probe_trials(splits, [config], device, augment, draws)[0]


def run_linear_probe(splits: EmbeddingSplits, config: ProbeConfig, device=None) -> Metrics:
    """The "fine-tuning" baseline: a linear probe on the original embeddings only."""
    return fit_probe(splits, config, device)


def run_lads(splits: EmbeddingSplits, config: LADSMethodConfig, device=None) -> Metrics:
    """LADS: train f_aug towards the target domain, then probe on originals + one augmentation each."""
    source, target = (splits.extra_text[k] for k in DOMAIN_PROMPTS)
    aug = train_lads(splits.train_x, splits.train_y, source, target, config.lads, val_x=splits.val_x,
                     val_y=splits.val_y, device=device, progress=False)
    return fit_probe(splits, config.probe, device, FixedAugment(aug.augment(splits.train_x), splits.train_y))


def lare_boxes(splits: EmbeddingSplits, config: LAREConfig, device=None) -> BoxTrainResult:
    """Step 1: the unit's trained f_Box when it was trained with this config, else train it now."""
    if splits.boxes is not None and splits.boxes.config == config.box:
        return splits.boxes
    return train_box(splits.train_x, splits.train_y, splits.class_text, config.box, val_x=splits.val_x,
                     val_y=splits.val_y, device=device, progress=False)


def box_log_width(lower: torch.Tensor, upper: torch.Tensor) -> float:
    """Mean box size: the log of the box width per dimension (log-volume / d), averaged over items."""
    return float(torch.log((upper - lower).clamp_min(1e-12)).mean())


def run_lare(splits: EmbeddingSplits, config: LAREConfig, device=None) -> Metrics:
    """Step 1 (f_Box, see :func:`lare_boxes`) and step 2 (probe on originals + box samples)."""
    lower, upper = lare_boxes(splits, config, device).boxes(splits.train_x)
    s = config.sampling
    sampler = BoxSampler(lower, upper, splits.train_y, k=s.k, fresh=s.fresh, renormalize=s.renormalize)
    return {**fit_probe(splits, config.probe, device, sampler, s.solver_draws), "boxes": {"log_width": box_log_width(lower, upper)}}


def run_reference_probe(splits: EmbeddingSplits, config: ReferenceConfig, device=None) -> Metrics:
    """The reference linear probe: logistic regression solved with L-BFGS, its L2 chosen on validation."""
    res = reference_probe(splits.train_x, splits.train_y, splits.val_x, splits.val_y, splits.num_classes,
                          l2_grid=config.l2_grid, select=config.select, max_iter=config.max_iter, tol=config.tol,
                          device=device)
    return evaluate(res.predict, splits)


# ---------------------------------------------------------------- trials as one batched model
def _groups(configs: list, key) -> dict:
    out: dict = {}
    for i, c in enumerate(configs):
        out.setdefault(key(c), []).append(i)
    return out


def _by_group(configs: list, key, run) -> list:
    """``run(indices)`` for each group of configs of equal ``key``, the results in the configs' order."""
    out: list = [None] * len(configs)
    for idx in _groups(configs, key).values():
        for i, m in zip(idx, run(idx), strict=True):
            out[i] = m
    return out


def trials_linear_probe(splits: EmbeddingSplits, configs: list[ProbeConfig], device=None) -> list[Metrics]:
    return _by_group(configs, shared_settings, lambda idx: probe_trials(splits, [configs[i] for i in idx], device))


def trials_lads(splits: EmbeddingSplits, configs: list[LADSMethodConfig], device=None) -> list[Metrics]:
    source, target = (splits.extra_text[k] for k in DOMAIN_PROMPTS)

    def run(idx: list[int]) -> list[Metrics]:
        augs = train_lads_trials(splits.train_x, splits.train_y, source, target, [configs[i].lads for i in idx],
                                 val_x=splits.val_x, val_y=splits.val_y, device=device)
        extra = FixedAugment(torch.stack([a.augment(splits.train_x) for a in augs]), splits.train_y.expand(len(idx), -1))
        return probe_trials(splits, [configs[i].probe for i in idx], device, extra)

    return _by_group(configs, lambda c: (dataclasses.replace(c.lads, domain_weight=0.0), shared_settings(c.probe)), run)


def trials_lare(splits: EmbeddingSplits, configs: list[LAREConfig], device=None) -> list[Metrics]:
    # notebook 02's f_Box serves the trial that asks for its settings; the others train together
    boxes: dict = {splits.boxes.config: splits.boxes} if splits.boxes is not None else {}
    for idx in _groups(configs, lambda c: dataclasses.replace(c.box, alpha=0.0, scale=1.0)).values():
        distinct = list(dict.fromkeys(configs[i].box for i in idx if configs[i].box not in boxes))
        if distinct:
            trained = train_box_trials(splits.train_x, splits.train_y, splits.class_text, distinct,
                                       val_x=splits.val_x, val_y=splits.val_y, device=device)
            boxes.update(zip(distinct, trained, strict=True))

    corners = {box: boxes[box].boxes(splits.train_x) for box in dict.fromkeys(c.box for c in configs)}

    def sampler(group: list[LAREConfig]) -> BoxSampler:
        s = group[0].sampling
        return BoxSampler(torch.stack([corners[c.box][0] for c in group]), torch.stack([corners[c.box][1] for c in group]),
                          splits.train_y, k=s.k, fresh=s.fresh, renormalize=s.renormalize)

    return sampled_trials(splits, configs, device, sampler, lambda c: {"boxes": {"log_width": box_log_width(*corners[c.box])}})


def sampled_trials(splits: EmbeddingSplits, configs: list, device, sampler: Callable[[list], Augmenter],
                   extra: Callable[[Any], dict] = lambda c: {}) -> list[Metrics]:
    """Step 2 of LARE and of any method that samples around each training embedding (configs with
    ``sampling`` and ``probe``): the trials that share their sampling settings and the probe's shared
    settings train as one batched probe on the originals plus ``sampler(their configs)``;
    ``extra(config)`` adds what a trial reports beside its metrics."""
    def group(c) -> tuple:  # trials that can share one sampler and one batched probe
        s = c.sampling
        return s.k, s.fresh, s.renormalize, s.solver_draws, shared_settings(c.probe)

    def run(idx: list[int]) -> list[Metrics]:
        chosen = [configs[i] for i in idx]
        trials = probe_trials(splits, [c.probe for c in chosen], device, sampler(chosen), chosen[0].sampling.solver_draws)
        return [{**m, **extra(c)} for m, c in zip(trials, chosen, strict=True)]

    return _by_group(configs, group, run)


# ---------------------------------------------------------------- the entries
# The paper's encoders, as its tables name them: the display names of the keys clip and coca (unless
# their entry gives another; any other key is shown as itself unless its entry gives a name).
PAPER_ENCODERS = {"clip": "CLIP", "coca": "CoCa"}


@dataclass(frozen=True)
class TableRow:
    """One Table 1 row of a method on one encoder, with the paper's (mean, std) per domain if it has one."""

    encoder: str
    label: str
    paper: tuple[tuple[float, float | None], tuple[float, float | None]] | None = None

    @property
    def addition(self) -> bool:
        """Rows the paper does not have (they separate the encoder from the method)."""
        return self.paper is None


@dataclass(frozen=True)
class Method:
    name: str                              # the results' ``method`` column
    run: Callable[[EmbeddingSplits, Any, Any], Metrics]
    sections: tuple[str, ...] = ()         # the run parameters' config sections it reads, in order
    config: Callable[..., Any] | None = None  # sections -> the method's config (None: no training)
    needs: frozenset[str] = frozenset()    # class_text (always there), domain_prompts, boxes, full_training_set
    encoders_param: str = ""               # the run parameter listing its encoders
    label: str = "{encoder} ({name})"      # its Table 1 row on any encoder: {encoder} is the encoder's display name
    rows: tuple[TableRow, ...] = ()        # rows of its own on some encoders: the paper's, with the paper's names
    space: Mapping[str, Space] = field(default_factory=dict)  # what a search draws: setting -> space (see space.py)
    run_trials: Callable[[EmbeddingSplits, list, Any], list[Metrics]] | None = None  # batched trials of one unit

    def make_config(self, sections: dict[str, Any], seed: int):
        """The method's config from the run's sections, with ``seed`` in every section that has one."""
        if self.config is None:
            return None
        seeded = {k: dataclasses.replace(sections[k], seed=seed) if hasattr(sections[k], "seed") else sections[k]
                  for k in self.sections}
        return self.config(**seeded)

    def applies(self, splits_text: dict[str, torch.Tensor], shots: int) -> bool:
        """Whether the method can run on a unit (its domain prompts exist, its shot setting is allowed)."""
        if "domain_prompts" in self.needs and not set(DOMAIN_PROMPTS) <= set(splits_text):
            return False
        return not ("full_training_set" in self.needs and shots != 0)

    def row(self, encoder: str, encoder_name: str) -> TableRow:
        """Its Table 1 row on ``encoder`` (shown as ``encoder_name``): its own row there if it has one
        and the encoder goes by the paper's name (the paper's rows keep the paper's names and
        numbers), else one named by :attr:`label`."""
        own = [r for r in self.rows if r.encoder == encoder and PAPER_ENCODERS.get(encoder) == encoder_name]
        return own[0] if own else TableRow(encoder, self.label.format(encoder=encoder_name, name=self.name))


# The built-in methods; lare.compare.registry adds the methods of their own modules after them.
BUILTIN: tuple[Method, ...] = (
    Method("zero-shot", run_zero_shot, needs=frozenset({"class_text"}), encoders_param="baseline_encoders",
           label="{encoder} (zero-shot)",
           rows=(TableRow("clip", "CLIP (zero-shot)", ((63.27, None), (54.71, None))),
                 TableRow("coca", "CoCa (zero-shot)", ((73.63, None), (65.05, None))))),
    Method("linear-probe", run_linear_probe, sections=("probe",), config=lambda probe: probe,
           encoders_param="baseline_encoders", run_trials=trials_linear_probe, label="{encoder} (linear probe)",
           rows=(TableRow("clip", "CLIP (fine-tuning)", ((86.39, 0.03), (64.40, 0.16))),
                 TableRow("coca", "CoCa (fine-tuning)", ((86.98, 0.16), (71.56, 0.12)))),
           space=PROBE),
    Method("lads", run_lads, sections=("lads", "probe"), config=LADSMethodConfig,
           needs=frozenset({"class_text", "domain_prompts", "full_training_set"}), encoders_param="lads_encoders",
           run_trials=trials_lads, label="LADS on {encoder}",
           rows=(TableRow("clip", "LADS", ((86.31, 0.15), (65.90, 0.15))),
                 TableRow("coca", "LADS on CoCa features (addition)")),
           space={**PROBE, "lads.domain_weight": Space("uniform", 0.1, 0.9)}),
    Method("lare", run_lare, sections=("box", "sampling", "probe"), config=LAREConfig,
           needs=frozenset({"class_text", "boxes"}), encoders_param="lare_encoders", run_trials=trials_lare,
           label="LARE on {encoder}",
           rows=(TableRow("coca", "LARE", ((87.01, 0.04), (72.98, 0.16))),
                 TableRow("clip", "LARE on CLIP features (addition)")),
           # box.scale: the class-consistency temperature
           space={**PROBE, "box.alpha": Space("uniform", 0.1, 0.9), **SAMPLES_PER_ITEM,
                  "box.scale": Space("log", 1.0, 100.0)}),  # around trial 0's 1
    Method("linear-probe-lbfgs", run_reference_probe, sections=("reference",), config=lambda reference: reference,
           encoders_param="baseline_encoders", label="{encoder} (linear probe, L-BFGS)"),
)

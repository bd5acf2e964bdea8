"""The f_Box ablations: does LARE's learned f_Box matter, or would any noise around each embedding do as well?

Two methods, each LARE's step 2 with the boxes of f_Box replaced by something that learns nothing:

- ``gaussian-noise``: each training embedding's samples drawn from an isotropic Gaussian around it,
  ``x + (scale / sqrt(d)) eps`` with ``eps ~ N(0, I_d)``: ``gaussian_noise.scale`` is the noise's
  root-mean-square length, the embeddings' being 1, so its space does not depend on d;
- ``fixed-boxes``: each training embedding's samples drawn uniformly from a box of one width around
  it, the cube ``x +- width / (2 sqrt(d))`` (``fixed_boxes.width``: the cube's edge times sqrt(d); a
  sample's offset then has root-mean-square length ``width / sqrt(12)``), by LARE's own sampler.

Everything else is LARE's: ``sampling.k`` samples per item, fresh every epoch (``sampling.fresh``),
re-normalised onto the unit sphere (``sampling.renormalize``), the ``lbfgs`` solver's draws
(``sampling.draws``); the probe is every method's (:func:`lare.compare.methods.probe_trials`), and
each runs on LARE's encoders (``lare_encoders``). Under ``tuned`` each gets the same trials as every
method: trial 0 the defaults, the others drawing the scale or width, the probe's lr and l2, and k
from LARE's own space (so trial t of each uses LARE's trial-t k and probe settings: paired).

A method of its own module, as docs/library.md ("Adding a method") describes: its config, its
``run`` (and batched ``run_trials``), its search space and its Table 1 row are here; the registry
(:mod:`lare.compare.registry`) adds each with one line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from lare.compare.methods import EmbeddingSplits, Method, Metrics, sampled_trials
from lare.compare.space import PROBE, SAMPLES_PER_ITEM, Space
from lare.core.box import BoxSampler, ItemSampler, SamplingConfig
from lare.core.probe import ProbeConfig


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GaussianNoiseConfig:
    """scale: the root-mean-square length of the noise added to each (unit-length) training embedding,
    per dimension a standard deviation of ``scale / sqrt(d)``. Default 1.0 (trial 0 of the search):
    a re-normalised sample then keeps a cosine of about 0.7 with its embedding; the search draws it
    over three decades, from samples all but on the embedding (0.03: cosine 0.9995) to samples all
    but unrelated to it (30: cosine 0.03), so that whatever the size of LARE's boxes, noise of that
    size is among the candidates."""

    scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "scale", _positive("gaussian_noise.scale", self.scale))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FixedBoxesConfig:
    """width: the edge of the box around each training embedding, in every dimension, times sqrt(d)
    (the box is ``x +- width / (2 sqrt(d))``; a sample's offset has root-mean-square length
    ``width / sqrt(12)``). Default 3.0 (trial 0 of the search): offsets of about the Gaussian
    default's length (0.87 against 1.0); the search draws it over the Gaussian's range (0.1 to 100)."""

    width: float = 3.0

    def __post_init__(self):
        object.__setattr__(self, "width", _positive("fixed_boxes.width", self.width))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sampling_method_config(name: str, section: str, settings: type, doc: str) -> type:
    """A method config that holds its own ``section`` (of class ``settings``), LARE's ``sampling`` and the
    probe: what an augmentation that replaces f_Box's boxes needs (the fields its ``Method.sections`` name)."""
    cls = dataclasses.make_dataclass(name, [(section, settings, field(default_factory=settings)),
                                            ("sampling", SamplingConfig, field(default_factory=SamplingConfig)),
                                            ("probe", ProbeConfig, field(default_factory=ProbeConfig))],
                                     frozen=True, namespace={"__doc__": doc})
    cls.__module__ = __name__
    return cls


GaussianNoiseMethodConfig = sampling_method_config(
    "GaussianNoiseMethodConfig", "gaussian_noise", GaussianNoiseConfig,
    "The Gaussian-noise ablation: its noise (``gaussian_noise``), LARE's ``sampling`` and the probe.")
FixedBoxesMethodConfig = sampling_method_config(
    "FixedBoxesMethodConfig", "fixed_boxes", FixedBoxesConfig,
    "The fixed-boxes ablation: its box width (``fixed_boxes``), LARE's ``sampling`` and the probe.")


class GaussianSampler(ItemSampler):
    """The Gaussian-noise ablation's samples: per trial ``k`` points per item, ``x + (scale_i / sqrt(d)) eps``
    with ``eps ~ N(0, I)``, the call, ``fresh`` and ``renormalize`` of LARE's sampler
    (:class:`lare.core.box.ItemSampler`).

    x: (n, d) training embeddings, labels: (n,), scales: (N,) each trial's root-mean-square noise length.
    """

    kind = "noise"
    tensors = ("x", "std")

    def __init__(self, x: torch.Tensor, labels: torch.Tensor, scales: torch.Tensor, *, k: int = 1, fresh: bool = True,
                 renormalize: bool = True):
        if x.dim() != 2 or labels.dim() != 1 or len(labels) != len(x):
            raise ValueError(f"x must be (n, d) and labels (n,), got {tuple(x.shape)} and {tuple(labels.shape)}")
        if scales.dim() != 1 or not len(scales) or not bool((scales > 0).all()):
            raise ValueError(f"scales must be a non-empty (N,) tensor of numbers > 0, got {scales!r}")
        super().__init__(labels, len(scales), x.shape[1], k=k, fresh=fresh, renormalize=renormalize)
        self.x, self.std = x, scales.to(x.dtype) / math.sqrt(x.shape[1])  # std per dimension

    def noise(self, g: torch.Generator) -> torch.Tensor:
        return torch.randn((len(self.x), self.k, self.dim), generator=g, device=self.x.device, dtype=self.x.dtype)

    def place(self, noise: torch.Tensor) -> torch.Tensor:
        return self.x.unsqueeze(1) + noise * self.std.view(-1, 1, 1, 1)


def fixed_box_sampler(x: torch.Tensor, labels: torch.Tensor, widths: torch.Tensor, sampling: SamplingConfig) -> BoxSampler:
    """LARE's sampler on boxes of one width per trial around each embedding: trial i's box is
    ``x +- widths[i] / (2 sqrt(d))``."""
    half = (widths.to(x.dtype) / (2 * math.sqrt(x.shape[1]))).view(-1, 1, 1)
    return BoxSampler(x.unsqueeze(0) - half, x.unsqueeze(0) + half, labels, k=sampling.k, fresh=sampling.fresh,
                      renormalize=sampling.renormalize)


def trials_gaussian_noise(splits: EmbeddingSplits, configs: list[GaussianNoiseMethodConfig], device=None) -> list[Metrics]:
    def sampler(group: list[GaussianNoiseMethodConfig]) -> GaussianSampler:
        s = group[0].sampling
        scales = torch.tensor([c.gaussian_noise.scale for c in group], dtype=splits.train_x.dtype)
        return GaussianSampler(splits.train_x, splits.train_y, scales, k=s.k, fresh=s.fresh, renormalize=s.renormalize)

    return sampled_trials(splits, configs, device, sampler)


def run_gaussian_noise(splits: EmbeddingSplits, config: GaussianNoiseMethodConfig, device=None) -> Metrics:
    """The probe on the originals plus Gaussian samples around each of them (see the module's doc)."""
    return trials_gaussian_noise(splits, [config], device)[0]


def trials_fixed_boxes(splits: EmbeddingSplits, configs: list[FixedBoxesMethodConfig], device=None) -> list[Metrics]:
    def sampler(group: list[FixedBoxesMethodConfig]) -> BoxSampler:
        widths = torch.tensor([c.fixed_boxes.width for c in group], dtype=splits.train_x.dtype)
        return fixed_box_sampler(splits.train_x, splits.train_y, widths, group[0].sampling)

    # the box's mean log edge per dimension, as LARE's trials report theirs (notebook 07)
    d = splits.train_x.shape[1]
    return sampled_trials(splits, configs, device, sampler,
                            lambda c: {"boxes": {"log_width": math.log(c.fixed_boxes.width / math.sqrt(d))}})


def run_fixed_boxes(splits: EmbeddingSplits, config: FixedBoxesMethodConfig, device=None) -> Metrics:
    """The probe on the originals plus samples from a box of one width around each of them."""
    return trials_fixed_boxes(splits, [config], device)[0]


# LARE's sampling and probe spaces, so trial t of each ablation draws LARE's trial-t k, lr and l2.
GAUSSIAN_NOISE = Method(
    "gaussian-noise", run_gaussian_noise, sections=("gaussian_noise", "sampling", "probe"), config=GaussianNoiseMethodConfig,
    needs=frozenset({"class_text"}), encoders_param="lare_encoders", run_trials=trials_gaussian_noise,
    label="Gaussian noise on {encoder} (no f_Box)",
    space={**PROBE, "gaussian_noise.scale": Space("log", 0.03, 30.0), **SAMPLES_PER_ITEM})
FIXED_BOXES = Method(
    "fixed-boxes", run_fixed_boxes, sections=("fixed_boxes", "sampling", "probe"), config=FixedBoxesMethodConfig,
    needs=frozenset({"class_text"}), encoders_param="lare_encoders", run_trials=trials_fixed_boxes,
    label="Fixed boxes on {encoder} (no f_Box)",
    space={**PROBE, "fixed_boxes.width": Space("log", 0.1, 100.0), **SAMPLES_PER_ITEM})

"""A built-in synthetic embedding dataset with a controlled domain shift (the ``demo`` profile).

It imitates what a VLM gives for a photo domain and an unseen painting domain, so every method
runs offline and the comparisons mean something. All of it is SYNTHETIC: numbers obtained on it
say nothing about real images.

Generative model (all vectors in R^d, ``n(.)`` is L2 normalisation):

- class prototypes ``mu_c``: random unit vectors pulled towards a few shared "super-class"
  centres (so classes are confusable, as bird species are);
- image of class c in domain D: ``x = n(mu_c + s_D * v_D + s_D' * r_{c,D} + sigma * eps + g_img)``:
  a shared domain direction ``v_D``, a class-specific domain distortion ``r_{c,D}`` (paintings of
  each species differ in their own way), isotropic noise, and the image side of the modality gap;
- class text ``T(c) = n(mu_c + g_txt + tau * eps_c)``;
- domain descriptions "a photo / painting of a {c}": ``n(mu_c + g_txt + b * v_D_text)``, with
  ``v_D_text`` correlated with ``v_D`` (the text describes the domain, imperfectly), for LADS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lare.utils import make_generator


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and noise levels; ``noise`` stands for encoder quality (CoCa: lower than CLIP)."""

    num_classes: int = 50
    dim: int = 128
    n_train_per_class: int = 30
    n_test_per_class: int = 30
    n_ood_per_class: int = 15
    superclasses: int = 10
    superclass_pull: float = 1.2
    noise: float = 0.6
    domain_shift: float = 0.7
    class_domain_shift: float = 0.6
    modality_gap: float = 0.8
    text_noise: float = 0.35
    text_domain: float = 0.5
    text_domain_agreement: float = 0.6


def _unit(g: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def make_synthetic(spec: SyntheticSpec | None = None, *, seed: int = 0,
                   world_seed: int = 1234) -> dict[str, torch.Tensor | list[str]]:
    """Generate one synthetic "encoder's" view of a photo/painting dataset.

    ``world_seed`` fixes the world (prototypes, domain directions), shared by every encoder;
    ``seed`` fixes this encoder's noise and the images drawn. Returns tensors:
    ``train_x/train_y``, ``test_x/test_y`` (photo domain), ``ood_x/ood_y`` (painting domain),
    ``class_text`` (C, d), ``photo_text`` and ``painting_text`` (C, d) domain descriptions,
    and ``class_names``.
    """
    s = spec or SyntheticSpec()
    C, d = s.num_classes, s.dim
    w = make_generator(world_seed)
    centres = _unit(w, s.superclasses, d)
    sup = torch.arange(C) % s.superclasses
    mu = F.normalize(_unit(w, C, d) + s.superclass_pull * centres[sup], dim=-1)
    v = {"photo": _unit(w, d), "painting": _unit(w, d)}
    r = {"photo": _unit(w, C, d), "painting": _unit(w, C, d)}
    g_img, g_txt = _unit(w, d), _unit(w, d)
    v_text = {k: F.normalize(s.text_domain_agreement * vk + (1 - s.text_domain_agreement) * _unit(w, d), dim=-1)
              for k, vk in v.items()}

    g = make_generator(seed)

    def images(domain: str, per_class: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(C).repeat_interleave(per_class)
        shift = s.domain_shift * scale * v[domain] + s.class_domain_shift * scale * r[domain][y]
        x = mu[y] + shift + s.noise * torch.randn(len(y), d, generator=g) / d ** 0.5 * 4 + s.modality_gap * g_img
        return F.normalize(x, dim=-1), y

    # Photos carry a weak photo-style component; paintings the full painting shift.
    train_x, train_y = images("photo", s.n_train_per_class, 0.3)
    test_x, test_y = images("photo", s.n_test_per_class, 0.3)
    ood_x, ood_y = images("painting", s.n_ood_per_class, 1.0)
    text = lambda extra: F.normalize(mu + s.modality_gap * g_txt + extra, dim=-1)  # noqa: E731
    class_text = text(s.text_noise * torch.randn(C, d, generator=g) / d ** 0.5 * 4)
    return {
        "train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
        "ood_x": ood_x, "ood_y": ood_y, "class_text": class_text,
        "photo_text": text(s.text_domain * v_text["photo"]),
        "painting_text": text(s.text_domain * v_text["painting"]),
        "class_names": [f"class {c:03d}" for c in range(C)],
    }

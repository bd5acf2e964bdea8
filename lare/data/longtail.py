"""CIFAR-100-LT: the long-tailed training subsets of Cao et al. (LDAM-DRW, NeurIPS 2019), and the
head / medium / tail accuracies they are reported with.

The exponential profile: class ``i`` (of ``C``, in label order) keeps
``int(n_max * (1 / IF) ** (i / (C - 1)))`` training images, so the first class keeps ``n_max`` and
the last ``n_max / IF``. For CIFAR-100 (``n_max`` 500) and imbalance factors 100, 50 and 10 that is
10,847, 12,608 and 19,573 images. The test set stays balanced. Which images a class keeps is drawn
per seed with its own generator (the original code draws them once with NumPy's global RNG), and the
ids are saved like every other split (:mod:`lare.data.splits`, :mod:`lare.pipeline.runfolder`).

Groups, by a class's number of training images: head (many-shot) over 100, medium 20 to 100, tail
(few-shot) under 20, as in Liu et al. (OLTR, CVPR 2019) and the long-tail papers after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lare.utils import make_generator

IMBALANCE_FACTORS = (100, 50, 10)  # the three CIFAR-100-LT settings of the arXiv version
GROUPS = ("head", "medium", "tail")
HEAD_ABOVE, TAIL_BELOW = 100, 20


def lt_counts(num_classes: int = 100, n_max: int = 500, imbalance: float = 100) -> list[int]:
    """Training images per class under the exponential profile (class 0 keeps ``n_max``)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not imbalance >= 1:
        raise ValueError(f"the imbalance factor (largest class / smallest class) must be >= 1, got {imbalance!r}")
    if not isinstance(n_max, int) or n_max < 1:
        raise ValueError(f"n_max must be a positive integer, got {n_max!r}")
    return [int(n_max * (1.0 / imbalance) ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def lt_subset(ids: Sequence[str], labels: Sequence[int], imbalance: float, seed: int, *,
              num_classes: int | None = None, n_max: int | None = None) -> list[str]:
    """The ids of a long-tailed training subset: class ``c`` keeps ``lt_counts(...)[c]`` of its
    items, drawn without replacement by a generator seeded with ``seed`` (sorted ids, to save).

    ``n_max``: images of the largest class (default: the smallest class size of the pool, 500 for
    CIFAR-100), so every class can give what the profile asks."""
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    by_class: dict[int, list[int]] = {}
    for pos, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(pos)
    num_classes = num_classes or (max(by_class) + 1 if by_class else 0)
    absent = [c for c in range(num_classes) if c not in by_class]
    if absent:
        raise ValueError(f"the training pool has no items of classes {absent[:5]}; a long-tailed subset needs every class")
    n_max = n_max or min(len(p) for p in by_class.values())
    counts = lt_counts(num_classes, n_max, imbalance)
    short = [(c, len(by_class[c]), k) for c, k in enumerate(counts) if len(by_class[c]) < k]
    if short:
        c, have, want = short[0]
        raise ValueError(f"class {c} has {have} items but the profile asks for {want} (n_max {n_max})")
    g = make_generator(seed)
    out = []
    for c, k in enumerate(counts):
        pos = by_class[c]
        out += [ids[pos[i]] for i in torch.randperm(len(pos), generator=g)[:k].tolist()]
    return sorted(out)


def class_groups(train_counts: Sequence[int]) -> list[str]:
    """``head`` / ``medium`` / ``tail`` per class from its number of training images."""
    return ["head" if n > HEAD_ABOVE else "tail" if n < TAIL_BELOW else "medium" for n in train_counts]


def group_accuracy(pred: torch.Tensor, labels: torch.Tensor, groups: Sequence[str]) -> dict[str, float]:
    """Top-1 accuracy (in %) over the test items of the head, medium and tail classes (``groups``: one
    name per class, :func:`class_groups`); a group with no test items is left out."""
    pred, labels = pred.cpu(), labels.cpu()
    if len(pred) != len(labels):
        raise ValueError(f"{len(pred)} predictions but {len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(groups):
        raise ValueError(f"labels reach {int(labels.max())} but groups has {len(groups)} classes")
    correct = (pred == labels).double()
    of_item = [groups[int(y)] for y in labels]
    out = {}
    for name in GROUPS:
        mask = torch.tensor([g == name for g in of_item], dtype=torch.bool)
        if mask.any():
            out[name] = 100.0 * float(correct[mask].mean())
    return out

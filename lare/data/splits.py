"""Seeded, saved, disjoint splits: validation carved from training, k-shot subsets.

Every draw uses its own ``torch.Generator`` seeded explicitly (never the global RNG), works on
ids (strings), and is saved as JSON id lists next to the results (:mod:`lare.pipeline.runfolder`), so anyone can check it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lare.utils import make_generator


def _by_class(labels: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for pos, y in enumerate(labels):
        out.setdefault(int(y), []).append(pos)
    return out


def n_validation(n: int, fraction: float) -> int:
    """Items a class of ``n`` gives to validation: ``round(fraction * n)``, at least one when it
    has two or more, never all of them."""
    return min(n - 1, max(1 if n > 1 else 0, round(fraction * n)))


def carve_validation(ids: Sequence[str], labels: Sequence[int], fraction: float, seed: int
                     ) -> tuple[list[str], list[str]]:
    """Stratified split of a training pool into (train ids, validation ids).

    Each class gives ``round(fraction * n_c)`` items to validation, at least one when it has two
    or more, never all of them.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must lie in (0, 1), got {fraction}")
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    g = make_generator(seed)
    train, val = [], []
    for _c, pos in sorted(_by_class(labels).items()):
        perm = [pos[i] for i in torch.randperm(len(pos), generator=g).tolist()]
        n_val = n_validation(len(pos), fraction)
        val += [ids[p] for p in perm[:n_val]]
        train += [ids[p] for p in perm[n_val:]]
    return sorted(train), sorted(val)


def kshot_subset(ids: Sequence[str], labels: Sequence[int], shots: int, seed: int) -> list[str]:
    """``shots`` ids per class drawn without replacement; ``shots <= 0`` means the whole pool."""
    if shots <= 0:
        return sorted(ids)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    groups = _by_class(labels)
    if not groups:
        raise ValueError("cannot draw a k-shot subset from an empty training pool")
    smallest = min(len(p) for p in groups.values())
    if shots > smallest:
        raise ValueError(f"{shots} shots per class asked, but the smallest class has only {smallest} items")
    g = make_generator(seed)
    out = []
    for _c, pos in sorted(groups.items()):
        pick = torch.randperm(len(pos), generator=g)[:shots].tolist()
        out += [ids[pos[i]] for i in pick]
    return sorted(out)


def check_disjoint(**named: Sequence[str]) -> None:
    """Raise if any two of the named id lists share an id (e.g. validation leaking into test)."""
    names = list(named)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = set(named[a]) & set(named[b])
            if common:
                raise ValueError(f"splits {a!r} and {b!r} share {len(common)} ids, e.g. {sorted(common)[:3]}")

"""The catalog of benchmark datasets by name: what each needs under ``data_root`` and how its items are read.

- ``cub``: train on CUB-200-2011's train photos; test on its test photos (in domain) and on
  CUB-200-Paintings (out of domain).
- ``cifar100``: CIFAR-100 train / test.
- ``domainnet``: DomainNet sketch, SENTRY's 40 classes; test on sketch (in domain) and on clipart,
  painting and real (each, and their mean as out of domain).
- ``cifar100_lt100``, ``cifar100_lt50``, ``cifar100_lt10``: CIFAR-100-LT with imbalance 100 / 50 / 10,
  the subset drawn per seed; test on the balanced CIFAR-100 test set, with head / medium / tail too.

Evaluation splits are ``test`` (in domain), ``ood`` (out of domain) and, for several target
domains, ``ood_<domain>`` (one each; :func:`lare.compare.methods.evaluate` adds their mean as out of domain).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lare.data.domainnet import TARGET_DOMAINS, check_domainnet, load_domainnet
from lare.data.longtail import IMBALANCE_FACTORS
from lare.data.sources import CIFAR100, CUB, CUB_PAINTINGS, SOURCES, DatasetMissingError, cifar100_items, cub_items, painting_items


@dataclass(frozen=True)
class DatasetEntry:
    """One benchmark dataset: the sources it needs (checked by :meth:`problems`), a reader of its
    items, and for CIFAR-100-LT the imbalance factor of its training subsets (0: none)."""

    name: str
    sources: tuple[str, ...]
    read: Callable[[Path, bool], tuple[dict, list[str], Callable | None]]
    imbalance: int = 0
    check: Callable[[Path, bool], list[str]] | None = None  # instead of the sources' own checks
    images_of: str = ""  # the dataset whose images (and so cached embeddings) it shares ("": its own)

    def problems(self, data_root: str | Path, *, allow_download: bool) -> list[str]:
        if self.check is not None:
            return self.check(Path(data_root), allow_download)
        return [p for name in self.sources for p in SOURCES[name].problems(data_root, allow_download=allow_download)]


def _read_cub(root: Path, allow_download: bool):
    items, names = cub_items(CUB.prepare(root, allow_download=allow_download))
    items["ood"], _ = painting_items(CUB_PAINTINGS.prepare(root, allow_download=False), names)
    return items, names, None


def _read_cifar100(root: Path, allow_download: bool):
    return cifar100_items(CIFAR100.prepare(root, allow_download=allow_download))


def _read_domainnet(root: Path, allow_download: bool):
    items, names = load_domainnet(root, allow_download=allow_download)
    ood = items.pop("ood")
    for d in TARGET_DOMAINS:  # one evaluation split per target domain
        items[f"ood_{d}"] = [it for it in ood if it.domain == d]
    return items, names, None


DATASETS: dict[str, DatasetEntry] = {p.name: p for p in (
    DatasetEntry("cub", ("cub", "cub_paintings"), _read_cub),
    DatasetEntry("cifar100", ("cifar100",), _read_cifar100),
    DatasetEntry("domainnet", (), _read_domainnet, check=lambda root, dl: check_domainnet(root, allow_download=dl)),
    *(DatasetEntry(f"cifar100_lt{f}", ("cifar100",), _read_cifar100, imbalance=f, images_of="cifar100")
      for f in IMBALANCE_FACTORS),
)}


def cache_name(dataset: str) -> str:
    """The dataset name the embedding cache files its images under: CIFAR-100-LT's datasets embed
    CIFAR-100's images once, whatever subsets they then draw."""
    return (DATASETS[dataset].images_of or dataset) if dataset in DATASETS else dataset


def imbalance_of(dataset: str) -> int:
    """The CIFAR-100-LT imbalance factor of a dataset's training subsets (0: the whole pool)."""
    return DATASETS[dataset].imbalance if dataset in DATASETS else 0


def check_sources(dataset: str, data_root: str | Path, *, allow_download: bool) -> list[str]:
    """Every problem with the sources a protocol dataset needs (empty list: ready)."""
    return DATASETS[dataset].problems(data_root, allow_download=allow_download) if dataset in DATASETS else []


def load_dataset(dataset: str, data_root: str | Path, *, allow_download: bool = True):
    """``(items by split, class names, loader or None)`` of a protocol dataset (see the table above)."""
    if dataset not in DATASETS:
        raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    root = Path(data_root)
    problems = check_sources(dataset, root, allow_download=allow_download)
    if problems:
        raise DatasetMissingError("\n\n".join(problems))
    return DATASETS[dataset].read(root, allow_download)

"""Deep checks of image datasets on disk: open what notebook 01 will read, before any work.

The preflight first checks that a dataset is there (:func:`lare.data.catalog.check_sources`); these
checks then read it the way notebook 01 will: CIFAR-100's pickles (keys, dtypes, shapes, labels),
every image CUB-200-2011's metadata lists and the paintings' class folders, every image DomainNet's
lists name, an own image folder's
splits and classes. Each returns problems that name the file and say what to do; none raises.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from lare.data.datasets import Item, imagefolder_items
from lare.data.domainnet import DOMAINS, LIST_FOLDER, SUBDIR, domainnet_items
from lare.data.sources import CIFAR100, CUB, CUB_PAINTINGS, DatasetIntegrityError, cub_items, painting_items

CIFAR_KEYS = ("data", "fine_labels")  # what notebook 01 reads of each split's pickle
CIFAR_ROW = 3 * 32 * 32  # one 32x32 RGB image, channel-planar


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


def _unpickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # the official format is a pickle, as notebook 01 reads it


def cifar100_problems(folder: Path) -> list[str]:
    """The CIFAR-100 pickles as notebook 01 reads them: ``meta`` (``fine_label_names``), ``train``
    and ``test`` (``data`` (N, 3072) uint8, ``fine_labels`` one class index per row)."""
    again = f"delete {folder} and extract {CIFAR100.archive} again (or download it: {CIFAR100.url})"
    problems, names = [], None
    for split in ("meta", "train", "test"):
        path = folder / split
        try:
            d = _unpickle(path)
        except Exception as err:  # truncated (EOFError), another file (UnpicklingError), a folder (OSError), ...
            problems.append(f"CIFAR-100: {path} cannot be read as a CIFAR-100 pickle ({type(err).__name__}: {err}): {again}")
            continue
        if not isinstance(d, dict):
            problems.append(f"CIFAR-100: {path} holds {_describe(d)}, not the dictionary of the official release: {again}")
            continue
        if split == "meta":
            names = d.get("fine_label_names")
            if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
                problems.append(f"CIFAR-100: {path} has no list of class names 'fine_label_names' (keys: "
                                f"{sorted(map(str, d))[:8]}): {again}")
                names = None
            continue
        missing = [k for k in CIFAR_KEYS if k not in d]
        if missing:
            problems.append(f"CIFAR-100: {path} lacks {missing} (keys: {sorted(map(str, d))[:8]}): {again}")
            continue
        data, labels = d["data"], d["fine_labels"]
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == CIFAR_ROW
                and len(data)):
            problems.append(f"CIFAR-100: {path}: 'data' must be a (N, {CIFAR_ROW}) uint8 array (32x32 RGB images), got "
                            f"{_describe(data)}: {again}")
            continue
        try:
            y = np.asarray(labels)
            bad_type = y.ndim != 1 or y.dtype.kind not in "iu"
        except Exception:  # ragged or odd objects
            bad_type = True
        if bad_type or len(y) != len(data):
            problems.append(f"CIFAR-100: {path}: 'fine_labels' must be {len(data)} integer class indices, one per row "
                            f"of 'data', got {_describe(labels)}" + ("" if bad_type else f" of length {len(y)}") + f": {again}")
        elif names is not None and len(y) and (y.min() < 0 or y.max() >= len(names)):
            problems.append(f"CIFAR-100: {path}: 'fine_labels' must lie in [0, {len(names)}) (the classes of meta), "
                            f"found [{y.min()}, {y.max()}]: {again}")
    return problems


def _file_problems(title: str, listing: str, items: list[Item], skip_bad_images: bool) -> list[str]:
    """Listed image files that are missing or empty (one stat each: fast, even for 15,000 files)."""
    missing, empty = [], []
    for it in items:
        try:
            st = os.stat(it.path)
        except OSError:
            missing.append(it)
            continue
        if st.st_size == 0:
            empty.append(it)
    out = []
    if missing:
        out.append(f"{title}: {len(missing)} of the {len(items)} images {listing} lists are missing, e.g. {missing[0].path}: "
                   "the extraction is incomplete; delete the folder and extract the archive again")
    if empty and not skip_bad_images:
        out.append(f"{title}: {len(empty)} image files are empty (0 bytes), e.g. {empty[0].path}: extract the archive "
                   "again, or set skip_bad_images: true to leave them out")
    return out


def cub_problems(root: Path, *, skip_bad_images: bool = False) -> list[str]:
    """CUB-200-2011 (metadata that agree, every listed image there) and CUB-200-Paintings (class
    folders matching CUB's, images present), where their folders exist under ``root``."""
    folder, problems = CUB.find_folder(root), []
    names = None
    if folder is not None:
        try:
            items, names = cub_items(folder)
        except Exception as err:  # DatasetIntegrityError names the file; anything else is a damaged tree too
            return [f"CUB-200-2011: {err}: delete {folder} and extract {CUB.archive} again"]
        every = items["train"] + items["test"]
        outside = [it for it in every if not 0 <= it.label < len(names)]
        if outside:
            problems.append(f"CUB-200-2011: {folder / 'image_class_labels.txt'} gives {len(outside)} images a class outside "
                            f"classes.txt (1..{len(names)}), e.g. {outside[0].id}: extract the archive again")
        for split in ("train", "test"):
            if not items[split]:
                problems.append(f"CUB-200-2011: {folder / 'train_test_split.txt'} marks no {split} image: extract the "
                                "archive again")
        problems += _file_problems("CUB-200-2011", str(folder / "images.txt"), every, skip_bad_images)
    paintings = CUB_PAINTINGS.find_folder(root)
    if paintings is not None:
        try:
            found, _ = painting_items(paintings, names)
        except Exception as err:
            return problems + [f"CUB-200-Paintings: {err}"]
        if not found:
            problems.append(f"CUB-200-Paintings: {paintings} has class folders but no images (.jpg, .jpeg, .png) in "
                            "them: extract the paintings again")
        problems += _file_problems("CUB-200-Paintings", f"the class folders of {paintings}", found, skip_bad_images)
    return problems


def domainnet_problems(root: Path, *, skip_bad_images: bool = False) -> list[str]:
    """DomainNet (its folders and lists present under ``root``): lists that read and agree, and every
    image they name there."""
    folder = root / SUBDIR
    if not all((folder / d).is_dir() for d in DOMAINS) or not (folder / LIST_FOLDER).is_dir():
        return []  # still to be extracted or downloaded: notebook 01's prepare() checks the rest
    try:
        items, _ = domainnet_items(folder)
    except DatasetIntegrityError as err:
        return [f"DomainNet: {err}"]
    return _file_problems("DomainNet", f"the SENTRY lists in {folder / LIST_FOLDER}",
                          [it for split in items.values() for it in split], skip_bad_images)


def imagefolder_problems(root: Path, splits: tuple[str, ...], *, skip_bad_images: bool = False) -> list[str]:
    """An own ``<root>/<split>/<NNN.Class_Name>/*.jpg`` dataset: every split there, with images and
    the same classes as ``train``."""
    problems, classes = [], {}
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            problems.append(f"{folder} is missing: an image-folder dataset needs {', '.join(s + '/' for s in splits)} with "
                            "NNN.Class_Name/ image folders" + (" (or set with_domains: false)" if split == "ood" else ""))
            continue
        try:
            items, names = imagefolder_items(root, split)
        except Exception as err:
            problems.append(f"{folder} cannot be listed ({type(err).__name__}: {err})")
            continue
        if not items:
            problems.append(f"{folder} holds no images (.jpg, .jpeg, .png) in class folders (NNN.Class_Name/)")
            continue
        classes[split] = names
        problems += _file_problems(f"dataset {root.name}", f"the class folders of {folder}", items, skip_bad_images)
    for split, names in classes.items():
        if "train" in classes and names != classes["train"]:
            problems.append(f"{root / split} has other classes than {root / 'train'} ({len(names)} against "
                            f"{len(classes['train'])}): every split needs the same class folders")
    return problems


def tree_problems(dataset: str, root: Path, *, skip_bad_images: bool = False) -> list[str]:
    """The deep checks of a protocol dataset whose folders are present (CUB, CIFAR-100 and its LT subsets,
    DomainNet)."""
    if dataset == "cub":
        return cub_problems(root, skip_bad_images=skip_bad_images)
    if dataset == "domainnet":
        return domainnet_problems(root, skip_bad_images=skip_bad_images)
    if dataset.startswith("cifar100") and (folder := CIFAR100.find_folder(root)) is not None:
        return cifar100_problems(folder)
    return []

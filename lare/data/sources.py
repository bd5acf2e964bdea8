"""The real datasets: where they come from, how they are laid out, and how to get them.

- CUB-200-2011 (photos, 200 bird classes, official train / test split),
- CUB-200-Paintings (paintings of the same 200 classes, the out-of-domain test set of Table 1),
- CIFAR-100 (Figure 3).

``data_root`` holds them (parameter, or the environment variable ``LARE_DATA_ROOT``). For each,
:meth:`DatasetSource.prepare` finds the extracted folder, or extracts an archive found in
``data_root`` (checksum verified, extracted atomically), or downloads the archive when allowed
(progress bar, resumable, checksum verified), or stops with a message that says what to get,
from where, and where to put it. :func:`lare.data.catalog.check_sources` reports every problem at once.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torchvision.datasets.utils import calculate_md5, extract_archive
from tqdm.auto import tqdm

from lare.data.datasets import IMAGE_SUFFIXES, Item, clean_class_name


class DatasetMissingError(FileNotFoundError):
    """A dataset that is neither on disk nor downloadable; the message says how to get it."""


class DatasetIntegrityError(RuntimeError):
    """An archive or tree that is there but wrong: checksum mismatch, truncated, files missing."""


def md5sum(path: str | Path) -> str:
    return calculate_md5(str(path))


def network_reachable(url: str, timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the URL's host? (Answers in seconds when offline.)"""
    parts = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def download(url: str, dest: str | Path, md5: str | None = None, *, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest`` with a progress bar, resuming a ``dest.part`` left by an
    interrupted download (HTTP Range), verifying ``md5`` before the file takes its final name."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have and md5 and md5sum(part) == md5:  # killed after the last byte, before the rename
        os.replace(part, dest)
        return dest
    req = urllib.request.Request(url, headers={"User-Agent": "lare", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not have:
            raise
        part.unlink()  # the range is past the end: the partial file is not a prefix of this file
        return download(url, dest, md5, chunk=chunk)
    with resp:
        if have and resp.status != 206:  # the server ignored the range: start again
            have = 0
        total = int(resp.headers.get("Content-Length", 0)) + have
        with open(part, "ab" if have else "wb") as f, tqdm(total=total or None, initial=have, unit="B", unit_scale=True,
                                                            desc=f"download {dest.name}") as bar:
            for block in iter(lambda: resp.read(chunk), b""):
                f.write(block)
                bar.update(len(block))
    if md5 and md5sum(part) != md5:
        part.unlink()
        raise DatasetIntegrityError(f"the download of {url} does not match its MD5 {md5}; it was deleted, run again")
    os.replace(part, dest)
    return dest


def extract_atomic(archive: Path, root: Path, folder: str) -> Path:
    """Extract ``archive`` into a temporary folder under ``root`` and rename ``folder`` into place."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            extract_archive(str(archive), str(tmp))
        except Exception as err:  # tarfile / zipfile / gzip each raise their own errors
            raise DatasetIntegrityError(f"cannot extract {archive} ({type(err).__name__}: {err}): the archive is "
                                        f"truncated or damaged; delete it and download it again") from err
        found = tmp / folder
        if not found.is_dir():
            raise DatasetIntegrityError(f"{archive} does not contain the folder {folder!r}; is it the right archive?")
        os.replace(found, root / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / folder


@dataclass(frozen=True)
class DatasetSource:
    """One dataset: its archive, extracted folder, required files and how a person gets it."""

    name: str
    title: str
    folder: str                   # extracted folder under data_root
    required: tuple[str, ...]     # files or folders that must exist inside it
    archive: str | None = None    # archive file name under data_root
    url: str | None = None        # where the archive is downloaded from (None: manual only)
    md5: str | None = None
    size: str = ""
    manual: str = ""              # how to get it by hand
    alt_folders: tuple[str, ...] = ()

    def find_folder(self, root: Path) -> Path | None:
        for name in (self.folder, *self.alt_folders):
            if (root / name).is_dir():
                return root / name
        return None

    def missing_files(self, folder: Path) -> list[str]:
        return [r for r in self.required if not (folder / r).exists()]

    def how_to_get(self, root: Path) -> str:
        lines = [f"{self.title} is missing: looked for {root / self.folder}/"
                 + (f" and the archive {root / self.archive}" if self.archive else "") + "."]
        if self.url:
            lines.append(f"  Download {self.archive} ({self.size}, MD5 {self.md5}) from {self.url}")
            lines.append(f"  and put it in {root}/ (it is extracted for you), or run with the network on to download it.")
        if self.manual:
            lines.append("  " + self.manual.replace("{root}", str(root)))
        lines.append(f"  Expected layout: {root / self.folder}/" + ", ".join(self.required[:4]))
        return "\n".join(lines)

    def problems(self, root: str | Path, *, allow_download: bool) -> list[str]:
        """What stands in the way of :meth:`prepare`, without doing any heavy work."""
        root = Path(root)
        folder = self.find_folder(root)
        if folder is not None:
            missing = self.missing_files(folder)
            return [f"{self.title}: {folder} lacks {', '.join(missing)}; the extraction is incomplete: delete "
                    f"{folder} and extract the archive again"] if missing else []
        if self.archive and (root / self.archive).is_file():
            archive = root / self.archive
            if self.md5 and md5sum(archive) != self.md5:
                return [f"{self.title}: {archive} does not match its MD5 {self.md5} (incomplete or another file): "
                        f"delete it and download it again from {self.url}"]
            return []  # extracted by prepare()
        if allow_download and self.url and network_reachable(self.url):
            return []
        return [self.how_to_get(root)]

    def prepare(self, root: str | Path, *, allow_download: bool = True) -> Path:
        """The extracted folder, extracting or downloading the archive when needed."""
        root = Path(root)
        folder = self.find_folder(root)
        if folder is not None:
            missing = self.missing_files(folder)
            if missing:
                raise DatasetIntegrityError(f"{self.title}: {folder} lacks {', '.join(missing)}; delete {folder} "
                                            f"and extract {self.archive or 'the dataset'} again")
            return folder
        archive = root / self.archive if self.archive else None
        if archive is None or not archive.is_file():
            if not (allow_download and self.url and network_reachable(self.url)):
                raise DatasetMissingError(self.how_to_get(root))
            download(self.url, archive, self.md5)
        if self.md5 and md5sum(archive) != self.md5:
            raise DatasetIntegrityError(f"{archive} does not match the MD5 of {self.title} ({self.md5}): it is "
                                        f"incomplete or another file; delete it and download it again from {self.url}")
        folder = extract_atomic(archive, root, self.folder)
        missing = self.missing_files(folder)
        if missing:
            raise DatasetIntegrityError(f"{self.title}: {archive} lacks {', '.join(missing)}")
        return folder


CUB = DatasetSource(
    name="cub", title="CUB-200-2011", folder="CUB_200_2011",
    required=("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images"),
    archive="CUB_200_2011.tgz", url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
    md5="97eceeb196236b17998738112f37df78", size="about 1.1 GB",
    manual="(CaltechDATA record 65de6-vp158; the tgz holds the folder CUB_200_2011/.)")

CUB_PAINTINGS = DatasetSource(
    name="cub_paintings", title="CUB-200-Paintings", folder="CUB-200-Painting",
    alt_folders=("CUB_200_Paintings", "cub200_drawing"), required=("001.Black_footed_Albatross",),
    manual=("It was released by the authors of PAN (Wang et al., CVPR 2020, github.com/thuml/PAN) through a "
            "Google Drive link, https://drive.google.com/file/d/1G327KsD93eyGTjMmByuVy9sk4tlEOyK3/view?usp=sharing (given in "
            "the README of github.com/thuml/PAN), which cannot be fetched without a browser session: download it by hand and "
            "extract it so that {root}/CUB-200-Painting/NNN.Class_Name/*.jpg exist (200 class folders, 3,047 images). "
            "Folders named CUB_200_Paintings or cub200_drawing are accepted too."))

CIFAR100 = DatasetSource(
    name="cifar100", title="CIFAR-100", folder="cifar-100-python", required=("train", "test", "meta"),
    archive="cifar-100-python.tar.gz", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85", size="about 160 MB",
    manual="(the archive torchvision.datasets.CIFAR100 uses; it holds the folder cifar-100-python/.)")

SOURCES = {s.name: s for s in (CUB, CUB_PAINTINGS, CIFAR100)}


# ---------------------------------------------------------------- reading the layouts
def _read_table(path: Path, ncols: int) -> list[list[str]]:
    if not path.is_file():
        raise DatasetIntegrityError(f"{path} is missing: the CUB-200-2011 tree is incomplete; extract the archive again")
    rows = [line.split(maxsplit=ncols - 1) for line in path.read_text().splitlines() if line.strip()]
    bad = [r for r in rows if len(r) != ncols]
    if bad:
        raise DatasetIntegrityError(f"{path}: {len(bad)} malformed lines, e.g. {bad[0]}")
    return rows


def cub_items(folder: str | Path) -> tuple[dict[str, list[Item]], list[str]]:
    """CUB-200-2011 from its official files: train / test items (id = image id) and class names."""
    folder = Path(folder)
    classes = _read_table(folder / "classes.txt", 2)
    folders = [c[1] for c in sorted(classes, key=lambda r: int(r[0]))]
    paths = dict(_read_table(folder / "images.txt", 2))
    labels = {i: int(c) - 1 for i, c in _read_table(folder / "image_class_labels.txt", 2)}
    is_train = {i: s == "1" for i, s in _read_table(folder / "train_test_split.txt", 2)}
    if set(paths) != set(labels) or set(paths) != set(is_train):
        raise DatasetIntegrityError(f"{folder}: images.txt, image_class_labels.txt and train_test_split.txt list different images")
    out: dict[str, list[Item]] = {"train": [], "test": []}
    for image_id in sorted(paths, key=int):
        item = Item(id=f"cub/{image_id}", path=str(folder / "images" / paths[image_id]), label=labels[image_id])
        out["train" if is_train[image_id] else "test"].append(item)
    return out, [clean_class_name(f) for f in folders]


def painting_items(folder: str | Path, class_names: list[str] | None = None) -> tuple[list[Item], list[str]]:
    """CUB-200-Paintings: ``NNN.Class_Name/*.jpg``, label NNN-1; checked against CUB's classes."""
    folder = Path(folder)
    class_dirs = sorted((p for p in folder.iterdir() if p.is_dir() and p.name[:3].isdigit()), key=lambda p: int(p.name[:3]))
    if not class_dirs:
        raise DatasetIntegrityError(f"{folder} has no NNN.Class_Name folders")
    names = {int(p.name[:3]) - 1: clean_class_name(p.name) for p in class_dirs}
    if class_names is not None:
        wrong = [(i, n, class_names[i] if i < len(class_names) else None) for i, n in names.items()
                 if i >= len(class_names) or class_names[i].lower() != n.lower()]
        if wrong:
            i, n, c = wrong[0]
            raise DatasetIntegrityError(f"CUB-200-Paintings and CUB-200-2011 have different class lists: {len(wrong)} "
                                        f"differ, e.g. label {i}: painting folder {n!r} vs CUB {c!r}")
    if class_names is not None and len(names) != len(class_names):
        absent = [class_names[i] for i in range(len(class_names)) if i not in names]
        raise DatasetIntegrityError(f"{folder} has {len(names)} class folders, CUB has {len(class_names)}: missing e.g. "
                                    f"{absent[:3]}; the paintings tree is incomplete, extract it again")
    items = [Item(id=f"painting/{p.name}/{f.name}", path=str(f), label=int(p.name[:3]) - 1, domain="painting")
             for p in class_dirs for f in sorted(p.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    return items, [names.get(i, "") for i in range(max(names) + 1)]


class CifarImages:
    """Loader for CIFAR-100 items: reads the torchvision-format pickles once, serves PIL images."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.data = {}
        for split in ("train", "test"):
            with open(self.folder / split, "rb") as f:
                d = pickle.load(f, encoding="latin1")  # the official format is a pickle
            self.data[split] = (d["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), list(d["fine_labels"]))

    def __call__(self, item: Item) -> Image.Image:
        split, index = item.id.split("/")[1:]
        return Image.fromarray(self.data[split][0][int(index)])


def cifar100_items(folder: str | Path) -> tuple[dict[str, list[Item]], list[str], CifarImages]:
    folder = Path(folder)
    with open(folder / "meta", "rb") as f:
        names = [n.replace("_", " ") for n in pickle.load(f, encoding="latin1")["fine_label_names"]]
    images = CifarImages(folder)
    items = {split: [Item(id=f"cifar100/{split}/{i:05d}", path=str(folder / split), label=int(y))
                     for i, y in enumerate(images.data[split][1])] for split in ("train", "test")}
    return items, names, images

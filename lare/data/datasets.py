"""Dataset items and image loading.

An :class:`Item` is one image: a stable id (unique within its dataset), the file path, the label
(class index) and the domain. Loaders for CUB-200-2011, CUB-200-Paintings and CIFAR-100 return
lists of items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Item:
    id: str
    path: str
    label: int
    domain: str = "photo"


def open_image(item: Item) -> Image.Image:
    """The default loader: decode the item's image file as RGB."""
    try:
        with Image.open(item.path) as im:
            return im.convert("RGB")
    except Exception as err:  # name the file: a bare PIL error does not say which one
        raise ImageDecodeError(f"cannot decode image {item.path!r} (item {item.id!r}): {err}") from err


class ImageFiles(torch.utils.data.Dataset):
    """Decode and preprocess item images (runs in DataLoader workers, off the main thread).

    ``loader`` turns an item into a PIL image (default: open its file; CIFAR-100 reads arrays).

    With ``skip_bad=True`` an image that does not decode yields a blank image and ``ok = False``
    (items come as ``(pixels, ok)``), so the caller can drop it and record it; otherwise the
    error names the file.
    """

    def __init__(self, items: Sequence[Item], preprocess: Callable, loader: Callable[[Item], Image.Image] | None = None,
                 skip_bad: bool = False):
        self.items, self.preprocess, self.loader = list(items), preprocess, loader or open_image
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if not self.skip_bad:
            return self.preprocess(self.loader(self.items[i]))
        try:
            return self.preprocess(self.loader(self.items[i])), True
        except ImageDecodeError:
            return self.preprocess(Image.new("RGB", (8, 8))), False


class ImageDecodeError(RuntimeError):
    pass


def clean_class_name(folder: str) -> str:
    """``"001.Black_footed_Albatross"`` -> ``"Black footed Albatross"`` (for prompts)."""
    name = folder.split(".", 1)[1] if "." in folder and folder.split(".", 1)[0].isdigit() else folder
    return name.replace("_", " ").strip()


def imagefolder_items(root: str | Path, split: str, domain: str = "photo") -> tuple[list[Item], list[str]]:
    """Items of ``<root>/<split>/<NNN.Class_Name>/*.{jpg,png}`` (label = sorted folder position)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder {folder}: expected <root>/{split}/<NNN.Class_Name>/*.jpg")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    items = [Item(id=f"{split}/{c}/{f.name}", path=str(f), label=label, domain=domain)
             for label, c in enumerate(classes)
             for f in sorted((folder / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    return items, [clean_class_name(c) for c in classes]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def make_toy_images(root: str | Path, *, num_classes: int = 3, per_class: dict[str, int] | None = None,
                    size: int = 40, seed: int = 0) -> Path:
    """Write a tiny generated image-folder dataset (train / test / ood) for the smoke profile.

    Each class has its own colour; the ``ood`` split is drawn "as paintings" (a coarse, posterised
    copy), so the domain shift is real even if tiny. Existing trees are left as they are.
    """
    root = Path(root)
    per_class = per_class or {"train": 6, "test": 3, "ood": 3}
    if (root / ".complete").is_file():
        return root
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_classes, 3))
    for split, n in per_class.items():
        for c in range(num_classes):
            folder = root / split / f"{c + 1:03d}.Toy_Class_{c + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(colours[c] + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype("uint8")
                if split == "ood":
                    img = (img // 64) * 64
                Image.fromarray(img).save(folder / f"{split}_{c}_{i}.jpg", quality=90)
    (root / ".complete").write_text("ok\n")
    return root

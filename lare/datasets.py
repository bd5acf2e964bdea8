"""Dataset items and image loading.

An :class:`Item` is one image: a stable id (unique within its dataset), the file path, the label
(class index) and the domain. Loaders for CUB-200-2011, CUB-200-Paintings and CIFAR-100 return
lists of items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image


@dataclass(frozen=True)
class Item:
    id: str
    path: str
    label: int
    domain: str = "photo"


class ImageFiles(torch.utils.data.Dataset):
    """Decode and preprocess item images (runs in DataLoader workers, off the main thread)."""

    def __init__(self, items: Sequence[Item], preprocess: Callable):
        self.items, self.preprocess = list(items), preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.items[i]
        try:
            with Image.open(item.path) as im:
                image = im.convert("RGB")
        except Exception as err:  # name the file: a bare PIL error does not say which one
            raise ImageDecodeError(f"cannot decode image {item.path!r} (item {item.id!r}): {err}") from err
        return self.preprocess(image)


class ImageDecodeError(RuntimeError):
    pass

"""Shared fixtures: offline Hugging Face access, tiny open_clip encoders and small image files."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from lare.data.datasets import Item  # noqa: E402

TINY_CONFIG_DIR = Path(__file__).resolve().parents[1] / "lare" / "model_configs"
TINY_MODELS = sorted(p.stem for p in TINY_CONFIG_DIR.glob("*.json"))

# (width, height, PIL mode, file suffix): odd sizes, a grayscale JPEG and a PNG with alpha.
_FAKE_IMAGE_SPECS = [
    (40, 50, "RGB", ".jpg"),
    (37, 29, "RGB", ".jpg"),
    (64, 64, "RGB", ".jpg"),
    (32, 32, "RGB", ".jpg"),
    (20, 90, "RGB", ".jpg"),
    (90, 20, "RGB", ".jpg"),
    (33, 47, "L", ".jpg"),
    (45, 38, "RGBA", ".png"),
    (50, 40, "RGB", ".jpg"),
    (31, 31, "RGB", ".jpg"),
]


def write_fake_images(folder: Path, seed: int = 0) -> list[Item]:
    """Write small random images into ``folder`` and return one :class:`Item` per file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for n, (w, h, mode, suffix) in enumerate(_FAKE_IMAGE_SPECS):
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)  # mode inferred: L, RGB, RGBA
        assert image.mode == mode
        path = folder / f"img_{n:02d}{suffix}"
        image.save(path)
        items.append(Item(id=f"img_{n:02d}", path=str(path), label=n % 3))
    return items


@pytest.fixture
def fake_images(tmp_path) -> list[Item]:
    """Ten small random images (various sizes, one grayscale JPEG, one RGBA PNG) as dataset items."""
    return write_fake_images(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_clip():
    from lare.core.encoders import load_encoder

    return load_encoder("lare-tiny-clip", "none", device="cpu")


@pytest.fixture(scope="session")
def tiny_coca():
    from lare.core.encoders import load_encoder

    return load_encoder("lare-tiny-coca", "none", device="cpu")


@pytest.fixture(scope="session", params=TINY_MODELS)
def tiny_encoder(request):
    """Every tiny model config shipped in lare/model_configs, loaded with random weights on the CPU."""
    from lare.core.encoders import load_encoder

    return load_encoder(request.param, "none", device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module of tiny training problems: OpenMP hand-offs dominate them
    on a busy 2-core machine, and the numbers are the same run after run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

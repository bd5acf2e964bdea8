"""Small fake copies of the paper's datasets, laid out exactly like the official releases.

- :func:`make_fake_cub`: ``CUB_200_2011/`` with ``images/NNN.Class_Name/*.jpg`` and the official
  metadata files (``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
  ``classes.txt``, ``README``); :func:`make_fake_cub_archive` packs it as ``CUB_200_2011.tgz``.
- :func:`make_fake_paintings`: ``CUB-200-Painting/NNN.Class_Name/*.jpg``.
- :func:`make_fake_cifar100`: ``cifar-100-python/{train,test,meta}``, pickles in the format
  ``torchvision.datasets.CIFAR100`` reads; optionally the archive ``cifar-100-python.tar.gz``.

Imported by the tests (not a test module itself). Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# The first class folders of the real CUB-200-2011 (and of CUB-200-Paintings), in order.
CUB_CLASS_FOLDERS = [
    "001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani",
    "005.Crested_Auklet", "006.Least_Auklet", "007.Parakeet_Auklet", "008.Rhinoceros_Auklet",
    "009.Brewer_Blackbird", "010.Red_winged_Blackbird",
]

# The real CIFAR-100 fine and coarse class names, in label order.
CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2"
).split()
assert len(CIFAR100_FINE) == 100 and len(CIFAR100_COARSE) == 20


def md5_of(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cub_class_folders(classes: int) -> list[str]:
    """Real CUB folder names for the first classes, ``NNN.Fake_Bird_NNN`` beyond them."""
    return [CUB_CLASS_FOLDERS[c] if c < len(CUB_CLASS_FOLDERS) else f"{c + 1:03d}.Fake_Bird_{c + 1:03d}"
            for c in range(classes)]


def _write_jpeg(path: Path, rng: np.random.Generator, colour, size=(40, 30)) -> None:
    w, h = size
    pixels = np.clip(np.asarray(colour) + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=85)


@dataclass
class FakeCub:
    folder: Path                              # .../CUB_200_2011
    class_folders: list[str]                  # NNN.Class_Name, label order
    train_ids: list[str] = field(default_factory=list)   # "cub/<image id>"
    test_ids: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)  # id -> 0-based label
    paths: dict[str, str] = field(default_factory=dict)   # id -> path relative to images/


def make_fake_cub(root: str | Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> FakeCub:
    """``<root>/CUB_200_2011/`` in the official layout: image ids numbered 1.. in class order,
    about half of each class in the training split (never all of one class, from 2 images up)."""
    root = Path(root)
    folder = root / "CUB_200_2011"
    rng = np.random.default_rng(seed)
    fake = FakeCub(folder, cub_class_folders(classes))
    images, labels, split = [], [], []
    image_id = 0
    for c, cls in enumerate(fake.class_folders):
        name = cls.split(".", 1)[1]
        colour = rng.integers(0, 256, size=3)
        for j in range(per_class):
            image_id += 1
            rel = f"{cls}/{name}_{j + 1:04d}_{image_id * 7 + 10000:05d}.jpg"
            _write_jpeg(folder / "images" / rel, rng, colour)
            is_train = (j + c) % 2 == 0
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {int(is_train)}")
            key = f"cub/{image_id}"
            (fake.train_ids if is_train else fake.test_ids).append(key)
            fake.labels[key] = c
            fake.paths[key] = rel
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (folder / "classes.txt").write_text("".join(f"{c + 1} {cls}\n" for c, cls in enumerate(fake.class_folders)))
    (folder / "README").write_text("Caltech-UCSD Birds-200-2011 (CUB-200-2011) -- FAKE copy for the tests\n"
                                   f"{classes} classes, {image_id} images\n")
    return fake


def make_fake_cub_archive(root: str | Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> str:
    """``<root>/CUB_200_2011.tgz`` (top folder ``CUB_200_2011/``, plus the loose ``attributes.txt``
    the real archive has beside it); the extracted tree is not left in ``root``. Returns its MD5."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        make_fake_cub(staging, classes, per_class, seed)
        (Path(staging) / "attributes.txt").write_text("1 has_bill_shape::curved_(up_or_down)\n")
        archive = root / "CUB_200_2011.tgz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(Path(staging) / "attributes.txt", arcname="attributes.txt")
            tar.add(Path(staging) / "CUB_200_2011", arcname="CUB_200_2011")
    return md5_of(archive)


def make_fake_paintings(root: str | Path, classes: int = 3, per_class: int = 2, seed: int = 1,
                        folder_name: str = "CUB-200-Painting", class_folders: list[str] | None = None) -> Path:
    """``<root>/CUB-200-Painting/NNN.Class_Name/*.jpg`` with CUB's class folder names (or ``class_folders``)."""
    folder = Path(root) / folder_name
    rng = np.random.default_rng(seed)
    for cls in class_folders or cub_class_folders(classes):
        colour = rng.integers(0, 256, size=3)
        for j in range(per_class):
            _write_jpeg(folder / cls / f"{cls.split('.', 1)[1].lower()}_painting_{j:03d}.jpg", rng, colour, size=(36, 44))
    return folder


@dataclass
class FakeCifar:
    folder: Path                 # .../cifar-100-python
    data: dict[str, np.ndarray]  # split -> (N, 3072) uint8, as in the pickles
    labels: dict[str, list[int]]
    archive_md5: str | None = None

    def image(self, split: str, index: int) -> np.ndarray:
        """(32, 32, 3) uint8, the array torchvision's CIFAR100 turns into a PIL image."""
        return self.data[split][index].reshape(3, 32, 32).transpose(1, 2, 0)


def make_fake_cifar100(root: str | Path, per_class_train: int = 6, per_class_test: int = 2, classes: int = 100,
                       seed: int = 0, archive: bool = False) -> FakeCifar:
    """``<root>/cifar-100-python/{train,test,meta}``: pickled dicts as in the official release
    (``data`` uint8 (N, 3072) channel-planar, ``fine_labels``, ``coarse_labels``, ``filenames``,
    ``batch_label``; meta ``fine_label_names`` and ``coarse_label_names``). Labels are shuffled,
    as in the real batches. With ``archive``, also ``<root>/cifar-100-python.tar.gz``."""
    if classes > len(CIFAR100_FINE):
        raise ValueError("CIFAR-100 has 100 classes")
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(classes, 3))
    fake = FakeCifar(folder, {}, {})
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = rng.permutation(np.repeat(np.arange(classes), per_class))
        images = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 40, size=(len(labels), 32, 32, 3)), 0, 255)
        data = images.astype(np.uint8).transpose(0, 3, 1, 2).reshape(len(labels), 3072)
        entry = {
            "filenames": [f"{CIFAR100_FINE[y]}_s_{i:06d}.png" for i, y in enumerate(labels)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": [int(y) for y in labels],
            "coarse_labels": [int(y) // 5 for y in labels],
            "data": data,
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        fake.data[split], fake.labels[split] = data, entry["fine_labels"]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": list(CIFAR100_FINE), "coarse_label_names": list(CIFAR100_COARSE)}, f, protocol=2)
    if archive:
        path = root / "cifar-100-python.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(folder, arcname="cifar-100-python")
        fake.archive_md5 = md5_of(path)
    return fake


DOMAINNET_CLASSES = ["aircraft_carrier", "bee", "zebra"]


def make_fake_domainnet(root: str | Path, classes: list[str] | None = None, per_split: int = 2, seed: int = 3) -> Path:
    """``<root>/domainnet/`` as the cleaned DomainNet release and the SENTRY lists lay it out:
    ``<domain>/<class>/<domain>_<NNN>_<NNNNNN>.jpg`` (decodable JPEGs) and
    ``domainnet_sentry_split/<domain>_{train,test}_mini.txt`` with lines ``<path> <label>`` (the
    label of the class among DomainNet's 345, here a stand-in)."""
    classes = classes or DOMAINNET_CLASSES
    folder = Path(root) / "domainnet"
    rng = np.random.default_rng(seed)
    (folder / "domainnet_sentry_split").mkdir(parents=True, exist_ok=True)
    for d in ("clipart", "painting", "real", "sketch"):
        for split in ("train", "test"):
            lines = []
            for c, name in enumerate(classes):
                colour = rng.integers(0, 256, size=3)
                for k in range(per_split):
                    rel = f"{d}/{name}/{d}_{c * 11:03d}_{k + (100 if split == 'test' else 0):06d}.jpg"
                    _write_jpeg(folder / rel, rng, colour)
                    lines.append(f"{rel} {c * 11}")
            (folder / "domainnet_sentry_split" / f"{d}_{split}_mini.txt").write_text("\n".join(lines) + "\n")
    return folder

"""DomainNet's 40-class SENTRY benchmark on a fake tree in the official layout (no download)."""

from __future__ import annotations

import pytest

from lare.data.catalog import cache_name, check_sources, imbalance_of, load_dataset
from lare.data.domainnet import DOMAINS, LIST_FOLDER, SUBDIR, check_domainnet, domainnet_items, list_names, load_domainnet
from lare.data.sources import DatasetIntegrityError, DatasetMissingError
from lare.data.treecheck import tree_problems

CLASSES = ["aircraft_carrier", "zebra", "bee"]


def fake_domainnet(data_root, per_split=2, classes=CLASSES):
    """``<root>/domainnet/<domain>/<class>/<file>.jpg`` and the lists, as the real release has them."""
    root = data_root / SUBDIR
    (root / LIST_FOLDER).mkdir(parents=True)
    for d in DOMAINS:
        for split in ("train", "test"):
            lines = []
            for c, name in enumerate(classes):
                for k in range(per_split):
                    rel = f"{d}/{name}/{d}_{c:03d}_{split}{k}.jpg"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / rel).write_bytes(b"jpg")
                    lines.append(f"{rel} {c * 7}")
            (root / LIST_FOLDER / f"{d}_{split}_mini.txt").write_text("\n".join(lines) + "\n")
    return root


def test_items_follow_the_protocol(tmp_path):
    fake_domainnet(tmp_path)
    assert check_domainnet(tmp_path, allow_download=False) == []
    items, names = load_domainnet(tmp_path, allow_download=False)
    assert names == ["aircraft carrier", "bee", "zebra"]  # sorted class folders, as LADS numbers them
    assert {it.domain for it in items["train"] + items["test"]} == {"sketch"}
    assert sorted({it.domain for it in items["ood"]}) == ["clipart", "painting", "real"]
    assert len(items["train"]) == len(items["test"]) == 6 and len(items["ood"]) == 18
    assert all("_test" in it.path for it in items["test"] + items["ood"])
    bee = [it for it in items["ood"] if "/bee/" in it.path]
    assert {it.label for it in bee} == {1}
    ids = [it.id for split in items.values() for it in split]
    assert len(ids) == len(set(ids))


def test_missing_everything_says_how_to_get_it(tmp_path):
    problems = check_domainnet(tmp_path, allow_download=False)
    text = "\n".join(problems)
    for d in DOMAINS:
        assert f"{d}.zip" in text
    assert "cd0d8f2d77a4e181449b78ed62bccf1e" in text and "SENTRY" in text and LIST_FOLDER in text
    with pytest.raises(DatasetMissingError):
        load_domainnet(tmp_path, allow_download=False)


def test_missing_image_and_bad_lists_are_named(tmp_path):
    root = fake_domainnet(tmp_path)
    next((root / "real").rglob("*.jpg")).unlink()
    assert check_domainnet(tmp_path, allow_download=False) == []  # the sources are there: the preflight's deep check
    problem = tree_problems("domainnet", tmp_path)[0]  # opens what notebook 01 reads, and finds the hole
    assert "DomainNet: 1 of the 30 images the SENTRY lists in" in problem and "are missing" in problem
    (root / LIST_FOLDER / "clipart_test_mini.txt").write_text("clipart/bee/x.jpg 1\nclipart/newt/y.jpg 2\n")
    with pytest.raises(DatasetIntegrityError, match="other classes"):
        domainnet_items(root)
    (root / LIST_FOLDER / "clipart_test_mini.txt").write_text("painting/bee/x.jpg one\n")
    with pytest.raises(DatasetIntegrityError, match="line 1"):
        domainnet_items(root)
    assert len(list_names()) == 5


def test_protocol_splits_one_evaluation_set_per_target_domain(tmp_path):
    fake_domainnet(tmp_path)
    items, names, loader = load_dataset("domainnet", tmp_path, allow_download=False)
    assert loader is None and len(names) == 3
    assert sorted(items) == ["ood_clipart", "ood_painting", "ood_real", "test", "train"]
    assert all({it.domain for it in items[f"ood_{d}"]} == {d} for d in ("clipart", "painting", "real"))
    assert check_sources("domainnet", tmp_path, allow_download=False) == []
    # CIFAR-100-LT's datasets read CIFAR-100's images (one cache entry) and draw their own subsets
    assert [imbalance_of(f"cifar100_lt{f}") for f in (100, 50, 10)] == [100, 50, 10]
    assert cache_name("cifar100_lt50") == "cifar100" and cache_name("domainnet") == "domainnet"
    assert imbalance_of("cifar100") == 0 and cache_name("mine") == "mine"

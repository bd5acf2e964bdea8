"""The real datasets' registry (lare.data.sources) on fake trees laid out like the official releases:
the loaders, finding / extracting / downloading the data, and the errors a person gets."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import (
    CIFAR100_FINE,
    make_fake_cifar100,
    make_fake_cub,
    make_fake_cub_archive,
    make_fake_paintings,
    md5_of,
)
from PIL import Image

import lare.data.sources as src
from lare.data.catalog import check_sources, load_dataset
from lare.data.sources import (
    CIFAR100,
    CUB,
    CUB_PAINTINGS,
    CifarImages,
    DatasetIntegrityError,
    DatasetMissingError,
    cifar100_items,
    cub_items,
    download,
    painting_items,
)

CUB_NAMES = ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]


def leftovers(root: Path) -> list[str]:
    """Temporary extraction folders or partial downloads left under ``root``."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".extract-") or p.name.endswith(".part"))


@pytest.fixture
def offline(monkeypatch):
    """No network: every reachability check answers False (and is counted)."""
    calls = []
    monkeypatch.setattr(src, "network_reachable", lambda url, timeout=3.0: calls.append(url) or False)
    return calls


# ---------------------------------------------------------------- loaders
def test_cub_items_follow_the_official_metadata(tmp_path):
    fake = make_fake_cub(tmp_path, classes=3, per_class=4)
    items, names = cub_items(fake.folder)
    assert names == CUB_NAMES
    assert [it.id for it in items["train"]] == fake.train_ids
    assert [it.id for it in items["test"]] == fake.test_ids
    assert not {it.id for it in items["train"]} & {it.id for it in items["test"]}
    for it in items["train"] + items["test"]:
        assert it.label == fake.labels[it.id]  # 0-based
        assert it.domain == "photo"
        assert Path(it.path) == fake.folder / "images" / fake.paths[it.id]
        assert Path(it.path).is_file()
    assert {it.label for it in items["train"]} == {0, 1, 2}


def test_cub_ids_are_image_ids_not_positions(tmp_path):
    """Reordering the lines of the metadata files changes neither ids, labels nor the split."""
    fake = make_fake_cub(tmp_path, classes=3, per_class=4)
    before, _ = cub_items(fake.folder)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"):
        f = fake.folder / name
        f.write_text("\n".join(reversed(f.read_text().splitlines())) + "\n")
    after, names = cub_items(fake.folder)
    assert after == before
    assert names == CUB_NAMES


def test_cub_metadata_that_disagree_are_rejected(tmp_path):
    fake = make_fake_cub(tmp_path, classes=2, per_class=2)
    f = fake.folder / "train_test_split.txt"
    f.write_text("\n".join(f.read_text().splitlines()[:-1]) + "\n")  # one image without a split
    with pytest.raises(DatasetIntegrityError, match="train_test_split.txt"):
        cub_items(fake.folder)


def test_cub_items_name_a_missing_metadata_file(tmp_path):
    fake = make_fake_cub(tmp_path, classes=2, per_class=2)
    (fake.folder / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetIntegrityError, match="image_class_labels.txt"):
        cub_items(fake.folder)


def test_painting_items_label_is_folder_number_minus_one(tmp_path):
    cub = make_fake_cub(tmp_path, classes=3, per_class=2)
    folder = make_fake_paintings(tmp_path, classes=3, per_class=2)
    _, cub_names = cub_items(cub.folder)
    items, names = painting_items(folder, cub_names)
    assert names == CUB_NAMES
    assert len(items) == 6 and len({it.id for it in items}) == 6
    for it in items:
        assert it.domain == "painting"
        assert it.label == int(Path(it.path).parent.name[:3]) - 1
        assert it.id.startswith("painting/")
    assert sorted({it.label for it in items}) == [0, 1, 2]


def test_painting_classes_must_match_cub(tmp_path):
    cub = make_fake_cub(tmp_path, classes=3, per_class=2)
    _, cub_names = cub_items(cub.folder)
    folder = make_fake_paintings(tmp_path, class_folders=["001.Black_footed_Albatross", "002.Other_Bird",
                                                          "003.Sooty_Albatross"])
    with pytest.raises(DatasetIntegrityError, match=r"label 1.*Other Bird.*Laysan Albatross"):
        painting_items(folder, cub_names)
    painting_items(folder)  # without CUB's names there is nothing to compare


def test_painting_class_beyond_cub_is_rejected(tmp_path):
    cub = make_fake_cub(tmp_path, classes=2, per_class=2)
    _, cub_names = cub_items(cub.folder)
    folder = make_fake_paintings(tmp_path, classes=3)
    with pytest.raises(DatasetIntegrityError, match="label 2"):
        painting_items(folder, cub_names)


def test_cifar100_items_and_loader_read_the_pickles(tmp_path):
    fake = make_fake_cifar100(tmp_path, per_class_train=3, per_class_test=1)
    items, names, loader = cifar100_items(fake.folder)
    assert len(names) == 100
    assert names[1] == "aquarium fish" and names[41] == "lawn mower"
    assert all("_" not in n for n in names)
    assert [len(items["train"]), len(items["test"])] == [300, 100]
    assert [it.label for it in items["train"]] == fake.labels["train"]
    assert len({it.id for it in items["train"] + items["test"]}) == 400
    for split, index in (("train", 0), ("train", 299), ("test", 57)):
        it = items[split][index]
        assert it.id == f"cifar100/{split}/{index:05d}"
        im = loader(it)
        assert isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(im), fake.image(split, index))
    assert isinstance(loader, CifarImages)


def test_fake_cifar100_is_in_torchvision_format(tmp_path, monkeypatch):
    """torchvision's CIFAR100 reads the fake tree (its MD5 check of the official files aside),
    and sees the same images and labels as our loader."""
    import torchvision.datasets.cifar as tv_cifar

    fake = make_fake_cifar100(tmp_path, per_class_train=2, per_class_test=1)
    with pytest.raises(RuntimeError):  # the checksums are the official ones: the fake fails them
        tv_cifar.CIFAR100(str(tmp_path), train=True, download=False)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    items, names, loader = cifar100_items(fake.folder)
    for train, split in ((True, "train"), (False, "test")):
        ds = tv_cifar.CIFAR100(str(tmp_path), train=train, download=False)
        assert len(ds) == len(items[split])
        assert ds.classes == CIFAR100_FINE
        assert [n.replace("_", " ") for n in ds.classes] == names
        for i in (0, len(ds) - 1):
            image, label = ds[i]
            assert label == items[split][i].label
            np.testing.assert_array_equal(np.asarray(image), np.asarray(loader(items[split][i])))


def test_load_protocol_on_fake_trees(tmp_path):
    cub = make_fake_cub(tmp_path, classes=3, per_class=4)
    make_fake_paintings(tmp_path, classes=3, per_class=2)
    fake_cifar = make_fake_cifar100(tmp_path, per_class_train=2, per_class_test=1)
    items, names, loader = load_dataset("cub", tmp_path, allow_download=False)
    assert loader is None and names == CUB_NAMES
    assert set(items) == {"train", "test", "ood"}
    assert [it.id for it in items["test"]] == cub.test_ids
    assert len(items["ood"]) == 6 and all(it.domain == "painting" for it in items["ood"])
    ids = [it.id for s in items.values() for it in s]
    assert len(ids) == len(set(ids)), "ids must be unique across train / test / ood"

    items, names, loader = load_dataset("cifar100", tmp_path, allow_download=False)
    assert set(items) == {"train", "test"} and len(names) == 100
    np.testing.assert_array_equal(np.asarray(loader(items["test"][3])), fake_cifar.image("test", 3))
    with pytest.raises(KeyError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)


# ---------------------------------------------------------------- getting the data
def test_prepare_finds_the_extracted_tree(tmp_path, offline):
    fake = make_fake_cub(tmp_path)
    assert CUB.prepare(tmp_path) == fake.folder
    assert CUB.problems(tmp_path, allow_download=True) == []
    paintings = make_fake_paintings(tmp_path, folder_name="cub200_drawing")  # an accepted alternative name
    assert CUB_PAINTINGS.prepare(tmp_path) == paintings
    assert offline == [], "no network check is needed when the data are there"


def test_prepare_extracts_a_verified_archive_atomically(tmp_path, monkeypatch, offline):
    md5 = make_fake_cub_archive(tmp_path, classes=3, per_class=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CUB_200_2011.tgz"]
    monkeypatch.setattr(src, "CUB", dataclasses.replace(CUB, md5=md5))
    assert check_sources("cub", tmp_path, allow_download=False) != []  # the paintings are still missing
    assert src.CUB.problems(tmp_path, allow_download=False) == []     # the archive is enough for CUB
    folder = src.CUB.prepare(tmp_path)
    assert folder == tmp_path / "CUB_200_2011"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CUB_200_2011", "CUB_200_2011.tgz"], \
        "only the dataset folder is moved into place (no temporary folder, no loose archive members)"
    items, names = cub_items(folder)
    assert names == CUB_NAMES and len(items["train"]) + len(items["test"]) == 12
    assert src.CUB.prepare(tmp_path) == folder  # a second call finds the tree


def test_checksum_mismatch_extracts_nothing(tmp_path):
    make_fake_cub_archive(tmp_path)  # its MD5 is not the official one
    with pytest.raises(DatasetIntegrityError) as err:
        CUB.prepare(tmp_path)
    msg = str(err.value)
    assert "MD5" in msg and CUB.md5 in msg and "CUB_200_2011.tgz" in msg
    assert CUB.url in msg, "the message says where to download it again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CUB_200_2011.tgz"], "nothing was extracted"


def test_truncated_archive_is_reported_and_nothing_half_extracted(tmp_path, monkeypatch):
    make_fake_cub_archive(tmp_path, classes=3, per_class=4)
    archive = tmp_path / "CUB_200_2011.tgz"
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(src, "CUB", dataclasses.replace(CUB, md5=md5_of(archive)))
    with pytest.raises(DatasetIntegrityError, match="truncated or damaged") as err:
        src.CUB.prepare(tmp_path)
    assert "CUB_200_2011.tgz" in str(err.value)
    assert not (tmp_path / "CUB_200_2011").exists(), "nothing half-extracted under the final name"
    assert leftovers(tmp_path) == []


def test_archive_without_the_dataset_folder_is_rejected(tmp_path, monkeypatch):
    import tarfile

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("not CUB")
    with tarfile.open(tmp_path / "CUB_200_2011.tgz", "w:gz") as tar:
        tar.add(tmp_path / "x", arcname="something_else")
    monkeypatch.setattr(src, "CUB", dataclasses.replace(CUB, md5=md5_of(tmp_path / "CUB_200_2011.tgz")))
    with pytest.raises(DatasetIntegrityError, match="CUB_200_2011"):
        src.CUB.prepare(tmp_path)
    assert not (tmp_path / "CUB_200_2011").exists() and leftovers(tmp_path) == []


def test_missing_metadata_file_is_named(tmp_path, offline):
    fake = make_fake_cub(tmp_path)
    (fake.folder / "train_test_split.txt").unlink()
    with pytest.raises(DatasetIntegrityError, match="train_test_split.txt") as err:
        CUB.prepare(tmp_path)
    assert str(fake.folder) in str(err.value)
    problems = check_sources("cub", tmp_path, allow_download=True)
    assert any("train_test_split.txt" in p for p in problems)


@pytest.mark.parametrize("source", [CUB, CIFAR100], ids=lambda s: s.name)
def test_missing_dataset_without_network_says_how_to_get_it(tmp_path, offline, source):
    with pytest.raises(DatasetMissingError) as err:
        source.prepare(tmp_path)
    msg = str(err.value)
    for part in (source.title, source.url, source.archive, source.md5, str(tmp_path / source.folder)):
        assert part in msg, f"{part!r} not in the message:\n{msg}"
    assert offline == [source.url]
    assert list(tmp_path.iterdir()) == [], "nothing is written when the dataset cannot be had"


def test_missing_paintings_say_where_to_put_them(tmp_path, offline):
    with pytest.raises(DatasetMissingError) as err:
        CUB_PAINTINGS.prepare(tmp_path)
    msg = str(err.value)
    assert "CUB-200-Paintings" in msg and "Google Drive" in msg and "thuml/PAN" in msg
    assert f"{tmp_path}/CUB-200-Painting/NNN.Class_Name/*.jpg" in msg


def test_check_sources_reports_every_missing_dataset_at_once(tmp_path, monkeypatch):
    def no_network_check(url, timeout=3.0):
        raise AssertionError("allow_download=False must not probe the network")

    monkeypatch.setattr(src, "network_reachable", no_network_check)
    problems = check_sources("cub", tmp_path, allow_download=False)
    assert len(problems) == 2
    assert "CUB-200-2011" in problems[0] and CUB.url in problems[0]
    assert "CUB-200-Paintings" in problems[1]
    assert len(check_sources("cifar100", tmp_path, allow_download=False)) == 1
    with pytest.raises(DatasetMissingError) as err:
        load_dataset("cub", tmp_path, allow_download=False)
    assert "CUB-200-2011" in str(err.value) and "CUB-200-Paintings" in str(err.value)


def test_network_reachable_is_false_for_a_closed_port():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    assert src.network_reachable(f"http://127.0.0.1:{port}/x", timeout=2.0) is False
    assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------- download() against a local server
class _State:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.requests: list[dict] = []


def _handler(state: _State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def do_GET(self):
            state.requests.append({"path": self.path, "range": self.headers.get("Range")})
            body = state.files.get(self.path.split("?")[0])
            if body is None:
                self.send_error(404)
                return
            rng = self.headers.get("Range")
            if rng and state.honour_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):  # what real servers answer for a range past the end
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                body = body[start:]
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server with Range support: ``(state, base_url)``; shut down after the test."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    state = _State()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _payload(n: int = 300_000) -> bytes:
    return np.random.default_rng(0).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def test_download_verifies_the_checksum(tmp_path, server):
    state, base = server
    state.files["/data.bin"] = body = _payload()
    dest = download(f"{base}/data.bin", tmp_path / "sub" / "data.bin", hashlib.md5(body).hexdigest(), chunk=65536)
    assert dest == tmp_path / "sub" / "data.bin"
    assert dest.read_bytes() == body
    assert leftovers(dest.parent) == []
    assert state.requests == [{"path": "/data.bin", "range": None}]


def test_download_resumes_a_partial_file(tmp_path, server):
    state, base = server
    state.files["/data.bin"] = body = _payload()
    (tmp_path / "data.bin.part").write_bytes(body[:100_000])
    dest = download(f"{base}/data.bin", tmp_path / "data.bin", hashlib.md5(body).hexdigest())
    assert state.requests[-1]["range"] == "bytes=100000-"
    assert dest.read_bytes() == body
    assert leftovers(tmp_path) == []


def test_download_restarts_when_the_server_ignores_the_range(tmp_path, server):
    state, base = server
    state.honour_range = False
    state.files["/data.bin"] = body = _payload()
    (tmp_path / "data.bin.part").write_bytes(body[:100_000])
    dest = download(f"{base}/data.bin", tmp_path / "data.bin", hashlib.md5(body).hexdigest())
    assert state.requests[-1]["range"] == "bytes=100000-"
    assert dest.read_bytes() == body, "the full answer replaces the partial file, it is not appended"


def test_download_with_wrong_checksum_leaves_no_file(tmp_path, server):
    state, base = server
    state.files["/data.bin"] = _payload()
    with pytest.raises(DatasetIntegrityError, match="MD5"):
        download(f"{base}/data.bin", tmp_path / "data.bin", "0" * 32)
    assert list(tmp_path.iterdir()) == [], "neither the final file nor a .part is left"


def test_download_completes_when_the_part_file_is_already_whole(tmp_path, server):
    state, base = server
    state.files["/data.bin"] = body = _payload()
    (tmp_path / "data.bin.part").write_bytes(body)
    dest = download(f"{base}/data.bin", tmp_path / "data.bin", hashlib.md5(body).hexdigest())
    assert dest.read_bytes() == body


def test_prepare_downloads_verifies_and_extracts(tmp_path, server, monkeypatch):
    """With the network up, a missing dataset is downloaded (checksum verified) and extracted."""
    state, base = server
    staging, root = tmp_path / "staging", tmp_path / "data"
    md5 = make_fake_cub_archive(staging, classes=2, per_class=2)
    state.files["/CUB_200_2011.tgz"] = (staging / "CUB_200_2011.tgz").read_bytes()
    source = dataclasses.replace(CUB, url=f"{base}/CUB_200_2011.tgz?download=1", md5=md5)
    assert source.problems(root, allow_download=True) == []  # reachable: nothing to report
    assert source.problems(root, allow_download=False) != []
    folder = source.prepare(root)
    assert folder == root / "CUB_200_2011"
    assert sorted(p.name for p in root.iterdir()) == ["CUB_200_2011", "CUB_200_2011.tgz"]
    assert md5_of(root / "CUB_200_2011.tgz") == md5
    items, names = cub_items(folder)
    assert names == CUB_NAMES[:2] and len(items["train"]) + len(items["test"]) == 4
    assert len(state.requests) == 1

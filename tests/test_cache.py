"""lare.data.cache: manifests and keys, the on-disk layout, resumable extraction, corruption checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lare.core.encoders import class_text_embeddings, encode_images
from lare.data.cache import (
    MANIFEST_FIELDS,
    CacheCorruptError,
    CacheMismatchError,
    EmbeddingSet,
    cache_key,
    entry_dir,
    ids_digest,
    is_complete,
    load_embeddings,
    make_manifest,
    open_entry,
    save_embeddings,
)
from lare.data.datasets import ImageDecodeError, ImageFiles, Item
from lare.data.extraction import cached_class_text, extract_embeddings
from lare.utils import atomic_path, write_json_atomic

LABELS = ["a", "b", "c"]
ENTRY_FILES = {"manifest.json", "embeddings.safetensors", "ids.json", "complete.json"}

BASE_INFO = {"model": "lare-tiny-clip", "pretrained": "none", "open_clip_version": "3.3.0",
             "model_config_digest": "0123456789abcdef", "weights_id": "none", "preprocessing": "Compose(Resize(32))", "precision": "fp32",
             "extraction_code": "0123456789abcdef"}
BASE_KW = {"dataset": "cub", "split": "train", "ids": ["x1", "x2", "x3"], "label_names": ["a", "b"], "normalize": True}


def _manifest(info=None, **kw):
    return make_manifest(dict(BASE_INFO, **(info or {})), **dict(BASE_KW, **kw))


def _extract(encoder, items, cache_dir, **kw):
    kw = {"dataset": "fake", "split": "train", "label_names": LABELS, "batch_size": 4, "chunk_size": 4,
          "progress": False, **kw}
    return extract_embeddings(encoder, items, cache_dir=cache_dir, **kw)


class CallCounter:
    """Wraps ``encoder.encode_image_batch``: counts calls and can raise on the n-th one."""

    def __init__(self, encoder, raise_on: int | None = None, exc: BaseException | type = KeyboardInterrupt):
        self.inner, self.calls, self.raise_on, self.exc = encoder.encode_image_batch, 0, raise_on, exc

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.raise_on is not None and self.calls >= self.raise_on:
            raise self.exc
        return self.inner(*args, **kwargs)


# ---------------------------------------------------------------- manifests and keys
def test_manifest_has_the_documented_fields():
    m = _manifest()
    assert tuple(m) == MANIFEST_FIELDS
    assert m["n_items"] == 3 and m["ids_digest"] == ids_digest(["x1", "x2", "x3"])
    assert m["normalize"] is True and m["label_names"] == ["a", "b"]


def test_cache_key_is_deterministic_and_survives_json():
    a, b = _manifest(), _manifest()
    assert cache_key(a) == cache_key(b)
    assert cache_key(json.loads(json.dumps(a))) == cache_key(a)  # the stored manifest gives the same key
    assert entry_dir("/c", a) == entry_dir("/c", b)
    assert entry_dir("/c", a) == Path("/c") / "cub" / "train" / f"lare-tiny-clip-{cache_key(a)}"


CHANGES = {
    "model": lambda: _manifest({"model": "lare-tiny-coca"}),
    "pretrained": lambda: _manifest({"pretrained": "openai"}),
    "open_clip_version": lambda: _manifest({"open_clip_version": "3.2.0"}),
    "model_config_digest": lambda: _manifest({"model_config_digest": "fedcba9876543210"}),
    "preprocessing": lambda: _manifest({"preprocessing": "Compose(Resize(224))"}),
    "precision": lambda: _manifest({"precision": "bf16"}),
    "normalize": lambda: _manifest(normalize=False),
    "dataset": lambda: _manifest(dataset="cub-paintings"),
    "split": lambda: _manifest(split="test"),
    "ids_order": lambda: _manifest(ids=["x2", "x1", "x3"]),
    "ids_membership": lambda: _manifest(ids=["x1", "x2", "x4"]),
    "ids_count": lambda: _manifest(ids=["x1", "x2"]),
    "label_names": lambda: _manifest(label_names=["a", "B"]),
    "label_names_order": lambda: _manifest(label_names=["b", "a"]),
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_changing_a_manifest_field_changes_the_key(field):
    base, changed = _manifest(), CHANGES[field]()
    assert changed != base
    assert cache_key(changed) != cache_key(base)
    assert entry_dir("/c", changed) != entry_dir("/c", base)


def test_ids_digest_rejects_duplicates_and_sees_order():
    with pytest.raises(ValueError, match="unique"):
        ids_digest(["a", "b", "a"])
    with pytest.raises(ValueError):
        make_manifest(BASE_INFO, dataset="d", split="s", ids=["a", "a"], label_names=[])
    assert ids_digest(["a", "b"]) != ids_digest(["b", "a"])
    assert ids_digest(["a", "b"]) == ids_digest(("a", "b"))


# ---------------------------------------------------------------- save / load
def _saved_entry(tmp_path, n=5, d=4):
    ids = [f"i{k}" for k in range(n)]
    m = make_manifest(BASE_INFO, dataset="d", split="s", ids=ids, label_names=LABELS)
    emb = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([k % 3 for k in range(n)])
    path = tmp_path / "entry"
    save_embeddings(path, m, emb, labels, ids)
    return path, m, emb, labels, ids


def test_save_load_round_trip(tmp_path):
    path, m, emb, labels, ids = _saved_entry(tmp_path)
    assert {p.name for p in path.iterdir()} == ENTRY_FILES
    got = load_embeddings(path, m)
    assert torch.equal(got.embeddings, emb) and got.embeddings.dtype == torch.float32
    assert torch.equal(got.labels, labels) and got.labels.dtype == torch.int64
    assert got.ids == ids and got.manifest == m and got.path == path and len(got) == 5
    done = json.loads((path / "complete.json").read_text())
    assert done["n"] == 5 and done["dim"] == 4 and len(done["sha256"]) == 64


def test_save_rejects_inconsistent_input(tmp_path):
    ids = ["a", "b", "c"]
    m = make_manifest(BASE_INFO, dataset="d", split="s", ids=ids, label_names=LABELS)
    with pytest.raises(ValueError, match="agree"):
        save_embeddings(tmp_path / "e1", m, torch.zeros(3, 2), torch.zeros(2), ids)
    with pytest.raises(ValueError, match="manifest"):
        save_embeddings(tmp_path / "e2", m, torch.zeros(3, 2), torch.zeros(3), ["a", "c", "b"])
    assert not is_complete(tmp_path / "e1") and not is_complete(tmp_path / "e2")


def test_load_missing_entry_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="extract"):
        load_embeddings(tmp_path / "nothing")


@pytest.mark.parametrize("field, value", [("model", "ViT-B-32"), ("pretrained", "openai"), ("precision", "bf16"),
                                          ("normalize", False), ("label_names", ["x", "y"]),
                                          ("model_config_digest", "ffff"), ("extraction_code", "eeee")])
def test_load_with_differing_expectation_names_the_field(tmp_path, field, value):
    path, m, *_ = _saved_entry(tmp_path)
    with pytest.raises(CacheMismatchError) as err:
        load_embeddings(path, dict(m, **{field: value}))
    assert f"{field}: cache has" in str(err.value)
    # Only the differing field is named.
    others = [k for k in m if k != field and f"{k}: cache has" in str(err.value)]
    assert others == []
    load_embeddings(path, m)  # the matching expectation still loads


def test_corrupted_embeddings_flipped_bytes(tmp_path):
    path, m, *_ = _saved_entry(tmp_path)
    f = path / "embeddings.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: the file still parses, the values are wrong
    f.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match="checksum"):
        load_embeddings(path, m)


def test_corrupted_embeddings_truncated(tmp_path):
    path, m, *_ = _saved_entry(tmp_path)
    f = path / "embeddings.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CacheCorruptError):
        load_embeddings(path, m)


def test_ids_json_edited_is_detected(tmp_path):
    path, m, *_ = _saved_entry(tmp_path)
    ids = json.loads((path / "ids.json").read_text())
    (path / "ids.json").write_text(json.dumps(ids[::-1]))
    with pytest.raises(CacheCorruptError, match="ids.json"):
        load_embeddings(path, m)


def _break_embeddings_unverified(path):
    f = path / "embeddings.safetensors"
    f.write_bytes(f.read_bytes()[:20])
    return {"verify": False}


def _break_ids_json(path):
    (path / "ids.json").write_text('["i0", ')
    return {}


def _break_manifest_json(path):
    (path / "manifest.json").write_text('{"model": ')
    return {}


@pytest.mark.parametrize("breaker", [_break_embeddings_unverified, _break_ids_json, _break_manifest_json],
                         ids=["truncated-embeddings-verify-false", "ids-json", "manifest-json"])
def test_unreadable_files_raise_cache_corrupt(tmp_path, breaker):
    path, m, *_ = _saved_entry(tmp_path)
    kw = breaker(path)
    with pytest.raises(CacheCorruptError):
        load_embeddings(path, **kw)


def test_incomplete_entry_refuses_to_load(tmp_path):
    path, m, *_ = _saved_entry(tmp_path)
    (path / "complete.json").unlink()
    with pytest.raises(CacheCorruptError, match="incomplete.*(resume|again)"):
        load_embeddings(path, m)


def test_open_entry_refuses_a_folder_with_another_manifest(tmp_path):
    m = _manifest()
    path = open_entry(tmp_path, m)
    assert path == entry_dir(tmp_path, m)
    assert json.loads((path / "manifest.json").read_text()) == m
    assert open_entry(tmp_path, m) == path  # the same manifest reopens it
    edited = dict(m, model="ViT-B-32")
    write_json_atomic(path / "manifest.json", edited)
    with pytest.raises(CacheMismatchError) as err:
        open_entry(tmp_path, m)
    assert "model: cache has" in str(err.value) and "ViT-B-32" in str(err.value)


# ---------------------------------------------------------------- EmbeddingSet
def test_subset_keeps_the_requested_order():
    emb = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    es = EmbeddingSet(emb, torch.tensor([0, 1, 2, 0]), ["a", "b", "c", "d"], {"dataset": "d", "split": "s"})
    sub = es.subset(["c", "a", "d"])
    assert sub.ids == ["c", "a", "d"]
    assert torch.equal(sub.embeddings, emb[[2, 0, 3]])
    assert torch.equal(sub.labels, torch.tensor([2, 0, 0]))
    assert len(sub) == 3 and sub.manifest is es.manifest
    with pytest.raises(KeyError, match="zz"):
        es.subset(["a", "zz"])


# ---------------------------------------------------------------- extraction
def test_extract_writes_the_layout_and_matches_direct_encoding(tiny_clip, fake_images, tmp_path):
    es = _extract(tiny_clip, fake_images, tmp_path / "cache")
    manifest = make_manifest(tiny_clip.info(), dataset="fake", split="train", ids=[it.id for it in fake_images],
                             label_names=LABELS, normalize=True)
    assert es.path == entry_dir(tmp_path / "cache", manifest)
    assert es.path.parent == tmp_path / "cache" / "fake" / "train"
    assert {p.name for p in es.path.iterdir()} == ENTRY_FILES  # no chunks/ and no temporary files left
    assert json.loads((es.path / "manifest.json").read_text()) == manifest == es.manifest
    assert json.loads((es.path / "ids.json").read_text()) == [it.id for it in fake_images]
    assert es.ids == [it.id for it in fake_images]
    assert torch.equal(es.labels, torch.tensor([it.label for it in fake_images]))
    assert es.embeddings.shape == (len(fake_images), 32)
    direct = encode_images(tiny_clip, ImageFiles(fake_images, tiny_clip.preprocess), batch_size=4, progress=False)
    torch.testing.assert_close(es.embeddings, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(es.embeddings.norm(dim=-1), torch.ones(len(fake_images)))


def test_extract_raw_embeddings_get_their_own_entry(tiny_clip, fake_images, tmp_path):
    unit = _extract(tiny_clip, fake_images, tmp_path)
    raw = _extract(tiny_clip, fake_images, tmp_path, normalize=False)
    assert raw.path != unit.path and raw.manifest["normalize"] is False
    assert not torch.allclose(raw.embeddings.norm(dim=-1), torch.ones(len(fake_images)), atol=1e-2)
    torch.testing.assert_close(torch.nn.functional.normalize(raw.embeddings, dim=-1), unit.embeddings)


def test_second_extraction_loads_without_encoding(tiny_clip, fake_images, tmp_path, monkeypatch):
    first = _extract(tiny_clip, fake_images, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran although the cache entry is complete")

    monkeypatch.setattr(tiny_clip, "encode_image_batch", refuse)
    second = _extract(tiny_clip, fake_images, tmp_path)
    assert second.path == first.path
    assert torch.equal(second.embeddings, first.embeddings) and second.ids == first.ids
    # Another item order is another entry: the encoder is asked again.
    with pytest.raises(AssertionError, match="encoder ran"):
        _extract(tiny_clip, fake_images[::-1], tmp_path)


def test_interrupted_extraction_resumes_with_missing_chunks_only(tiny_clip, fake_images, tmp_path, monkeypatch):
    kw = {"batch_size": 3, "chunk_size": 3}  # 10 items: 4 chunks of 3, 3, 3, 1 items, one batch each
    reference = _extract(tiny_clip, fake_images, tmp_path / "reference", **kw)

    crash = CallCounter(tiny_clip, raise_on=3)
    monkeypatch.setattr(tiny_clip, "encode_image_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny_clip, fake_images, tmp_path / "cache", **kw)
    monkeypatch.undo()
    assert crash.calls == 3
    (path,) = (tmp_path / "cache" / "fake" / "train").iterdir()
    # chunk files live under their chunk size: a resume with another size cannot mistake them
    assert sorted(p.name for p in (path / "chunks" / "size3").iterdir()) == ["000000.safetensors", "000001.safetensors"]
    assert not (path / "complete.json").exists() and not (path / "embeddings.safetensors").exists()
    with pytest.raises(CacheCorruptError, match="resume"):
        load_embeddings(path)

    count = CallCounter(tiny_clip)
    monkeypatch.setattr(tiny_clip, "encode_image_batch", count)
    resumed = _extract(tiny_clip, fake_images, tmp_path / "cache", **kw)
    assert count.calls == 2  # chunks 2 and 3 only
    assert resumed.path == path and not (path / "chunks").exists()
    assert torch.equal(resumed.embeddings, reference.embeddings)
    assert torch.equal(resumed.labels, reference.labels) and resumed.ids == reference.ids
    assert torch.equal(load_embeddings(path, resumed.manifest).embeddings, reference.embeddings)


def test_unreadable_chunk_is_redone(tiny_clip, fake_images, tmp_path, monkeypatch):
    kw = {"batch_size": 3, "chunk_size": 3}
    reference = _extract(tiny_clip, fake_images, tmp_path / "reference", **kw)
    monkeypatch.setattr(tiny_clip, "encode_image_batch", CallCounter(tiny_clip, raise_on=3))
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny_clip, fake_images, tmp_path / "cache", **kw)
    monkeypatch.undo()
    (path,) = (tmp_path / "cache" / "fake" / "train").iterdir()
    (path / "chunks" / "size3" / "000001.safetensors").write_bytes(b"not a safetensors file")
    count = CallCounter(tiny_clip)
    monkeypatch.setattr(tiny_clip, "encode_image_batch", count)
    resumed = _extract(tiny_clip, fake_images, tmp_path / "cache", **kw)
    assert count.calls == 3  # chunks 1, 2 and 3
    assert torch.equal(resumed.embeddings, reference.embeddings)


def test_resume_with_another_chunk_size_gives_the_right_rows(tiny_clip, fake_images, tmp_path, monkeypatch):
    reference = _extract(tiny_clip, fake_images, tmp_path / "reference", batch_size=2, chunk_size=2)
    monkeypatch.setattr(tiny_clip, "encode_image_batch", CallCounter(tiny_clip, raise_on=3))
    with pytest.raises(KeyboardInterrupt):  # chunks 0 and 1 (items 0-3) are written
        _extract(tiny_clip, fake_images, tmp_path / "cache", batch_size=2, chunk_size=2)
    monkeypatch.undo()
    # chunk_size=8: chunk 1 is items 8-9, two rows like the leftover chunk 1 (items 2-3).
    resumed = _extract(tiny_clip, fake_images, tmp_path / "cache", batch_size=2, chunk_size=8)
    torch.testing.assert_close(resumed.embeddings, reference.embeddings, rtol=1e-5, atol=1e-6)


def test_extract_refuses_a_corrupted_complete_entry(tiny_clip, fake_images, tmp_path):
    es = _extract(tiny_clip, fake_images, tmp_path)
    f = es.path / "embeddings.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CacheCorruptError):
        _extract(tiny_clip, fake_images, tmp_path)


def test_extract_refuses_an_edited_manifest(tiny_clip, fake_images, tmp_path):
    es = _extract(tiny_clip, fake_images, tmp_path)
    write_json_atomic(es.path / "manifest.json", dict(es.manifest, model="ViT-B-32"))
    with pytest.raises(CacheMismatchError, match="model: cache has"):
        _extract(tiny_clip, fake_images, tmp_path)


def test_extract_rejects_bad_sizes_before_work(tiny_clip, fake_images, tmp_path):
    with pytest.raises(ValueError, match="chunk_size"):
        _extract(tiny_clip, fake_images, tmp_path / "cache", chunk_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        _extract(tiny_clip, fake_images, tmp_path / "cache", batch_size=0)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_undecodable_image_names_the_file(tiny_clip, fake_images, tmp_path, num_workers):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\x00\x01garbage, not a JPEG" * 10)
    items = [*fake_images[:3], Item(id="broken", path=str(bad), label=0), *fake_images[3:]]
    with pytest.raises(ImageDecodeError) as err:
        _extract(tiny_clip, items, tmp_path / "cache", num_workers=num_workers)
    assert str(bad) in str(err.value)
    assert not any((tmp_path / "cache").rglob("complete.json"))


# ---------------------------------------------------------------- class text embeddings
def test_cached_class_text(tiny_clip, tmp_path, monkeypatch):
    classes, templates = ["cardinal", "blue jay"], ["a photo of a {}.", "a drawing of a {}."]
    first = cached_class_text(tiny_clip, classes, templates, cache_dir=tmp_path)
    torch.testing.assert_close(first, class_text_embeddings(tiny_clip, classes, templates))
    (entry,) = (tmp_path / "text" / "class").iterdir()
    assert is_complete(entry)

    calls = []
    inner = tiny_clip.encode_text
    monkeypatch.setattr(tiny_clip, "encode_text", lambda *a, **k: calls.append(1) or inner(*a, **k))
    second = cached_class_text(tiny_clip, classes, templates, cache_dir=tmp_path)
    assert calls == [] and torch.equal(second, first)

    other = cached_class_text(tiny_clip, classes, templates[:1], cache_dir=tmp_path)
    assert calls, "another template list must be computed, not read from the first entry"
    assert not torch.allclose(other, first)
    torch.testing.assert_close(other, class_text_embeddings(tiny_clip, classes, templates[:1]))
    assert len(list((tmp_path / "text" / "class").iterdir())) == 2


# ---------------------------------------------------------------- atomic writes
def test_atomic_path_leaves_nothing_when_the_block_raises(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp != target
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary file is gone too


def test_atomic_path_keeps_the_old_file_when_the_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_json_atomic_round_trip(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"nested": True}, "s": "é"}
    write_json_atomic(tmp_path / "x" / "y.json", obj)
    assert json.loads((tmp_path / "x" / "y.json").read_text()) == obj
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["y.json"]

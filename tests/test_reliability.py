"""Reliability (issue 6): what the artifact does when things go wrong, one test per case.

The catalogue in docs/troubleshooting.md points at these tests and at the tests of the
other files that already cover a case. Everything here runs offline on a CPU: tiny random-weight
open_clip encoders, fake image files, the synthetic demo data.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from executed_notebooks import notebook_warnings
from fake_datasets import make_fake_cub_archive, make_fake_paintings
from PIL import Image

import lare.data.cache as C
import lare.data.extraction as X
from lare.compare.results import aggregate, append_rows, make_rows, read_rows
from lare.data.cache import (
    CacheCorruptError,
    CacheMismatchError,
    CacheWriteError,
    entry_dir,
    is_complete,
    load_embeddings,
    make_manifest,
)
from lare.data.datasets import ImageDecodeError, Item
from lare.data.extraction import extract_embeddings
from lare.data.sources import CUB
from lare.pipeline import experiment, ingest, preflight
from lare.pipeline.params import ParameterError, build, load_params, overrides_from

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["a", "b", "c"]

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


# ---------------------------------------------------------------- helpers
def _extract(encoder, items, cache_dir, **kw):
    kw = {"dataset": "fake", "split": "train", "label_names": LABELS, "batch_size": 4, "chunk_size": 4,
          "progress": False, **kw}
    return extract_embeddings(encoder, items, cache_dir=cache_dir, **kw)


def _tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


def _write_garbage_jpg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG " * 8)  # a JPEG magic number, then garbage
    return path


class Counting:
    """Wraps ``encode_image_batch``: counts the batches embedded (and can refuse every call)."""

    def __init__(self, encoder, refuse: bool = False):
        self.inner, self.calls, self.refuse = encoder.encode_image_batch, 0, refuse

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.refuse:
            raise AssertionError("the encoder ran although every chunk was already on disk")
        return self.inner(*args, **kwargs)


class Relabelled:
    """An encoder whose :meth:`info` claims other settings (another model, tag, precision...)."""

    def __init__(self, encoder, **changes):
        self._encoder, self._changes = encoder, changes

    def info(self):
        return {**self._encoder.info(), **self._changes}

    def __getattr__(self, name):
        return getattr(self._encoder, name)


def _env() -> dict[str, str]:
    env = {**os.environ, "LARE_NO_SETUP": "1", "HF_HUB_OFFLINE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("LARE_DATA_ROOT", None)
    return env


def run_all(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "run_all.sh"), *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def _yaml_file(path: Path, values: dict) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


# ================================================================ 1. data
def test_undecodable_image_fails_naming_the_file_or_is_skipped_where_allowed(tiny_clip, fake_images, tmp_path):
    bad = _write_garbage_jpg(tmp_path / "images" / "broken.jpg")
    items = [*fake_images[:5], Item(id="broken", path=str(bad), label=1), *fake_images[5:]]
    cache = tmp_path / "cache"

    # Not allowed (the default): the extraction stops and names the file and the item.
    with pytest.raises(ImageDecodeError) as err:
        _extract(tiny_clip, items, cache)
    assert str(bad) in str(err.value) and "'broken'" in str(err.value)
    assert not list(cache.rglob("complete.json")) and not list(cache.rglob("embeddings.safetensors"))

    # Allowed: it completes without that image and records it.
    es = _extract(tiny_clip, items, cache, skip_bad_images=True)
    assert es.skipped == ["broken"]
    assert es.ids == [it.id for it in fake_images] and len(es) == len(fake_images)
    done = json.loads((es.path / "complete.json").read_text())
    assert done["skipped"] == ["broken"] and done["n"] == len(fake_images)
    assert es.manifest["n_items"] == len(items)  # the manifest still describes every requested item
    assert json.loads((es.path / "ids.json").read_text()) == es.ids
    reloaded = load_embeddings(es.path, es.manifest)
    assert reloaded.skipped == ["broken"] and reloaded.ids == es.ids

    # The other rows are those of an extraction without the bad file.
    clean = _extract(tiny_clip, fake_images, tmp_path / "clean")
    torch.testing.assert_close(es.embeddings, clean.embeddings, rtol=1e-5, atol=1e-6)
    assert torch.equal(es.labels, clean.labels)

    # A later run that does not allow skipping refuses the entry and names the skipped ids.
    with pytest.raises(ImageDecodeError) as err:
        _extract(tiny_clip, items, cache)
    assert "broken" in str(err.value) and str(es.path) in str(err.value)
    assert _tmp_files(tmp_path) == []


def test_resume_without_skipping_refuses_chunks_that_skipped_images(tiny_clip, fake_images, tmp_path, monkeypatch):
    bad = _write_garbage_jpg(tmp_path / "images" / "broken.jpg")
    items = [Item(id="broken", path=str(bad), label=1), *fake_images]  # in chunk 0
    cache = tmp_path / "cache"
    calls = {"n": 0}
    inner = tiny_clip.encode_image_batch

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return inner(*args, **kwargs)

    monkeypatch.setattr(tiny_clip, "encode_image_batch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):  # chunks 0 and 1 are written, chunk 0 with 'broken' left out
        _extract(tiny_clip, items, cache, skip_bad_images=True)
    monkeypatch.undo()
    with pytest.raises(ImageDecodeError, match="broken"):
        _extract(tiny_clip, items, cache)  # skipping not allowed this time


@pytest.mark.parametrize("how", ["wrong-checksum", "truncated"])
def test_damaged_archive_is_reported_by_the_preflight_and_nothing_extracted(tmp_path, capsys, how):
    root = tmp_path / "data"
    make_fake_cub_archive(root)  # a well-formed archive whose MD5 is not the official one
    make_fake_paintings(root, classes=3, per_class=1)
    archive = root / CUB.archive
    if how == "truncated":  # a half-downloaded file
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert preflight.main(["--profile", "paper", "-p", "data_root", str(root), "-p", "download", "False"]) == 1
    err = capsys.readouterr().err
    assert f"{archive} does not match its MD5 {CUB.md5}" in err and "delete it and download it again" in err
    assert CUB.url in err and "nothing was started" in err
    assert sorted(p.name for p in root.iterdir()) == ["CUB-200-Painting", CUB.archive], "nothing was extracted"


def test_image_folder_splits_with_different_class_lists_are_refused(tmp_path):
    data = tmp_path / "data"
    for split, classes in {"train": ["001.Cardinal", "002.Blue_Jay"], "test": ["001.Cardinal", "002.Blue_Jay"],
                           "ood": ["001.Cardinal", "002.Crow"]}.items():
        for c in classes:
            (data / "mine" / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16), (200, 30, 30)).save(data / "mine" / split / c / "x.jpg")
    with pytest.raises(ValueError, match="has other classes than") as err:
        ingest.extract(build({"encoders": {"clip": {"model": "lare-tiny-clip", "pretrained": "none"}},
                              "run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
                              "data_root": str(data), "dataset": "mine", "source": "images", "batch_size": 4,
                              "device": "cpu", "progress": False}), "clip")
    assert str(data / "mine" / "ood") in str(err.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists(), "refused before any embedding"


# ================================================================ 2. cache
OTHER_SETTINGS = {  # manifest field -> a value another run would have used
    "model": "ViT-L-14",
    "pretrained": "openai",
    "preprocessing": "Compose(Resize(size=224), CenterCrop(size=(224, 224)), ToTensor())",
    "precision": "bf16",
    "split": "test",
}


@pytest.mark.parametrize("field", sorted(OTHER_SETTINGS))
def test_cache_from_another_setting_is_refused_naming_the_field(tiny_clip, fake_images, tmp_path, monkeypatch, field):
    cache = tmp_path / "cache"
    es = _extract(tiny_clip, fake_images, cache)
    value = OTHER_SETTINGS[field]

    # Loading an entry with another expectation: refused, the differing field (only it) is named.
    with pytest.raises(CacheMismatchError) as err:
        load_embeddings(es.path, dict(es.manifest, **{field: value}))
    msg = str(err.value)
    assert f"{field}: cache has {json.dumps(es.manifest[field])[:60]}" in msg and json.dumps(value)[:60] in msg
    assert [k for k in es.manifest if k != field and f"{k}: cache has" in msg] == []
    assert "Re-extract" in msg

    # An entry folder copied (or left) under the key of the other settings: the extraction refuses it too.
    encoder, kw = (tiny_clip, {"split": value}) if field == "split" else (Relabelled(tiny_clip, **{field: value}), {})
    other = make_manifest(encoder.info(), dataset="fake", split=kw.get("split", "train"),
                          ids=[it.id for it in fake_images], label_names=LABELS)
    assert other[field] == value
    shutil.copytree(es.path, entry_dir(cache, other))
    monkeypatch.setattr(tiny_clip, "encode_image_batch", Counting(tiny_clip, refuse=True))
    with pytest.raises(CacheMismatchError, match=f"{field}: cache has"):
        _extract(encoder, fake_images, cache, **kw)


def test_cache_of_another_model_is_refused(tiny_clip, tiny_coca, fake_images, tmp_path):
    es = _extract(tiny_clip, fake_images, tmp_path / "cache")
    coca = make_manifest(tiny_coca.info(), dataset="fake", split="train", ids=[it.id for it in fake_images],
                         label_names=LABELS)
    assert C.cache_key(coca) != C.cache_key(es.manifest)  # another model never even looks at this entry
    with pytest.raises(CacheMismatchError) as err:
        load_embeddings(es.path, coca)
    assert 'model: cache has "lare-tiny-clip", expected "lare-tiny-coca"' in str(err.value)


def _damage(file: Path, how: str) -> None:
    data = bytearray(file.read_bytes())
    if how == "truncated":
        del data[len(data) // 2:]
    else:  # one flipped byte inside the tensor data: the file still parses, a value is wrong
        data[-5] ^= 0x10
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped-byte"])
def test_corrupted_tensor_file_is_detected_and_reextracted_only_with_repair(tiny_clip, fake_images, tmp_path, how):
    cache = tmp_path / "cache"
    original = _extract(tiny_clip, fake_images, cache)
    expected = original.embeddings.clone()  # (the loaded tensors map the file: see the next test)
    f = original.path / "embeddings.safetensors"
    _damage(f, how)
    damaged = f.read_bytes()

    with pytest.raises(CacheCorruptError, match="checksum") as err:
        load_embeddings(original.path, original.manifest)
    assert str(f) in str(err.value)
    with pytest.raises(CacheCorruptError, match="checksum"):
        _extract(tiny_clip, fake_images, cache)  # not asked to repair: stop and say so
    assert f.read_bytes() == damaged, "nothing is re-extracted unless asked"

    repaired = _extract(tiny_clip, fake_images, cache, repair=True)
    assert repaired.path == original.path
    assert torch.equal(repaired.embeddings, expected)
    assert torch.equal(repaired.labels, original.labels) and repaired.ids == original.ids
    assert torch.equal(load_embeddings(original.path, original.manifest).embeddings, expected)
    assert not (original.path / "chunks").exists() and _tmp_files(cache) == []


def test_loaded_embeddings_do_not_change_when_the_file_is_damaged_later(tiny_clip, fake_images, tmp_path):
    es = _extract(tiny_clip, fake_images, tmp_path / "cache")
    loaded = load_embeddings(es.path, es.manifest)
    before = loaded.embeddings.clone()
    _damage(es.path / "embeddings.safetensors", "flipped-byte")
    assert torch.equal(loaded.embeddings, before)


KILLED_EXTRACTION = """\
import json, sys, time

from lare.data.extraction import extract_embeddings
from lare.data.datasets import Item
from lare.core.encoders import load_encoder

spec = json.loads(open(sys.argv[1]).read())
encoder = load_encoder("lare-tiny-clip", "none", device="cpu")
inner = encoder.encode_image_batch


def slow(*args, **kwargs):  # slow enough to be killed between two chunks
    time.sleep(spec["sleep"])
    return inner(*args, **kwargs)


encoder.encode_image_batch = slow
extract_embeddings(encoder, [Item(**d) for d in spec["items"]], cache_dir=spec["cache_dir"], dataset="fake",
                   split="train", label_names=spec["labels"], batch_size=2, chunk_size=2, progress=False)
print("finished without being killed")
"""


def _run_and_sigkill(cmd: list[str], timeout: float, ready, what: str) -> None:
    """Start ``cmd``, wait until ``ready()`` is true, then SIGKILL it (a crash, no clean-up)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready(), f"{what} (exit {proc.poll()}): {proc.stdout.read() if proc.poll() is not None else 'timed out'}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_extraction_killed_with_sigkill_resumes_to_the_same_embeddings(tiny_clip, fake_images, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"items": [it.__dict__ for it in fake_images], "cache_dir": str(cache),
                                "labels": LABELS, "sleep": 0.5}))
    script = tmp_path / "extract.py"
    script.write_text(KILLED_EXTRACTION)
    _run_and_sigkill([sys.executable, str(script), str(spec)], 180,
                     lambda: list(cache.glob("fake/train/*/chunks/size2/*.safetensors")), "no chunk was written")
    (path,) = (cache / "fake" / "train").iterdir()
    done = sorted((path / "chunks" / "size2").glob("*.safetensors"))
    assert 1 <= len(done) < 5, "killed midway: some chunks done, not all"
    assert not is_complete(path) and not (path / "embeddings.safetensors").exists()
    with pytest.raises(CacheCorruptError, match="incomplete"):
        load_embeddings(path)

    counting = Counting(tiny_clip)
    monkeypatch.setattr(tiny_clip, "encode_image_batch", counting)
    resumed = _extract(tiny_clip, fake_images, cache, batch_size=2, chunk_size=2)
    monkeypatch.undo()
    assert counting.calls == 5 - len(done), "only the missing chunks are embedded again"
    reference = _extract(tiny_clip, fake_images, tmp_path / "reference", batch_size=2, chunk_size=2)
    assert resumed.path == path
    assert torch.equal(resumed.embeddings, reference.embeddings)
    assert torch.equal(resumed.labels, reference.labels) and resumed.ids == reference.ids
    assert torch.equal(load_embeddings(path, resumed.manifest).embeddings, reference.embeddings)
    assert not (path / "chunks").exists()
    assert _tmp_files(cache) == [], "no temporary file is left behind"


@pytest.mark.parametrize("where", ["first-chunk", "final-file"])
def test_full_or_read_only_cache_folder_gives_a_clear_error_and_nothing_half_written(
        tiny_clip, fake_images, tmp_path, monkeypatch, where):
    # Tests run as root, where chmod does not stop writes: a full disk is simulated instead.
    cache = tmp_path / "cache"
    real = C.save_file

    def disk_full(tensors, filename, *args, **kwargs):
        if where == "first-chunk" or "embeddings.safetensors" in Path(filename).name:
            Path(filename).write_bytes(b"\0" * 64)  # a few bytes make it, as on a real full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(C, "save_file", disk_full)  # the final file
    monkeypatch.setattr(X, "save_file", disk_full)  # the chunks
    with pytest.raises(CacheWriteError) as err:
        _extract(tiny_clip, fake_images, cache)
    monkeypatch.undo()
    msg = str(err.value)
    assert "read-only or full" in msg and "No space left on device" in msg and str(cache) in msg
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert not list(cache.rglob("embeddings.safetensors")) and not list(cache.rglob("complete.json"))
    assert _tmp_files(cache) == [], "no half-written temporary file is left behind"
    (path,) = (cache / "fake" / "train").iterdir()
    chunks = sorted((path / "chunks" / "size4").glob("*.safetensors")) if (path / "chunks").exists() else []
    assert len(chunks) == (0 if where == "first-chunk" else 3), "finished chunks are kept"

    # Once there is space again, the same call finishes (from the kept chunks when there are).
    counting = Counting(tiny_clip, refuse=where == "final-file")
    monkeypatch.setattr(tiny_clip, "encode_image_batch", counting)
    es = _extract(tiny_clip, fake_images, cache)
    monkeypatch.undo()
    reference = _extract(tiny_clip, fake_images, tmp_path / "reference")
    assert torch.equal(es.embeddings, reference.embeddings) and es.ids == reference.ids


# ================================================================ 3. parameters
def _encoders_file(tmp_path: Path, clip: dict) -> list[str]:
    encoders = {"clip": clip, "coca": {"model": "lare-tiny-coca", "pretrained": "none"}}
    return ["-f", _yaml_file(tmp_path / "encoders.yaml", {"encoders": encoders}), "-p", "source", "images",
            "-p", "dataset", "toy_reliability", "-p", "data_root", str(tmp_path / "data")]


BAD_PARAMETERS = {  # case -> (options given to run_all.sh / the preflight, texts the report must contain)
    "unknown-dataset": (lambda t: ["-p", "source", "images", "-p", "dataset", "cubb", "-p", "data_root", str(t / "data")],
                        ["dataset 'cubb'", "not one of ['cifar100', 'cifar100_lt10', 'cifar100_lt100', 'cifar100_lt50', "
                         "'cub', 'domainnet']", "expected train/ and test/"]),
    "unknown-model": (lambda t: _encoders_file(t, {"model": "ViT-L-13", "pretrained": "openai"}),
                      ["unknown open_clip model 'ViT-L-13'", "nearest valid names", "ViT-L-14"]),
    "unknown-pretrained-tag": (lambda t: _encoders_file(t, {"model": "ViT-L-14", "pretrained": "opnai"}),
                               ["unknown pretrained tag 'opnai' for model 'ViT-L-14'", "nearest valid tags: openai"]),
    "alpha-above-1": (lambda t: ["-f", _yaml_file(t / "box.yaml", {"box": {"alpha": 1.5}})],
                      ["box: alpha", "must lie in [0, 1], got 1.5"]),
    "alpha-below-0-by-p": (lambda t: ["-p", "box", '{"alpha": -0.5}'], ["box"]),
    "unknown-training-precision": (lambda t: ["-p", "probe", '{"precision": "fp16"}'],
                                   ["probe: precision must be one of ('fp32', 'bf16')", "got 'fp16'"]),
    "no-seeds": (lambda t: ["-f", _yaml_file(t / "seeds.yaml", {"seeds": []})],
                 ["seeds must be a non-empty list of integers, got []"]),
    "no-seeds-by-p": (lambda t: ["-p", "seeds", "[]"], ["seeds"]),
    "seeds-not-a-list": (lambda t: ["-p", "seeds", "3"], ["parameter 'seeds' must be a list, got 3 (int)"]),
    "val-fraction-not-a-number": (lambda t: ["-p", "val_fraction", "abc"],
                                  ["parameter 'val_fraction' must be a float, got 'abc' (str)"]),
    "unknown-parameter-name": (lambda t: ["-p", "sed", "3"], ["unknown parameter 'sed' (did you mean seeds?)"]),
}


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_preflight_rejects_bad_parameters_with_what_to_do(case, tmp_path, capsys):
    options, needles = BAD_PARAMETERS[case]
    assert preflight.main(["--profile", "demo", *options(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cannot run yet; nothing was started" in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in the report:\n{err}"
    assert not (tmp_path / "data").exists(), "the preflight writes nothing"


@needs_bash
def test_run_all_rejects_bad_parameters_before_any_notebook(tmp_path):
    run = tmp_path / "run"
    t0 = time.monotonic()
    proc = run_all("--profile", "demo", "-p", "seeds", "3", "-p", "val_fraction", "abc", "-p", "sed", "1",
                   "-p", "run_dir", str(run), "-p", "cache_dir", str(tmp_path / "cache"),
                   "-p", "figures_root", str(tmp_path / "figures"), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for needle in ("nothing was started", "parameter 'seeds' must be a list, got 3 (int)",
                   "parameter 'val_fraction' must be a float, got 'abc'", "did you mean seeds?",
                   "[synthetic_domains]", "[synthetic_fewshot]"):
        assert needle in proc.stderr, f"{needle!r} not in:\n{out}"
    assert not (run / "notebooks").exists() or not any((run / "notebooks").iterdir()), "a notebook ran"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "figures").exists()
    assert time.monotonic() - t0 < 120


SPEC = {"num_classes": 4, "dim": 16, "n_train_per_class": 8, "n_test_per_class": 3, "n_ood_per_class": 3}


def test_shots_beyond_the_smallest_class_rejected_before_any_training(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    ingest.write_synthetic(run, cache, "synth", "coca", SPEC, noise=0.6)

    def params(shots):
        return build({"encoders": {"coca": {"noise": 0.6}}, "dataset": "synth", "run_dir": str(run), "seeds": [0],
                      "shots": shots, "val_fraction": 0.25, "device": "cpu", "progress": False,
                      "protocol": "fixed", "box": {"epochs": 1}, "probe": {"epochs": 1}, "lads": {"epochs": 1}})

    with pytest.raises(ParameterError) as err:  # 8 per class, 2 to validation: at most 6 shots
        experiment.train_boxes(params([0, 2, 7]))
    msg = str(err.value)
    assert "shots [7]" in msg and "smallest class" in msg and "use shots <= 6" in msg
    with pytest.raises(ParameterError, match="smallest class"):
        experiment.run_methods(params([7]), experiment.baseline_methods())
    assert not (run / "boxes").exists() and not (run / "splits").exists() and not (run / "results.jsonl").exists()
    experiment._check_shots(params([0, 6]), ["coca"])  # the largest possible k is fine


def test_preflight_rejects_shots_beyond_the_smallest_class(tmp_path):
    # demo: 30 training items per class, 20 % to validation: at most 24 shots
    extra = [("-f", _yaml_file(tmp_path / "shots.yaml", {"shots": [100, 0]}))]
    problems = preflight.check(load_params("demo", "synthetic_domains", overrides_from(extra)))
    assert any("shots" in p for p in problems), problems


@pytest.mark.parametrize("name, raw, value", [("seeds", "[0, 1]", [0, 1]), ("box", '{"alpha": 0.3}', {"alpha": 0.3}),
                                              ("title_note", "x: y: z", "x: y: z"), ("epochs_note", "7", 7)],
                         ids=["list", "dict", "not-yaml-stays-a-string", "int"])
def test_preflight_reads_p_values_as_yaml_like_run_all(name, raw, value):
    """-p values are read as YAML, by the preflight and the orchestrator alike (one parser)."""
    assert overrides_from([("-p", name, raw)])[name] == value


# ================================================================ 4. results
KILLED_WRITER = """\
import os, pathlib, sys, time

from lare.compare import results

path, marker = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
real = pathlib.Path.write_text


def torn(self, data, *args, **kwargs):  # write half of the new file, then hang until killed
    if self.name.endswith(".tmp"):
        with open(self, "w") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        marker.write_text("half written")
        time.sleep(600)
    return real(self, data, *args, **kwargs)


pathlib.Path.write_text = torn
metrics = {"in_domain": {"top1": 81.0, "balanced_acc": 80.0}, "out_of_domain": {"top1": 61.0, "balanced_acc": 60.0}}
results.append_rows(path, results.make_rows(method="lare", encoder="coca", dataset="d", shots=0, seed=1,
                                            metrics_by_domain=metrics, params={"probe": {"epochs": 3}}))
"""


def _rows(seed: int) -> list[dict]:
    metrics = {"in_domain": {"top1": 80.0 + seed, "balanced_acc": 79.0 + seed},
               "out_of_domain": {"top1": 60.0 + seed, "balanced_acc": 59.0 + seed}}
    return make_rows(method="lare", encoder="coca", dataset="d", shots=0, seed=seed, metrics_by_domain=metrics,
                     params={"probe": {"epochs": 3}})


def test_results_writer_killed_midway_leaves_no_partial_row_and_rerun_adds_nothing_twice(tmp_path):
    path = tmp_path / "results.jsonl"
    assert append_rows(path, _rows(0)) == 2
    before = path.read_bytes()
    marker, script = tmp_path / "marker", tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    _run_and_sigkill([sys.executable, str(script), str(path), str(marker)], 120, marker.exists, "the writer never began")

    assert path.read_bytes() == before, "the results file is untouched: no partial row"
    assert [r["seed"] for r in read_rows(path)] == [0, 0]
    # (the torn temporary file may remain beside it under a .tmp name; nothing reads it)

    # Running the same work again adds its rows once (the killed writer's lock died with it).
    assert append_rows(path, _rows(1)) == 2
    assert append_rows(path, _rows(1)) == 0
    assert append_rows(path, _rows(0)) == 0
    rows = read_rows(path)
    assert sorted((r["seed"], r["domain"]) for r in rows) == [(0, "in_domain"), (0, "out_of_domain"),
                                                             (1, "in_domain"), (1, "out_of_domain")]
    assert aggregate(rows)["n_seeds"].tolist() == [2, 2]


# ================================================================ 5. determinism
DEMO_OUTPUTS = ["results.csv", "table1.csv", "table1.md", "table1.tex", "figure3.png"]


@pytest.fixture(scope="module")
def demo_twice(tmp_path_factory):
    """The demo profile run twice with the same seeds into separate folders (concurrently).

    Seeds [0, 1] and shots [1, 0]; the epochs are cut to 2 to keep the suite fast (every code path
    still runs). The lists and mappings are given with -p, so this also shows that -p values reach
    the notebooks typed as YAML (a list stays a list), as the README's examples use them.
    """
    root = tmp_path_factory.mktemp("demo_twice")
    overrides = _yaml_file(root / "overrides.yaml", {"search": {"patience": 2}, "progress": False})
    options = {name: ["--profile", "demo", "-f", overrides, "-p", "seeds", "[0, 1]", "-p", "shots", "[1, 0]",
                      "-p", "box", "{alpha: 0.5}", "-p", "search", '{"max_epochs": 2}',
                      "-p", "search.trials", "2", "-p", "run_dir", str(root / name),
                      "-p", "cache_dir", str(root / f"cache_{name}"), "-p", "figures_root", str(root / f"f{name}")]
               for name in ("a", "b")}
    # one thread each: the two runs share the machine, and two 2-thread kernels on 2 cores thrash
    procs = {name: subprocess.Popen(["bash", str(ROOT / "run_all.sh"), *opts], cwd=ROOT, env={**_env(), "OMP_NUM_THREADS": "1"},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, opts in options.items()}
    outs = {name: p.communicate(timeout=900)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, outs[name][-4000:]
    return {"figures": {name: root / f"f{name}" / "demo" for name in procs}, "run": {name: root / name for name in procs},
            "options": options}


@pytest.mark.slow  # ./run_tests.sh --all
@needs_bash
@pytest.mark.parametrize("name", DEMO_OUTPUTS)
def test_demo_profile_twice_with_the_same_seeds_is_byte_identical(demo_twice, name):
    a, b = demo_twice["figures"]["a"] / name, demo_twice["figures"]["b"] / name
    assert a.is_file() and b.is_file()
    assert a.read_bytes() == b.read_bytes(), f"{name} differs between two runs with the same seeds"


@pytest.mark.slow  # ./run_tests.sh --all
@needs_bash
def test_demo_determinism_compares_real_results(demo_twice):
    agg = pd.read_csv(demo_twice["figures"]["a"] / "results.csv")
    assert set(agg["shots"]) == {0, 1} and (agg["n_seeds"] == 2).all()
    assert {"lare", "lads", "zero-shot", "linear-probe"} <= set(agg["method"])
    assert "LARE" in (demo_twice["figures"]["a"] / "table1.md").read_text()


# ================================================================ 6. notebooks
@pytest.mark.slow  # ./run_tests.sh --all
@needs_bash
def test_executed_demo_notebooks_show_no_warnings(demo_twice):
    """What a JupyterLab user sees of the demo: no warning in any output of any executed notebook
    (every one of them printed TqdmWarning: IProgress not found before ipywidgets was a dependency)."""
    executed = sorted((demo_twice["run"]["a"] / "notebooks").glob("*.ipynb"))
    assert len(executed) == 2 * 4 + 3, [p.name for p in executed]
    warnings = [w for p in executed for w in notebook_warnings(p)]
    assert not warnings, "\n".join(warnings)


@pytest.mark.slow  # ./run_tests.sh --all
@needs_bash
def test_failing_real_notebook_names_the_notebook_the_cell_and_the_error_and_keeps_the_copy(demo_twice):
    """Run b of the demo again after a stale row (another configuration) landed in its results:
    steps 01-04 are up to date, notebook 05 (Table 1) refuses to aggregate and stops the run."""
    run, figures = demo_twice["run"]["b"], demo_twice["figures"]["b"]
    table_before = (figures / "table1.csv").read_bytes()
    rows = read_rows(run / "results.jsonl")
    stale = {**rows[0], "seed": 99, "config_hash": "0" * 16}  # e.g. copied in from an older run
    with open(run / "results.jsonl", "a") as f:
        f.write(json.dumps(stale, sort_keys=True) + "\n")
    kept = run / "notebooks" / "05_table1.ipynb"
    kept.unlink()  # results are not part of the stamps: make run_all.sh run step 05 again
    proc = run_all(*demo_twice["options"]["b"])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "preflight: profile demo ready" in proc.stdout and proc.stdout.count("skipped (up to date)") == 8
    assert "05_table1 " in proc.stdout and "FAILED" in proc.stdout and "06_figure3" not in proc.stdout
    for needle in ("notebook 05_table1 failed", f"executed copy (kept): {kept}",
                   "ValueError: results disagree in parameters within 1 cell(s)", "remove the stale rows",
                   "in cell", "make_table1(P)", "traceback (last lines):"):
        assert needle in proc.stderr, f"{needle!r} not in:\n{proc.stderr[-3000:]}"
    assert kept.is_file()
    errors = [o for c in json.loads(kept.read_text())["cells"] for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors and "disagree in parameters" in errors[0]["evalue"]
    stamps = run / "stamps"
    assert (stamps / "04_baselines__synthetic_fewshot.json").is_file(), "finished steps keep their stamps"
    assert not (stamps / "05_table1.json").exists()
    assert (figures / "table1.csv").read_bytes() == table_before, "no Table 1 from the mixed rows"

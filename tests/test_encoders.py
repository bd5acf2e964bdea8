"""lare.core.encoders on the tiny open_clip configs shipped in lare/model_configs (random weights, CPU, offline)."""

from __future__ import annotations

import json
import math
import shutil

import open_clip
import pytest
import torch
import torch.nn.functional as F

from lare.core.encoders import (
    TINY_CONFIG_DIR,
    EncoderError,
    class_text_embeddings,
    encode_images,
    load_encoder,
)
from lare.data.datasets import ImageFiles
from lare.utils import hash_config

TINY_MODELS = sorted(p.stem for p in TINY_CONFIG_DIR.glob("*.json"))
EMBED_DIM = 32  # every tiny config has embed_dim 32 and 32x32 images


def _pixels(n: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def _fresh(name: str, **kw):
    return load_encoder(name, "none", device="cpu", **kw)


def test_tiny_configs_are_found():
    assert set(TINY_MODELS) >= {"lare-tiny-clip", "lare-tiny-coca"}


# ---------------------------------------------------------------- image embeddings
def test_image_embeddings_shape_and_unit_norm(tiny_encoder):
    emb = tiny_encoder.encode_image_batch(_pixels(5), normalize=True)
    assert emb.shape == (5, EMBED_DIM)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu"
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))
    assert tiny_encoder.embed_dim == EMBED_DIM


def test_raw_image_embeddings_are_not_unit_norm(tiny_encoder):
    raw = tiny_encoder.encode_image_batch(_pixels(5), normalize=False)
    unit = tiny_encoder.encode_image_batch(_pixels(5), normalize=True)
    assert raw.shape == (5, EMBED_DIM)
    assert ((raw.norm(dim=-1) - 1).abs() > 1e-2).all(), raw.norm(dim=-1)
    torch.testing.assert_close(F.normalize(raw, dim=-1), unit)


def test_raw_clip_image_embeddings_match_open_clip(tiny_clip):
    """normalize=False gives CLIP's raw projection output (open_clip's own default for CLIP)."""
    pixels = _pixels(4)
    with torch.no_grad():
        expected = tiny_clip.model.encode_image(pixels)
    torch.testing.assert_close(tiny_clip.encode_image_batch(pixels, normalize=False), expected)
    assert not torch.allclose(expected.norm(dim=-1), torch.ones(4), atol=1e-2)


def test_encode_images_over_dataset(tiny_encoder, fake_images):
    data = ImageFiles(fake_images, tiny_encoder.preprocess)
    emb = encode_images(tiny_encoder, data, batch_size=4, normalize=True, progress=False)
    assert emb.shape == (len(fake_images), EMBED_DIM)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(fake_images)))
    by_hand = tiny_encoder.encode_image_batch(torch.stack([data[i] for i in range(len(data))]), normalize=True)
    torch.testing.assert_close(emb, by_hand, rtol=1e-4, atol=1e-5)
    # Distinct random images give distinct embeddings (the rows are not all the same).
    assert torch.cdist(emb, emb).fill_diagonal_(1.0).min() > 1e-4


def test_encode_images_accepts_tuple_batches(tiny_clip):
    pixels = _pixels(6)
    data = torch.utils.data.TensorDataset(pixels, torch.arange(6))
    emb = encode_images(tiny_clip, data, batch_size=4, normalize=False, progress=False)
    torch.testing.assert_close(emb, tiny_clip.encode_image_batch(pixels, normalize=False), rtol=1e-4, atol=1e-5)


def test_preprocess_handles_odd_sizes_grayscale_and_alpha(tiny_encoder, fake_images):
    data = ImageFiles(fake_images, tiny_encoder.preprocess)
    for i in range(len(data)):
        assert data[i].shape == (3, 32, 32)


# ---------------------------------------------------------------- class text embeddings
@pytest.mark.parametrize("templates", [("a photo of a {}.",), ("a photo of a {}.", "a drawing of a {}.", "{}")])
def test_class_text_embeddings_mean_of_normalised_prompts(tiny_encoder, templates):
    classes = ["cardinal", "blue jay", "house sparrow"]
    got = class_text_embeddings(tiny_encoder, classes, templates)
    assert got.shape == (len(classes), EMBED_DIM)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(classes)))
    for c, name in enumerate(classes):
        prompts = tiny_encoder.encode_text([t.format(name) for t in templates], normalize=True)
        torch.testing.assert_close(prompts.norm(dim=-1), torch.ones(len(templates)))
        expected = prompts.mean(0)
        expected = expected / expected.norm()
        torch.testing.assert_close(got[c], expected, rtol=1e-5, atol=1e-6)


def test_class_text_embeddings_use_every_template(tiny_clip):
    one = class_text_embeddings(tiny_clip, ["cardinal"], ["a photo of a {}."])
    two = class_text_embeddings(tiny_clip, ["cardinal"], ["a photo of a {}.", "a drawing of a {}."])
    assert not torch.allclose(one, two)
    # The mean is taken over *normalised* prompts: averaging raw embeddings gives another vector.
    raw = tiny_clip.encode_text(["a photo of a cardinal.", "a drawing of a cardinal."], normalize=False)
    assert not torch.allclose(two[0], F.normalize(raw.mean(0), dim=-1), atol=1e-6)


def test_class_text_embeddings_reject_bad_input(tiny_clip):
    with pytest.raises(ValueError, match="empty"):
        class_text_embeddings(tiny_clip, [], ["a photo of a {}."])
    with pytest.raises(ValueError, match=r"\{\}"):
        class_text_embeddings(tiny_clip, ["cardinal"], ["a photo of a bird."])
    with pytest.raises(ValueError):
        class_text_embeddings(tiny_clip, ["cardinal"], [])


# ---------------------------------------------------------------- logit scale
@pytest.mark.parametrize("name", TINY_MODELS)
def test_logit_scale_is_exp_of_the_parameter(name):
    enc = _fresh(name)
    scale = enc.logit_scale
    assert isinstance(scale, float) and scale > 0
    assert scale == pytest.approx(math.exp(enc.model.logit_scale.item()), rel=1e-6)
    with torch.no_grad():
        enc.model.logit_scale.fill_(math.log(100.0))
    assert enc.logit_scale == pytest.approx(100.0, rel=1e-5)


# ---------------------------------------------------------------- loading
@pytest.mark.parametrize("name", TINY_MODELS)
def test_load_by_config_path(tmp_path, name):
    path = tmp_path / "my-tiny.json"
    shutil.copy(TINY_CONFIG_DIR / f"{name}.json", path)
    enc = load_encoder(str(path), "none", device="cpu")
    assert enc.model_name == "my-tiny"
    assert enc.info()["model"] == "my-tiny"
    assert enc.info()["model_config_digest"] == _fresh(name).info()["model_config_digest"]
    assert enc.encode_image_batch(_pixels(2)).shape == (2, EMBED_DIM)


def test_edited_config_changes_digest_and_architecture(tmp_path):
    cfg = json.loads((TINY_CONFIG_DIR / "lare-tiny-clip.json").read_text())
    cfg["embed_dim"] = 16
    path = tmp_path / "my-tiny-16.json"
    path.write_text(json.dumps(cfg))
    enc = load_encoder(str(path), "none", device="cpu")
    assert enc.embed_dim == 16
    assert enc.encode_image_batch(_pixels(2)).shape == (2, 16)
    assert enc.info()["model_config_digest"] == hash_config(cfg)
    assert enc.info()["model_config_digest"] != _fresh("lare-tiny-clip").info()["model_config_digest"]


def test_same_stem_in_two_folders_loads_the_file_asked_for(tmp_path):
    cfg = json.loads((TINY_CONFIG_DIR / "lare-tiny-clip.json").read_text())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "lare-dup.json", tmp_path / "b" / "lare-dup.json"
    a.write_text(json.dumps(dict(cfg, embed_dim=16)))
    b.write_text(json.dumps(dict(cfg, embed_dim=24)))
    assert load_encoder(str(a), "none", device="cpu").embed_dim == 16
    assert load_encoder(str(b), "none", device="cpu").embed_dim == 24
    assert load_encoder(str(a), "none", device="cpu").embed_dim == 16


def test_config_edited_in_place_is_reread(tmp_path):
    cfg = json.loads((TINY_CONFIG_DIR / "lare-tiny-clip.json").read_text())
    path = tmp_path / "lare-edited.json"
    path.write_text(json.dumps(dict(cfg, embed_dim=16)))
    first = load_encoder(str(path), "none", device="cpu")
    assert first.embed_dim == 16
    path.write_text(json.dumps(dict(cfg, embed_dim=24)))
    second = load_encoder(str(path), "none", device="cpu")
    assert second.embed_dim == 24
    assert second.info()["model_config_digest"] != first.info()["model_config_digest"]


def test_missing_config_path_raises(tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        load_encoder(str(tmp_path / "nope.json"), "none", device="cpu")


@pytest.fixture
def no_model_creation(monkeypatch):
    """Fail the test if open_clip builds (and so possibly downloads) a model."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"open_clip.create_model_and_transforms was called with {args} {kwargs}")
    monkeypatch.setattr(open_clip, "create_model_and_transforms", refuse)


def test_unknown_model_name_lists_nearest(no_model_creation):
    with pytest.raises(EncoderError) as err:
        load_encoder("ViT-L-13", "none", device="cpu")
    assert "ViT-L-14" in str(err.value)
    assert "ViT-L-13" in str(err.value)


def test_unknown_pretrained_tag_fails_before_download(no_model_creation):
    with pytest.raises(EncoderError) as err:
        load_encoder("ViT-L-14", "opnai", device="cpu")
    assert "openai" in str(err.value)
    assert "opnai" in str(err.value)


def test_missing_checkpoint_file_raises(tmp_path, no_model_creation):
    with pytest.raises(EncoderError, match="does not exist"):
        load_encoder("lare-tiny-clip", str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(EncoderError, match="does not exist"):
        load_encoder("lare-tiny-clip", str(tmp_path / "no" / "weights"), device="cpu")


@pytest.mark.parametrize("name", TINY_MODELS)
def test_local_checkpoint_file(tmp_path, name):
    saved = _fresh(name)
    with torch.no_grad():  # other weights than the seeded random init of "none"
        for p in saved.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = tmp_path / "x.pt"
    torch.save(saved.model.state_dict(), ckpt)
    loaded = load_encoder(name, str(ckpt), device="cpu")
    assert loaded.pretrained == str(ckpt) and loaded.info()["pretrained"] == str(ckpt)
    pixels = _pixels(3)
    torch.testing.assert_close(loaded.encode_image_batch(pixels), saved.encode_image_batch(pixels), rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode_text(["a photo of a cat."]), saved.encode_text(["a photo of a cat."]),
                               rtol=0, atol=0)
    # Sanity: the model without the checkpoint gives other embeddings, so the equality above is the checkpoint's doing.
    assert not torch.allclose(_fresh(name).encode_image_batch(pixels), saved.encode_image_batch(pixels))


def test_random_weights_are_the_same_in_every_process():
    """'none' means one fixed random model: the cache key and sharded extraction rely on it."""
    pixels = _pixels(2)
    torch.testing.assert_close(_fresh("lare-tiny-clip").encode_image_batch(pixels),
                               _fresh("lare-tiny-clip").encode_image_batch(pixels), rtol=0, atol=0)


def test_overwritten_checkpoint_changes_info(tmp_path):
    ckpt = tmp_path / "x.pt"
    torch.save(_fresh("lare-tiny-clip").model.state_dict(), ckpt)
    first = load_encoder("lare-tiny-clip", str(ckpt), device="cpu")
    other = _fresh("lare-tiny-clip").model
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(other.state_dict(), ckpt)  # other weights, same file name
    second = load_encoder("lare-tiny-clip", str(ckpt), device="cpu")
    assert not torch.allclose(first.encode_image_batch(_pixels(2)), second.encode_image_batch(_pixels(2)))
    assert first.info() != second.info()


# ---------------------------------------------------------------- precision
@pytest.mark.parametrize("name", TINY_MODELS)
def test_bf16_on_cpu_is_close_to_fp32(name):
    fp32 = _fresh(name)
    bf16 = _fresh(name, precision="bf16")
    bf16.model.load_state_dict(fp32.model.state_dict())
    assert bf16.precision == "bf16" and bf16.info()["precision"] == "bf16"
    pixels = _pixels(4)
    a, b = fp32.encode_image_batch(pixels), bf16.encode_image_batch(pixels)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert F.cosine_similarity(a, b).min() > 0.98
    ta, tb = fp32.encode_text(["a photo of a cat.", "a dog"]), bf16.encode_text(["a photo of a cat.", "a dog"])
    assert F.cosine_similarity(ta, tb).min() > 0.98


def test_fp16_on_cpu_raises():
    with pytest.raises(EncoderError, match="fp16"):
        load_encoder("lare-tiny-clip", "none", device="cpu", precision="fp16")


def test_unknown_precision_raises():
    with pytest.raises(EncoderError, match="precision"):
        load_encoder("lare-tiny-clip", "none", device="cpu", precision="fp8")


# ---------------------------------------------------------------- info
def test_info_fields(tiny_encoder):
    info = tiny_encoder.info()
    for key in ("model", "pretrained", "precision", "open_clip_version", "preprocessing", "model_config_digest"):
        assert key in info, key
    assert info["model"] == tiny_encoder.model_name and info["model"] in TINY_MODELS
    assert info["pretrained"] == "none"
    assert info["precision"] == "fp32"
    assert info["open_clip_version"] == open_clip.__version__
    assert "Normalize" in info["preprocessing"] and "32" in info["preprocessing"]
    assert " at 0x" not in info["preprocessing"]  # no object addresses: the cache key must be stable across runs
    assert info["model_config_digest"] == hash_config(json.loads((TINY_CONFIG_DIR / f"{info['model']}.json").read_text()))
    json.dumps(info)  # it goes into a JSON manifest


def test_info_differs_between_models(tiny_clip, tiny_coca):
    assert tiny_clip.info()["model_config_digest"] != tiny_coca.info()["model_config_digest"]

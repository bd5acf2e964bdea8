"""Vision-language encoders from open_clip.

A model is an open_clip model name (``coca_ViT-L-14``), a path to an open_clip model-config JSON
(registered under the file's stem, so tests use tiny models), or ``hf-hub:org/name``.
``pretrained`` is an open_clip tag (``openai``, ``laion2b_s13b_b90k``), ``hf-hub:org/name``, a local
checkpoint file, or ``none`` (random weights, for tests). ``normalize`` is always passed
explicitly: CLIP's ``encode_image`` does not normalise by default, CoCa's does.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lare.provenance import extraction_fingerprint
from lare.utils import hash_config, resolve_device, sha256_file

PRECISIONS = ("fp32", "bf16", "fp16")
TINY_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
NO_WEIGHTS = ("none", "", None)
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")  # a 'pretrained' naming a local weights file


class EncoderError(ValueError):
    """An unknown model or pretrained tag, with the nearest valid names in the message."""


def _open_clip():
    import open_clip

    return open_clip


_REGISTERED: set[str] = set()


def register_model_configs(path: str | os.PathLike = TINY_CONFIG_DIR, *, force: bool = False) -> None:
    """Register open_clip model-config JSONs (a file or a folder); the file stem is the model name.

    ``force`` registers again even if registered before: open_clip re-reads every registered file
    and the last one registered wins, so the file asked for (edited or not) is the one built.
    """
    key = str(Path(path).resolve())
    if force or key not in _REGISTERED:
        _open_clip().add_model_config(Path(key))
        _REGISTERED.add(key)


def _nearest(word: str, options: Iterable[str], n: int = 5) -> str:
    options = list(options)
    near = difflib.get_close_matches(word, options, n=n, cutoff=0.4)
    if not near:  # fall back to the options sharing a prefix, then to the first few
        near = [o for o in options if o.lower().startswith(word[:4].lower())][:n] or options[:n]
    return ", ".join(near)


def resolve_model_name(model: str) -> str:
    """Turn a model argument into a registered open_clip name (registering a config path)."""
    oc = _open_clip()
    register_model_configs()
    if model.startswith("hf-hub:"):
        return model
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise EncoderError(f"model config file {model!r} does not exist")
        register_model_configs(path, force=True)
        return path.stem
    if model not in oc.list_models():
        raise EncoderError(f"unknown open_clip model {model!r}; nearest valid names: {_nearest(model, oc.list_models())}. "
                           "Pass an open_clip model name, a path to a model-config JSON, or 'hf-hub:org/name'.")
    return model


def check_pretrained(model_name: str, pretrained: str | None) -> str | None:
    """Validate ``pretrained`` for ``model_name`` before anything is downloaded or built."""
    if pretrained in NO_WEIGHTS or str(pretrained).lower() == "none":
        return None
    pretrained = str(pretrained)
    if pretrained.startswith("hf-hub:") or os.path.isfile(pretrained) or model_name.startswith("hf-hub:"):
        return pretrained
    if pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained:
        raise EncoderError(f"pretrained checkpoint file {pretrained!r} does not exist")
    tags = _open_clip().list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        hint = f"nearest valid tags: {_nearest(pretrained, tags)}" if tags else "this model has no published tags"
        raise EncoderError(f"unknown pretrained tag {pretrained!r} for model {model_name!r}; {hint}. "
                           "Pass an open_clip tag, 'hf-hub:org/name', a checkpoint file, or 'none'.")
    return pretrained


_WEIGHT_HASHES: dict[tuple, str] = {}


def weights_identity(pretrained: str) -> str:
    """For a local checkpoint file: the sha256 of its content (remembered per path, size and
    mtime within a process), so new weights saved under the same path never reuse old
    embeddings. For tags and hub ids: the name itself."""
    if not pretrained or not os.path.isfile(pretrained):
        return str(pretrained)
    st = os.stat(pretrained)
    key = (os.path.realpath(pretrained), st.st_size, st.st_mtime_ns)
    if key not in _WEIGHT_HASHES:
        _WEIGHT_HASHES[key] = sha256_file(pretrained)
    return f"sha256:{_WEIGHT_HASHES[key]}"


@dataclass
class Encoder:
    """A loaded open_clip model with its preprocessing and tokenizer."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    model_name: str
    pretrained: str
    device: torch.device
    precision: str = "fp32"
    # Fixed at load time: the architecture and weights this model was built from.
    config_digest: str = "unknown"
    weights_id: str = "none"

    @property
    def logit_scale(self) -> float:
        """The model's learned softmax temperature, ``exp(logit_scale)`` (100 for CLIP and CoCa)."""
        return float(self.model.logit_scale.exp().item())

    @property
    def embed_dim(self) -> int:
        with torch.no_grad():
            return int(self.encode_text(["a"]).shape[-1])

    def info(self) -> dict[str, Any]:
        """The fields that identify this encoder's embeddings (part of every cache manifest)."""
        return {"model": self.model_name, "pretrained": self.pretrained, "weights_id": self.weights_id,
                "precision": self.precision, "open_clip_version": _open_clip().__version__,
                "preprocessing": repr(self.preprocess),
                # The architecture itself, so an edited config JSON under the same name is not reused.
                "model_config_digest": self.config_digest,
                # The code that turns images into embeddings: an edit there extracts again, edits elsewhere do not.
                "extraction_code": extraction_fingerprint()}

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.no_grad()
    def encode_image_batch(self, pixels: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Embed a batch of preprocessed images; returns float32 on the CPU."""
        pixels = pixels.to(self.device, non_blocking=True)
        with self.autocast():
            out = self.model.encode_image(pixels, normalize=False)
        out = out.float()
        return (F.normalize(out, dim=-1) if normalize else out).cpu()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], *, normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Embed strings; returns float32 ``(len(texts), d)`` on the CPU."""
        parts = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[i:i + batch_size])).to(self.device)
            with self.autocast():
                out = self.model.encode_text(tokens, normalize=False).float()
            parts.append(F.normalize(out, dim=-1) if normalize else out)
        return torch.cat(parts).cpu()


def load_encoder(model: str, pretrained: str | None = "none", *, device: str | torch.device | None = None,
                 precision: str = "fp32", cache_dir: str | None = None) -> Encoder:
    """Load an open_clip model for inference (eval mode, on ``device``).

    ``precision`` is the autocast dtype used when encoding (``fp32``, ``bf16``, ``fp16``); the
    weights stay float32. Errors name the nearest valid model names or tags.
    """
    if precision not in PRECISIONS:
        raise EncoderError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dev = resolve_device(device)
    if precision == "fp16" and dev.type == "cpu":
        raise EncoderError("fp16 autocast is for GPUs; use precision='bf16' or 'fp32' on a CPU")
    oc = _open_clip()
    name = resolve_model_name(model)
    weights = check_pretrained(name, pretrained)
    # Random weights ('none') come from a fixed seed, so "none" always means the same model: the
    # cache key stays honest and every process of a sharded extraction builds the same network.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net, preprocess = _create(oc, name, weights, dev, cache_dir)
    net.eval()
    cfg = None if name.startswith("hf-hub:") else oc.get_model_config(name)
    tokenizer = oc.get_tokenizer(weights if weights and weights.startswith("hf-hub:") else name)
    return Encoder(model=net, preprocess=preprocess, tokenizer=tokenizer, model_name=name,
                   pretrained=str(pretrained if weights is not None else "none"), device=dev, precision=precision,
                   config_digest=hash_config(cfg) if cfg is not None else "hf-hub",
                   weights_id=weights_identity(str(weights)) if weights is not None else "none")


class _AskedForRandomWeights(logging.Filter):
    """open_clip warns that a model without weights is "initialized randomly": with pretrained 'none'
    that is what was asked for (and recorded), not something to warn about in every notebook."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_weights():
    root, quiet = logging.getLogger(), _AskedForRandomWeights()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _create(oc, name: str, weights: str | None, dev: torch.device, cache_dir: str | None):
    if weights is None and not name.startswith("hf-hub:"):
        with _quiet_random_weights():
            net, _, preprocess = oc.create_model_and_transforms(name, pretrained=None, device=dev, cache_dir=cache_dir)
    elif name.startswith("hf-hub:"):
        net, _, preprocess = oc.create_model_and_transforms(name, device=dev, cache_dir=cache_dir)
    elif weights is not None and weights.startswith("hf-hub:"):
        # A hub repository carries its own config; it must be the architecture that was asked for.
        net, _, preprocess = oc.create_model_and_transforms(weights, device=dev, cache_dir=cache_dir)
    else:
        net, _, preprocess = oc.create_model_and_transforms(name, pretrained=weights, device=dev, cache_dir=cache_dir)
    return net, preprocess


def encode_images(encoder: Encoder, images: torch.utils.data.Dataset | Iterable, *, batch_size: int = 64,
                  num_workers: int = 0, normalize: bool = True, progress: bool = True) -> torch.Tensor:
    """Embed every image of a dataset yielding preprocessed tensors (or ``(tensor, ...)`` tuples)."""
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers,
                                         pin_memory=encoder.device.type == "cuda")
    parts = []
    for batch in tqdm(loader, desc=f"encode {encoder.model_name}", disable=not progress, unit="batch"):
        pixels = batch[0] if isinstance(batch, (list, tuple)) else batch
        parts.append(encoder.encode_image_batch(pixels, normalize=normalize))
    return torch.cat(parts) if parts else torch.empty(0, 0)


DEFAULT_TEMPLATES = ("a photo of a {}.",)
CUB_TEMPLATES = ("a photo of a {}, a type of bird.",)


def class_text_embeddings(encoder: Encoder, class_names: Sequence[str],
                          templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """``T(c)`` for every class: the mean of the normalised prompt embeddings, re-normalised. ``(C, d)``."""
    if not class_names:
        raise ValueError("class_names is empty")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template needs one '{{}}' for the class name, got {list(templates)}")
    prompts = [t.format(c) for c in class_names for t in templates]
    emb = encoder.encode_text(prompts, normalize=True).reshape(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)

"""The synthetic embedding dataset (lare.data.synthetic): shapes, norms, seeds, shared world, learnability."""

from __future__ import annotations

import pytest
import torch

from lare.core.probe import ProbeConfig, metrics, train_probe, zero_shot_predict
from lare.data.synthetic import SyntheticSpec, make_synthetic

SPEC = SyntheticSpec(num_classes=10, dim=32, n_train_per_class=20, n_test_per_class=10, n_ood_per_class=10)
TENSORS = ("train_x", "train_y", "test_x", "test_y", "ood_x", "ood_y", "class_text", "photo_text", "painting_text")


@pytest.fixture(scope="module")
def data():
    return make_synthetic(SPEC, seed=0)


def zs_top1(x, y, text) -> float:
    return metrics(zero_shot_predict(x, text), y)["top1"]


def test_shapes_and_labels(data):
    C, d = SPEC.num_classes, SPEC.dim
    for split, per in (("train", 20), ("test", 10), ("ood", 10)):
        assert data[f"{split}_x"].shape == (C * per, d)
        assert data[f"{split}_x"].dtype == torch.float32
        assert torch.equal(torch.bincount(data[f"{split}_y"], minlength=C), torch.full((C,), per))
    for key in ("class_text", "photo_text", "painting_text"):
        assert data[key].shape == (C, d)
    assert len(data["class_names"]) == C and len(set(data["class_names"])) == C


def test_unit_norms(data):
    for key in ("train_x", "test_x", "ood_x", "class_text", "photo_text", "painting_text"):
        assert torch.allclose(data[key].norm(dim=-1), torch.ones(len(data[key])), atol=1e-5), key


def test_deterministic_by_seed(data):
    again = make_synthetic(SPEC, seed=0)
    for key in TENSORS:
        assert torch.equal(again[key], data[key]), key
    other = make_synthetic(SPEC, seed=1)
    for key in ("train_x", "test_x", "ood_x", "class_text"):
        assert not torch.allclose(other[key], data[key]), key
    other_world = make_synthetic(SPEC, seed=0, world_seed=99)
    assert not torch.allclose(other_world["train_x"], data["train_x"])


def test_leaves_global_rng_untouched():
    state = torch.get_rng_state()
    make_synthetic(SPEC, seed=3)
    assert torch.equal(torch.get_rng_state(), state)


def test_world_is_shared_across_seeds(data):
    """Same world_seed: the class prototypes are shared, so one seed's class text classifies another
    seed's images about as well as its own text does; a different world's text is near chance (10%)."""
    other = make_synthetic(SPEC, seed=1)
    # the domain descriptions carry no encoder noise: they are fixed by the world alone
    assert torch.equal(other["photo_text"], data["photo_text"])
    assert torch.equal(other["painting_text"], data["painting_text"])
    # class text (noisy per seed): the same class across seeds is more similar than other classes
    sim = data["class_text"] @ other["class_text"].T
    off_diagonal = (sim.sum() - sim.diag().sum()) / (sim.numel() - len(sim))
    assert sim.diag().mean() > off_diagonal + 0.1
    own = zs_top1(other["test_x"], other["test_y"], other["class_text"])
    cross = zs_top1(other["test_x"], other["test_y"], data["class_text"])
    assert own > 25 and cross > 25  # chance is 10%
    assert abs(own - cross) < 15
    foreign = make_synthetic(SPEC, seed=1, world_seed=99)
    assert not torch.allclose(foreign["photo_text"], data["photo_text"], atol=1e-2)
    assert zs_top1(other["test_x"], other["test_y"], foreign["class_text"]) < 20


def test_domain_descriptions_differ_by_domain(data):
    photo, painting = data["photo_text"], data["painting_text"]
    assert not torch.allclose(photo, painting)
    # both describe the same class: per class, the two are closer than to other classes
    assert torch.equal((photo @ painting.T).argmax(1), torch.arange(SPEC.num_classes))


def test_linear_probe_beats_chance_and_shift_hurts(data):
    cfg = ProbeConfig(epochs=100, batch_size=0, lr=1e-2, weight_decay=0.0)
    res = train_probe(data["train_x"], data["train_y"], SPEC.num_classes, cfg, device="cpu", progress=False)
    test = res.evaluate(data["test_x"], data["test_y"])["top1"]
    ood = res.evaluate(data["ood_x"], data["ood_y"])["top1"]
    assert test > 3 * 100 / SPEC.num_classes  # chance is 10%
    assert ood > 100 / SPEC.num_classes
    assert test > ood  # the painting domain is shifted

"""CIFAR-100-LT subsets (Cao et al.'s exponential profile) and head / medium / tail accuracy."""

from __future__ import annotations

import pytest
import torch

from lare.data.longtail import class_groups, group_accuracy, lt_counts, lt_subset


@pytest.mark.parametrize("imbalance, total", [(100, 10847), (50, 12608), (10, 19573)])
def test_profile_gives_the_published_sizes(imbalance, total):
    counts = lt_counts(100, 500, imbalance)
    assert sum(counts) == total
    assert counts[0] == 500 and counts[-1] == 500 // imbalance
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))


def _pool(per_class=500, classes=100):
    labels = [c for c in range(classes) for _ in range(per_class)]
    return [f"cifar100/train/{i:05d}" for i in range(len(labels))], labels


def test_subset_follows_the_profile_is_seeded_and_differs_between_seeds():
    ids, labels = _pool()
    label_of = dict(zip(ids, labels, strict=True))
    a, b, c = (lt_subset(ids, labels, 100, s) for s in (0, 0, 1))
    assert a == b and a != c and a == sorted(a)
    per_class = torch.bincount(torch.tensor([label_of[i] for i in a]), minlength=100).tolist()
    assert per_class == lt_counts(100, 500, 100)
    assert len(set(a)) == len(a) == 10847


def test_subset_refuses_a_pool_that_cannot_follow_the_profile():
    ids, labels = _pool(per_class=5, classes=3)
    with pytest.raises(ValueError, match="asks for"):
        lt_subset(ids, labels, 10, 0, n_max=6)
    with pytest.raises(ValueError, match="no items of classes"):
        lt_subset(ids, labels, 10, 0, num_classes=4)
    with pytest.raises(ValueError, match="imbalance factor"):
        lt_counts(3, 5, 0.5)


def test_groups_and_group_accuracy():
    counts = [500, 101, 100, 20, 19, 5]
    assert class_groups(counts) == ["head", "head", "medium", "medium", "tail", "tail"]
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 5])
    pred = torch.tensor([0, 0, 2, 0, 4, 5, 0])
    acc = group_accuracy(pred, labels, class_groups(counts))
    assert acc == pytest.approx({"head": 50.0, "medium": 50.0, "tail": 200 / 3})
    assert set(group_accuracy(torch.tensor([0]), torch.tensor([0]), class_groups(counts))) == {"head"}

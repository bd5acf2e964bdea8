"""Seeded, saved, disjoint splits: lare.data.splits."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lare.data.splits import carve_validation, check_disjoint, kshot_subset

# A pool of 5 classes of unequal sizes (7, 5, 4, 2, 1); ids are strings, as in the pipeline.
SIZES = [7, 5, 4, 2, 1]
LABELS = [c for c, n in enumerate(SIZES) for _ in range(n)]
IDS = [f"item{i:03d}" for i in range(len(LABELS))]
LABEL_OF = dict(zip(IDS, LABELS, strict=True))


def counts(ids):
    return Counter(LABEL_OF[i] for i in ids)


# ---------------------------------------------------------------- carve_validation
def test_carve_validation_is_stratified():
    train, val = carve_validation(IDS, LABELS, 0.2, seed=0)
    tr, va = counts(train), counts(val)
    for c, n in enumerate(SIZES):
        if n >= 2:
            assert va[c] >= 1, f"class {c} ({n} items) gave nothing to validation"
            assert tr[c] >= 1, f"class {c} ({n} items) kept nothing for training"
        else:
            assert va[c] == 0 and tr[c] == 1
        assert tr[c] + va[c] == n
    # round(0.2 * 7) = 1, round(0.2 * 5) = 1, round(0.2 * 4) = 1, max(1, round(0.4)) = 1, single item: 0
    assert [va[c] for c in range(len(SIZES))] == [1, 1, 1, 1, 0]


def test_carve_validation_large_fraction_keeps_one_for_training():
    train, val = carve_validation(IDS, LABELS, 0.95, seed=3)
    tr, va = counts(train), counts(val)
    for c, n in enumerate(SIZES):
        assert tr[c] >= 1
        assert va[c] == n - 1


def test_carve_validation_disjoint_and_covers_pool():
    train, val = carve_validation(IDS, LABELS, 0.3, seed=1)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(IDS)
    assert len(train) + len(val) == len(IDS)
    assert train == sorted(train) and val == sorted(val)


def test_carve_validation_deterministic_and_seed_dependent():
    a = carve_validation(IDS, LABELS, 0.3, seed=5)
    b = carve_validation(IDS, LABELS, 0.3, seed=5)
    assert a == b
    others = {tuple(carve_validation(IDS, LABELS, 0.3, seed=s)[1]) for s in range(6)}
    assert len(others) > 1, "the validation ids do not depend on the seed"


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_carve_validation_rejects_fraction_outside_open_interval(fraction):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        carve_validation(IDS, LABELS, fraction, seed=0)


def test_carve_validation_rejects_non_int_seed():
    with pytest.raises(TypeError, match="seed"):
        carve_validation(IDS, LABELS, 0.2, seed=1.5)


# ---------------------------------------------------------------- kshot_subset
BIG_SIZES = [6, 5, 4, 3]
BIG_LABELS = [c for c, n in enumerate(BIG_SIZES) for _ in range(n)]
BIG_IDS = [f"x{i:02d}" for i in range(len(BIG_LABELS))]
BIG_LABEL_OF = dict(zip(BIG_IDS, BIG_LABELS, strict=True))


@pytest.mark.parametrize("shots", [1, 2, 3])
def test_kshot_subset_exactly_k_per_class_and_subset(shots):
    sub = kshot_subset(BIG_IDS, BIG_LABELS, shots, seed=0)
    assert len(sub) == len(set(sub)) == shots * len(BIG_SIZES)
    assert set(sub) <= set(BIG_IDS)
    assert Counter(BIG_LABEL_OF[i] for i in sub) == {c: shots for c in range(len(BIG_SIZES))}


def test_kshot_subset_deterministic_and_seed_dependent():
    assert kshot_subset(BIG_IDS, BIG_LABELS, 2, seed=7) == kshot_subset(BIG_IDS, BIG_LABELS, 2, seed=7)
    draws = {tuple(kshot_subset(BIG_IDS, BIG_LABELS, 2, seed=s)) for s in range(6)}
    assert len(draws) > 1


def test_kshot_subset_zero_shots_is_whole_pool():
    assert kshot_subset(BIG_IDS, BIG_LABELS, 0, seed=0) == sorted(BIG_IDS)


def test_kshot_subset_too_many_shots_names_smallest_class():
    with pytest.raises(ValueError, match=r"smallest class has only 3 items"):
        kshot_subset(BIG_IDS, BIG_LABELS, 4, seed=0)


def test_kshot_subset_max_shots_is_whole_smallest_class():
    sub = kshot_subset(BIG_IDS, BIG_LABELS, 3, seed=0)
    smallest = [i for i in BIG_IDS if BIG_LABEL_OF[i] == 3]
    assert set(smallest) <= set(sub)


# ---------------------------------------------------------------- disjointness and saving
def test_check_disjoint_names_both_splits():
    check_disjoint(train=["a", "b"], val=["c"], test=["d"])  # no error
    with pytest.raises(ValueError) as err:
        check_disjoint(train=["a", "b"], val=["c"], test=["b", "e"])
    msg = str(err.value)
    assert "'train'" in msg and "'test'" in msg and "'val'" not in msg
    assert "'b'" in msg


def test_draws_do_not_touch_global_torch_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state().clone()
    carve_validation(IDS, LABELS, 0.3, seed=0)
    kshot_subset(BIG_IDS, BIG_LABELS, 2, seed=0)
    assert torch.equal(torch.get_rng_state(), before)


def test_draws_do_not_depend_on_global_torch_rng():
    torch.manual_seed(0)
    a = carve_validation(IDS, LABELS, 0.3, seed=2), kshot_subset(BIG_IDS, BIG_LABELS, 2, seed=2)
    torch.manual_seed(999)
    torch.rand(10)
    b = carve_validation(IDS, LABELS, 0.3, seed=2), kshot_subset(BIG_IDS, BIG_LABELS, 2, seed=2)
    assert a == b

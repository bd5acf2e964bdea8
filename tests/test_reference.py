"""The reference linear probe (lare.core.reference): L-BFGS logistic regression, l2 chosen on validation only."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lare.core.probe import ProbeConfig, train_probe_trials
from lare.core.reference import DEFAULT_L2_GRID, fit_logreg, logreg_grads, logreg_objective, reference_probe
from lare.data.synthetic import SyntheticSpec, make_synthetic
from lare.utils import make_generator

SPEC = SyntheticSpec(num_classes=20, dim=64, n_train_per_class=20, n_test_per_class=100)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic():
    """Synthetic photo-domain embeddings: train (400), and the test split cut into validation and test (1000 each)."""
    data = make_synthetic(SPEC, seed=0)
    perm = torch.randperm(len(data["test_y"]), generator=make_generator(0))
    val, test = perm[: len(perm) // 2], perm[len(perm) // 2:]
    return {"x": data["train_x"], "y": data["train_y"], "vx": data["test_x"][val], "vy": data["test_y"][val],
            "tx": data["test_x"][test], "ty": data["test_y"][test], "ox": data["ood_x"], "oy": data["ood_y"]}


def blobs(n_per_class: int, seed: int, num_classes: int = 4, dim: int = 8):
    """Linearly separable Gaussian clusters at 3 * e_c."""
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    return 3 * torch.eye(num_classes, dim)[y] + 0.3 * torch.randn(len(y), dim, generator=make_generator(seed)), y


def test_fit_logreg_converges_to_the_optimum(synthetic):
    x, y, l2 = synthetic["x"], synthetic["y"], 1e-3
    model = fit_logreg(x, y, SPEC.num_classes, l2=l2, device="cpu")
    info = model.fit_info
    assert info.converged and info.grad_norm <= 1e-6 and 0 < info.iterations < 1000
    assert model.weight.dtype == torch.float64
    # the gradient of the objective, computed here independently, vanishes (bias unpenalised)
    w = model.weight.detach().clone().requires_grad_(True)
    b = model.bias.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(x.double() @ w.T + b, y) + 0.5 * l2 * (w ** 2).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert gw.abs().max() < 1e-6 and gb.abs().max() < 1e-6
    # deterministic: the same data gives the same classifier, bit for bit
    again = fit_logreg(x, y, SPEC.num_classes, l2=l2, device="cpu")
    assert torch.equal(again.weight, model.weight) and torch.equal(again.bias, model.bias)


def test_fit_logreg_reports_an_unfinished_solve(synthetic):
    model = fit_logreg(synthetic["x"], synthetic["y"], SPEC.num_classes, l2=1e-6, max_iter=3, device="cpu")
    assert not model.fit_info.converged and model.fit_info.iterations == 3


def test_selection_reads_only_train_and_validation(synthetic):
    s = synthetic
    first = reference_probe(s["x"], s["y"], s["vx"], s["vy"], SPEC.num_classes, device="cpu")
    # an unrelated held-out set, with some labels permuted, is evaluated in between: nothing changes
    scrambled = s["ty"].clone()
    scrambled[:300] = scrambled[:300][torch.randperm(300, generator=make_generator(1))]
    first.evaluate(s["tx"], scrambled)
    second = reference_probe(s["x"], s["y"], s["vx"], s["vy"], SPEC.num_classes, device="cpu")
    assert second.l2 == first.l2
    assert torch.equal(second.model.weight, first.model.weight) and torch.equal(second.model.bias, first.model.bias)
    assert second.scores == first.scores


def test_chosen_l2_is_the_best_validation_score_and_the_training_fit(synthetic):
    s = synthetic
    res = reference_probe(s["x"], s["y"], s["vx"], s["vy"], SPEC.num_classes, device="cpu")
    assert [r["l2"] for r in res.scores] == sorted(DEFAULT_L2_GRID, reverse=True) and len(res.scores) == 13
    assert all(r["converged"] for r in res.scores) and res.converged and not res.at_grid_edge
    top = max(r["val_balanced_acc"] for r in res.scores)
    assert res.l2 == next(r["l2"] for r in res.scores if r["val_balanced_acc"] >= top - 1e-4)  # largest l2 on ties
    assert res.evaluate(s["vx"], s["vy"])["balanced_acc"] == pytest.approx(top, abs=1e-4)
    # the model is the training-split fit at the chosen l2 (warm starts change it only within the tolerance)
    cold = fit_logreg(s["x"], s["y"], SPEC.num_classes, l2=res.l2, device="cpu")
    torch.testing.assert_close(res.model.weight, cold.weight, atol=1e-3, rtol=0)
    # selection follows the validation split: scored on the training split itself, a weaker l2 wins
    on_train = reference_probe(s["x"], s["y"], s["x"], s["y"], SPEC.num_classes, device="cpu")
    assert on_train.l2 < res.l2


def test_reference_probe_on_separable_data():
    x, y = blobs(30, seed=0)
    vx, vy = blobs(20, seed=1)
    tx, ty = blobs(50, seed=2)
    res = reference_probe(x, y, vx, vy, 4, device="cpu")
    assert res.evaluate(tx, ty)["top1"] >= 99.0
    assert res.predict(tx).shape == (200,)


def test_converged_trials_reach_the_logreg_optimum(synthetic):
    # Adam with the coupled penalty (weight_decay 0, l2 > 0), full batch, run to its budget: the
    # last weights are the L-BFGS solution at the same l2 (the bias up to a constant shift, to
    # which the softmax is blind).
    s, l2 = synthetic, [1e-3, 1e-2]
    configs = [ProbeConfig(lr=1e-2, weight_decay=0.0, l2=penalty, seed=i, epochs=1500, patience=2000, batch_size=0,
                           min_steps=0, max_steps=0, stop="val", precision="fp32") for i, penalty in enumerate(l2)]
    res = train_probe_trials(s["x"], s["y"], SPEC.num_classes, configs, val_x=s["vx"][:200], val_y=s["vy"][:200],
                             device="cpu")
    assert res.stopped_by == ["budget", "budget"]
    for i, penalty in enumerate(l2):
        ref = fit_logreg(s["x"], s["y"], SPEC.num_classes, l2=penalty, device="cpu")
        w = ref.weight.float()
        assert (res.last_weight[i].T - w).norm() / w.norm() < 1e-3
        centred = lambda b: b - b.mean()  # noqa: E731
        assert (centred(res.last_bias[i]) - centred(ref.bias.float())).abs().max() < 1e-3


def test_tuned_trials_come_within_a_point_of_the_reference(synthetic):
    # The same budget of choice on both sides: the reference picks l2 on validation; 12 batched
    # trials (lr x l2, Adam with the coupled penalty, full batch, early stopping on validation)
    # pick their best trial and epoch on validation. Held-out test accuracy: the trials may not
    # fall more than a point behind. (The selected trial may well be ahead: early stopping over
    # many epochs picks validation peaks, which carry over to the test split in part.)
    s = synthetic
    ref = reference_probe(s["x"], s["y"], s["vx"], s["vy"], SPEC.num_classes, device="cpu")
    grid = list(itertools.product([1e-2, 3e-2, 1e-1], [1e-3, 3e-3, 1e-2, 3e-2]))
    configs = [ProbeConfig(lr=lr, weight_decay=0.0, l2=l2, seed=i, epochs=1000, patience=50, batch_size=0, min_steps=0,
                           max_steps=0, stop="val", select="balanced_acc", precision="fp32")
               for i, (lr, l2) in enumerate(grid)]
    res = train_probe_trials(s["x"], s["y"], SPEC.num_classes, configs, val_x=s["vx"], val_y=s["vy"], device="cpu")
    assert all(r == "patience" for r in res.stopped_by)  # every trial trained until validation stopped improving
    best = res.best_trial()
    trial_test = res.evaluate(s["tx"], s["ty"])[best]["balanced_acc"]
    ref_test = ref.evaluate(s["tx"], s["ty"])["balanced_acc"]
    assert trial_test >= ref_test - 1.0, (grid[best], trial_test, ref_test)


@pytest.mark.parametrize("change", [
    {"l2_grid": []}, {"l2_grid": [-1.0]}, {"select": "f1"}, {"val_x": torch.zeros(10, 3)},
    {"train_y": torch.full((400,), 99)}, {"val_y": torch.zeros(7, dtype=torch.long)},
])
def test_reference_probe_rejects_bad_inputs(synthetic, change):
    s = synthetic
    kw = {"train_x": s["x"], "train_y": s["y"], "val_x": s["vx"], "val_y": s["vy"], "device": "cpu", **change}
    args = [kw.pop(k) for k in ("train_x", "train_y", "val_x", "val_y")]
    with pytest.raises(ValueError):
        reference_probe(*args, SPEC.num_classes, **kw)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_written_out_gradient_is_autograds(l2, weighted):
    """The solver's hand-written loss and gradients are those of logreg_objective under autograd
    (with and without per-row weights)."""
    g = make_generator(3)
    x, y = torch.randn(50, 7, generator=g, dtype=torch.float64), torch.randint(0, 4, (50,), generator=g)
    w = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    sw = torch.rand(50, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    expected = logreg_objective(x, y, w, b, l2, sw)
    expected.backward()
    loss, grad_w, grad_b = logreg_grads(x, y, w.detach(), b.detach(), l2, sw)
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(grad_w, w.grad)
    torch.testing.assert_close(grad_b, b.grad)


def test_sample_weights_weigh_rows_as_copies(synthetic):
    """Rows weighted 1 / D, each repeated D times, give the fit of one copy: the weights are what the
    lbfgs solver's draws of augmented rows rely on. Unequal weights change the fit."""
    s = synthetic
    x, y, n = s["x"], s["y"], len(s["y"])
    grid = [1e-2, 1e-3]
    once = reference_probe(x, y, s["vx"], s["vy"], SPEC.num_classes, l2_grid=grid)
    xx, yy = torch.cat([x[: n // 2], x[n // 2:], x[n // 2:], x[n // 2:]]), torch.cat([y[: n // 2]] + [y[n // 2:]] * 3)
    sw = torch.cat([torch.ones(n // 2), torch.full((3 * (n - n // 2),), 1 / 3)])
    thrice = reference_probe(xx, yy, s["vx"], s["vy"], SPEC.num_classes, l2_grid=grid, sample_weight=sw)
    assert thrice.l2 == once.l2
    torch.testing.assert_close(thrice.model.weight, once.model.weight, atol=1e-5, rtol=0)
    unweighted = reference_probe(xx, yy, s["vx"], s["vy"], SPEC.num_classes, l2_grid=[once.l2])
    assert (unweighted.model.weight - once.model.weight).abs().max() > 1e-3
    for bad in (torch.ones(n - 1), torch.zeros(n), -torch.ones(n), torch.full((n,), math.inf)):
        with pytest.raises(ValueError, match="sample_weight"):
            reference_probe(x, y, s["vx"], s["vy"], SPEC.num_classes, l2_grid=grid, sample_weight=bad)

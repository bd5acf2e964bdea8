"""The reference linear probe: L2-regularised logistic regression solved to convergence.

This is the CLIP paper's linear-probe protocol (Radford et al. 2021, appendix A.3: scikit-learn's
L-BFGS logistic regression, the L2 strength chosen by a sweep on a validation split), written in
torch: a deterministic, tuned baseline that does not depend on learning rates, epochs or batch
order, against which SGD-style probes (:func:`lare.core.probe.train_probe_trials`) can be checked.

The objective is ``mean cross-entropy + (l2 / 2) * ||W||^2`` (the bias is not penalised), solved
with full-batch L-BFGS and a strong-Wolfe line search from a zero start, in float64 by default
(float32 stalls around gradients of 1e-5, short of the default tolerance, and then picks
different l2 values). For l2 > 0 the objective is strictly convex in W and fixes the bias up to
a constant shift the softmax ignores, so "converged" means the same classifier whatever the
solver's path. scikit-learn's ``C`` is ``1 / (l2 n)`` here (it sums the loss over the n training
items). The CLIP paper swept its ``1 / C`` over 1e-6 .. 1e6 at up to 8 steps a decade; the
default grid here is narrower and coarser (:data:`DEFAULT_L2_GRID`), and
:attr:`ReferenceResult.at_grid_edge` says when the choice hit its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lare.core.probe import DEFAULT_L2_GRID, SELECT_METRICS, metrics
from lare.core.train import is_int
from lare.utils import resolve_device

# Validation scores closer than this (percentage points) tie, and the larger l2 stays. Far below
# any real difference of accuracies on a validation split (100 / n points for n items).
TIE_TOL = 1e-4


@dataclass
class LogRegFit:
    """A solved logistic regression: weight (C, d), bias (C,) in the solve's dtype, and how the solve went.

    converged: the largest absolute gradient component (``grad_norm``, the test torch's L-BFGS
    applies) is at most ``tol``; iterations: L-BFGS iterations used; loss: the final objective.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    converged: bool
    iterations: int
    grad_norm: float
    loss: float


def logreg_objective(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, l2: float,
                     sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T + bias`` plus ``(l2 / 2) * ||weight||^2`` (bias unpenalised);
    with ``sample_weight`` (n,), the cross-entropy is that weighted mean instead."""
    ce = F.cross_entropy(F.linear(x, weight, bias), y, reduction="none")
    ce = ce.mean() if sample_weight is None else (ce * sample_weight).sum() / sample_weight.sum()
    return ce + 0.5 * l2 * weight.pow(2).sum()


@torch.no_grad()
def logreg_grads(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 l2: float, sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`logreg_objective` and its gradients (loss, d weight, d bias), written out (softmax minus
    one-hot) rather than through autograd: the same numbers at about half the cost, which is most
    of an L-BFGS solve."""
    rows = torch.arange(len(y), device=x.device)
    logits = torch.addmm(bias, x, weight.T)
    lse = logits.logsumexp(1)
    ce = lse - logits[rows, y]
    dlogits = logits.sub_(lse.unsqueeze(1)).exp_()
    dlogits[rows, y] -= 1.0
    if sample_weight is None:
        loss = ce.mean()
        dlogits /= len(y)
    else:
        w = sample_weight.to(x.dtype) / sample_weight.sum()
        loss = ce @ w
        dlogits *= w.unsqueeze(1)
    loss = loss + 0.5 * l2 * weight.pow(2).sum()
    grad_w = torch.addmm(weight, dlogits.T, x, beta=l2) if l2 else dlogits.T @ x
    return loss, grad_w, dlogits.sum(0)


def solve_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, l2: float, max_iter: int = 1000, tol: float = 1e-6,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, dtype: torch.dtype = torch.float64,
                 sample_weight: torch.Tensor | None = None) -> LogRegFit:
    """Minimise :func:`logreg_objective` on (x, y) with full-batch L-BFGS (strong-Wolfe line search).

    Starts from zero (or ``init``, a (weight, bias) warm start), on x's device, in ``dtype``. Runs
    until the largest absolute gradient component is at most ``tol``, ``max_iter`` iterations are
    spent, or the line search can make no further progress; the result reports whether the
    gradient test passed at the end and how many iterations were used.
    """
    x, y = x.to(dtype), y.to(x.device)
    sw = None if sample_weight is None else sample_weight.to(x.device, dtype)
    d = x.shape[1]
    if init is None:
        w0, b0 = torch.zeros(num_classes, d, dtype=dtype), torch.zeros(num_classes, dtype=dtype)
    else:
        w0, b0 = init
    weight = w0.detach().to(x.device, dtype).clone().requires_grad_(True)
    bias = b0.detach().to(x.device, dtype).clone().requires_grad_(True)
    # tolerance_change=0: stop on the gradient test or a stalled line search, never on a small
    # change of the loss, which comes long before convergence when l2 is small. The evaluation
    # budget is generous so that max_iter, not the line search's evaluations, is the limit.
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, max_eval=10 * max_iter, tolerance_grad=tol,
                            tolerance_change=0.0, history_size=20, line_search_fn="strong_wolfe")  # 20 pairs: ample, small

    def closure() -> torch.Tensor:
        loss, weight.grad, bias.grad = logreg_grads(x, y, weight, bias, l2, sw)
        return loss

    opt.step(closure)
    loss = closure()  # the gradient at the final point, for the convergence report
    grad_norm = max(weight.grad.abs().max().item(), bias.grad.abs().max().item())
    iterations = int(opt.state[weight].get("n_iter", 0))
    return LogRegFit(weight=weight.detach(), bias=bias.detach(), l2=float(l2), converged=grad_norm <= tol,
                     iterations=iterations, grad_norm=grad_norm, loss=loss.item())


def _linear(fit: LogRegFit) -> nn.Linear:
    """The fit as an ``nn.Linear`` in the solve's dtype, with the solve's report as ``.fit_info``."""
    c, d = fit.weight.shape
    model = nn.Linear(d, c, device=fit.weight.device, dtype=fit.weight.dtype)
    with torch.no_grad():
        model.weight.copy_(fit.weight)
        model.bias.copy_(fit.bias)
    model.fit_info = fit
    return model.eval()


def _check_xy(x: torch.Tensor, y: torch.Tensor, num_classes: int, name: str) -> None:
    if x.dim() != 2 or y.dim() != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{name} embeddings must be (n, d) with n labels, n > 0, got {tuple(x.shape)}, {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name} labels must be integers, got {y.dtype}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"{name} labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")


def fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, l2: float, max_iter: int = 1000, tol: float = 1e-6,
               device: str | torch.device | None = None, dtype: torch.dtype = torch.float64) -> nn.Linear:
    """Multinomial logistic regression, ``mean CE + (l2 / 2) ||W||^2``, solved to convergence from zero.

    Returns an ``nn.Linear`` in ``dtype`` (float64 by default: feed it float64 inputs, or use
    :class:`ReferenceResult`'s ``predict``) whose ``fit_info`` (:class:`LogRegFit`) says whether
    the solve converged (``converged``, ``grad_norm`` <= ``tol``) and took how many ``iterations``.
    """
    _check_xy(x, y, num_classes, "train")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2!r}")
    if not is_int(max_iter) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    dev = resolve_device(device)
    return _linear(solve_logreg(x.to(dev), y.to(dev), num_classes, l2=l2, max_iter=max_iter, tol=tol, dtype=dtype))


@dataclass
class ReferenceResult:
    """The reference probe: the model fitted on the training split with the l2 chosen on validation.

    scores: one row per l2 of the grid, in the order fitted: ``l2``, ``val_top1``,
    ``val_balanced_acc``, ``converged``, ``iterations``, ``grad_norm``.
    """

    model: nn.Linear
    l2: float
    select: str
    scores: list[dict] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """Whether the chosen fit passed its gradient test."""
        return self.model.fit_info.converged

    @property
    def at_grid_edge(self) -> bool:
        """The chosen l2 is the largest or smallest of the grid: a wider grid might do better."""
        grid = [r["l2"] for r in self.scores]
        return len(grid) > 1 and self.l2 in (min(grid), max(grid))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        w = self.model.weight
        return self.model(x.to(w.device, w.dtype)).argmax(-1).cpu()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """``{"top1", "balanced_acc"}`` in %, :func:`lare.core.probe.metrics`."""
        return metrics(self.predict(x), y, self.model.out_features)


def reference_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, num_classes: int,
                    *, l2_grid: list[float] | tuple[float, ...] | None = None, select: str = "balanced_acc",
                    max_iter: int = 1000, tol: float = 1e-6, warm_start: bool = True,
                    device: str | torch.device | None = None, dtype: torch.dtype = torch.float64,
                    sample_weight: torch.Tensor | None = None) -> ReferenceResult:
    """The CLIP paper's linear probe: logistic regression with l2 chosen on the validation split.

    Every l2 of ``l2_grid`` (default :data:`DEFAULT_L2_GRID`, 1e0 to 1e-6) is fitted on the
    training split only and scored on the validation split by ``select``; the highest score wins,
    the most regularised (largest) l2 on ties. The returned model is that training-split fit: it
    is not refitted on train + validation, so the validation split stays a clean selection set
    and the model is the one whose score chose it. Nothing else (no test split) is read.

    sample_weight: (n,) positive weights of the training rows in the cross-entropy's mean (default:
    equal); the ``lbfgs`` probe solver gives each of D draws of augmented rows weight 1 / D.

    warm_start: fit the grid from the largest l2 down, each fit starting from the previous
    solution (the usual regularisation path; the large-l2 problems are well conditioned and
    their solutions are good starts). Each fit still runs to ``tol``, so the model is the
    solution for its l2 up to the tolerance; ``warm_start=False`` starts every fit from zero.
    """
    _check_xy(train_x, train_y, num_classes, "train")
    _check_xy(val_x, val_y, num_classes, "validation")
    if val_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"train and validation dimensions differ: {train_x.shape[1]} vs {val_x.shape[1]}")
    if select not in SELECT_METRICS:
        raise ValueError(f"select must be one of {SELECT_METRICS}, got {select!r}")
    grid = sorted({float(v) for v in (DEFAULT_L2_GRID if l2_grid is None else l2_grid)}, reverse=True)
    if not grid or any(not v >= 0 for v in grid):
        raise ValueError(f"l2_grid must be a non-empty list of values >= 0, got {l2_grid!r}")
    if sample_weight is not None and (sample_weight.shape != train_y.shape
                                      or not bool(((sample_weight > 0) & sample_weight.isfinite()).all())):
        raise ValueError(f"sample_weight must be {len(train_y)} positive finite values, one per training row")
    dev = resolve_device(device)
    x, y, vx = train_x.to(dev), train_y.to(dev), val_x.to(dev, dtype)

    scores, best, best_score, prev = [], None, -1.0, None
    for l2 in grid:
        init = (prev.weight, prev.bias) if warm_start and prev is not None else None
        fit = solve_logreg(x, y, num_classes, l2=l2, max_iter=max_iter, tol=tol, init=init, dtype=dtype,
                           sample_weight=sample_weight)
        with torch.no_grad():
            val = metrics(F.linear(vx, fit.weight, fit.bias).argmax(-1), val_y, num_classes)
        scores.append({"l2": l2, **{f"val_{k}": v for k, v in val.items()}, "converged": fit.converged,
                       "iterations": fit.iterations, "grad_norm": fit.grad_norm})
        if val[select] > best_score + TIE_TOL:  # on ties the earlier, larger l2 stays
            best, best_score = fit, val[select]
        prev = fit
    return ReferenceResult(model=_linear(best), l2=best.l2, select=select, scores=scores)

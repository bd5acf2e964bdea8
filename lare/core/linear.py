"""N linear maps held as one tensor: their logits, predictions and metrics, the cross-entropy and
its gradients written out, and one AdamW step of all N at once (what the probe's trainer,
:func:`lare.core.probe.train_probe_trials`, trains with).

The parameters of N maps ``R^d -> R^C`` are one (d + 1, N, C) tensor ``theta``: rows :d the
weights, row d the biases. With inputs every map shares, the N maps are one (d + 1, N C) matrix,
so a step is two plain matrix products; with per-map inputs, batched products. The products take
the inputs' dtype (bfloat16 inputs: bfloat16 operands, as autocast computes a linear layer); the
parameters, the softmax and the gradients returned are float32 (for float32 inputs every cast
below is a no-op).
"""

from __future__ import annotations

import torch

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.AdamW's defaults, as make_optimizer uses them


def batched_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Logits of N linear maps on per-trial inputs: x (N, b, d), weight (N, d, C), bias (N, C) -> (N, b, C), in x's dtype."""
    return torch.baddbmm(bias.to(x.dtype).unsqueeze(1), x, weight.to(x.dtype))


def batched_predict(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Predicted labels (N, n) of N linear maps on shared inputs x (n, d), ``chunk`` rows at a time."""
    trials, d, c = weight.shape
    # Shared inputs: one (n, d) x (d, N C) product instead of N products on copies of x.
    w, b = weight.permute(1, 0, 2).reshape(d, trials * c).to(x.dtype), bias.reshape(1, trials * c).to(x.dtype)
    return torch.cat([torch.addmm(b, part, w).view(-1, trials, c).argmax(-1).T for part in x.split(chunk)], dim=1)


def batched_metrics(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """:func:`lare.core.probe.metrics` for N prediction rows at once: pred (N, n), labels (n,) -> (N,) each, in %.

    Balanced accuracy: mean recall over the classes present in ``labels``, in float64 (equal values
    reached with different per-class hits may differ in the last bits: compare with :data:`lare.core.train.SCORE_TIE_TOL`)."""
    if labels.numel() == 0:
        raise ValueError("cannot compute accuracy on an empty set")
    correct = (pred == labels).to(torch.float64)
    per_class_n = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    per_class_hit = torch.zeros(len(pred), num_classes, dtype=torch.float64, device=pred.device).index_add_(1, labels, correct)
    present = per_class_n > 0
    balanced = (per_class_hit[:, present] / per_class_n[present]).mean(1)
    return {"top1": 100.0 * correct.mean(1), "balanced_acc": 100.0 * balanced}


def nll_grads(logits: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy of the labels ``index`` (logits' shape with a last dimension of 1) and its
    gradient in the logits, softmax minus one-hot (written into the log-softmax's buffer), in float32."""
    logp = logits.float().log_softmax(-1)
    nll = -logp.gather(-1, index).squeeze(-1)
    dlogits = logp.exp_()
    dlogits.scatter_add_(-1, index, torch.full_like(dlogits[..., :1], -1.0))
    return nll, dlogits


def cross_entropy_grads(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-trial mean cross-entropy and its gradients: x (N, b, d), y (N, b) -> loss (N,), dW (N, d, C), db (N, C).

    Written out (softmax minus one-hot, over b): the numbers ``F.cross_entropy(...).backward()``
    gives per trial, without building a graph per step."""
    nll, dlogits = nll_grads(batched_logits(x, weight, bias), y.unsqueeze(-1))
    dlogits /= x.shape[1]
    return nll.mean(1), torch.bmm(x.transpose(1, 2), dlogits.to(x.dtype)).float(), dlogits.sum(1)


def shared_cross_entropy_grads(x1: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cross_entropy_grads` when every trial sees the same batch: x1 (b, d + 1), the inputs with
    a column of ones; y (b,); theta (d + 1, N, C), every trial's weight rows and bias row side by side,
    so the N maps are one (d + 1, N C) matrix and a step is two plain matrix products, the second
    giving the weight and bias gradients at once in theta's layout. Returns loss (N,), grad like theta."""
    rows, trials, c = theta.shape
    maps = theta.to(x1.dtype).view(rows, trials * c)
    nll, dlogits = nll_grads((x1 @ maps).view(-1, trials, c), y.view(-1, 1, 1).expand(-1, trials, 1))
    grad = (x1.T @ dlogits.to(x1.dtype).view(-1, trials * c)).float().div_(x1.shape[0])  # (d + 1, N C): the mean over b
    return nll.mean(0), grad.view(rows, trials, c)


def split_cross_entropy_grads(x1: torch.Tensor, y: torch.Tensor, ax: torch.Tensor, ay: torch.Tensor,
                              theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`shared_cross_entropy_grads` over a full batch of the originals x1 (n, d + 1), y (n,),
    which every trial shares, and each trial's extras ax (N, m, d), ay (N, m): the mean over the
    n + m rows without stacking the originals N times (one shared product for them, one batched
    product for the extras). Returns loss (N,), grad like theta (d + 1, N, C)."""
    rows, trials, c = theta.shape
    count = x1.shape[0] + ax.shape[1]
    nll, dlogits = nll_grads((x1 @ theta.to(x1.dtype).view(rows, trials * c)).view(-1, trials, c),
                             y.view(-1, 1, 1).expand(-1, trials, 1))
    nll_extra, dlogits_extra = nll_grads(batched_logits(ax, theta[:-1].permute(1, 0, 2), theta[-1]), ay.unsqueeze(-1))
    loss = (nll.sum(0) + nll_extra.sum(1)) / count
    grad = (x1.T @ dlogits.to(x1.dtype).view(-1, trials * c)).float().view(rows, trials, c)
    grad[:-1] += torch.bmm(ax.transpose(1, 2), dlogits_extra.to(ax.dtype)).float().permute(1, 0, 2)
    grad[-1] += dlogits_extra.sum(1)
    return loss, grad.div_(count)


def _per_trial(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) values shaped to broadcast against ``like``, whose dimension 1 holds the trials (d + 1, N, C)."""
    return v.to(like.dtype).view(1, -1, *([1] * (like.dim() - 2)))


def adamw_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
               step: torch.Tensor, lr: torch.Tensor, weight_decay: torch.Tensor, frozen: torch.Tensor | None = None) -> None:
    """One AdamW step of N trials in place: param, grad and moments (d + 1, N, C); step, lr, weight_decay (N,) float64.

    The update of ``torch.optim.AdamW`` (decoupled weight decay, bias correction, betas 0.9/0.999,
    eps 1e-8), the per-trial scalars computed in float64 as torch computes its Python-float
    scalars; the per-trial step size multiplies the first moment before the division (torch
    passes a scalar to ``addcdiv``), so it agrees with torch to float rounding, not bit for bit.
    ``step``: the number of this step per trial (1 for the first). ``frozen``: indices of the
    trials that keep their parameters and moments (stopped ones); None: all step.
    """
    decay = _per_trial(1 - lr * weight_decay, param)
    step_size = _per_trial(-lr / (1 - BETA1 ** step), param)
    bias_correction2_sqrt = _per_trial((1 - BETA2 ** step).sqrt(), param)
    # Stopped trials: the update runs on every trial, then their old values are put back (only
    # theirs are saved), so the running trials take exactly the steps they take unmasked.
    saved = None if frozen is None else [t.index_select(1, frozen) for t in (param, exp_avg, exp_avg_sq)]
    param.mul_(decay)
    exp_avg.lerp_(grad, 1 - BETA1)
    exp_avg_sq.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
    param.addcdiv_(exp_avg * step_size, (exp_avg_sq.sqrt().div_(bias_correction2_sqrt)).add_(EPS))
    if saved is not None:
        for t, old in zip((param, exp_avg, exp_avg_sq), saved, strict=True):
            t.index_copy_(1, frozen, old)

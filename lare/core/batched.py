"""N trials of f_Box or of the LADS augmenter trained as one batched model (a hyperparameter search).

The trials of one unit share the training data, the seed (so the initialisation and the batch
order) and the optimiser settings; they differ in the loss weights a search varies: ``alpha`` and
the class-consistency temperature ``scale`` for f_Box, ``domain_weight`` for LADS. Their two-layer
networks are stacked into ``(N, ...)`` weight tensors and every step is one batched product, so a
search of N trials costs about one training run with N-times-wider matrices. The loss is the sum
of the trials' losses, whose gradients do not mix, and AdamW is element-wise, so trial i takes the
steps it would take alone (:func:`lare.core.box.train_box`, :func:`lare.core.lads.train_lads`), up to the
rounding of batched products. Each trial keeps its own best validation epoch and stops on its own
patience; a stopped trial's later epochs are ignored, and the loop ends when all have stopped.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from lare.core.box import ACTIVATIONS, BoxConfig, BoxNet, BoxTrainResult
from lare.core.lads import (
    LADSAugmenter,
    LADSConfig,
    LADSResult,
    domain_directions,
    inverse_frequency_weights,
    lads_class_consistency_loss,
)
from lare.core.losses import lare_loss_terms_trials
from lare.core.train import (
    LOSS_REL_TOL,
    EarlyStop,
    autocast,
    batches,
    check_xy,
    compute_dtype,
    effective_epochs,
    make_optimizer,
    seeded_init,
)
from lare.utils import make_generator, resolve_device


class StackedMLP(nn.Module):
    """N two-layer networks ``Linear(d, h) -> act -> Linear(h, out)`` as (N, ...) weight tensors,
    each initialised like the single network ``factory()`` seeded with ``seed``."""

    def __init__(self, nets: list[nn.Sequential], activation: nn.Module):
        super().__init__()
        first, last = [n[0] for n in nets], [n[2] for n in nets]
        self.w1 = nn.Parameter(torch.stack([m.weight.detach().T for m in first]).contiguous())
        self.b1 = nn.Parameter(torch.stack([m.bias.detach() for m in first]).unsqueeze(1).contiguous())
        self.w2 = nn.Parameter(torch.stack([m.weight.detach().T for m in last]).contiguous())
        self.b2 = nn.Parameter(torch.stack([m.bias.detach() for m in last]).unsqueeze(1).contiguous())
        self.act = activation

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (b, d) shared by the trials, or (n, b, d); returns (n, b, out). ``rows``: the trials to
        run (None: all), so trials that have stopped cost nothing."""
        w1, b1, w2, b2 = (self.w1, self.b1, self.w2, self.b2) if rows is None else \
            (p[rows] for p in (self.w1, self.b1, self.w2, self.b2))
        if x.dim() == 2:
            x = x.expand(w1.shape[0], *x.shape)
        return torch.baddbmm(b2, self.act(torch.baddbmm(b1, x, w1)), w2)


@torch.no_grad()
def load_trial(net: nn.Sequential, state: dict[str, torch.Tensor]) -> nn.Sequential:
    """One trial's slice of a :class:`StackedMLP` state (``w1``, ``b1``, ``w2``, ``b2``) copied into
    ``net``, the single network's layout."""
    net[0].weight.copy_(state["w1"].T)
    net[0].bias.copy_(state["b1"][0])
    net[2].weight.copy_(state["w2"].T)
    net[2].bias.copy_(state["b2"][0])
    return net


def box_terms(out: torch.Tensor, class_text: torch.Tensor, y: torch.Tensor, *, alpha: torch.Tensor,
              scale: torch.Tensor, cfg: BoxConfig) -> dict[str, torch.Tensor]:
    """Eq. (5) per trial: ``out`` (N, b, 2d), ``alpha`` and ``scale`` (N,); every term (N,), trial
    i's being what :func:`lare.core.box.train_box` minimises for ``out[i]`` (the same fused loss)."""
    return lare_loss_terms_trials(out, class_text, y, corners=cfg.corners, alpha=alpha, scale=scale,
                                  reduction=cfg.reduction, volume=cfg.volume)


def minimise_trials(model: StackedMLP, terms, x, y, *, val, cfg, n: int) -> tuple[list[dict], list[int], list[str], list]:
    """AdamW on the sum of the trials' ``terms(x_b, y_b, rows)["total"]`` (one value per trial in
    ``rows``, the running trials; None: all); per trial the best epoch by validation total (the first
    on ties, a NaN total never, as :func:`lare.core.train.minimise`), kept until its patience runs out.
    A stopped trial is no longer computed (its parameters drift under weight decay, but its best
    state is already kept). Returns (best states, best epochs, stopped_by, histories)."""
    dev = x.device
    opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, dev)
    gen = make_generator(cfg.seed, "cpu")
    epochs = effective_epochs(cfg.epochs, len(x), cfg.batch_size, cfg.min_steps, cfg.max_steps)
    best = torch.full((n,), float("inf"))
    best_epoch, stopped, states = [-1] * n, ["budget"] * n, [None] * n
    history: list[list[dict]] = [[] for _ in range(n)]
    active, steps = [True] * n, 0
    early = [EarlyStop(cfg.patience, cfg.min_steps, rel_tol=LOSS_REL_TOL) for _ in range(n)]
    for epoch in range(epochs):
        running = [i for i in range(n) if active[i]]
        rows = None if len(running) == n else torch.tensor(running, device=dev)
        model.train()
        sums = None
        for idx in batches(len(x), cfg.batch_size, gen, dev):
            with autocast(dev, cfg.precision):
                t = terms(x[idx], y[idx], rows)
            opt.zero_grad(set_to_none=True)
            t["total"].sum().backward()
            opt.step()
            steps += 1
            part = {k: v.detach().float() * len(idx) for k, v in t.items()}
            sums = part if sums is None else {k: sums[k] + part[k] for k in sums}
        model.eval()
        with torch.no_grad(), autocast(dev, cfg.precision):
            vt = {k: v.float().cpu() for k, v in terms(*val, rows).items()} if val is not None else None
        train = {k: (v / len(x)).cpu() for k, v in sums.items()}
        for j, i in enumerate(running):  # j: the trial's place among this epoch's rows
            row = {"epoch": epoch, **{f"train_{k}": float(v[j]) for k, v in train.items()}}
            score = -epoch
            if vt is not None:
                row.update({f"val_{k}": float(v[j]) for k, v in vt.items()})
                score = row["val_total"]
            history[i].append(row)
            if score < best[i]:
                best[i], best_epoch[i] = score, epoch
                states[i] = {k: v.detach()[i].clone() for k, v in model.state_dict().items()}
            if vt is not None and early[i].update(epoch, score, steps):
                active[i], stopped[i] = False, "patience"
        if not any(active):
            break
    if any(s is None for s in states):
        raise FloatingPointError("a trial diverged (every validation loss was NaN or infinite); lower the learning "
                                 "rate or the logit scale, or check the inputs for non-finite values")
    return states, best_epoch, stopped, history


def differing(configs: list, varying: set[str]) -> list[str]:
    """The fields besides ``varying`` in which the configs (dataclasses) differ from the first."""
    base = dataclasses.asdict(configs[0])
    return sorted({k for c in configs[1:] for k, v in dataclasses.asdict(c).items() if k not in varying and v != base[k]})


def _check_shared(configs: list, varying: set[str]) -> None:
    if not configs:
        raise ValueError("no trials given")
    if diff := differing(configs, varying):
        raise ValueError(f"batched trials may differ only in {sorted(varying)}; these differ too: {diff}")


def _train_and_unstack(single: list[nn.Module], model: StackedMLP, terms, x, y, val, configs: list, result) -> list:
    """Train the stacked trials (:func:`minimise_trials`) and give each its own network back, at its best
    epoch, as ``result(network, config, best_epoch, history, stopped_by)``, the single trainer's result."""
    states, best, stopped, hist = minimise_trials(model, terms, x, y, val=val, cfg=configs[0], n=len(configs))
    out = []
    for i, (net, c) in enumerate(zip(single, configs, strict=True)):
        load_trial(net.net, states[i])
        out.append(result(net.to(x.device).eval(), c, best[i], hist[i], stopped[i]))
    return out


def train_box_trials(train_x, train_y, class_text, configs: list[BoxConfig], *, val_x=None, val_y=None,
                     device=None) -> list[BoxTrainResult]:
    """f_Box for each config (they may differ in ``alpha`` and ``scale`` only), trained together."""
    _check_shared(configs, {"alpha", "scale"})
    cfg, dev = configs[0], resolve_device(device)
    check_xy(train_x, train_y, class_text, "train")
    dtype = compute_dtype(cfg.precision)  # the inputs in train_box's dtype (bf16: cast once, as autocast would)
    x, y, t = train_x.to(dev, dtype), train_y.to(dev), class_text.to(dev, torch.float32)
    val = (val_x.to(dev, dtype), val_y.to(dev)) if val_x is not None and len(val_x) else None
    single = [seeded_init(lambda: BoxNet(x.shape[1], cfg.hidden, cfg.activation, cfg.corners), cfg.seed)
              for _ in configs]
    model = StackedMLP([s.net for s in single], ACTIVATIONS[cfg.activation]()).to(dev)
    alpha = torch.tensor([c.alpha for c in configs], dtype=torch.float64)
    scale = torch.tensor([c.scale for c in configs], dtype=torch.float64)

    def terms(bx, by, rows):
        pick = slice(None) if rows is None else rows.cpu()
        return box_terms(model(bx, rows), t, by, alpha=alpha[pick], scale=scale[pick], cfg=cfg)

    return _train_and_unstack(single, model, terms, x, y, val, configs, BoxTrainResult)


def train_lads_trials(train_x, train_y, source_text, target_text, configs: list[LADSConfig], *, val_x=None,
                      val_y=None, device=None) -> list[LADSResult]:
    """The LADS augmenter for each config (they may differ in ``domain_weight`` only), trained together."""
    _check_shared(configs, {"domain_weight"})
    cfg, dev = configs[0], resolve_device(device)
    check_xy(train_x, train_y, source_text, "train")
    x, y = train_x.to(dev, torch.float32), train_y.to(dev)  # float32 under bf16 too, as train_lads (x enters the loss)
    src = source_text.to(dev, torch.float32)
    dirs = domain_directions(src, target_text.to(dev, torch.float32))
    weights = inverse_frequency_weights(y, src.shape[0])
    val = (val_x.to(dev, torch.float32), val_y.to(dev)) if val_x is not None and len(val_x) else None
    single = [seeded_init(lambda: LADSAugmenter(x.shape[1]), cfg.seed) for _ in configs]
    model = StackedMLP([s.net for s in single], nn.ReLU()).to(dev)
    # the loss weights formed in float64 and cast once, as train_lads's Python floats are
    w64 = torch.tensor([c.domain_weight for c in configs], dtype=torch.float64)
    w_dom, w_cls = w64.to(dev, torch.float32), (1 - w64).to(dev, torch.float32)

    def terms(bx, by, rows):
        aug = model(bx, rows)  # (N, b, d), N the running trials
        wd, wc = (w_dom, w_cls) if rows is None else (w_dom[rows], w_cls[rows])
        dom = (1 - F.cosine_similarity(aug - bx, dirs[by], dim=-1)).mean(-1)
        # LADS's class-weighted cross-entropy, one call per trial: its weighted mean then sums in
        # the order train_lads's does, so a trial's numbers are those it gets alone
        cls = torch.stack([lads_class_consistency_loss(a, src, by, weights) for a in aug])
        return {"domain": dom, "class": cls, "total": wd * dom + wc * cls}

    return _train_and_unstack(single, model, terms, x, y, val, configs, LADSResult)

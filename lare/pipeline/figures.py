"""Figures and views: Figure 3 and the sensitivity plot from the aggregated CSV, and the tables and
pictures the notebooks show of what a run folder holds (no training here)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F

from lare.compare.results import read_rows
from lare.compare.stats import paired_interval
from lare.core.box import BoxTrainResult, load_box, sample_boxes
from lare.pipeline.params import RunParams
from lare.pipeline.runfolder import load_encoder_data, results_path
from lare.utils import atomic_path


def figure3_lines(encoder: str = "coca", name: str = "CoCa") -> list[tuple[str, str, str]]:
    """Figure 3's lines, (method, encoder, legend): the paper's three, on ``encoder`` (shown as ``name``)."""
    return [("zero-shot", encoder, f"{name} zero-shot"), ("linear-probe", encoder, f"{name} linear probe"),
            ("lare", encoder, "LARE")]


def _pca2(x: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    mean = fit.mean(0)
    _, _, v = torch.pca_lowrank(fit - mean, q=2, center=False)
    return (x - mean) @ v[:, :2]


def figure3(agg: pd.DataFrame, dataset: str, *, title: str, domain: str = "in_domain", encoder: str = "coca",
            name: str = "CoCa"):
    """Accuracy against shots per class ('full' at the right), mean with a ±std band over seeds, of
    zero-shot, the linear probe and LARE on ``encoder`` (the paper's: coca), shown as ``name``."""
    sub = agg[(agg["dataset"] == dataset) & (agg["domain"] == domain)]
    if sub.empty:
        raise ValueError(f"no results for dataset {dataset!r} ({domain}) in the aggregated CSV")
    if not (sub["encoder"] == encoder).any():
        raise ValueError(f"Figure 3: no results for encoder {encoder!r} on dataset {dataset!r} ({domain}); encoders with "
                         f"results: {sorted(sub['encoder'].unique())}: set figure3_encoder to one of them")
    shots = sorted(s for s in sub["shots"].unique() if s > 0) + ([0] if 0 in set(sub["shots"]) else [])
    pos = {s: i for i, s in enumerate(shots)}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, enc, label in figure3_lines(encoder, name):
        d = sub[(sub["method"] == method) & (sub["encoder"] == enc)]
        if d.empty:
            continue
        if method == "zero-shot":  # no training: a flat reference line
            m = d["top1_mean"].mean()
            ax.axhline(m, color="grey", ls="--", label=label)
            continue
        d = d.assign(x=d["shots"].map(pos)).sort_values("x")
        ax.plot(d["x"], d["top1_mean"], marker="o", label=label)
        ax.fill_between(d["x"], d["top1_mean"] - d["top1_std"], d["top1_mean"] + d["top1_std"], alpha=0.2)
    ax.set_xticks(range(len(shots)), [str(s) if s else "full" for s in shots])
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def save_figure(fig, folder: str | Path, stem: str) -> dict[str, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for ext in ("png", "pdf"):
        out[ext] = folder / f"{stem}.{ext}"
        with atomic_path(out[ext]) as tmp:
            # Fixed metadata so the same results give byte-identical files.
            meta = {"Software": None} if ext == "png" else {"CreationDate": None, "Producer": None, "Creator": None}
            fig.savefig(tmp, format=ext, dpi=150, metadata=meta)
    return out


def embeddings_2d(sets: dict, title: str):
    train = sets["train"]
    fig, ax = plt.subplots(figsize=(5, 4))
    p = _pca2(train.embeddings, train.embeddings)
    ax.scatter(p[:, 0], p[:, 1], c=train.labels, cmap="tab20", s=6, label="train (photo)")
    markers = {"test": "x", "ood": "^"}
    for name, s in sets.items():
        if name == "train":
            continue
        q = _pca2(s.embeddings, train.embeddings)
        ax.scatter(q[:, 0], q[:, 1], c="grey" if name == "test" else "black", s=6, marker=markers.get(name, "."),
                   alpha=0.5, label=name)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def box_training(history: list[dict], title: str):
    h = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for term in ("bv", "cc_plus", "cc_minus", "cc_center", "total"):
        axes[0].plot(h["epoch"], h[f"train_{term}"], label=term)
        if f"val_{term}" in h:
            axes[1].plot(h["epoch"], h[f"val_{term}"], label=term)
    for ax, name in zip(axes, ("training", "validation"), strict=True):
        ax.set_title(f"{title}: {name}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def boxes_2d(x: torch.Tensor, y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, samples: torch.Tensor,
             n_items: int = 6):
    """Some items, their box corners and samples, in the PCA plane of the training embeddings."""
    fig, ax = plt.subplots(figsize=(5, 4))
    base = _pca2(x, x)
    ax.scatter(base[:, 0], base[:, 1], c="lightgrey", s=4, label="training embeddings")
    for i in range(min(n_items, len(x))):
        colour = plt.cm.tab10(i % 10)
        s = _pca2(samples[i], x)
        c = _pca2(torch.stack([lower[i], upper[i], (lower[i] + upper[i]) / 2]), x)
        ax.scatter(s[:, 0], s[:, 1], color=colour, s=8, alpha=0.6)
        ax.scatter(base[i, 0], base[i, 1], color=colour, marker="*", s=120, edgecolor="k")
        ax.plot(c[:2, 0], c[:2, 1], color=colour, lw=1)
    ax.set_title("items (stars), box diagonals (lines) and box samples (dots)", fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_bars(rows: pd.DataFrame, title: str):
    g = rows.groupby(["method", "encoder", "domain", "shots"])["top1"].agg(["mean", "std"]).reset_index()
    g["label"] = g["method"] + " / " + g["encoder"] + " / " + g["shots"].map(lambda s: "full" if s == 0 else f"{s}-shot")
    piv = g.pivot(index="label", columns="domain", values="mean")
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(piv) + 1.5))
    piv.plot.barh(ax=ax)
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def sensitivity(trials: pd.DataFrame, *, title: str):
    """LARE's in- and out-of-domain top-1 against alpha, samples per item k and the mean box
    log-width of each search trial (one point per trial and encoder: mean over seeds with a 95 %
    t-interval; the x of box width is its mean over seeds). Filled markers: trials the search selected."""
    panels = (("alpha", "alpha (Eq. (5))"), ("k", "box samples per item k"), ("log_width", "mean box log-width per dimension"))
    domains = [d for d in ("in_domain", "out_of_domain") if d in set(trials["domain"])]
    fig, axes = plt.subplots(len(domains), len(panels), figsize=(4 * len(panels), 3.2 * len(domains)), squeeze=False)
    for row, dom in enumerate(domains):
        for col, (x, label) in enumerate(panels):
            ax = axes[row][col]
            for enc, g in trials[trials["domain"] == dom].groupby("encoder"):
                pts = []
                for _, t in g.groupby("trial"):
                    mean, low, high = paired_interval(list(t["top1"]))
                    pts.append((t[x].mean(), mean, mean - low if low == low else 0.0, bool(t["selected"].any())))
                pts.sort()
                xs, ys, err, sel = zip(*pts, strict=True)
                line = ax.errorbar(xs, ys, yerr=err, fmt="o", ms=4, capsize=2, alpha=0.8, label=enc, mfc="none")
                ax.scatter([a for a, s in zip(xs, sel, strict=True) if s], [b for b, s in zip(ys, sel, strict=True) if s],
                           color=line[0].get_color(), s=20, zorder=3)
            ax.set_xlabel(label)
            ax.set_ylabel(f"top-1 (%), {dom.replace('_', '-')}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- views of a run folder, for the notebooks

def summary(p: RunParams) -> pd.DataFrame:
    """One row per (encoder, split): items, dimension, classes and the cache entry."""
    rows = []
    for enc in p.encoders:
        d = load_encoder_data(p.run_path, p.dataset, enc)
        for split, s in d.sets.items():
            rows.append({"encoder": enc, "split": split, "items": len(s), "dim": s.embeddings.shape[1],
                         "classes": len(d.index["class_names"]), "path": s.path})
    return pd.DataFrame(rows)


def plot_embeddings(p: RunParams, encoder: str):
    return embeddings_2d(load_encoder_data(p.run_path, p.dataset, encoder).sets, f"{p.dataset} / {encoder} (PCA)")


def plot_box_training(box: BoxTrainResult | str | Path, title: str = "f_Box"):
    """The loss terms per epoch of a trained f_Box (or of a checkpoint file)."""
    if not isinstance(box, BoxTrainResult):
        title, box = Path(box).stem, load_box(box, "cpu")
    return box_training(box.history, title)


def plot_boxes_2d(train_x: torch.Tensor, train_y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, *,
                  renormalize: bool = True, n_boxes: int = 6, k: int = 64, seed: int = 0):
    """A 2-D projection of some boxes with ``k`` samples drawn from each (seeded)."""
    g = torch.Generator().manual_seed(seed)
    samples = sample_boxes(lower[:n_boxes], upper[:n_boxes], k, generator=g)
    if renormalize:
        samples = F.normalize(samples, dim=-1)
    return boxes_2d(train_x, train_y, lower, upper, samples)


def plot_accuracy(p: RunParams, methods: list[str] | None = None):
    """Mean top-1 over seeds per (method, encoder, domain, shots) of the run's recorded rows."""
    rows = pd.DataFrame(read_rows(results_path(p.run_path)))
    rows = rows[rows["dataset"] == p.dataset]
    if methods:
        rows = rows[rows["method"].isin(methods)]
    return accuracy_bars(rows, f"{p.dataset}: mean top-1 over seeds")

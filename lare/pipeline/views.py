"""Views for the notebooks: tables and pictures of what the run folder holds (no training here)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from lare.compare.results import read_rows
from lare.core.box import BoxTrainResult, load_box, sample_boxes
from lare.pipeline.params import RunParams
from lare.pipeline.plots import accuracy_bars, box_training, boxes_2d, embeddings_2d
from lare.pipeline.runfolder import load_encoder_data, results_path


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

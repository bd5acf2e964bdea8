"""The arXiv benchmarks' tables, read from the result rows: DomainNet per target domain, and
CIFAR-100-LT with balanced and head / medium / tail accuracy.

Each is one row per (method, encoder) in Table 1's order (:func:`lare.compare.registry.table1_rows`), mean ±
std over seeds of the full training set (shots 0), written as CSV (numbers) and Markdown.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lare.compare.methods import OOD_PREFIX, OUT_OF_DOMAIN
from lare.compare.registry import table1_rows
from lare.compare.results import FULL_SHOTS, markdown_table, table_encoders, write_csv
from lare.data.catalog import DATASETS
from lare.data.longtail import GROUPS
from lare.utils import atomic_path


def metric_table(rows: list[dict], dataset: str, columns: list[tuple[str, str, str]],
                 encoders: dict[str, str] | None = None) -> pd.DataFrame:
    """Per (method, encoder) of Table 1 with results on ``dataset``: for each ``(domain, metric,
    label)`` the mean and std over seeds (``label mean``, ``label std``) and the number of seeds.
    ``encoders``: display names by encoder key (see :func:`lare.compare.results.table_encoders`)."""
    df = pd.DataFrame([r for r in rows if r["dataset"] == dataset and r["shots"] == FULL_SHOTS])
    out = []
    for method, spec in table1_rows(table_encoders(df["encoder"] if len(df) else [], encoders)):
        sub = df[(df["method"] == method) & (df["encoder"] == spec.encoder)] if len(df) else df
        if not len(sub):
            continue
        row = {"method": spec.label, "seeds": int(sub["seed"].nunique())}
        for domain, metric, label in columns:
            cell = sub[sub["domain"] == domain]
            values = cell[metric].dropna() if metric in cell else pd.Series(dtype=float)
            row[f"{label} mean"] = values.mean() if len(values) else float("nan")
            row[f"{label} std"] = values.std(ddof=1) if len(values) > 1 else 0.0 if len(values) else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def write_metric_table(t: pd.DataFrame, columns: list[tuple[str, str, str]], folder: str | Path, stem: str,
                       title: str) -> dict[str, Path]:
    """The table as CSV (numbers) and Markdown ('mean ± std'; '-' where nothing was measured)."""
    folder = Path(folder)
    shown = pd.DataFrame({"Method": t["method"]})
    for *_, label in columns:
        shown[label] = ["-" if pd.isna(m) else f"{m:.2f} ± {s:.2f}" for m, s in zip(t[f"{label} mean"], t[f"{label} std"],
                                                                                  strict=True)]
    shown["Seeds"] = t["seeds"]
    paths = {"csv": folder / f"{stem}.csv", "md": folder / f"{stem}.md"}
    write_csv(t, paths["csv"])
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(f"**{title}**\n\n" + markdown_table(shown) + "\n")
    return paths


def target_domains(rows: list[dict], dataset: str) -> list[str]:
    """The ``ood_<domain>`` domains of a dataset's results (several target domains), sorted."""
    return sorted({r["domain"] for r in rows if r["dataset"] == dataset and r["domain"].startswith(OOD_PREFIX)})


def arxiv_tables(rows: list[dict], folder: str | Path, note: str = "", encoders: dict[str, str] | None = None) -> dict[str, Path]:
    """Every arXiv benchmark table the results allow: per target domain for a dataset with several
    (``table_<dataset>_domains``), and one CIFAR-100-LT table over its imbalance factors
    (``table_longtail``). ``encoders``: display names by encoder key."""
    paths: dict[str, Path] = {}
    datasets = sorted({r["dataset"] for r in rows})
    for ds in datasets:
        targets = target_domains(rows, ds)
        if not targets:
            continue
        cols = [("in_domain", "top1", "In-domain"), *((d, "top1", d[len(OOD_PREFIX):]) for d in targets),
                (OUT_OF_DOMAIN, "top1", "Out-of-domain (mean)")]
        t = metric_table(rows, ds, cols, encoders)
        if not t.empty:
            paths.update({f"{ds}_{k}": v for k, v in write_metric_table(
                t, cols, folder, f"table_{ds}_domains",
                f"{ds}: top-1 accuracy (%) per target domain and their mean, mean ± std over seeds{note}").items()})
    lt = [ds for ds in datasets if DATASETS.get(ds) is not None and DATASETS[ds].imbalance]
    if lt:
        cols = [("in_domain", "top1", "Top-1"), ("in_domain", "balanced_acc", "Balanced"),
                *(("in_domain", g, g.capitalize()) for g in GROUPS)]
        parts = []
        for ds in sorted(lt, key=lambda d: -DATASETS[d].imbalance):
            t = metric_table(rows, ds, cols, encoders)
            if not t.empty:
                parts.append(t.assign(method=[f"{m} (IF {DATASETS[ds].imbalance})" for m in t["method"]]))
        if parts:
            paths.update({f"longtail_{k}": v for k, v in write_metric_table(
                pd.concat(parts, ignore_index=True), cols, folder, "table_longtail",
                "CIFAR-100-LT: top-1, balanced, head (> 100 images), medium (20-100) and tail (< 20) accuracy (%), "
                f"mean ± std over seeds{note}").items()})
    return paths

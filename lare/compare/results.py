"""Results: one JSON row per (method, encoder, dataset, domain, shots, seed), then a CSV of
mean and std over seeds; tables and figures read only the CSV.

Each row carries the metrics, the full parameters and their hash, a hash of the embeddings it was
computed on, the fingerprint of the library code (:mod:`lare.provenance`), the git commit (and
whether the code was modified) and the package versions. A unit of work is done when rows with
its parameters, embeddings and code are recorded; computed again (another setting, other
embeddings, edited code, ``--force``), its new rows replace the old, which move to
``results.superseded.jsonl`` beside the file. Every write rewrites the file atomically under a
lock, so a killed run leaves no partial row, and a row already recorded is not written twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lare.compare.registry import encoder_name, table1_rows
from lare.compare.stats import paired_interval
from lare.provenance import code_fingerprint, code_state, git_commit, package_versions
from lare.utils import atomic_path, hash_config

KEY = ("method", "encoder", "dataset", "domain", "shots", "seed")
UNIT = ("method", "encoder", "dataset", "shots", "seed")  # one unit of work: its rows, one per domain
PROBE_METHOD = "linear-probe"  # the yardstick of the paired differences
FULL_SHOTS = 0  # "shots = 0" means the whole training pool
# What a row's numbers depend on besides its key: rows of one Table 1 cell must agree on each, and a
# row is paired with the probe's only when both agree on the last three.
PROVENANCE = {"config_hash": "parameters", "embeddings_hash": "embeddings", "code_fingerprint": "library code"}
PAIRED_ON = ("protocol", "embeddings_hash", "code_fingerprint")


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def make_rows(*, method: str, encoder: str, dataset: str, shots: int, seed: int,
              metrics_by_domain: dict[str, dict[str, float]], params: dict, extra: dict | None = None,
              code: dict | None = None) -> list[dict]:
    """Rows for one unit of work (one method, encoder, dataset, shots, seed), one per domain.

    ``params`` are the inputs (hashed: with the code they decide whether a unit is done; their
    ``embeddings`` entry is hashed on its own too); ``extra`` what the run found (the search's
    chosen trial and every trial's scores), recorded but not hashed; ``code``: the
    :func:`lare.provenance.code_state` (default: this process's)."""
    base = {"method": method, "encoder": encoder, "dataset": dataset, "shots": int(shots), "seed": int(seed),
            "params": params, "config_hash": hash_config(params), "embeddings_hash": hash_config(params.get("embeddings")),
            **(code or code_state()), "git_commit": git_commit(), "versions": package_versions(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
    return [{**base, "domain": domain, **{k: float(v) for k, v in m.items()}}
            for domain, m in metrics_by_domain.items()]


def superseded_path(path: str | Path) -> Path:
    """Where rows replaced by a recomputation are kept: ``results.superseded.jsonl`` beside ``path``."""
    path = Path(path)
    return path.with_name(path.name.replace(".jsonl", "") + ".superseded.jsonl")


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ident(row: dict) -> tuple:
    return tuple(row[k] for k in KEY) + (row["config_hash"], row.get("code_fingerprint"))


def _unit(row: dict) -> tuple:
    return tuple(row[k] for k in UNIT)


def _write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def append_rows(path: str | Path, rows: Iterable[dict], *, replace: bool = False) -> int:
    """Record rows: a row already present (same key, parameters and code) is not written again
    (``replace``: it is, as a recomputation does under ``--force``); the rows of a unit computed
    again replace the unit's old rows, which move to :func:`superseded_path`. Returns how many rows
    were added."""
    path = Path(path)
    with _locked(path):
        for torn in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write
            torn.unlink(missing_ok=True)
        existing = read_rows(path)
        seen = {_ident(r) for r in existing}
        new = [r for r in rows if replace or _ident(r) not in seen]
        if new:
            units = {_unit(r) for r in new}
            old = [r for r in existing if _unit(r) in units]
            if old:  # kept first: a kill between the two writes leaves a row twice, never none
                archive = superseded_path(path)
                _write_rows(archive, read_rows(archive) + old)
            _write_rows(path, [r for r in existing if _unit(r) not in units] + new)
    return len(new)


def has_result(path: str | Path, *, method: str, encoder: str, dataset: str, shots: int, seed: int,
               params: dict, code: str | None = None) -> bool:
    """True when rows for this unit of work with these parameters, made by this code
    (``code``: a :func:`lare.provenance.code_fingerprint`, default this package's), are recorded."""
    h, code = hash_config(params), code or code_fingerprint()
    return any(r["config_hash"] == h and r.get("code_fingerprint") == code
               and (r["method"], r["encoder"], r["dataset"], r["shots"], r["seed"])
               == (method, encoder, dataset, int(shots), int(seed)) for r in read_rows(path))


def _with_provenance(df: pd.DataFrame) -> pd.DataFrame:
    """Rows recorded before a provenance field existed read as ``"unknown"`` in it."""
    df = df.copy()
    for col in (*PROVENANCE, "code_commit"):
        df[col] = df[col].fillna("unknown") if col in df else "unknown"
    df["code_modified"] = df["code_modified"].fillna(False).astype(bool) if "code_modified" in df else False
    df["protocol"] = [(p or {}).get("protocol", "") if isinstance(p, dict) else "" for p in df.get("params", [None] * len(df))]
    return df


def _refuse_mixed(df: pd.DataFrame, cell: list[str]) -> None:
    """Refuse cells whose rows differ in parameters, embeddings or code, naming the rows."""
    for col, what in PROVENANCE.items():
        bad = [(k, g) for k, g in df.groupby(cell) if g[col].nunique() > 1]
        if bad:
            k, g = bad[0]
            seeds = "; ".join(f"seeds {sorted(int(s) for s in h['seed'].unique())} have {col} {v}"
                              for v, h in g.groupby(col))
            raise ValueError(
                f"results disagree in {what} within {len(bad)} cell(s), e.g. {dict(zip(cell, k, strict=True))}: {seeds}. "
                "Run the same command again with every seed of that cell (rows are then recomputed with the current "
                "parameters, code and embeddings), or remove the stale rows from the results file, or use another run folder")


def aggregate(rows: list[dict]) -> pd.DataFrame:
    """Mean and sample std (ddof=1; 0 for one seed) over seeds per (method, encoder, dataset, domain, shots).

    Refuses to average rows that differ within one cell in parameters, embeddings or library code
    (:data:`PROVENANCE`). Also per cell: the protocol, the code's commit and fingerprint, the
    embeddings' hash, the settings the search selected per seed, and the difference from the linear
    probe of the same encoder, dataset, domain and shots: the mean of the per-seed differences in
    top-1 with a paired 95 % t-interval (``delta_probe_mean``, ``_low``, ``_high``), over the
    ``delta_probe_pairs`` seeds whose probe row has the same protocol, embeddings and code.
    """
    if not rows:
        raise ValueError("no result rows to aggregate")
    df = _with_provenance(pd.DataFrame(rows))
    cell = ["method", "encoder", "dataset", "domain", "shots"]
    _refuse_mixed(df, cell)
    agg = df.groupby(cell).agg(n_seeds=("seed", "nunique"), top1_mean=("top1", "mean"), top1_std=("top1", "std"),
                               balanced_acc_mean=("balanced_acc", "mean"), balanced_acc_std=("balanced_acc", "std"),
                               config_hash=("config_hash", "first")).reset_index()
    agg = agg.fillna({"top1_std": 0.0, "balanced_acc_std": 0.0})  # one seed: no spread (Table 1 says n = 1)
    probe = {tuple(r[c] for c in [*cell[1:], "seed"]): r for r in df[df["method"] == PROBE_METHOD].to_dict("records")}
    extra = {}  # per cell: provenance, settings selected per seed, paired difference from the probe
    for k, g in df.groupby(cell):
        first = g.iloc[0]
        chosen = "selected" in g and g["selected"].notna().all()
        selected = json.dumps({int(r.seed): r.selected for r in g.itertuples()}, sort_keys=True) if chosen else ""
        diffs = [r["top1"] - q["top1"] for r in g.to_dict("records")
                 if (q := probe.get((*k[1:], r["seed"]))) and all(q[c] == r[c] for c in PAIRED_ON)]
        extra[k] = (first["protocol"], first["embeddings_hash"], first["code_fingerprint"], first["code_commit"],
                    bool(g["code_modified"].any()), selected, *paired_interval(diffs), len(diffs))
    columns = ("protocol", "embeddings_hash", "code_fingerprint", "code_commit", "code_modified", "selected", "delta_probe_mean",
               "delta_probe_low", "delta_probe_high", "delta_probe_pairs")
    values = [extra[k] for k in agg[cell].itertuples(index=False, name=None)]
    for n, col in enumerate(columns):
        agg[col] = [v[n] for v in values]
    return agg


def oracle_rows(rows: list[dict]) -> list[dict]:
    """The rows an *oracle* selection would give: per unit, the trial with the best out-of-domain
    top-1 (the target domain, which a real model selection never sees). Units without a search
    (one trial) or without an out-of-domain set are left out. For the labelled oracle table only."""
    out = []
    for r in rows:
        trials = r.get("trials") or []
        if len(trials) < 2 or not all("out_of_domain" in t for t in trials):
            continue
        best = max(range(len(trials)), key=lambda i: (trials[i]["out_of_domain"]["top1"], -i))
        out.append({**r, **trials[best][r["domain"]], "trial": best, "selected": trials[best]["settings"]})
    return out


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


# ---------------------------------------------------------------- Table 1
# Table 1 rows (method, encoder, label, the paper's numbers) come from the method registry.
PAPER_TABLE1 = {row.label: row.paper for _, row in table1_rows() if row.paper}  # docs/method.md section 8
DOMAINS = (("in_domain", "In-domain"), ("out_of_domain", "Out-of-domain"))


def table_encoders(encoders_found, names: dict[str, str] | None = None) -> dict[str, str]:
    """The encoders of a table, key -> display name: those of ``names`` (a run's, in its order) that
    have results, then any other with results (sorted), named by :func:`lare.compare.registry.encoder_name`."""
    found = set(encoders_found)
    names = names or {}
    return {**{k: v for k, v in names.items() if k in found},
            **{k: encoder_name(k) for k in sorted(found) if k not in names}}


def table1(agg: pd.DataFrame, dataset: str, *, with_paper: bool = False, encoders: dict[str, str] | None = None) -> pd.DataFrame:
    """Table 1 from the aggregated CSV: one row per (method, encoder) with results, mean and std per
    domain (full shots). ``encoders``: display names by encoder key, in the order wanted (default:
    the paper's names of clip and coca, other keys as themselves)."""
    sub = agg[(agg["dataset"] == dataset) & (agg["shots"] == FULL_SHOTS)]
    out = []
    for method, spec in table1_rows(table_encoders(sub["encoder"], encoders)):
        enc, label = spec.encoder, spec.label
        row = {"method": label}
        found = False
        for dom, col in DOMAINS:
            hit = sub[(sub["method"] == method) & (sub["encoder"] == enc) & (sub["domain"] == dom)]
            if len(hit):
                found = True
                row[f"{col} mean"], row[f"{col} std"] = hit["top1_mean"].iloc[0], hit["top1_std"].iloc[0]
                row["seeds"] = int(hit["n_seeds"].iloc[0])
                if "delta_probe_mean" in hit and method != PROBE_METHOD:
                    for part in ("mean", "low", "high"):
                        row[f"{col} vs probe {part}"] = hit[f"delta_probe_{part}"].iloc[0]
            if with_paper and label in PAPER_TABLE1:
                paper = PAPER_TABLE1[label][0 if dom == "in_domain" else 1][0]
                row[f"{col} paper"] = paper
                row[f"{col} diff"] = row.get(f"{col} mean", float("nan")) - paper
        if found:
            out.append(row)
    t = pd.DataFrame(out)
    for _dom, col in DOMAINS:  # a domain without any result (no 'ood' split) is a column of NaN: "not measured"
        for part in ("mean", "std"):
            if len(t) and f"{col} {part}" not in t:
                t[f"{col} {part}"] = float("nan")
    return t


NOT_MEASURED = "not measured"
NOT_MEASURED_NOTE = ("not measured: the dataset has no out-of-domain ('ood') split (or no result for that domain), "
                     "so that accuracy could not be measured")


def _fmt(mean, std, n=None) -> str:
    """'mean ± std'; one seed (``n == 1``) has no spread, so its cell says so instead of '± 0.00'."""
    if pd.isna(mean):
        return NOT_MEASURED
    return f"{mean:.2f} (n = 1)" if n == 1 or pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def code_caption(agg: pd.DataFrame) -> str:
    """What code made these results, for a caption: 'code at commit 0bf0d7d1a2b3 (lare/ fingerprint
    ...)', with 'modified' when the package differed from that commit."""
    if agg.empty or "code_commit" not in agg:
        return "code: unknown"
    parts = []
    for (commit, fp), g in agg.groupby(["code_commit", "code_fingerprint"], sort=True):
        modified = bool(g["code_modified"].any()) if "code_modified" in g else False
        at = "an unknown commit" if commit == "unknown" else f"commit {str(commit)[:12]}"
        parts.append(f"{at}{', modified' if modified else ''} (lare/ fingerprint {fp})")
    return "code at " + "; ".join(parts)


def _fmt_delta(mean, low, high) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:+.2f}" + ("" if pd.isna(low) else f" [{low:+.2f}, {high:+.2f}]")


def table1_display(t: pd.DataFrame) -> pd.DataFrame:
    """Human-readable columns: 'mean ± std', paper value and difference where present."""
    out = pd.DataFrame({"Method": t["method"]})
    for _dom, col in DOMAINS:
        if f"{col} mean" in t:
            seeds = t["seeds"] if "seeds" in t else [None] * len(t)
            out[col] = [_fmt(m, s, n) for m, s, n in zip(t[f"{col} mean"], t[f"{col} std"], seeds, strict=True)]
        if f"{col} vs probe mean" in t:
            out[f"{col} vs probe [95% CI]"] = [NOT_MEASURED if pd.isna(dm) else _fmt_delta(m, lo, hi) for dm, m, lo, hi in zip(
                t[f"{col} mean"], t[f"{col} vs probe mean"], t[f"{col} vs probe low"], t[f"{col} vs probe high"], strict=True)]
        if f"{col} paper" in t:
            out[f"{col} (paper)"] = t[f"{col} paper"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
            out[f"{col} (diff)"] = t[f"{col} diff"].map(lambda v: "" if pd.isna(v) else f"{v:+.2f}")
    if "seeds" in t:
        out["Seeds"] = t["seeds"]
    return out


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    cells = [list(map(str, df.columns))] + [[str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines)


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (a bare % or _ in a caption breaks the document)."""
    out = text.replace("\\", r"\textbackslash{}")
    for ch in "&%$#_{}":
        out = out.replace(ch, "\\" + ch)
    return out.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def write_table1(t: pd.DataFrame, folder: str | Path, *, title: str, stem: str = "table1") -> dict[str, Path]:
    """Table 1 as CSV (numbers), Markdown and LaTeX (formatted), under ``folder``."""
    folder = Path(folder)
    shown = table1_display(t)
    paths = {ext: folder / f"{stem}.{ext}" for ext in ("csv", "md", "tex")}
    write_csv(t, paths["csv"])
    note = f"\n*{NOT_MEASURED_NOTE}*\n" if (shown == NOT_MEASURED).any().any() else ""
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(f"**{title}**\n\n" + markdown_table(shown) + "\n" + note)
    caption = latex_escape(title + (f". {NOT_MEASURED_NOTE[0].upper()}{NOT_MEASURED_NOTE[1:]}." if note else ""))
    latex = shown.to_latex(index=False, caption=caption, label=f"tab:{stem}").replace("±", r"$\pm$")
    with atomic_path(paths["tex"]) as tmp:
        tmp.write_text(latex)
    return paths

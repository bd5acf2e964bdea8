"""Bring-your-own embeddings: the ``.npz`` layout, and every problem of one file found at once.

:func:`inspect` opens a file and checks every array before any work. It never raises: whatever the
file holds (nothing, a truncated zip, another format, pickles, wrong dtypes, shapes or values)
becomes a problem that says what is wrong and what to do. :func:`read` returns the checked arrays,
with vectors whose L2 norm is not 1 normalised (policy ``normalize``) or refused (``refuse``).
"""

from __future__ import annotations

import difflib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lare.utils import nonfinite

REQUIRED = {"embeddings": 2, "labels": 1, "split": 1, "class_names": 1, "class_text": 2}
OPTIONAL = {"ids": 1, "source_text": 2, "target_text": 2}
SHAPES = {"embeddings": "(n, d)", "labels": "(n,)", "split": "(n,)", "class_names": "(C,)", "class_text": "(C, d)",
          "ids": "(n,)", "source_text": "(C, d)", "target_text": "(C, d)"}
VECTORS = ("embeddings", "class_text", "source_text", "target_text")  # float, one unit-norm vector per row
STRINGS = ("split", "class_names", "ids")
FLOATS = (np.float16, np.float32, np.float64)
SPLITS = ("train", "test", "ood")
NORM_POLICIES = ("normalize", "refuse")
NORM_TOL = 1e-3  # |norm - 1| beyond this is "not L2-normalised"
SAVEZ = "np.savez(path, embeddings=..., labels=..., split=..., class_names=..., class_text=...)"


class ByoError(ValueError):
    """A bring-your-own file that cannot be used; ``problems`` lists every reason."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path, self.problems = Path(path), list(problems)
        super().__init__(f"{path} is not a valid embeddings file:\n  - " + "\n  - ".join(self.problems))


@dataclass
class ByoFile:
    """One inspected file: its arrays (normalised where the policy says so), every problem, notes
    (warnings that do not stop the run) and the arrays normalised, with their norm range before."""

    path: Path
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    normalized: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def splits(self) -> set[str]:
        return set(map(str, np.unique(self.arrays["split"]))) if self.ok else set()

    def smallest_train_class(self) -> int | None:
        """Training items of the smallest class present (None: the file is not valid)."""
        if not self.ok:
            return None
        counts = np.bincount(self.arrays["labels"][self.arrays["split"] == "train"].astype(np.int64))
        return int(counts[counts > 0].min()) if (counts > 0).any() else None


def _open(path: Path) -> tuple[dict[str, np.ndarray], list[str], set[str]]:
    """The arrays of an ``.npz`` (never unpickling anything), why some or all cannot be read, and
    the names of the members that cannot."""
    if path.is_dir():
        return {}, ["it is a folder, not a file: give the path of the .npz file itself"], set()
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        return {}, [f"it cannot be read ({err.strerror or err}): check that it exists and that you may read it"], set()
    if size == 0:
        return {}, [f"the file is empty (0 bytes): it was not written completely; write it again with {SAVEZ}"], set()
    if head.startswith(b"\x93NUMPY"):
        return {}, [f"it is a single .npy array (np.save), not an .npz archive of named arrays: write it with {SAVEZ}"], set()
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK"):
            return {}, ["it is a truncated or damaged .npz (a zip archive whose end is missing): copy it again "
                        f"completely, or write it again with {SAVEZ}"], set()
        return {}, [f"it is not an .npz file (not a zip archive; it starts with {head!r}): write it with {SAVEZ}"], set()
    arrays, problems, unreadable = {}, [], set()
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                try:
                    value = z[key]
                except ValueError as err:
                    if "pickle" in str(err):  # object arrays need pickles, which are never loaded
                        problems.append(f"array {key!r} holds Python objects, which need pickles (allow_pickle), and "
                                        "pickles are never loaded: store plain numeric and string arrays, e.g. "
                                        "class_names as np.array(names, dtype=str)")
                    else:
                        problems.append(f"array {key!r} cannot be read ({err}): write the file again with np.savez")
                    unreadable.add(key)
                    continue
                except Exception as err:  # zipfile, zlib, numpy's header parser: each has its own errors
                    problems.append(f"array {key!r} cannot be read ({type(err).__name__}: {err}): the file is damaged; "
                                    "copy or write it again")
                    unreadable.add(key)
                    continue
                if not isinstance(value, np.ndarray):
                    problems.append(f"member {key!r} is not a NumPy array (an .npz holds only the .npy arrays np.savez "
                                    "writes): remove it")
                    unreadable.add(key)
                    continue
                arrays[key] = value
    except Exception as err:
        return {}, [f"it cannot be opened as an .npz ({type(err).__name__}: {err}): write it again with {SAVEZ}"], set()
    if not arrays:  # not an .npz at all, or only objects: no point in listing every missing array
        kept = [x for x in problems if not x.startswith("member ")]
        what = f"none of its members ({', '.join(sorted(unreadable)[:5])}) is a NumPy array" if unreadable else "it is empty"
        return {}, kept or [f"it is a zip archive but not an .npz: {what}; write the file with {SAVEZ}"], unreadable
    return arrays, problems, unreadable


def _dtype_problem(key: str, v: np.ndarray) -> str | None:
    if key in VECTORS and v.dtype.type not in FLOATS:
        return f"{key} must hold floats (float32, float16 or float64), got dtype {v.dtype}: store it with .astype(np.float32)"
    if key in STRINGS and v.dtype.kind not in "US":
        return f"{key} must be strings, got dtype {v.dtype}: store it with np.asarray(values, dtype=str)"
    if key == "labels" and v.dtype.kind not in "iu":
        hint = ""
        if v.dtype.kind == "f":
            whole = bool(np.isfinite(v).all() and (v == np.round(v)).all())
            hint = (": the values are whole numbers, store them with labels.astype(np.int64)" if whole else
                    ": some are fractional or not finite, so they are not class indices")
        return f"labels must be integers (class indices in [0, C)), got dtype {v.dtype}{hint}"
    return None


def _check(a: dict[str, np.ndarray], norm: str, unreadable: set[str] = frozenset()
           ) -> tuple[list[str], list[str], dict[str, list[float]]]:
    problems, notes, normalized = [], [], {}
    extra = [k for k in a if k not in REQUIRED and k not in OPTIONAL]
    for k in (k for k in REQUIRED if k not in a and k not in unreadable):
        near = difflib.get_close_matches(k, extra, n=1)
        problems.append(f"missing array {k!r} ({REQUIRED[k]}-D, {SHAPES[k]})" + (f"; found {near[0]!r}: rename it" if near else ""))
    if extra:
        notes.append(f"arrays {extra} are not part of the layout and are ignored")
    ok = {}  # the arrays of the right dimension and dtype
    for k, nd in {**REQUIRED, **OPTIONAL}.items():
        if k not in a:
            continue
        if a[k].ndim != nd:
            problems.append(f"{k!r} must be {nd}-D {SHAPES[k]}, got shape {a[k].shape}")
        elif problem := _dtype_problem(k, a[k]):
            problems.append(problem)
        else:
            ok[k] = a[k]
    n, d = ok["embeddings"].shape if "embeddings" in ok else (None, None)
    c = len(ok["class_names"]) if "class_names" in ok else (len(ok["class_text"]) if "class_text" in ok else None)
    if n == 0 or d == 0:
        problems.append(f"embeddings is empty, shape {(n, d)}: it needs one row per item and at least one column")
    if c == 0:
        problems.append("class_names is empty: give one name per class")
    for k in ("labels", "split", "ids"):
        if k in ok and n is not None and len(ok[k]) != n:
            problems.append(f"{k} must have one entry per embedding ({n}), got {len(ok[k])}")
    for k in ("class_text", "source_text", "target_text"):
        if k in ok and c is not None and d is not None and ok[k].shape != (c, d):
            what = "(num classes, d) = " if k == "class_text" else ""
            problems.append(f"{k} must be {what}({c}, {d}), got {ok[k].shape}")
    if ("source_text" in a) != ("target_text" in a):
        problems.append("source_text and target_text (LADS prompts) must be given together")
    finite = {}
    for k in VECTORS:
        if k in ok:
            finite[k] = msg = nonfinite(k, torch.from_numpy(np.ascontiguousarray(ok[k])))
            if msg:
                problems.append(f"{msg}: remove those items or extract them again (non-finite values make every "
                                "loss NaN and every accuracy wrong)")
    if "labels" in ok and c and (n is None or len(ok["labels"]) == n):
        y = ok["labels"]
        out = np.flatnonzero((y < 0) | (y >= c))
        if len(out):
            problems.append(f"labels must lie in [0, {c}) (one class per entry of class_names): {len(out)} outside, "
                            f"first in row {out[0]} (value {y[out[0]]})")
    if "split" in ok and len(ok["split"]):
        problems += _split_problems(ok["split"].astype(str))
    if "ids" in ok and (n is None or len(ok["ids"]) == n):
        ids = ok["ids"].astype(str)
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1]
            rows = np.flatnonzero(ids == dup[0])[:5].tolist()
            problems.append(f"ids must be unique: {len(dup)} repeated, e.g. {str(dup[0])!r} in rows {rows}; give every "
                            "item its own id (or leave ids out: the row numbers are used)")
    for k in VECTORS:
        if k in ok and not finite.get(k) and ok[k].size:
            norms = np.linalg.norm(ok[k].astype(np.float64), axis=1)
            zero = np.flatnonzero(norms == 0)
            if len(zero):
                problems.append(f"{k} has {len(zero)} rows of norm 0 (first: row {zero[0]}): they have no direction "
                                "and cannot be normalised; remove them")
            elif np.abs(norms - 1).max() > NORM_TOL:
                lo, hi = float(norms.min()), float(norms.max())
                span = f"{k} is not L2-normalised: row norms range from {lo:.4g} to {hi:.4g} (expected 1 ± {NORM_TOL})"
                if norm == "refuse":
                    problems.append(f"{span}: normalise it (x / np.linalg.norm(x, axis=1, keepdims=True)) or set "
                                    "byo_norm: normalize")
                else:
                    notes.append(f"{span}; it is normalised when read (byo_norm: normalize, recorded with each result; "
                                 "byo_norm: refuse stops instead)")
                    normalized[k] = [lo, hi]
    return problems, notes, normalized


def _split_problems(split: np.ndarray) -> list[str]:
    values, counts = np.unique(split, return_counts=True)
    found = dict(zip(map(str, values), counts.tolist(), strict=True))
    unknown = {v: k for v, k in found.items() if v not in SPLITS}
    out = []
    if unknown:
        hint = "; validation is carved from 'train', so name those rows 'train'" if {"val", "valid", "validation"} & set(unknown) else ""
        out.append(f"split values must be train / test / ood (train required); found unknown values "
                   f"{sorted(unknown)[:5]} in {sum(unknown.values())} rows{hint}")
    if "train" not in found:
        out.append("split has no 'train' rows (train required): f_Box and the probes train on them")
    if not {"test", "ood"} & set(found):
        out.append("split has no 'test' or 'ood' rows: nothing to evaluate on; mark the in-domain test items 'test' "
                   "(and out-of-domain ones 'ood')")
    return out


def inspect(path: str | Path, norm: str = "normalize") -> ByoFile:
    """Open and check one file; never raises (every problem is in ``problems``)."""
    f = ByoFile(Path(path))
    if norm not in NORM_POLICIES:
        f.problems.append(f"byo_norm must be one of {NORM_POLICIES}, got {norm!r}")
        return f
    if not f.path.exists():
        f.problems.append("the file does not exist: check the path in the 'byo' mapping (relative paths are taken "
                          "from the repository root)")
        return f
    try:
        arrays, f.problems, unreadable = _open(f.path)
        if arrays:
            more, f.notes, f.normalized = _check(arrays, norm, unreadable)
            f.problems += more
    except Exception as err:  # a check that did not foresee what the file holds still names the file
        f.problems.append(f"it cannot be checked ({type(err).__name__}: {err}): write it again with {SAVEZ}")
    if f.problems:
        return f
    for k in STRINGS:
        if k in arrays:
            arrays[k] = arrays[k].astype(str)
    for k in f.normalized:
        x = arrays[k].astype(np.float64)
        arrays[k] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    f.arrays = arrays
    return f


def read(path: str | Path, norm: str = "normalize") -> ByoFile:
    """The checked file; :class:`FileNotFoundError` or :class:`ByoError` (every problem at once) otherwise."""
    f = inspect(path, norm)
    if not f.path.exists():
        raise FileNotFoundError(f"bring-your-own embeddings file {f.path} does not exist")
    if f.problems:
        raise ByoError(f.path, f.problems)
    return f

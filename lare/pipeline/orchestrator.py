"""Run the notebooks in order for one profile: ``python -m lare`` (what ``./run_all.sh`` calls).

Notebooks 01-04 run once per dataset file ``params/<profile>/*.yaml`` (stage by stage, so every
dataset's embeddings exist before any box is trained), then 05 (Table 1) and 07 (sensitivity) once
with the file of Table 1's dataset, and 06 (Figure 3) once with the file of Figure 3's dataset (so
each reads the encoders, and their display names, of its own dataset).
Each notebook gets three parameters: ``profile``, ``dataset`` and ``overrides`` (the ``-f`` files
and ``-p`` / ``-r`` values as one mapping), and loads its typed parameters with
:func:`lare.pipeline.params.load_params`. The preflight runs first, in-process, and nothing starts if it
finds a problem.

A step is skipped when its executed notebook exists and its stamp (``<run>/stamps/``) holds the
hash of its merged parameters, its notebook, the library code (:func:`lare.provenance.code_fingerprint`)
and its inputs (the hashes of the steps it depends on, and the content of bring-your-own files).
Inside a step, the library reuses what is keyed by the same content: embeddings (by model, weights,
items and extraction code), f_Box checkpoints and result rows (by parameters, embeddings and library
code). ``--force`` runs every step and recomputes every unit downstream of the embeddings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import papermill
from ipykernel.kernelspec import install
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from papermill.exceptions import PapermillExecutionError

from lare.pipeline.params import ParameterError, RunParams, overrides_from, project_root, resolve
from lare.pipeline.preflight import check_profile, format_notes, format_report, parse_options
from lare.provenance import code_fingerprint, code_state
from lare.utils import hash_config, sha256_file, write_json_atomic

PER_DATASET = ("01_extract_embeddings", "02_train_boxes", "03_probe_lare", "04_baselines")
PER_PROFILE = ("05_table1", "06_figure3", "07_sensitivity")
KERNEL = "python3"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes in IPython's tracebacks

USAGE_EXAMPLES = """\
What is reused: embeddings are cached by what makes them (model, weights, preprocessing, items,
the extraction code; a bring-your-own file by its content); f_Box checkpoints, result rows and the
notebook stamps are keyed by their parameters, their embeddings and the lare/ code. After an edit to
lare/ or a data file replaced in place, the same command recomputes what changed; with nothing
changed it skips every step. --force recomputes every step and every unit downstream of the
embeddings (delete the cache folder to extract again). Images changed in place under the same file
names are not detected: delete the cache folder after that. Executed notebooks go to
runs/<profile>/notebooks/, their logs to runs/<profile>/logs/, Table 1 and Figure 3 to
figures/<profile>/.

Environment: LARE_NO_SETUP=1 makes ./run_all.sh use the python on PATH as it is, instead of
setting up .venv the way ./run_tests.sh does.

Examples:
  ./run_all.sh --profile demo
  ./run_all.sh --profile paper -p data_root /data/lare
  ./run_all.sh --profile demo -p search.probe_lr 0.01     (under the default protocol: tuned)
  ./run_all.sh --profile demo -p protocol fixed -p probe.lr 0.01
  ./run_all.sh --profile demo --dry-run                    (check and print the plan, run nothing)
"""


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m", flush=True)


def human_time(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s - 60 * int(s // 60):04.1f} s"
    return f"{int(s // 3600)} h {int((s % 3600) // 60):02d} min"


class RunFailed(RuntimeError):
    """A notebook failed; the message says which, where, and with what error."""


@dataclass
class Step:
    notebook: str
    dataset: str        # the dataset file the notebook runs with
    per_dataset: bool

    @property
    def key(self) -> str:
        return f"{self.notebook}__{self.dataset}" if self.per_dataset else self.notebook

    @property
    def label(self) -> str:
        return f"{self.notebook} ({self.dataset})" if self.per_dataset else self.notebook


def plan(datasets: list[str], table1: str | None = None, fewshot: str | None = None) -> list[Step]:
    """Every step in order: 01-04 per dataset file; 05 and 07 with the file of Table 1's dataset
    (``table1``), 06 with the file of Figure 3's (``fewshot``); either defaults to the first file."""
    own = {"06_figure3": fewshot or datasets[0]}
    return ([Step(nb, ds, True) for nb in PER_DATASET for ds in datasets]
            + [Step(nb, own.get(nb, table1 or datasets[0]), False) for nb in PER_PROFILE])


def input_digests(p: RunParams) -> dict[str, str]:
    """Files a step reads that no parameter identifies by content: bring-your-own embeddings."""
    if p.source != "byo":
        return {}
    return {name: sha256_file(resolve(path)) for name, path in sorted(p.byo.items()) if resolve(path).is_file()}


def step_hash(step: Step, p: RunParams, notebook: Path, after: list[str], code: str | None = None) -> str:
    """A step's stamp: its parameters, notebook, inputs, the steps before it and the library code."""
    return hash_config({"step": step.notebook, "params": p.to_dict(), "notebook": sha256_file(notebook),
                        "inputs": input_digests(p), "after": after, "code": code or code_fingerprint()}, length=64)


def ensure_kernel() -> None:
    """papermill runs every notebook with the kernel python3; register one for this python if none resolves."""
    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        say(f"registering a {KERNEL} Jupyter kernel for {sys.executable}")
        install(kernel_name=KERNEL, prefix=sys.prefix if sys.prefix != sys.base_prefix else None,
                user=sys.prefix == sys.base_prefix)


def failure_report(step: Step, profile: str, out: Path, log: Path, err: Exception) -> str:
    lines = [f"run_all.sh: notebook {step.notebook} failed" + (f" for dataset {step.dataset}" if step.per_dataset else "")
             + f" (profile {profile}).",
             f"  executed copy (kept): {out}" if out.is_file() else f"  no executed copy was written ({out})",
             f"  papermill log:        {log}"]
    if isinstance(err, PapermillExecutionError):
        src = err.source.rstrip().splitlines()
        lines.append(f"  error:   {err.ename}: {err.evalue}")
        lines.append(f"  in cell {err.cell_index} of the executed copy" + (f" (In [{err.exec_count}])" if err.exec_count else "") + ":")
        lines += ["    | " + s for s in src[:8]] + ([f"    | ... ({len(src) - 8} more lines)"] if len(src) > 8 else [])
        tb = [t for t in ANSI.sub("", "\n".join(err.traceback)).splitlines() if t.strip() and set(t.strip()) - {"-"}]
        if tb:
            lines += ["  traceback (last lines):"] + ["    " + t for t in tb[-12:]]
    else:
        lines.append(f"  error:   {type(err).__name__}: {err}")
    lines += ["", "Fix the problem and run the same command again: finished steps are skipped."]
    return "\n".join(lines)


@contextlib.contextmanager
def _fds_to(path: Path):
    """Send this process's stdout and stderr file descriptors (and so the kernel's, which inherits
    them) to ``path``: the kernel's own start-up warnings belong in the step's log, not the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def execute(step: Step, *, root: Path, profile: str, overrides: dict, out: Path, log: Path, verbose: bool,
            force: bool = False) -> None:
    """One notebook through papermill, its cell output logged to ``log`` (and the terminal with ``verbose``)."""
    log.write_text("")
    logger = logging.getLogger("papermill")
    handlers = [logging.FileHandler(log, mode="a")] + ([logging.StreamHandler(sys.stdout)] if verbose else [])
    for h in handlers:
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with contextlib.nullcontext() if verbose else _fds_to(log):
            papermill.execute_notebook(str(root / "notebooks" / f"{step.notebook}.ipynb"), str(out),
                                       parameters={"profile": profile, "dataset": step.dataset, "overrides": overrides,
                                                   "force": force},
                                       kernel_name=KERNEL, progress_bar=False, log_output=True, cwd=str(root))
    finally:
        logger.setLevel(level)
        for h in handlers:
            logger.removeHandler(h)
            h.close()


def run_profile(profile: str, options: list[tuple[str, ...]] = (), *, force: bool = False, verbose: bool = False,
                root: Path | None = None, check_data: bool = True, dry_run: bool = False) -> dict:
    """Run (or skip) every step of a profile; returns counts. ``force``: run every step and
    recompute every unit downstream of the embeddings. ``dry_run``: check the parameters and data
    and print the plan (each step: would run or up to date), running and writing nothing. Raises
    :class:`RunFailed` or :class:`ParameterError` with a message for people."""
    root = Path(root or project_root())
    overrides = overrides_from(list(options))
    say("preflight: checking parameters, datasets and encoders")
    notes: dict[str, list[str]] = {}
    try:
        loaded, report = check_profile(profile, overrides, root=root, data=check_data, notes=notes)
    except Exception as err:  # e.g. an unreadable params folder: a message, never a traceback
        raise ParameterError([f"preflight: cannot check profile {profile}: {type(err).__name__}: {err}"]) from err
    if report:
        raise ParameterError([format_report(profile, report, notes)])
    if notes:
        print(format_notes(notes))
    print(f"preflight: profile {profile} ready ({len(loaded)} dataset file(s) checked)")
    datasets = list(loaded)
    for nb in PER_DATASET + PER_PROFILE:
        if not (root / "notebooks" / f"{nb}.ipynb").is_file():
            raise RunFailed(f"notebook not found: {root / 'notebooks' / (nb + '.ipynb')}")
    first = loaded[datasets[0]]
    run = first.run_path if first.run_dir else root / "runs" / profile
    folders = {k: run / k for k in ("notebooks", "stamps", "logs")}
    for f in folders.values() if not dry_run else ():
        f.mkdir(parents=True, exist_ok=True)
    stem = {p.dataset: name for name, p in reversed(loaded.items())}  # a file's dataset is its name unless it says otherwise
    steps = plan(datasets, stem.get(first.table1_dataset), stem.get(first.fewshot_dataset))
    say(f"profile {profile}: {len(datasets)} dataset(s) ({' '.join(datasets)}), {len(steps)} steps, run folder {run}/"
        + (" [dry run: nothing is run or written]" if dry_run else ""))
    if not dry_run:
        ensure_kernel()
    code = code_state()
    t0, counts, hashes = time.monotonic(), {"run": 0, "skipped": 0}, {}
    for n, step in enumerate(steps, 1):
        after = [hashes[s.key] for s in steps[:n - 1] if not step.per_dataset or s.dataset == step.dataset]
        h = step_hash(step, loaded[step.dataset], root / "notebooks" / f"{step.notebook}.ipynb", after,
                      code["code_fingerprint"])
        hashes[step.key] = h
        out, stamp, log = (folders["notebooks"] / f"{step.key}.ipynb", folders["stamps"] / f"{step.key}.json",
                           folders["logs"] / f"{step.key}.log")
        dots = "." * (46 - len(step.label) if len(step.label) < 44 else 2)
        print(f"[{n:>{len(str(len(steps)))}}/{len(steps)}] {step.label} {dots} ", end="", flush=True)
        if not force and out.is_file() and stamp.is_file() and _stamp_hash(stamp) == h:
            print("skipped (up to date)")
            counts["skipped"] += 1
            continue
        if dry_run:
            print("would run" + (" (--force)" if force and out.is_file() and _stamp_hash(stamp) == h else ""))
            counts["run"] += 1
            continue
        stamp.unlink(missing_ok=True)
        start = time.monotonic()
        if verbose:
            print()
        try:
            execute(step, root=root, profile=profile, overrides=overrides, out=out, log=log, verbose=verbose, force=force)
        except Exception as err:  # papermill's execution error, or a kernel that would not start
            print(f"FAILED after {human_time(time.monotonic() - start)}")
            raise RunFailed(failure_report(step, profile, out, log, err)) from err
        secs = time.monotonic() - start
        write_json_atomic(stamp, {"step": step.notebook, "dataset": step.dataset, "hash": h, "notebook": str(out),
                                  "seconds": round(secs, 1), **code})
        print(f"{'        ' + step.label + ' ' + dots + ' ' if verbose else ''}done in {human_time(secs)}")
        counts["run"] += 1
    if dry_run:
        say(f"dry run: {counts['run']} step(s) would run, {counts['skipped']} up to date")
        return counts
    say(f"all {len(steps)} steps finished in {human_time(time.monotonic() - t0)} "
        f"({counts['run']} run, {counts['skipped']} skipped)")
    figs = first.figures_path
    print(f"  Table 1 and Figure 3: {figs}/")
    for f in sorted(figs.glob("*")) if figs.is_dir() else []:
        print(f"    {f}")
    if not figs.is_dir():
        print("    (the folder does not exist: notebooks 05 and 06 should have written it)")
    print(f"  executed notebooks:   {folders['notebooks']}/")
    return counts


def _stamp_hash(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("hash")
    except (OSError, ValueError):
        return None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="./run_all.sh", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=USAGE_EXAMPLES,
        description="Run the LARE notebooks 01-07 with papermill for one profile: Table 1 and Figure 3 in one command.")
    ap.add_argument("--profile", default="paper", help="parameter profile, a folder of params/: paper (the paper's "
                    "datasets and encoders, downloads what is missing), arxiv (the arXiv version's DomainNet and CIFAR-100-LT "
                    "benchmarks), demo (built-in synthetic data, offline, a few minutes on a laptop CPU), smoke (the "
                    "smallest sizes, for tests); default: paper")
    ap.add_argument("-f", metavar="FILE", dest="options", action="append", type=lambda v: ("-f", v),
                    help="extra parameter file (YAML), deep-merged over the profile's file; may be repeated")
    ap.add_argument("-p", metavar=("NAME", "VALUE"), nargs=2, dest="options", action="append",
                    help="extra parameter, merged last (it wins over the files); VALUE is read as YAML (7 an int, 0.5 a "
                    "float, true a bool, \"[0, 1]\" a list, '{alpha: 0.3}' a mapping merged into the current one); "
                    "dotted names reach inside mappings (-p box.alpha 0.3); may be repeated")
    ap.add_argument("-r", metavar=("NAME", "VALUE"), nargs=2, dest="raw", action="append",
                    help="like -p, but VALUE is always a string")
    ap.add_argument("--force", action="store_true", help="run every step and recompute every unit downstream of the "
                    "embeddings (f_Box, every method's rows), whatever is recorded; the embeddings are reused")
    ap.add_argument("--dry-run", action="store_true", help="check the parameters and data, print the plan (which steps "
                    "would run) and stop: nothing is run or written")
    ap.add_argument("-v", "--verbose", action="store_true", help="stream the notebooks' output")
    return ap


def main(argv: list[str] | None = None, *, root: Path | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    options = parse_options(argv)
    for opt in options:
        if opt[0] == "-f" and not Path(opt[1]).is_file():
            print(f"run_all.sh: error: parameter file not found: {opt[1]}", file=sys.stderr)
            return 1
    try:
        run_profile(args.profile, [(o[0], str(Path(o[1]).resolve()), *o[2:]) if o[0] == "-f" else o for o in options],
                    force=args.force, verbose=args.verbose, root=root, dry_run=args.dry_run)
    except (ParameterError, RunFailed) as err:
        msg = "\n".join(err.problems) if isinstance(err, ParameterError) and len(err.problems) == 1 else str(err)
        print(("\n" if isinstance(err, RunFailed) else "") + msg, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Docs that cannot drift: the README and docs/ are read here against the code and the committed files.

- the README's first screen gets a user running (requirements, demo, tests, the GPU commands);
- every relative link and anchor resolves; the blocks included from files equal those files;
- every Python block runs, in order, in a fresh copy of the repository;
- every command line (``./run_all.sh``, ``python -m ...``, ``torchrun``, ``python benchmarks/...``,
  in code blocks, in inline code, and the examples of ``./run_all.sh -h``) is checked: the
  orchestrator's through ``--dry-run``, every parameter through the schema and the protocol's rules;
- every quoted time, speed ratio or accuracy names the commit that measured it, says it is an
  estimate, or is included from (or checked against) a committed file;
- tables of defaults, search spaces, modules, profiles and the paper's numbers equal the code;
- what the README says about the demo's Table 1 and Figure 3 holds for ``figures/demo/``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from repo_copy import repository_copy

from lare.compare.results import PAPER_TABLE1
from lare.compare.search import BUDGET, PROBE_RECIPE, SearchConfig, replaced_under_tuned
from lare.pipeline import orchestrator as lare_run
from lare.pipeline import preflight
from lare.pipeline.params import ParameterError, RunParams, load_params, overrides_from

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
PROFILES = sorted(p.name for p in (ROOT / "params").iterdir() if p.is_dir() and list(p.glob("*.yaml")))
DATA_FREE = {"demo", "smoke"}  # profiles whose data checks pass on any machine (synthetic, generated images)


def _load_sync_docs():
    spec = importlib.util.spec_from_file_location("sync_docs", ROOT / "scripts" / "sync_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- reading Markdown -----------------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


def fenced(text: str, lang: str | None = None) -> list[str]:
    """The bodies of the fenced code blocks of ``text`` (of language ``lang``, if given), in order."""
    return [m.group(2) for m in FENCE.finditer(text) if lang is None or m.group(1) == lang]


def prose(text: str) -> str:
    """``text`` without its fenced code blocks (each replaced by as many empty lines)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def inline_code(text: str) -> list[str]:
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    h = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip()).lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", prose(text), re.M)}


def doc_files() -> dict[str, str]:
    """Files the docs define: YAML blocks whose first line is ``# <path>`` (e.g. an overrides file)."""
    out = {}
    for doc in DOCS:
        for body in fenced(doc.read_text(), "yaml"):
            first = body.splitlines()[0]
            if m := re.fullmatch(r"#\s*([\w./-]+\.ya?ml)\s*", first):
                out[m.group(1)] = body
    return out


# --- the README's first screen, links, included blocks --------------------------------------------


def test_readme_first_120_lines_get_a_user_running():
    head = "\n".join(README.read_text().splitlines()[:120])
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert "## Requirements" in head and f"Python {requires.replace('>=', '>= ')}" in head
    assert "./run_all.sh --profile demo" in head, "the demo command"
    assert "./run_tests.sh" in head and "./run_tests.sh --all" in README.read_text(), "the test commands"
    gpu = [c for b in fenced(head, "bash") for c in b.splitlines() if c.startswith("./run_all.sh --profile paper")]
    assert gpu, "the GPU reproduction commands"
    assert "## Contents" in head
    for needle in ("figures/paper/table1.md", "figures/paper/figure3.png", "estimate"):
        assert needle in head, f"the first screen says {needle!r}"


def test_readme_is_short_and_links_every_page_of_docs():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for page in (ROOT / "docs").glob("*.md"):
        assert f"](docs/{page.name})" in text, f"the README does not link {page.name}"
    for heading in re.findall(r"^## (.+)$", prose(text), re.M):
        if heading != "Contents":
            assert f"(#{slug(heading)})" in text, f"the table of contents lacks {heading!r}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(text)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name}: link to a missing file {target}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file.read_text()), f"{doc.name}: no heading for #{anchor} in {file.name}"


def test_included_blocks_equal_their_files():
    sync = _load_sync_docs()
    found = 0
    for doc in DOCS:
        text = doc.read_text()
        found += len(sync.BLOCK.findall(text))
        _, stale = sync.sync_text(text, ROOT)
        assert not stale, f"{doc.name}: blocks differ from {stale}: run python scripts/sync_docs.py"
    assert found, "the README includes figures/demo/table1.md"
    assert "<!-- BEGIN figures/demo/table1.md -->" in README.read_text()


def test_sync_docs_rewrites_a_stale_block(tmp_path):
    sync = _load_sync_docs()
    (tmp_path / "t.md").write_text("| a |\n|---|\n| 2 |\n")
    text = "x\n<!-- BEGIN t.md -->\nold\n<!-- END t.md -->\ny\n"
    new, stale = sync.sync_text(text, tmp_path)
    assert stale == ["t.md"] and new == "x\n<!-- BEGIN t.md -->\n| a |\n|---|\n| 2 |\n<!-- END t.md -->\ny\n"
    assert sync.sync_text(new, tmp_path) == (new, [])


def test_every_test_the_docs_name_exists():
    """The docs point at tests (``tests/test_x.py::test_name``, then ``::test_other`` for the same file)."""
    named = 0
    for doc in DOCS:
        file = None
        for m in re.finditer(r"(tests/\w+\.py)?::(\w+)", doc.read_text()):
            file = m.group(1) or file
            assert file, f"{doc.name}: ::{m.group(2)} names no file"
            assert re.search(rf"^\s*def {m.group(2)}\(", (ROOT / file).read_text(), re.M), f"{doc.name}: no {file}::{m.group(2)}"
            named += 1
    assert named > 50


# --- tables read against the code -----------------------------------------------------------------


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first Markdown table whose header begins ``header_start``."""
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def _paper_cell(v: tuple[float, float | None]) -> str:
    return f"{v[0]:.2f}" + (f" (± {v[1]:.2f})" if v[1] is not None else "")


@pytest.mark.parametrize("doc", ["README.md", "docs/method.md"])
def test_the_papers_numbers_are_lare_results_paper_table1(doc):
    rows = table_rows((ROOT / doc).read_text(), "| method | In-domain | Out-of-domain |")
    assert {r[0]: (r[1], r[2]) for r in rows} == {k: (_paper_cell(i), _paper_cell(o)) for k, (i, o) in PAPER_TABLE1.items()}


def test_profile_table_lists_every_profile_and_its_datasets():
    rows = {r[0].strip("`"): r for r in table_rows(README.read_text(), "| profile | datasets")}
    assert sorted(rows) == PROFILES
    for profile, (_, datasets, encoders, seeds) in rows.items():
        for f in (ROOT / "params" / profile).glob("*.yaml"):
            assert f"`{f.stem}`" in datasets, f"{profile}: {f.stem} missing from the README's profile table"
            p = load_params(profile, f.stem)
            assert int(seeds) == len(p.seeds), f"{profile}/{f.stem}: {len(p.seeds)} seeds"
            for enc in p.encoders.values():
                if enc["model"] != "synthetic":
                    assert f"`{enc['model']}`/`{enc['pretrained']}`" in encoders or f"`{enc['model']}`" in encoders
    method = (ROOT / "docs" / "method.md").read_text()
    assert "not reproduced here" not in method and "--profile arxiv" in method


def test_notebook_counts_are_the_notebooks():
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    words = {"five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
    for doc in DOCS:
        for word in re.findall(r"\b(five|six|seven|eight|nine) notebooks\b", doc.read_text(), re.I):
            assert words[word.lower()] == len(notebooks), f"{doc.name} says {word} notebooks; there are {len(notebooks)}"
    help_text = lare_run.parser().format_help()
    for last in re.findall(r"notebooks 01-(\d\d)", help_text):
        assert notebooks[-1].startswith(last), f"./run_all.sh -h says notebooks 01-{last}; the last is {notebooks[-1]}"


def _dotted(d: dict, name: str):
    for part in name.split("."):
        d = d[part]
    return d


def _value(cell: str):
    m = re.match(r"`([^`]*)`", cell)
    return yaml.safe_load(m.group(1)) if m else None


def test_parameter_defaults_in_the_docs_are_the_codes():
    text = (ROOT / "docs" / "parameters.md").read_text()
    defaults = RunParams().to_dict()
    checked = 0
    for table in ("| choice | parameter | default |", "| parameter | default | meaning |"):
        for row in table_rows(text, table):
            name_cell, default_cell = (row[1], row[2]) if table.startswith("| choice") else (row[0], row[1])
            if re.fullmatch(r"`[\w.]+`", name_cell):
                assert _value(default_cell) == _dotted(defaults, name_cell.strip("`")), f"{name_cell}: {default_cell}"
                checked += 1
    assert checked >= 20
    fixed, tuned = RunParams().probe, SearchConfig().probe_recipe(RunParams().probe)
    for row in table_rows(text, "| `probe.` setting |"):
        field = row[0].strip("`")
        assert _value(row[1]) == getattr(fixed, field), f"probe.{field} under fixed"
        assert _value(row[2]) == getattr(tuned, field), f"probe.{field} under tuned"
    refused = {f"{s}.{f}" for s in ("box", "probe", "lads") for f in BUDGET} | {f"probe.{f}" for f in PROBE_RECIPE}
    said = set()
    for row in table_rows(text, "| refused under `tuned` |"):
        names = re.findall(r"`([\w.]+)`", row[0])
        said |= set(names)
        for name in names:
            section, field = name.split(".")
            source = BUDGET.get(field) or PROBE_RECIPE[field]
            assert f"`search.{source}`" in row[1], f"{name}: the docs name the wrong search setting"
    assert said == refused


def test_search_space_table_is_lare_hparams():
    from lare.compare.registry import table

    rows = table_rows((ROOT / "docs" / "comparison.md").read_text(), "| method | setting | search space |")
    assert [(r[0], r[1].strip("`"), r[2]) for r in rows] == [(t["method"], t["setting"], t["space"]) for t in table()]


def test_module_table_lists_every_module():
    rows = table_rows((ROOT / "docs" / "library.md").read_text(), "| module | holds |")
    listed = {n for r in rows for n in re.findall(r"`([\w/]+?)/?`", r[0])}
    modules = {p.relative_to(ROOT / "lare").with_suffix("").as_posix() for p in (ROOT / "lare").rglob("*.py")
               if p.stem not in ("__init__", "__main__")} | {"model_configs"}
    assert listed == modules, f"not in docs/library.md: {modules - listed}; not in lare/: {listed - modules}"


def test_notebook_table_and_parameters_cell_are_the_notebooks():
    import ast

    import nbformat

    text = (ROOT / "docs" / "library.md").read_text()
    listed = [r[0].strip("`") for r in table_rows(text, "| notebook | does |")]
    assert listed == sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    said = re.search(r"holds only what papermill injects\s+\(([^)]*)\)", text).group(1)
    for name in listed:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        names = [n.target.id for n in ast.parse(cell.source).body if isinstance(n, ast.AnnAssign)]
        assert re.findall(r"`(\w+)`", said) == names, f"{name}: its parameters cell holds {names}"


def test_readme_names_the_extraction_code_the_cache_keys_on():
    provenance = pytest.importorskip("lare.provenance")
    modules = getattr(provenance, "EXTRACTION_MODULES", None)
    if modules is None:
        pytest.skip("lare.provenance has no EXTRACTION_MODULES")
    para = next(p for p in README.read_text().split("\n\n") if p.startswith("Embeddings are cached by"))
    named = re.findall(r"`lare/([\w/]+\.py)`", para.split(")")[0])
    assert sorted(named) == sorted(modules)


def test_license_and_citation():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (ROOT / "LICENSE").read_text().startswith(f"{project['license']} License")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == project["license"] and cff["version"] == project["version"]
    paper = cff["preferred-citation"]
    assert paper["title"].startswith("LARE: Latent Augmentation using Regional Embedding")
    assert "arXiv:2409.12597" in {i["value"] for i in paper["identifiers"]}
    assert [a["family-names"] for a in paper["authors"]] == ["Sakurai", "Ishii", "Shimizu", "Song", "Goto"]
    cite = README.read_text().split("## Citation and license")[1]
    assert "2409.12597" in cite and " ".join(paper["title"].split()) in " ".join(cite.split()).replace('"', "")


def test_ci_runs_every_tier_and_installs_the_browser():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./run_tests.sh --all" in ci and "chromium" in ci
    script = (ROOT / "run_tests.sh").read_text()
    assert "--all" in script and "not slow" in script


def test_the_readmes_data_table_gives_every_source_with_its_link_and_checksum():
    from lare.data.sources import SOURCES

    rows = {r[0].split(" (")[0]: r for r in table_rows(README.read_text(), "| dataset | size | where from |")}
    for src in SOURCES.values():
        row = " | ".join(rows[src.title])
        if src.url:
            assert src.url.split("?")[0].rsplit("/files/", 1)[0] in row and src.md5 in row, src.title
        else:  # fetched by hand: the row gives the link and the folder to put it in
            assert re.search(r"<https://[^>]+>", row) and src.folder in row, src.title


def test_difference_rows_are_the_differences_of_their_rows():
    """A row that says it is a difference from some probe is that difference (to rounding)."""
    rows = {r[0]: r[1:] for r in table_rows((ROOT / "docs" / "comparison.md").read_text(), "| shots |")}
    probe = [tuple(float(x) for x in c.split(" / ")) for c in rows["linear probe, AdamW search / L-BFGS"]]
    pairs = {"its difference from the AdamW probe": ("LARE, AdamW search", 0),
             "its difference from the L-BFGS probe": ("LARE, L-BFGS, 16 draws", 1)}
    for label, (of, which) in pairs.items():
        for cell, lare_cell, p in zip(rows[label], rows[of], probe, strict=True):
            assert abs(float(cell.split(" [")[0]) - (float(lare_cell) - p[which])) <= 0.02, f"{label}: {cell}"


# --- what the README says about the demo holds for figures/demo/ -------------------------------------


def _table1() -> dict[str, dict[str, float]]:
    with open(ROOT / "figures" / "demo" / "table1.csv") as f:
        return {r["method"]: {k: float(v) if v else float("nan") for k, v in r.items() if k != "method"} for r in csv.DictReader(f)}


def _covers_zero(row: dict, domain: str) -> bool:
    return row[f"{domain} vs probe low"] <= 0 <= row[f"{domain} vs probe high"]


def test_readme_statements_about_the_demo_hold():
    text = README.read_text()
    t = _table1()
    domains = ("In-domain", "Out-of-domain")
    assert "the linear probe\ntrained by the search matches the exactly solved L-BFGS probe (every interval covers 0)" in text
    for label in ("CLIP (linear probe, L-BFGS)", "CoCa (linear probe, L-BFGS)"):
        assert all(_covers_zero(t[label], d) for d in domains), label
    assert "LARE ties\nthe probe on CoCa in and out of domain" in text
    assert all(_covers_zero(t["LARE"], d) for d in domains)
    assert "gains out of domain" in text and t["LADS"]["Out-of-domain vs probe low"] > 0
    assert "the two ablations without f_Box (Gaussian\nnoise, fixed boxes) tie the probe on CoCa too" in text
    for label in ("Gaussian noise on CoCa (no f_Box)", "Fixed boxes on CoCa (no f_Box)"):
        assert all(_covers_zero(t[label], d) for d in domains), label
    assert "LARE is\nabove the probe at 1 shot" in text
    with open(ROOT / "figures" / "demo" / "results.csv") as f:
        few = {(r["method"], int(r["shots"])): r for r in csv.DictReader(f) if r["dataset"] == "synthetic_fewshot"}
    assert float(few[("lare", 1)]["delta_probe_low"]) > 0


# --- every quoted figure names its source ----------------------------------------------------------

FIGURE = re.compile(
    r"\b\d[\d,]*(?:\.\d+)?\s?(?:ms|s|min|minutes|hours?|h)\b(?!\w)"   # a time
    r"|\b\d+(?:\.\d+)?x\b"                                            # a speed ratio
    r"|\d+\.\d+\s?\(?±\s?\d+\.\d+"                                # mean ± std
    r"|[+-]\d+\.\d+ \[[+-]"                                           # a difference with its interval
    r"|\b\d+(?:\.\d+)?(?: to \d+(?:\.\d+)?)? points?\b"               # accuracy points
    r"|\b\d+(?:\.\d+)? img/s|\bimages?/s\b")
LABEL = re.compile(r"\bcommits? ([0-9a-f]{7,40})\b|\bestimate\b|<!-- BEGIN |<!-- checked: ([\w/.:]+) -->"
                   r"|<!-- source: [^>]+ -->", re.I)  # source: a number another publication reports


def _chunks(text: str):
    """(heading, previous chunk, chunk) for every blank-line-separated chunk of prose."""
    heading, prev = "", ""
    for chunk in re.split(r"\n\s*\n", prose(text)):
        if chunk.lstrip().startswith("#"):
            heading = chunk
        yield heading, prev, chunk
        prev = chunk


def _known_commit(sha: str) -> bool:
    if not (ROOT / ".git").exists() or (ROOT / ".git" / "shallow").exists():
        return True
    return subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=ROOT, capture_output=True).returncode == 0


def _labelled(*texts: str) -> bool:
    for text in texts:
        for m in LABEL.finditer(text):
            if m.group(1):
                assert _known_commit(m.group(1)), f"no commit {m.group(1)} in this repository"
            if m.group(2):
                file, _, name = m.group(2).partition("::")
                assert name in (ROOT / file).read_text(), f"no test {m.group(2)}"
            return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_quoted_time_or_accuracy_names_its_source(doc):
    """A figure of a measurement names the commit that measured it (the machine is the page's), says it
    is an estimate, or comes from a committed file (an included block, or a table a named test checks)."""
    bad = []
    for heading, prev, chunk in _chunks(doc.read_text()):
        figures = [m.group(0) for m in FIGURE.finditer(re.sub(r"`[^`\n]*`|\]\([^)]*\)", "", chunk))]
        caption = prev if chunk.lstrip().startswith("|") else ""
        if figures and not _labelled(chunk, caption, heading):
            bad.append(f"{figures[:3]} in: {chunk.strip()[:160]!r}")
    assert not bad, f"{doc.name}: figures without their source:\n" + "\n".join(bad)


# --- the Python blocks run ---------------------------------------------------------------------------

RUNNER = r'''
import json, os, sys
import open_clip

import lare

assert lare.__file__.startswith(os.getcwd()), f"lare imported from {lare.__file__}, not from the copy"

calls = []
real = open_clip.create_model


def create_model(model, pretrained=None, *args, **kwargs):
    """Weights are not downloaded in the tests: a named checkpoint is recorded instead."""
    if pretrained in (None, "", "none"):
        return real(model, pretrained, *args, **kwargs)
    calls.append([model, pretrained])


open_clip.create_model = create_model
blocks = json.load(open(sys.argv[1]))
for i, block in enumerate(blocks):
    print(f"--- block {i + 1} of {len(blocks)}", flush=True)
    exec(compile(block, f"<block {i + 1}>", "exec"), {"__name__": "__main__"})
json.dump(calls, open(sys.argv[2], "w"))
'''


def _run_blocks(doc: Path, tmp_path: Path) -> list[list[str]]:
    blocks = fenced(doc.read_text(), "python")
    if not blocks:
        return []
    copy = repository_copy(tmp_path / "repo")
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from fake_datasets import make_fake_cub, make_fake_paintings
    finally:
        sys.path.remove(str(ROOT / "tests"))
    make_fake_cub(copy / "data", classes=3)
    make_fake_paintings(copy / "data", classes=3)
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "runner.py").write_text(RUNNER)
    # one thread: tiny trainings, and OpenMP hand-offs dominate them on a busy 2-core machine
    env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop("LARE_DATA_ROOT", None)
    proc = subprocess.run([sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "blocks.json"),
                           str(tmp_path / "calls.json")], cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{doc.name}: a Python block failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "Warning" not in proc.stderr, f"{doc.name}: a block warned:\n{proc.stderr[-3000:]}"
    return json.loads((tmp_path / "calls.json").read_text())


@pytest.mark.parametrize("doc", [d for d in DOCS if fenced(d.read_text(), "python")], ids=lambda p: p.name)
def test_every_python_block_runs(doc, tmp_path):
    calls = _run_blocks(doc, tmp_path)
    if doc == README:  # the recipe that fetches weights ahead of an offline run fetches every paper encoder
        wanted = {(e["model"], e["pretrained"]) for f in ("cub", "cifar100") for e in load_params("paper", f).encoders.values()}
        assert {tuple(c) for c in calls} == wanted


# --- every command line is checked --------------------------------------------------------------------


COMMAND = re.compile(r"(\./run_all\.sh|\./run_tests\.sh|python -m |torchrun |-p |-f |conda |jupyter )")


def commands(text: str) -> list[str]:
    """Command lines of the bash blocks (continuations joined) and of inline code, as written."""
    lines = [line for body in fenced(text, "bash") for line in body.replace("\\\n", " ").splitlines()]
    lines += [span for span in inline_code(text) if COMMAND.match(span)]
    return [part.strip() for line in lines for part in line.split("&&") if part.strip() and not part.strip().startswith("#")]


def help_examples() -> list[str]:
    return [line.split("  (")[0].strip() for line in lare_run.USAGE_EXAMPLES.splitlines()
            if line.strip().startswith("./run_all.sh")]


def all_commands() -> list[tuple[str, str]]:
    found = [(doc.name, c) for doc in DOCS for c in commands(doc.read_text())]
    return found + [("./run_all.sh -h", c) for c in help_examples()]


@pytest.fixture(scope="module")
def doc_root(tmp_path_factory):
    """A root with the repository's params/ and notebooks/ and the files the docs define, as the cwd of
    the commands (``-f`` files are taken from there)."""
    root = tmp_path_factory.mktemp("docroot")
    shutil.copytree(ROOT / "params", root / "params")
    (root / "notebooks").symlink_to(ROOT / "notebooks")
    for name, body in doc_files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    return root


def _options(tokens: list[str]) -> list[tuple[str, ...]]:
    return preflight.parse_options(tokens)


def _check_run_all(argv: list[str], root: Path) -> str:
    """``./run_all.sh ARGV --dry-run`` in-process: the parameters, the protocol's rules and the plan (the
    data and weights too for the profiles that need none)."""
    if "-h" in argv or "--help" in argv:
        with pytest.raises(SystemExit) as exit_, contextlib.redirect_stdout(io.StringIO()):
            lare_run.parser().parse_args(argv)
        assert exit_.value.code == 0
        return "help"
    args = lare_run.parser().parse_args(argv)
    options = _options(argv)
    for opt in options:
        assert opt[0] != "-f" or (root / opt[1]).is_file(), f"-f {opt[1]}: no such file in the docs"
    opts = [(o[0], str((root / o[1]).resolve()), *o[2:]) if o[0] == "-f" else o for o in options]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            counts = lare_run.run_profile(args.profile, opts, root=root, dry_run=True, force=args.force,
                                          check_data=args.profile in DATA_FREE)
        except ParameterError as err:
            pytest.fail(f"{' '.join(argv)}: refused:\n" + "\n".join(err.problems))
    assert counts["run"] + counts["skipped"] > 0 and "dry run" in out.getvalue()
    return out.getvalue()


def _check_params(profile: str, dataset: str | None, overrides: dict, root: Path, what: str) -> None:
    files = [dataset] if dataset else [f.stem for f in (root / "params" / profile).glob("*.yaml")]
    assert files, f"{what}: no profile {profile}"
    for f in files:
        try:
            p = load_params(profile, f, overrides, root=root)
        except ParameterError as err:
            pytest.fail(f"{what}: refused:\n" + "\n".join(err.problems))
        if p.protocol == "tuned":
            assert not replaced_under_tuned(overrides), f"{what}: {replaced_under_tuned(overrides)}"


def _check_module(module: str, args: list[str], root: Path, what: str) -> None:
    if module in ("lare", "lare.pipeline.orchestrator"):
        _check_run_all(args, root)
    elif module in ("lare.pipeline.preflight", "lare.pipeline.ingest"):
        if "-h" in args:
            with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()):
                __import__(module, fromlist=["main"]).main(["-h"])
            return
        profile = args[args.index("--profile") + 1] if "--profile" in args else "paper"
        dataset = args[args.index("--dataset") + 1] if "--dataset" in args else None
        _check_params(profile, dataset, overrides_from(_options(args)), root, what)
        if module == "lare.pipeline.preflight" and profile in DATA_FREE:
            with contextlib.redirect_stdout(io.StringIO()):
                assert preflight.main(args) == 0, what
    elif module == "papermill":
        nb, out = args[0], args[1]
        assert (ROOT / nb).is_file() and out.endswith(".ipynb"), what
        params = {}
        i = 2
        while i < len(args):
            if args[i] in ("-p", "-r"):
                params[args[i + 1]] = args[i + 2]
                i += 3
            elif args[i] == "-y":
                params.update(yaml.safe_load(args[i + 1]))
                i += 2
            else:
                pytest.fail(f"{what}: unexpected papermill option {args[i]}")
        assert set(params) <= {"profile", "dataset", "overrides"}, f"{what}: papermill parameters {sorted(params)}"
        _check_params(params["profile"], params["dataset"], params.get("overrides") or {}, root, what)
    else:
        pytest.fail(f"{what}: python -m {module} is not a command this test knows how to check")


def check_command(line: str, root: Path) -> None:
    what = f"`{line}`"
    tokens = shlex.split(line, comments=True)
    if any(re.fullmatch(r"[A-Z]+", t) for t in tokens):
        return  # a usage line with placeholders (-p NAME VALUE), not a command
    if tokens[0] == "-f":  # a parameter file quoted in prose: one the docs define
        assert (root / tokens[1]).is_file(), f"{what}: no such file in the docs"
        return
    if tokens[0] == "-p":  # options quoted in prose: as given to the demo profile
        tokens = ["./run_all.sh", "--profile", "demo", *tokens]
    if tokens[0] == "./run_all.sh":
        assert os.access(ROOT / "run_all.sh", os.X_OK)
        _check_run_all(tokens[1:], root)
    elif tokens[:2] == ["python", "-m"]:
        _check_module(tokens[2], tokens[3:], root, what)
    elif tokens[0] == "torchrun":
        i = tokens.index("-m")
        assert tokens[i + 1] == "lare.pipeline.ingest", what
        _check_module(tokens[i + 1], tokens[i + 2:], root, what)
    elif tokens[0] == "python" and tokens[1].endswith(".py"):
        script = ROOT / tokens[1]
        assert script.is_file(), what
        if script.parent.name == "benchmarks":
            assert tokens[2:] == ["-h"], f"{what}: benchmarks are quoted with -h only (they are measurements)"
            argv, sys.argv = sys.argv, [str(script), "-h"]
            try:
                with pytest.raises(SystemExit) as exit_, contextlib.redirect_stdout(io.StringIO()):
                    runpy.run_path(str(script), run_name="__main__")
                assert exit_.value.code == 0, what
            finally:
                sys.argv = argv
        else:
            assert tokens[1] == "scripts/sync_docs.py", what
    elif tokens[0] == "./run_tests.sh":
        script = (ROOT / "run_tests.sh").read_text()
        assert os.access(ROOT / "run_tests.sh", os.X_OK) and all(t in script for t in tokens[1:] if t.startswith("--")), what
    elif tokens[0] == "bash":
        assert (ROOT / tokens[1]).is_file(), what
    elif tokens[:2] == ["jupyter", "lab"]:
        assert importlib.util.find_spec("jupyterlab") and all((ROOT / t).exists() for t in tokens[2:]), what
    elif tokens[:3] == ["conda", "env", "create"]:
        assert (ROOT / tokens[tokens.index("-f") + 1]).is_file(), what
    elif tokens[:2] == ["conda", "activate"]:
        assert tokens[2] == yaml.safe_load((ROOT / "environment.yml").read_text())["name"], what
    elif tokens[0] in ("apt-get", "export"):
        pass
    else:
        pytest.fail(f"{what}: a command this test does not know how to check (teach check_command)")


def test_the_docs_hold_commands():
    found = all_commands()
    assert any("./run_all.sh --profile paper" in c for _, c in found)
    assert any(c.startswith("python -m papermill") for _, c in found)


@pytest.mark.parametrize("where,line", all_commands(), ids=[f"{w}-{i}" for i, (w, _) in enumerate(all_commands())])
def test_every_command_line_is_valid(where, line, doc_root, monkeypatch):
    """Each command as a user would type it, from the repository root; ``./run_all.sh`` ones dry-run."""
    monkeypatch.chdir(doc_root)
    check_command(line, doc_root)


def test_a_refused_setting_fails_the_command_check(doc_root, monkeypatch):
    """The check catches what the tuned protocol refuses, and a -f file the docs do not define."""
    monkeypatch.chdir(doc_root)
    with pytest.raises(pytest.fail.Exception, match="search.probe_lr"):
        check_command("./run_all.sh --profile demo -p probe.lr 0.01", doc_root)
    with pytest.raises(AssertionError, match="my_overrides.yaml"):
        check_command("./run_all.sh --profile demo -f my_overrides.yaml", doc_root)
    check_command("./run_all.sh --profile demo -p protocol fixed -p probe.lr 0.01", doc_root)


@pytest.mark.parametrize("wrapper", [pytest.param(["./run_all.sh"], id="run_all.sh"),
                                     pytest.param([sys.executable, "-m", "lare"], id="python-m-lare", marks=pytest.mark.slow)])
def test_wrappers_dry_run_the_demo_and_write_nothing(wrapper, tmp_path):
    copy = repository_copy(tmp_path / "repo")
    env = {**os.environ, "LARE_NO_SETUP": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    before = sorted(p for p in copy.rglob("*"))
    proc = subprocess.run([*wrapper, "--profile", "demo", "--dry-run"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "would run" in proc.stdout and "dry run" in proc.stdout
    assert sorted(p for p in copy.rglob("*") if "__pycache__" not in p.parts) == [p for p in before if "__pycache__" not in p.parts]

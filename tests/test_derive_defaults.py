"""scripts/derive_defaults.py: its selection rule, its world (not the demo's) and its splits (no test
or out-of-domain set). The study itself takes minutes; the one end-to-end run here is marked slow."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("_derive_defaults", ROOT / "scripts" / "derive_defaults.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


dd = _script()


def test_the_highest_mean_validation_score_wins():
    scores = {"a": [60.0, 61.0, 62.0], "b": [70.0, 71.0, 72.0], "c": [65.0, 65.0, 65.0]}
    assert dd.choose(scores, current="a") == "b"


def test_a_tie_within_one_std_keeps_the_current_default():
    # best: b (mean 71, std 1); c (70.5) is within one std of it, a (60) is not
    scores = {"a": [60.0, 60.0, 60.0], "b": [70.0, 71.0, 72.0], "c": [70.5, 70.5, 70.5]}
    assert dd.choose(scores, current="c") == "c"
    assert dd.choose(scores, current="a") == "b"  # the default is not tied: the first tied one listed


def test_a_tie_without_the_default_goes_to_the_simplest_listed_first():
    scores = {1: [70.0, 70.2, 70.4], 4: [70.0, 71.0, 72.0], 16: [69.0, 69.0, 69.0]}
    assert dd.choose(scores, current=16) == 1  # 1 and 4 tie, 16 is more than one std below


def test_one_seed_has_no_tolerance_and_an_exact_tie_goes_to_the_first():
    assert dd.choose({"x": [50.0], "y": [50.0]}, current="z") == "x"
    assert dd.choose({"x": [49.9], "y": [50.0]}, current="x") == "y"
    with pytest.raises(ValueError):
        dd.choose({}, current="x")


def test_mean_std_is_the_sample_std():
    assert dd.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert dd.mean_std([5.0]) == (5.0, 0.0)


def test_the_study_s_world_is_not_the_demo_s():
    from lare.pipeline.params import dataset_files, load_params

    assert dd.WORLD_SEED != dd.demo_world_seed()
    for path in dataset_files("demo"):  # no demo file moves its world onto the study's
        p = load_params("demo", path.stem)
        assert not {"world_seed", "seed"} & set(p.synthetic), p.synthetic
    with pytest.raises(SystemExit):  # the script refuses the demo's world
        dd.main(["--world-seed", str(dd.demo_world_seed()), "--only", "box.volume"])


def test_each_candidate_list_holds_the_current_default():
    from lare.pipeline.params import load_params

    p = load_params("demo", "synthetic_domains")
    for study in dd.STUDIES:
        cur = study.current(p)
        assert cur in dd.candidates_of(study, cur), study.name
        for c in dd.candidates_of(study, cur):
            load_params("demo", "synthetic_domains", study.overrides(c))  # every candidate is a valid run


def test_the_units_hold_no_evaluation_set_and_the_nested_carve_is_disjoint(tmp_path):
    from lare.data.splits import n_validation

    world = dd.World(tmp_path / "run", dd.WORLD_SEED)
    s = world.splits(dd.DOMAINS_FULL, seed=0)
    assert s.evals == {} and len(s.val_y) > 0
    inner = dd.nested_splits(s, 0.2, seed=0)
    assert set(inner.evals) == {dd.HELD_OUT}
    assert torch.equal(inner.evals[dd.HELD_OUT][0], s.val_x)
    assert len(inner.train_y) + len(inner.val_y) == len(s.train_y)
    rows = lambda x: {tuple(r) for r in x.tolist()}  # noqa: E731
    assert not rows(inner.train_x) & rows(inner.val_x) and not rows(inner.val_x) & rows(s.val_x)
    per_class = [n_validation(int(n), 0.2) for n in torch.bincount(s.train_y)]  # stratified, as the pipeline carves
    assert torch.bincount(inner.val_y).tolist() == per_class


# ---------------------------------------------------------------- the committed output and the docs
OUTPUT = ROOT / "figures" / "derive_defaults.md"


def _committed_tables() -> dict[str, list[tuple[str, float, float]]]:
    """figures/derive_defaults.md: study name -> [(candidate cell, mean, std)] in order."""
    tables: dict[str, list] = {}
    name = None
    for line in OUTPUT.read_text().splitlines():
        if m := re.match(r"\*\*(.+?)\*\*: ", line):
            name = m.group(1)
            tables[name] = []
        elif line.startswith("| ") and not line.startswith("| candidate") and name:
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            mean, std = (float(v) for v in cells[-1].split(" ± "))
            tables[name].append((cells[0], mean, std))
    return tables


def test_the_committed_output_follows_the_rule_and_the_code():
    """Each table of figures/derive_defaults.md: its choice is the rule's on its own figures, and the
    candidate it marks as the default is the code's default today, which the study kept (the code is
    where the study leaves it: run the script again after changing a default)."""
    from lare.pipeline.params import load_params

    text = OUTPUT.read_text()
    assert f"world seed {dd.WORLD_SEED} (the demo's is {dd.demo_world_seed()})" in text
    tables = _committed_tables()
    assert sorted(tables) == sorted(s.name for s in dd.STUDIES), "run the whole study with --out"
    p = load_params("demo", "synthetic_domains")
    for study in dd.STUDIES:
        rows = tables[study.name]
        names = [c.replace(dd.DEFAULT, "").replace(dd.CHOSEN, "") for c, _, _ in rows]
        default = [n for n, (c, _, _) in zip(names, rows, strict=True) if dd.DEFAULT in c]
        chosen = [n for n, (c, _, _) in zip(names, rows, strict=True) if dd.CHOSEN in c]
        assert default == [study.fmt(study.current(p))], f"{study.name}: the code's default is not the study's"
        assert chosen == default, f"{study.name}: the study chose {chosen}, the code has {default}"
        stats = {n: (m, s) for n, (_, m, s) in zip(names, rows, strict=True)}
        assert dd.choose_from_stats(stats, default[0]) == chosen[0], study.name


def _quoted(text: str) -> set[str]:
    return set(re.findall(r"\b\d{2}\.\d{2}\b", text))


def test_the_figures_quoted_for_the_defaults_are_the_study_s():
    """Every accuracy (two decimals) quoted in docs/method.md section 4 and in the docstrings of the
    measured defaults is one of figures/derive_defaults.md."""
    from lare.compare.search import SearchConfig
    from lare.core.box import BoxConfig, SamplingConfig

    out = OUTPUT.read_text()
    method = (ROOT / "docs" / "method.md").read_text()
    section = method[method.index("## 4. "):method.index("## 5. ")]
    section = re.sub(r"<!-- BEGIN (\S+) -->.*?<!-- END \1 -->", "", section, flags=re.S)
    quoted = {"docs/method.md section 4": _quoted(section)}
    quoted |= {c.__name__: _quoted(c.__doc__) for c in (BoxConfig, SamplingConfig, SearchConfig)}
    assert quoted["docs/method.md section 4"] and quoted["SamplingConfig"]
    for where, figures in quoted.items():
        missing = sorted(f for f in figures if f not in out)
        assert not missing, f"{where} quotes {missing}, which figures/derive_defaults.md does not hold"
    assert "<!-- BEGIN figures/derive_defaults.md -->" in method


@pytest.mark.slow
def test_the_script_runs_one_study_on_one_seed(capsys):
    assert dd.main(["--only", "box.volume", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "**box.volume**" in out and "Chosen: " in out and "mean ± std" in out and "box.volume: default" in out

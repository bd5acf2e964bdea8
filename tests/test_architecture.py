"""The shape of the package: one parameter schema with deep-merged overrides, imports that only go
down (no function-local imports of lare modules, no cycles), small modules, a method registry."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from lare import methods
from lare.params import SECTIONS, ParameterError, RunParams, build, load_params, overrides_from

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "lare").glob("*.py"))


def _lare_imports(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """(node, imported lare module) for every import of a lare module in ``tree``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                out += [(node, n.split(".")[0]) for n in names]
            elif node.module and node.module.split(".")[0] == "lare":
                parts = node.module.split(".")
                out += [(node, parts[1])] if len(parts) > 1 else [(node, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node, a.name.split(".")[1]) for a in node.names if a.name.startswith("lare.")]
    return out


def test_no_function_local_imports_of_lare_modules():
    local = []
    for path in MODULES:
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        local += [f"{path.name}:{node.lineno} imports {mod}" for node, mod in _lare_imports(tree) if id(node) not in top]
    assert not local, local


def import_graph() -> dict[str, set[str]]:
    return {p.stem: {m for _, m in _lare_imports(ast.parse(p.read_text()))} - {p.stem} for p in MODULES}


def test_no_import_cycle_among_lare_modules():
    graph, state, cycles = import_graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_import_check_can_fail(tmp_path):
    tree = ast.parse("def f():\n    from .box import BoxNet\n    import lare.cache\n")
    assert [m for _, m in _lare_imports(tree)] == ["box", "cache"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_are_small(path):
    assert len(path.read_text().splitlines()) <= 400


# ---------------------------------------------------------------- the schema
def demo(*options):
    return load_params("demo", "synthetic_domains", overrides_from(list(options)))


def fixed(*options):
    """The demo under the fixed protocol, where the probe's own recipe (probe.lr, epochs) is used."""
    return demo(("-p", "protocol", "fixed"), *options)


@pytest.mark.parametrize("option", [("-p", "probe", "{lr: 0.01}"), ("-p", "probe.lr", "0.01")], ids=["mapping", "dotted"])
def test_p_changes_only_the_named_setting(option):
    base, changed = fixed(), fixed(option)
    assert changed.probe.lr == 0.01 and base.probe.lr != 0.01
    assert dataclasses.replace(changed.probe, lr=base.probe.lr) == base.probe
    assert dataclasses.replace(changed, probe=base.probe) == base


def test_f_files_deep_merge_and_p_wins(tmp_path):
    f = tmp_path / "over.yaml"
    f.write_text("probe: {epochs: 7, lr: 0.5}\nencoders: {clip: {noise: 0.3}}\n")
    p = fixed(("-p", "probe.lr", "0.01"), ("-f", str(f)))
    assert (p.probe.epochs, p.probe.lr, p.probe.min_steps) == (7, 0.01, demo().probe.min_steps)
    assert p.encoders["clip"] == {"model": "synthetic", "pretrained": "none", "noise": 0.3}
    assert "coca" in p.encoders
    assert "clip" not in demo(("-p", "encoders.clip", "null")).encoders  # null removes an entry of a free mapping


def test_defaults_come_from_the_config_classes_only():
    """Every setting a profile does not write is the config class's own default, and the notebooks
    hold no settings (their parameters cell is profile, dataset, overrides: see test_notebooks)."""
    for profile_file in sorted((ROOT / "params").glob("*/*.yaml")):
        p = load_params(profile_file.parent.name, profile_file.stem)
        written = yaml.safe_load(profile_file.read_text())
        for name, cls in SECTIONS.items():
            default = dataclasses.asdict(cls())
            given = written.get(name, {})
            for key, value in dataclasses.asdict(getattr(p, name)).items():
                assert value == given.get(key, default[key]), (profile_file, name, key)
    assert RunParams().probe == methods.LAREConfig().probe  # one ProbeConfig default for every method


def test_every_problem_is_reported_at_once_with_suggestions():
    with pytest.raises(ParameterError) as err:
        build({"encoders": {"coca": {"noise": 0.6}}, "seds": [0], "probe": {"lrr": 0.1, "epochs": 0},
               "shots": "3", "box": 5, "protocol": "fixed"})
    msg = str(err.value)
    for needle in ("unknown parameter 'seds' (did you mean seeds?)", "probe.lrr (did you mean lr?)",
                   "probe: epochs must be an integer >= 1", "'shots' must be a list", "box must be a mapping"):
        assert needle in msg, needle
    assert len(err.value.problems) == 5


# ---------------------------------------------------------------- the registry
def test_registry_drives_table1_and_each_method_has_one_signature():
    labels = [row.label for _, row in methods.table1_rows()]
    assert labels[:6] == ["CLIP (zero-shot)", "CoCa (zero-shot)", "CLIP (fine-tuning)", "CoCa (fine-tuning)", "LADS", "LARE"]
    for m in methods.REGISTRY.values():
        assert m.run.__code__.co_varnames[:3] == ("splits", "config", "device"), m.name
        assert all(s in SECTIONS for s in m.sections)
        cfg = m.make_config({k: getattr(RunParams(), k) for k in SECTIONS}, seed=3)
        parts = [getattr(cfg, s, cfg) for s in m.sections]  # a config of sections, or the one section itself
        seeds = {part.seed for part in parts if hasattr(part, "seed")}
        assert seeds <= {3} and (seeds or not any(hasattr(getattr(RunParams(), s), "seed") for s in m.sections)), m.name

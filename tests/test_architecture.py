"""The shape of the package: layers whose imports only go down (no cycles, no function-local imports),
one parameter schema with deep-merged overrides, a method registry."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from lare.compare import methods, registry
from lare.pipeline.params import SECTIONS, ParameterError, RunParams, build, load_params, overrides_from

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lare"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
# The layers, lowest first: a module imports only from its own layer and the layers below it.
# base: seeds, atomic writes, fingerprints; core: the method (encoders, Eq. (1)-(5), boxes, probe,
# LADS, the training loop); data: datasets, caches, splits; compare: the method registry, the search,
# results and tables; pipeline: parameters, preflight, notebooks' steps, the orchestrator.
LAYERS = ("base", "core", "data", "compare", "pipeline")


def module_name(path: Path) -> str:
    """``lare/core/box.py`` -> ``lare.core.box``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The layer of a ``lare`` module: its subpackage, or ``base`` for the package's top-level modules."""
    parts = module.split(".")
    if module == "lare.__main__":  # `python -m lare`: the orchestrator's entry point sits on top
        return "pipeline"
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "base"


def _lare_imports(tree: ast.AST, package: str = "lare") -> list[tuple[ast.AST, str]]:
    """(node, imported lare module, fully named) for every import of a lare module in ``tree``;
    ``package``: the importing module's package, for relative imports."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            elif node.module and node.module.split(".")[0] == "lare":
                mod = node.module
            else:
                continue
            # `from lare.core import box` names a module; `from lare.core.box import BoxNet` a name in one
            out += [(node, f"{mod}.{a.name}") if (PACKAGE / Path(*f"{mod}.{a.name}".split(".")[1:])).with_suffix(".py").exists()
                    else (node, mod) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node, a.name) for a in node.names if a.name.split(".")[0] == "lare"]
    return out


def imports_of(path: Path) -> list[tuple[ast.AST, str]]:
    name = module_name(path)
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    return _lare_imports(ast.parse(path.read_text()), package)


# The one deferred import: open_clip takes about 5 s to import (it pulls in its CoCa and HF text
# towers), and every notebook imports the encoders module, most of them without embedding anything.
DEFERRED = {("lare/core/encoders.py", "import open_clip")}


def local_imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    return [(path.relative_to(ROOT).as_posix(), ast.unparse(node)) for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top]


def test_no_function_local_imports():
    """Every import at the top of its module, where a reader sees what the module depends on (of lare
    modules and of any other package), but :data:`DEFERRED`."""
    local = [x for path in MODULES for x in local_imports(path)]
    assert set(local) - DEFERRED == set(), sorted(set(local) - DEFERRED)
    assert {x for x in local if x in DEFERRED} == DEFERRED  # the exception is still needed


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): {m for _, m in imports_of(p)} - {module_name(p)} for p in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, found = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_among_lare_modules():
    assert not cycles(import_graph())


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, deps in sorted(graph.items()) for b in sorted(deps)
            if b.startswith("lare.") and LAYERS.index(layer(b)) > LAYERS.index(layer(a))]


def test_imports_only_go_down_the_layers():
    """The core imports nothing from data, compare or pipeline; data nothing from compare or
    pipeline; compare nothing from pipeline."""
    graph = import_graph()
    assert {layer(m) for m in graph} == set(LAYERS)
    assert not upward_imports(graph)


def test_every_module_sits_in_a_layer():
    """No loose modules: the package's top level holds only the base (utils, provenance) and the entry point."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "provenance.py", "utils.py"], top


def test_the_checks_can_fail():
    tree = ast.parse("from lare.compare.methods import REGISTRY\nimport lare.data.cache\nfrom . import box\n")
    assert [m for _, m in _lare_imports(tree, "lare.core")] == ["lare.compare.methods", "lare.data.cache", "lare.core.box"]
    assert upward_imports({"lare.core.box": {"lare.compare.methods"}}) == \
        ["lare.core.box (core) imports lare.compare.methods (compare)"]
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    inside = ROOT / "lare" / "_probe_check.py"
    try:
        inside.write_text("def f():\n    import json\n")
        assert local_imports(inside) == [("lare/_probe_check.py", "import json")]
    finally:
        inside.unlink()


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
    labels = [row.label for _, row in registry.table1_rows()]
    assert labels[:6] == ["CLIP (zero-shot)", "CoCa (zero-shot)", "CLIP (fine-tuning)", "CoCa (fine-tuning)", "LADS", "LARE"]
    for m in registry.REGISTRY.values():
        assert m.run.__code__.co_varnames[:3] == ("splits", "config", "device"), m.name
        assert all(s in SECTIONS for s in m.sections)
        cfg = m.make_config({k: getattr(RunParams(), k) for k in SECTIONS}, seed=3)
        parts = [getattr(cfg, s, cfg) for s in m.sections]  # a config of sections, or the one section itself
        seeds = {part.seed for part in parts if hasattr(part, "seed")}
        assert seeds <= {3} and (seeds or not any(hasattr(getattr(RunParams(), s), "seed") for s in m.sections)), m.name

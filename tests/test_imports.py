"""Every module of lare/ imports (the fast tier touches each one even where its own tests are slow)."""

import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lare"
MODULES = sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py") if p.stem != "__main__")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    module = importlib.import_module(f"lare.{name}".removesuffix(".__init__"))
    assert module.__doc__, f"lare.{name} has no docstring"

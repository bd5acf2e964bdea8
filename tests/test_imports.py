"""Every module of lare/ imports (the fast tier touches each one even where its own tests are slow)."""

import importlib
from pathlib import Path

import pytest

MODULES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "lare").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    module = importlib.import_module(f"lare.{name}")
    assert module.__doc__, f"lare.{name} has no docstring"

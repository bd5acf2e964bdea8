"""environment.yml (conda users) stays in step with pyproject.toml (the one dependency list)."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    project = _pyproject()["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {r for r in pip_section if not r.startswith("-")}
    assert listed == wanted, f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"
    assert "-e .[dev]" in pip_section and "-c constraints.txt" in pip_section
    assert "python=3.11" in env["dependencies"]


def test_constraints_pin_every_dependency():
    project = _pyproject()["project"]
    names = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[_name(name)] = version.strip()
    missing = names - set(pins)
    assert not missing, f"constraints.txt does not pin: {sorted(missing)}"


def test_installing_prints_no_deprecation_of_our_making():
    """``project.license`` as a TOML table is deprecated since setuptools 77 (PEP 639): a plain SPDX
    string, with a build requirement that understands it; model_configs (JSON only) is a listed
    package, so setuptools does not warn that it "would be ignored"."""
    data = _pyproject()
    assert isinstance(data["project"]["license"], str) and data["project"]["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in data["project"].get("classifiers", []))
    setuptools = next(r for r in data["build-system"]["requires"] if _name(r) == "setuptools")
    assert tuple(int(x) for x in setuptools.split(">=")[1].split(".")) >= (77,)
    assert "lare.model_configs" in data["tool"]["setuptools"]["packages"]


def test_ipywidgets_is_a_dependency_so_progress_bars_render_in_jupyterlab():
    assert "ipywidgets" in {_name(r) for r in _pyproject()["project"]["dependencies"]}

"""The README shows the demo's Table 1 exactly as the demo command writes it, and its quick start
(the rest of the README and docs/ is checked by tests/test_docs.py)."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_demo_table_is_the_committed_one():
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"<!-- BEGIN figures/demo/table1.md -->\n(.*?)<!-- END figures/demo/table1.md -->", readme, re.S).group(1)
    assert shown.strip() == (ROOT / "figures" / "demo" / "table1.md").read_text().strip()
    assert "SYNTHETIC" in shown
    for fig in ("figure3.png", "sensitivity.png"):
        assert (ROOT / "figures" / "demo" / fig).is_file() and f"figures/demo/{fig}" in readme


def test_readme_quick_start_commands_exist():
    readme = (ROOT / "README.md").read_text()
    for cmd in ("./run_all.sh --profile demo", "./run_tests.sh", "./run_tests.sh --all", "./run_all.sh --profile paper"):
        assert cmd in readme
    for script in ("run_all.sh", "run_tests.sh", ".ci/run"):
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"

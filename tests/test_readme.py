"""The README shows the demo's Table 1 exactly as the demo command writes it, and its quick start."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_demo_table_is_the_committed_one():
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"<!-- demo-table1:start -->\n(.*?)<!-- demo-table1:end -->", readme, re.S).group(1)
    assert shown.strip() == (ROOT / "figures" / "demo" / "table1.md").read_text().strip()
    assert "SYNTHETIC" in shown
    for fig in ("figure3.png", "sensitivity.png"):
        assert (ROOT / "figures" / "demo" / fig).is_file() and f"figures/demo/{fig}" in readme


def test_readme_quick_start_commands_exist():
    readme = (ROOT / "README.md").read_text()
    for cmd in ("./run_all.sh --profile demo", "./run_tests.sh", "./run_all.sh --profile paper", "python -m papermill"):
        assert cmd in readme
    assert (ROOT / "run_all.sh").stat().st_mode & 0o111 and (ROOT / "run_tests.sh").stat().st_mode & 0o111

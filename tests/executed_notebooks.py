"""What an executed notebook shows: its outputs as text, and the ones that are warnings.

Imported by the tests (not a test module itself).
"""

from __future__ import annotations

import json
from pathlib import Path


def notebook_outputs(path: Path) -> list[tuple[int, dict, str]]:
    """(cell index, output, its text) for every output of an executed notebook."""
    out = []
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        for o in cell.get("outputs", []):
            parts = [o.get("text", ""), o.get("data", {}).get("text/plain", ""), o.get("evalue", ""), o.get("traceback", [])]
            out.append((i, o, "\n".join("".join(p) if isinstance(p, list) else p for p in parts)))
    return out


def notebook_warnings(path: Path) -> list[str]:
    """Every output of an executed notebook that is or holds a warning."""
    return [f"{path.name} cell {i}: {text.strip()[:300]}" for i, o, text in notebook_outputs(path)
            if "Warning" in text or "warn(" in text or (o.get("name") == "stderr" and "warn" in text.lower())]

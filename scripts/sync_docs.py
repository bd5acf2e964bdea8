#!/usr/bin/env python3
"""Rewrite the blocks of README.md and docs/*.md that are included from committed files.

A block is written between two markers naming the file, relative to the repository root:

    <!-- BEGIN figures/demo/table1.md -->
    ...the file's content, as it was when this script last ran...
    <!-- END figures/demo/table1.md -->

Run it after regenerating the files (e.g. ``./run_all.sh --profile demo``):

    python scripts/sync_docs.py          # rewrite every stale block, say which
    python scripts/sync_docs.py --check  # change nothing; exit 1 naming every stale block

``tests/test_docs.py`` runs the check, so a block that differs from its file fails the tests.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- BEGIN (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- END (?P=path) -->)", re.S)


def documents(root: Path = ROOT) -> list[Path]:
    """The Markdown files whose blocks are kept in step: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def included(path: str, root: Path = ROOT) -> str:
    """What a block naming ``path`` must hold: the file's text, without trailing blank lines."""
    return (root / path).read_text().rstrip("\n") + "\n"


def sync_text(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """``text`` with every block rewritten from its file, and the paths of the blocks that changed."""
    stale: list[str] = []

    def rewrite(m: re.Match) -> str:
        want = included(m["path"], root)
        if m["body"] != want:
            stale.append(m["path"])
        return m.group(1) + want + m.group(4)

    return BLOCK.sub(rewrite, text), stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs from its file")
    args = ap.parse_args(argv)
    code = 0
    for doc in documents():
        text = doc.read_text()
        try:
            new, stale = sync_text(text)
        except OSError as err:
            print(f"{doc.relative_to(ROOT)}: cannot read an included file: {err}", file=sys.stderr)
            return 1
        for path in stale:
            print(f"{doc.relative_to(ROOT)}: the block of {path} {'differs from' if args.check else 'rewritten from'} the file")
        if stale and args.check:
            code = 1
        elif stale:
            doc.write_text(new)
    return code


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Regenerate README.md's demo output from a real `make demo` run.

    scripts/demo-output.py            # run `make demo`, write docs/demo-output.txt and README.md
    scripts/demo-output.py --readme   # only copy docs/demo-output.txt into README.md

The run's output (stdout and stderr, as a terminal shows them, without the colour codes) goes
to docs/demo-output.txt, and README.md's block between the `<!-- demo-output -->` markers
becomes that file. tests/unit/test_docs_demo_output.py fails when the two differ, and when
the `kubectl get` headers in it are not the CRDs' printer columns. A failed run writes nothing.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "demo-output.txt"
README = ROOT / "README.md"
BEGIN, END = "<!-- demo-output -->", "<!-- /demo-output -->"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def readme_with(output: str, readme: str) -> str:
    """README's text with the block between the markers replaced by `output` in a fence."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return f"{readme[:start]}\n```\n{output.rstrip()}\n```\n{readme[end:]}"


def run_demo() -> str:
    process = subprocess.Popen(["make", "--no-print-directory", "demo"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(ANSI.sub("", line))
    if process.wait() != 0:
        raise SystemExit(f"make demo failed ({process.returncode}); {OUTPUT.name} and README.md are unchanged")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help=f"only copy {OUTPUT.relative_to(ROOT)} into README.md")
    args = parser.parse_args(argv)
    if not args.readme:
        OUTPUT.write_text(run_demo(), encoding="utf-8")
    README.write_text(readme_with(OUTPUT.read_text(encoding="utf-8"), README.read_text(encoding="utf-8")),
                      encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)} and README.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

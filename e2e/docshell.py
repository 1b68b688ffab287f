"""Run a document's shell blocks as written, so the commands a doc shows cannot rot.

The convention (docs/quickstart.md, "How the commands are tested"):

- a fenced block whose info string is `sh` is run, in the order of the document;
- a block tagged `sh env` only sets the variables the reader fills in (`export NAME=value`
  lines). Tests do not run it: they pass their own values for exactly those names, and
  `env_names` lets them check that they cover every one;
- every other block (plain ``` or ```yaml, ```console) is for reading only.

The `sh` blocks run in one bash process, `set -euo pipefail`, so a variable, a `cd` or a
background process of one block is there for the next, and the first failing command fails
the run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EXPORT = re.compile(r"^export ([A-Z_][A-Z0-9_]*)=", re.MULTILINE)


def blocks(text: str, tag: str) -> list[str]:
    """The bodies of the fenced blocks whose info string is exactly `tag`."""
    return [body for info, body in FENCE.findall(text) if info.strip() == tag]


def env_names(text: str) -> set[str]:
    """The variables the document's `sh env` blocks export."""
    return {name for body in blocks(text, "sh env") for name in EXPORT.findall(body)}


def script(text: str) -> str:
    """The document's `sh` blocks as one bash script."""
    return "set -euo pipefail\n" + "\n".join(blocks(text, "sh"))


def run(doc: Path, env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run the `sh` blocks of `doc` in `cwd` with `env`; fails with the output when one fails."""
    result = subprocess.run(["bash", "-c", script(doc.read_text(encoding="utf-8"))], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, (f"{doc.name}'s commands failed ({result.returncode}):\n"
                                    f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}")
    return result

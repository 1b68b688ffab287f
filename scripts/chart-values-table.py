#!/usr/bin/env python3
"""Write the values table of charts/modelops/README.md from the `# --` comments of values.yaml.

    scripts/chart-values-table.py          # rewrite the table (make chart-docs)
    scripts/chart-values-table.py --check  # exit 1 if the README's table is stale

Each key whose comment block starts with `# --` is a row: its dotted path, its type (from
values.schema.json), its default (from values.yaml) and its description (the comment).
Keys below a documented key are not listed again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "modelops"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][A-Za-z0-9]*):")
BEGIN = "<!-- values table: generated from values.yaml by `make chart-docs`; edit the comments there -->"
END = "<!-- end of the values table -->"
TYPE_NAMES = {"integer": "int", "boolean": "bool", "array": "list"}


def documented(text: str) -> list[tuple[str, str]]:
    """(dotted path, description) of each key with a `# --` comment, in file order."""
    rows, stack, comment = [], [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = KEY_LINE.match(line)
        if match:
            indent = len(match["indent"])
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, match["key"])]
            path = ".".join(k for _, k in stack)
            if comment and comment[0].startswith("--") and not any(path.startswith(p + ".") for p, _ in rows):
                rows.append((path, " ".join([comment[0].removeprefix("--").strip(), *comment[1:]]).strip()))
        comment = []
    return rows


def lookup(tree: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


def schema_type(schema: dict[str, Any], path: str) -> str:
    node = schema
    for key in path.split("."):
        node = node.get("properties", {}).get(key, {})
    kind = node.get("type", "")
    kinds = kind if isinstance(kind, list) else [kind]
    # A number may also be given as a decimal string (helm --set keeps decimals as strings).
    main = "number" if "number" in kinds else kinds[0]
    return TYPE_NAMES.get(main, main)


def default(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
    if isinstance(value, str) and value:
        text = value
    return "`" + text.replace("|", "\\|") + "`"


def table(values_text: str, schema: dict[str, Any]) -> str:
    values = yaml.safe_load(values_text)
    lines = [BEGIN, "| key | type | default | description |", "| --- | --- | --- | --- |"]
    for path, description in documented(values_text):
        lines.append(f"| `{path}` | {schema_type(schema, path)} | {default(lookup(values, path))} | "
                     f"{description.replace('|', chr(92) + '|')} |")
    return "\n".join([*lines, END]) + "\n"


def readme_with_table(readme: str, generated: str) -> str:
    """The README with its values table (between the markers, or the first table under ## Values) replaced."""
    if BEGIN in readme:
        head, rest = readme.split(BEGIN, 1)
        return head + generated + rest.split(END + "\n", 1)[1]
    head, rest = readme.split("## Values\n", 1)
    lines = rest.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return head + "## Values\n" + "".join(lines[:start]) + generated + "".join(lines[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if README.md's table is stale")
    args = parser.parse_args()
    readme_path = CHART / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    wanted = readme_with_table(readme, table((CHART / "values.yaml").read_text(encoding="utf-8"),
                                             json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))))
    if args.check:
        if wanted != readme:
            print("charts/modelops/README.md's values table is stale: run `make chart-docs`", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""No function in operator/ over 80 lines or with more than 8 parameters (self and cls not
counted): planners and reconcilers run as lists of small phases instead, and a function that
needs many inputs takes one object that holds them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2] / "operator"
MAX_LINES = 80
MAX_PARAMETERS = 8


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return len([n for n in names if n not in ("self", "cls")])


def offenders() -> dict[str, str]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                count = parameters(node)
                if lines > MAX_LINES or count > MAX_PARAMETERS:
                    found[f"{path.relative_to(ROOT)}:{node.name}"] = f"{lines} lines, {count} parameters"
    return found


def test_no_function_is_over_80_lines_or_takes_more_than_8_parameters() -> None:
    assert offenders() == {}, "split these into phases (or smaller functions with one input object)"

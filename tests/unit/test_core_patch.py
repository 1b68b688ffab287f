"""Merge patches carry exactly the difference."""

from __future__ import annotations

import pytest

from modelops.core.patch import merge_patch

pytestmark = pytest.mark.unit


def apply(doc: dict, patch: dict) -> dict:
    """RFC 7386 application, to check the patches round-trip."""
    out = dict(doc)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"r": {"x": 1, "y": 2}}, {"r": {"x": 1}}, {"r": {"y": None}}),
        ({"l": [1, 2]}, {"l": [1]}, {"l": [1]}),
        (None, {"phase": "Ready"}, {"phase": "Ready"}),
        ({"r": 1}, {"r": {"x": 1}}, {"r": {"x": 1}}),
    ],
)
def test_merge_patch(old, new, patch) -> None:
    assert merge_patch(old, new) == patch
    assert apply(old or {}, patch) == new

"""JSON merge patches (RFC 7386) between two versions of a document."""

from __future__ import annotations

from typing import Any


def merge_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The smallest merge patch that turns `old` into `new`: changed keys, and None for
    removed ones. Lists are replaced whole, as merge patches do."""
    old = old or {}
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if before == value and key in old:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            patch[key] = merge_patch(before, value)
        else:
            patch[key] = value
    return patch

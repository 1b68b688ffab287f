"""What a live child has drifted from its render, judged only on the fields we render.

The API server adds defaults, other controllers add their own fields, and the server writes
quantities in canonical form. None of that is drift. Drift is a rendered field whose live value
is missing or different, or an entry that someone added to a list we render (an env var, a
container, a port): those change what runs, so they are removed again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

# Keys that identify an entry of a rendered list, in order of preference (the merge keys of
# containers, env, volumes, ports, volumeMounts and ownerReferences).
_ENTRY_KEYS = ("name", "uid", "containerPort", "port", "mountPath")
# Maps whose values are Kubernetes quantities ("1", 1, "500m", "0.5" and "1Gi" vs "1024Mi").
_QUANTITY_MAPS = frozenset({"limits", "requests"})
# Lists other parties may add entries to without changing what runs.
_OPEN_LISTS = frozenset({"ownerReferences", "finalizers"})

_SUFFIXES: dict[str, Decimal] = {
    **{suffix: Decimal(2) ** (10 * power) for power, suffix in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")) if suffix},
    **{suffix: Decimal(10) ** exponent for suffix, exponent in
       (("n", -9), ("u", -6), ("m", -3), ("", 0), ("k", 3), ("M", 6), ("G", 9), ("T", 12), ("P", 15), ("E", 18))},
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


@dataclass(frozen=True)
class Difference:
    """One field where the live object is not as rendered. `path` is a JSON pointer into the
    live object; for an `extra` entry it points at the entry to remove."""

    path: str
    kind: str  # "missing", "changed" or "extra"
    key: tuple[str, Any] | None = None  # for "extra": the entry's identifying key and value

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity as a number, or None when it is not one."""
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIXES[match.group(2) or ""]
    except InvalidOperation:
        return None


def _pointer(path: tuple[str | int, ...]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _scalar_equal(want: Any, live: Any, in_quantities: bool) -> bool:
    if want == live and type(want) is type(live):
        return True
    if in_quantities:
        a, b = quantity(want), quantity(live)
        return a is not None and a == b
    # The server stores an int-or-string field as it was sent, but numbers may come back as
    # floats or strings of the same value (a GPU count of 1 reads back as "1").
    if isinstance(want, bool) or isinstance(live, bool):
        return False
    return isinstance(want, (int, float, str)) and isinstance(live, (int, float, str)) and str(want) == str(live)


def _entry_key(entries: list[Any]) -> str | None:
    """The key that tells the entries of a rendered list apart, if every entry has a unique one."""
    if not entries or not all(isinstance(e, dict) for e in entries):
        return None
    for key in _ENTRY_KEYS:
        values = [e.get(key) for e in entries]
        if all(v is not None for v in values) and len(set(map(str, values))) == len(values):
            return key
    return None


def differences(desired: dict[str, Any], live: dict[str, Any] | None) -> list[Difference]:
    """Every rendered field that the live object lacks or holds differently, and every entry
    added to a rendered list. Empty when the live object is as rendered."""
    if live is None:
        return [Difference("", "missing")]
    return list(_walk(desired, live, (), in_quantities=False))


def _walk(want: Any, live: Any, path: tuple[str | int, ...], in_quantities: bool) -> Iterator[Difference]:
    if isinstance(want, dict):
        if not isinstance(live, dict):
            if want or live is not None:
                yield Difference(_pointer(path), "changed" if live is not None else "missing")
            return
        for key, value in want.items():
            if key not in live:
                if value not in ({}, [], None):
                    yield Difference(_pointer((*path, key)), "missing")
                continue
            yield from _walk(value, live[key], (*path, key), in_quantities or key in _QUANTITY_MAPS)
        return
    if isinstance(want, list):
        if not isinstance(live, list):
            if want:
                yield Difference(_pointer(path), "changed" if live is not None else "missing")
            return
        yield from _walk_list(want, live, path)
        return
    if want is None:
        return
    if not _scalar_equal(want, live, in_quantities):
        yield Difference(_pointer(path), "changed")


def _walk_list(want: list[Any], live: list[Any], path: tuple[str | int, ...]) -> Iterator[Difference]:
    open_list = bool(path) and path[-1] in _OPEN_LISTS
    # A list rendered empty is ours too: whatever someone adds to it is extra.
    key = _entry_key(want) if want else _entry_key(live)
    if key is not None and all(isinstance(e, dict) for e in live):
        by_key = {str(e.get(key)): (i, e) for i, e in enumerate(live)}
        for entry in want:
            found = by_key.get(str(entry[key]))
            if found is None:
                yield Difference(_pointer((*path, entry[key])), "missing")
            else:
                yield from _walk(entry, found[1], (*path, found[0]), in_quantities=False)
        if not open_list:
            wanted = {str(e[key]) for e in want}
            for index, entry in enumerate(live):
                if str(entry.get(key)) not in wanted:
                    yield Difference(_pointer((*path, index)), "extra", (key, entry.get(key)))
        return
    # Lists without an identity (args, tolerations) are compared whole, position by position.
    if len(want) != len(live) and not (open_list and len(live) > len(want)):
        yield Difference(_pointer(path), "changed")
        return
    for index, entry in enumerate(want):
        yield from _walk(entry, live[index], (*path, index), in_quantities=False)


def removals(found: list[Difference]) -> list[dict[str, Any]]:
    """A JSON patch that removes the extra entries, each guarded by a test of its key, so a
    list that changed meanwhile makes the patch fail instead of removing the wrong entry.
    Entries of one list are removed from the last, so earlier indices stay valid."""
    extras = sorted((d for d in found if d.kind == "extra"), key=lambda d: _sort_key(d.path), reverse=True)
    ops: list[dict[str, Any]] = []
    for diff in extras:
        assert diff.key is not None
        name, value = diff.key
        ops.append({"op": "test", "path": f"{diff.path}/{name}", "value": value})
        ops.append({"op": "remove", "path": diff.path})
    return ops


def _sort_key(pointer: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in pointer.split("/")[1:])

"""CRD compatibility with the last release (the commit in LAST_RELEASE): within one API
version a field may be added, never removed, renamed or retyped, and a served version is never
dropped. A rename shows as a removal. Pure code; tests/unit/test_crd_compat.py runs it on the
CRDs under crds/ against `git show <release>:crds/<file>`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CRD_DIR = "crds"


def last_release() -> str:
    return (ROOT / "LAST_RELEASE").read_text().split()[0]


def released_crds(commit: str) -> dict[str, dict[str, Any]]:
    """The CRDs of a commit, by file name (git must have the commit: a shallow clone needs
    `git fetch --unshallow` or a fetch of that commit)."""
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{commit}:{CRD_DIR}"],
                           check=True, capture_output=True, text=True).stdout.split()
    return {
        name: yaml.safe_load(subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{CRD_DIR}/{name}"],
                                            check=True, capture_output=True, text=True).stdout)
        for name in names if name.endswith(".yaml")
    }


def current_crds() -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / CRD_DIR).glob("*.yaml"))}


def _fields(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or ".", schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _fields(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _fields(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _fields(schema["additionalProperties"], f"{path}{{}}")


def _kind(schema: dict[str, Any]) -> str | None:
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    return schema.get("type")


def incompatibilities(old: dict[str, Any], new: dict[str, Any] | None) -> list[str]:
    """What `new` breaks of `old`, one line per field: removed (or renamed) fields, changed
    types, and dropped versions. Empty when `new` only adds."""
    name = old["metadata"]["name"]
    if new is None:
        return [f"{name}: the CRD was removed"]
    found = []
    new_versions = {v["name"]: v for v in new["spec"]["versions"]}
    for version in old["spec"]["versions"]:
        if not version.get("served", True):
            continue
        now = new_versions.get(version["name"])
        if now is None or not now.get("served", True):
            found.append(f"{name} {version['name']}: the version is no longer served")
            continue
        after = dict(_fields(now["schema"]["openAPIV3Schema"], ""))
        for path, schema in _fields(version["schema"]["openAPIV3Schema"], ""):
            if path not in after:
                found.append(f"{name} {version['name']}: field {path} was removed or renamed")
            elif _kind(after[path]) != _kind(schema):
                found.append(f"{name} {version['name']}: field {path} changed type from {_kind(schema)} to {_kind(after[path])}")
    return found


def compare(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    by_name = {crd["metadata"]["name"]: crd for crd in new.values()}
    return [line for crd in old.values() for line in incompatibilities(crd, by_name.get(crd["metadata"]["name"]))]

"""Which objects a change can affect, so that a watch event wakes only those (pure).

A Model's spec reaches every version and deployment of it; a version reaches the siblings
that share its number (which of them owns it) and the deployments that may serve it or have
served it; a deployment's failed versions reach the versions with those numbers (their failedBy
is derived from it); a change that no reconcile reads reaches nothing."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from modelops.api.deployment import VersionPolicy
from modelops.api.version import TERMINAL_PHASES
from modelops.core.objects import VersionView, owned_by

Body = dict[str, Any]


def model_changed(old: Body | None, new: Body | None) -> bool:
    """Created, deleted, or its spec changed (its own status changes nothing below it)."""
    if old is None or new is None:
        return old is not new
    return bool(old.get("spec") != new.get("spec") or old["metadata"].get("deletionTimestamp") != new["metadata"].get("deletionTimestamp"))


def view_of(body: Body | None) -> VersionView | None:
    return VersionView.from_body(body) if body is not None else None


def waiting_versions(versions: Iterable[Body], model_uid: str | None = None) -> list[str]:
    """The versions whose outcome a Model change can still change: those not yet final, and any
    not yet owned by the Model `model_uid` (each version adopts itself when its Model exists)."""
    return [
        b["metadata"]["name"] for b in versions
        if (b.get("status") or {}).get("phase") not in TERMINAL_PHASES
        or (model_uid is not None and not owned_by(b, model_uid))
    ]


def siblings_to_wake(old: VersionView | None, new: VersionView | None, siblings: Iterable[Body]) -> list[str]:
    """When a version appears, goes or starts deleting, the versions with its number learn which
    of them owns it: a waiting one whether it may start, a finished one whether it carries the
    number's failedBy marks."""
    if old is not None and new is not None and old.deleting == new.deleting:
        return []
    changed = new if new is not None else old
    assert changed is not None
    return [
        b["metadata"]["name"] for b in siblings
        if int((b.get("spec") or {}).get("version", 0)) == changed.version and b["metadata"]["name"] != changed.name
    ]


def _failed_of(body: Body | None) -> tuple[str, frozenset[int]]:
    if body is None or body["metadata"].get("deletionTimestamp"):
        return (body or {}).get("spec", {}).get("model", ""), frozenset()
    return (body.get("spec") or {}).get("model", ""), frozenset((body.get("status") or {}).get("failedVersions") or ())


def verdicts_changed(old: Body | None, new: Body | None) -> dict[str, frozenset[int]]:
    """Model name to the version numbers whose failedBy one deployment's change can change: the
    numbers added to or removed from its failedVersions, all of them when it goes, starts
    deleting or moves to another Model."""
    (old_model, old_failed), (new_model, new_failed) = _failed_of(old), _failed_of(new)
    if old_model == new_model:
        changed = old_failed ^ new_failed
        return {new_model: changed} if changed and new_model else {}
    return {model: numbers for model, numbers in ((old_model, old_failed), (new_model, new_failed)) if model and numbers}


def versions_numbered(versions: Iterable[Body], numbers: Collection[int]) -> list[str]:
    return [b["metadata"]["name"] for b in versions if int((b.get("spec") or {}).get("version", 0)) in numbers]


def model_wake_needed(old: Body | None, new: Body | None) -> bool:
    """Whether a version's change reaches its Model: the Model sums up the views of its versions;
    a change of anything else (failedBy, a report, its ownerReferences) reaches nothing there."""
    if old is None or new is None:
        return True
    return view_of(old) != view_of(new)


def deployments_to_wake(old: VersionView | None, new: VersionView | None, deployments: Iterable[Body]) -> list[str]:
    """The deployments whose plan reads what changed in one version: every Latest one, and a
    Pinned one that asks for, serves or served that version number."""
    if old == new:
        return []
    changed = new if new is not None else old
    assert changed is not None
    woken = []
    for body in deployments:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        numbers = {spec.get("version"), status.get("desiredVersion"), status.get("servedVersion"), status.get("previousVersion")}
        if spec.get("versionPolicy", VersionPolicy.LATEST) != VersionPolicy.PINNED or changed.version in numbers:
            woken.append(body["metadata"]["name"])
    return woken

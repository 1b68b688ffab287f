"""Which version a ModelDeployment serves, and which ModelVersion owns a version number."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from modelops.api.deployment import DeploymentReason as Reason
from modelops.api.deployment import VersionPolicy
from modelops.api.version import Phase
from modelops.core.objects import VersionView

NEVER_READY = frozenset({Phase.REJECTED, Phase.FAILED})


def claim_order(view: VersionView) -> tuple[str, str]:
    """The earliest-created ModelVersion owns a version number; the name breaks ties."""
    return (view.created, view.name)


def owner_of_number(versions: Iterable[VersionView], number: int) -> VersionView | None:
    claimants = [v for v in versions if v.version == number and not v.deleting]
    return min(claimants, key=claim_order) if claimants else None


def effective_versions(versions: Iterable[VersionView]) -> dict[int, VersionView]:
    """Version number to the ModelVersion that owns it; later duplicates are ignored."""
    owners: dict[int, VersionView] = {}
    for view in sorted(versions, key=claim_order):
        if not view.deleting:
            owners.setdefault(view.version, view)
    return owners


@dataclass(frozen=True)
class Resolution:
    """The outcome of version resolution. `version` is None when nothing can be served."""

    version: VersionView | None
    reason: Reason
    message: str


def resolve_version(
    policy: str,
    pinned: int | None,
    model: str,
    versions: Iterable[VersionView],
    failed_rollouts: Collection[int] = (),
) -> Resolution:
    """Latest: the highest Ready version whose rollout has not failed. Pinned: that version."""
    owners = effective_versions(versions)
    if policy == VersionPolicy.PINNED:
        return _resolve_pinned(pinned, model, owners, failed_rollouts)
    ready = [v for n, v in owners.items() if v.ready and n not in failed_rollouts]
    if ready:
        best = max(ready, key=lambda v: v.version)
        return Resolution(best, Reason.RESOLVED, f"Latest resolves to version {best.version} ({best.name})")
    skipped = sorted(n for n, v in owners.items() if v.ready and n in failed_rollouts)
    others = sorted((n, v) for n, v in owners.items() if n not in skipped)
    if not owners:
        message = f"Model {model} has no versions yet; create a ModelVersion"
    elif skipped:
        numbers = ", ".join(map(str, skipped))
        message = (f"no version of Model {model} can be served: version(s) {numbers} are Ready but their rollout "
                   "failed here, so Latest skips them until the modelops.dev/retry annotation changes")
        if others:
            message += " (other versions: " + ", ".join(f"{n}: {v.phase or Phase.PENDING}" for n, v in others) + ")"
    else:
        phases = ", ".join(f"{n}: {v.phase or Phase.PENDING}" for n, v in others)
        message = f"no Ready version of Model {model} (versions {phases})"
    return Resolution(None, Reason.NO_READY_VERSION, message)


def _resolve_pinned(
    pinned: int | None,
    model: str,
    owners: dict[int, VersionView],
    failed_rollouts: Collection[int],
) -> Resolution:
    if pinned is None:
        return Resolution(None, Reason.VERSION_NOT_SET, "versionPolicy is Pinned but spec.version is not set")
    view = owners.get(pinned)
    if view is None:
        return Resolution(
            None,
            Reason.PINNED_VERSION_NOT_FOUND,
            f"Model {model} has no version {pinned}; create it or pin an existing version",
        )
    if pinned in failed_rollouts:
        return Resolution(
            None,
            Reason.PINNED_VERSION_ROLLOUT_FAILED,
            f"the rollout of version {pinned} failed; see the Degraded condition and status.rollouts for its cause. "
            "Fix the spec and set the modelops.dev/retry annotation to a new value; pin another version only if "
            "the version itself is at fault",
        )
    if view.phase in NEVER_READY:
        return Resolution(
            None,
            Reason.PINNED_VERSION_NOT_READY,
            f"version {pinned} ({view.name}) is {view.phase} and will not become Ready; pin another version",
        )
    if not view.ready:
        return Resolution(
            None,
            Reason.PINNED_VERSION_NOT_READY,
            f"version {pinned} ({view.name}) is {view.phase or Phase.PENDING}; it is served once Ready",
        )
    return Resolution(view, Reason.RESOLVED, f"pinned to version {pinned} ({view.name})")

"""Version resolution: Latest and Pinned, as table tests."""

from __future__ import annotations

import pytest

from modelops.core.objects import VersionView
from modelops.core.resolve import effective_versions, owner_of_number, resolve_version

pytestmark = pytest.mark.unit


def v(number: int, phase: str | None = "Ready", name: str | None = None, created: str = "2025-01-01T00:00:00Z", **kw) -> VersionView:
    ready = phase == "Ready"
    return VersionView(
        name=name or f"digits-v{number}",
        model="digits",
        version=number,
        phase=phase,
        created=created,
        compressed_uri=f"s3://models/modelops-cache/{number}/" if ready else None,
        compressed_sha256=f"{number:064x}" if ready else None,
        **kw,
    )


@pytest.mark.parametrize(
    ("versions", "failed", "expected", "reason"),
    [
        ([], (), None, "NoReadyVersion"),
        ([v(1), v(2), v(3)], (), 3, "Resolved"),
        ([v(1), v(3, "Compressing"), v(2)], (), 2, "Resolved"),
        ([v(1), v(2, "Rejected"), v(3, "Failed")], (), 1, "Resolved"),
        ([v(1), v(2), v(3)], (3,), 2, "Resolved"),
        ([v(1), v(2)], (1, 2), None, "NoReadyVersion"),
        ([v(1, "Pending"), v(2, "Verifying")], (), None, "NoReadyVersion"),
        ([v(10), v(9)], (), 10, "Resolved"),
        ([v(4, deleting=True), v(3)], (), 3, "Resolved"),
        # Ready phase without a compressed artifact cannot be served.
        ([VersionView("odd", "digits", 5, "Ready"), v(4)], (), 4, "Resolved"),
    ],
)
def test_latest(versions, failed, expected, reason) -> None:
    resolution = resolve_version("Latest", None, "digits", versions, failed)
    assert (resolution.version.version if resolution.version else None) == expected
    assert resolution.reason == reason
    assert resolution.message


@pytest.mark.parametrize(
    ("pinned", "versions", "failed", "expected", "reason", "hint"),
    [
        (2, [v(1), v(2), v(3)], (), 2, "Resolved", "pinned to version 2"),
        (2, [v(1), v(2, "Compressing")], (), None, "PinnedVersionNotReady", "served once Ready"),
        (2, [v(2, "Rejected")], (), None, "PinnedVersionNotReady", "pin another version"),
        (7, [v(1)], (), None, "PinnedVersionNotFound", "no version 7"),
        (2, [v(2)], (2,), None, "PinnedVersionRolloutFailed", "rollout of version 2 failed"),
        (None, [v(1)], (), None, "VersionNotSet", "spec.version"),
    ],
)
def test_pinned(pinned, versions, failed, expected, reason, hint) -> None:
    resolution = resolve_version("Pinned", pinned, "digits", versions, failed)
    assert (resolution.version.version if resolution.version else None) == expected
    assert resolution.reason == reason
    assert hint in resolution.message


def test_latest_explains_skipped_versions() -> None:
    resolution = resolve_version("Latest", None, "digits", [v(1)], failed_rollouts=(1,))
    assert resolution.message == (
        "no version of Model digits can be served: version(s) 1 are Ready but their rollout failed here, "
        "so Latest skips them until the modelops.dev/retry annotation changes"
    )


def test_latest_never_calls_a_skipped_version_not_ready() -> None:
    # The message once said "no Ready version (versions 1: Ready ...)": a contradiction.
    resolution = resolve_version("Latest", None, "digits", [v(1), v(2, "Verifying")], failed_rollouts=(1,))
    assert resolution.message == (
        "no version of Model digits can be served: version(s) 1 are Ready but their rollout failed here, "
        "so Latest skips them until the modelops.dev/retry annotation changes (other versions: 2: Verifying)"
    )
    assert "no Ready version" not in resolution.message


def test_pinned_failed_rollout_points_at_the_fix_before_another_version() -> None:
    resolution = resolve_version("Pinned", 1, "digits", [v(1)], failed_rollouts=(1,))
    assert resolution.message == (
        "the rollout of version 1 failed; see the Degraded condition and status.rollouts for its cause. "
        "Fix the spec and set the modelops.dev/retry annotation to a new value; pin another version only if "
        "the version itself is at fault"
    )


def test_the_earliest_claim_of_a_number_wins() -> None:
    first = v(2, name="b-first", created="2025-01-01T00:00:00Z")
    second = v(2, "Pending", name="a-second", created="2025-01-02T00:00:00Z")
    assert owner_of_number([second, first], 2) == first
    assert effective_versions([second, first]) == {2: first}
    # A later duplicate that is Ready never shadows the owner.
    late_ready = v(2, name="c-late", created="2025-02-01T00:00:00Z")
    assert resolve_version("Latest", None, "digits", [late_ready, v(2, "Compressing", name="owner")]).version is None


def test_same_creation_time_breaks_ties_by_name() -> None:
    a = v(1, name="alpha")
    b = v(1, name="beta")
    assert owner_of_number([b, a], 1) == a

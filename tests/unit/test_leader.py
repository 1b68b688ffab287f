"""Leader election: the pure decision, the Lease bodies, and two candidates on one Lease store
that behaves like the API server (resourceVersion guards, 409 on a stale write)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from modelops.leader import Decision, LeaderElector, LeaseConfig, decide, lease_body

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 1, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("holder", "unchanged_for", "expected"),
    [
        ("me", 0.0, Decision.RENEW),
        ("me", 100.0, Decision.RENEW),
        (None, 0.0, Decision.ACQUIRE),
        ("", 0.0, Decision.ACQUIRE),
        ("other", 0.0, Decision.WAIT),
        ("other", 14.9, Decision.WAIT),
        ("other", 15.0, Decision.ACQUIRE),
    ],
)
def test_decision(holder: str | None, unchanged_for: float, expected: Decision) -> None:
    assert decide(holder, "me", unchanged_for, lease_duration=15.0) is expected


def test_timings_must_let_the_leader_stop_before_a_takeover() -> None:
    with pytest.raises(ValueError, match="leaseDuration > renewDeadline > retryPeriod"):
        LeaseConfig("l", "ns", "me", lease_duration=10, renew_deadline=10, retry_period=2)


def test_bodies_keep_acquire_time_on_renewal_and_count_takeovers() -> None:
    config = LeaseConfig("lease", "ns", "a")
    created = lease_body(config, None, NOW)
    assert created["spec"]["holderIdentity"] == "a"
    assert created["spec"]["acquireTime"] == "2026-12-02T01:00:00.000000Z"
    assert "resourceVersion" not in created["metadata"]
    stored = {**created, "metadata": {**created["metadata"], "resourceVersion": "7"}}
    later = datetime(2026, 12, 2, 1, 0, 5, tzinfo=UTC)
    renewed = lease_body(config, stored, later)
    assert renewed["spec"]["acquireTime"] == created["spec"]["acquireTime"]
    assert renewed["spec"]["renewTime"] == "2026-12-02T01:00:05.000000Z"
    assert renewed["metadata"]["resourceVersion"] == "7"
    taken = lease_body(LeaseConfig("lease", "ns", "b"), stored, later)
    assert taken["spec"]["holderIdentity"] == "b"
    assert taken["spec"]["acquireTime"] == renewed["spec"]["renewTime"]
    assert taken["spec"]["leaseTransitions"] == 1
    released = lease_body(config, stored, later, release=True)
    assert released["spec"]["holderIdentity"] is None


class FakeApiServer:
    """One Lease with the API server's optimistic concurrency."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.writes: list[str | None] = []

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("API server unreachable")

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.lease)

    def create_lease(self, body: dict[str, Any]) -> bool:
        self._check()
        if self.lease is not None:
            return False
        return self._store(body)

    def replace_lease(self, body: dict[str, Any]) -> bool:
        self._check()
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            return False
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> bool:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        self.writes.append(body["spec"].get("holderIdentity"))
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def candidate(server: FakeApiServer, clock: Clock, name: str) -> LeaderElector:
    config = LeaseConfig("modelops", "ns", name, lease_duration=15, renew_deadline=10, retry_period=2)
    return LeaderElector(server, config, clock=clock, wall=lambda: NOW)


def test_one_leader_and_a_takeover_only_after_the_lease_duration() -> None:
    server, clock = FakeApiServer(), Clock()
    a, b = candidate(server, clock, "a"), candidate(server, clock, "b")
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    # a renews every retry period: b never sees the record stand still for 15 s.
    for _ in range(20):
        clock.now += 2
        assert a.try_acquire_or_renew() is True
        assert b.try_acquire_or_renew() is False
    # a dies: the record stops changing; b waits a whole lease duration on its own clock.
    clock.now += 2
    assert b.try_acquire_or_renew() is False
    clock.now += 12.9  # 14.9 s since b last saw the record change
    assert b.try_acquire_or_renew() is False
    clock.now += 0.1
    assert b.try_acquire_or_renew() is True
    assert server.lease is not None and server.lease["spec"]["holderIdentity"] == "b"
    # a comes back from a pause: it sees b's record and does not take it back.
    assert a.try_acquire_or_renew() is False
    assert a._taken_by_another()


def test_a_stale_write_loses() -> None:
    server, clock = FakeApiServer(), Clock()
    a, b = candidate(server, clock, "a"), candidate(server, clock, "b")
    assert a.try_acquire_or_renew()
    clock.now += 1
    b.try_acquire_or_renew()  # observes a's record at t=1
    # Both decide to write after the lease expired; only the first write at that resourceVersion lands.
    clock.now += 16
    stale = server.get_lease("ns", "modelops")
    assert b.try_acquire_or_renew() is True
    assert server.replace_lease(lease_body(a.config, stale, NOW)) is False
    assert server.lease is not None and server.lease["spec"]["holderIdentity"] == "b"


def test_release_hands_over_at_once() -> None:
    server, clock = FakeApiServer(), Clock()
    a, b = candidate(server, clock, "a"), candidate(server, clock, "b")
    a.acquire()
    assert a.leading
    assert b.try_acquire_or_renew() is False
    a.release()
    assert server.writes[-1] is None
    assert b.try_acquire_or_renew() is True


def test_an_unreachable_api_server_is_a_failed_round_not_a_crash() -> None:
    server, clock = FakeApiServer(), Clock()
    a = candidate(server, clock, "a")
    server.down = True
    assert a.try_acquire_or_renew() is False
    server.down = False
    assert a.try_acquire_or_renew() is True

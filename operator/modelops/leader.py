"""Leader election on a coordination.k8s.io Lease: with several replicas, exactly one reconciles.

The rules are client-go's. A candidate takes the Lease when it has no holder, or when the
record has not changed for leaseDurationSeconds as measured on the candidate's own monotonic
clock (clocks of different machines are never compared). The leader renews every retry
period. If it cannot renew for renewDeadline, it stops leading: the process exits, and the
restarted pod comes back as a standby. Because renewDeadline < leaseDuration, the old leader
has stopped before any standby may take over, so two leaders never overlap.

The decision is pure (`decide`); `LeaderElector` does the I/O through the one Kubernetes
adapter, on a thread of its own so that a busy event loop or busy reconcile workers can never
delay a renewal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class Decision(StrEnum):
    ACQUIRE = "Acquire"
    RENEW = "Renew"
    WAIT = "Wait"


@dataclass(frozen=True)
class LeaseConfig:
    """Where the Lease lives, who we are, and the three timings (seconds)."""

    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "leader election needs leaseDuration > renewDeadline > retryPeriod > 0, got "
                f"{self.lease_duration} / {self.renew_deadline} / {self.retry_period}"
            )


def decide(holder: str | None, identity: str, unchanged_for: float, lease_duration: float) -> Decision:
    """What a candidate does with the Lease it just read.

    `unchanged_for` is how long this candidate has seen the same record (holder, renew time,
    resourceVersion) without a change, on its own clock.
    """
    if holder == identity:
        return Decision.RENEW
    if not holder or unchanged_for >= lease_duration:
        return Decision.ACQUIRE
    return Decision.WAIT


def rfc3339_micro(moment: datetime) -> str:
    """metav1.MicroTime, as the Lease's acquireTime and renewTime want it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(config: LeaseConfig, existing: dict[str, Any] | None, now: datetime, release: bool = False) -> dict[str, Any]:
    """The Lease to write: a new one, a renewal, a takeover, or a release.

    A renewal keeps acquireTime; a takeover sets it and counts a transition. The existing
    object's resourceVersion rides along, so a concurrent writer makes ours fail with 409.
    """
    spec = dict((existing or {}).get("spec") or {})
    held_by_us = spec.get("holderIdentity") == config.identity
    stamp = rfc3339_micro(now)
    if release:
        spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=stamp)
    else:
        if not held_by_us:
            spec["acquireTime"] = stamp
            if existing is not None:
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(
            holderIdentity=config.identity,
            leaseDurationSeconds=max(1, round(config.lease_duration)),
            renewTime=stamp,
        )
    metadata: dict[str, Any] = {"name": config.name, "namespace": config.namespace}
    if existing is not None:
        metadata["resourceVersion"] = existing["metadata"]["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


class LeaseStore(Protocol):
    """The three calls the elector needs; `modelops.kube.Kube` provides them."""

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create_lease(self, body: dict[str, Any]) -> bool: ...

    def replace_lease(self, body: dict[str, Any]) -> bool: ...


class LeaderElector:
    """Acquire, then keep renewing on a background thread; `on_lost` runs if renewal fails."""

    def __init__(
        self,
        store: LeaseStore,
        config: LeaseConfig,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.config = config
        self._clock = clock
        self._wall = wall
        self._seen: tuple[Any, ...] | None = None
        self._seen_at = 0.0
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.leading = False

    def try_acquire_or_renew(self) -> bool:
        """One round: read, decide, write. True when we hold the Lease afterwards."""
        try:
            lease = self.store.get_lease(self.config.namespace, self.config.name)
            if lease is None:
                return self.store.create_lease(lease_body(self.config, None, self._wall()))
            spec = lease.get("spec") or {}
            record = (spec.get("holderIdentity"), spec.get("renewTime"), lease["metadata"].get("resourceVersion"))
            now = self._clock()
            if record != self._seen:
                self._seen, self._seen_at = record, now
            decision = decide(record[0], self.config.identity, now - self._seen_at, self.config.lease_duration)
            if decision is Decision.WAIT:
                return False
            if decision is Decision.ACQUIRE:
                logger.info("taking over the lease %s/%s from %r", self.config.namespace, self.config.name, record[0])
            return self.store.replace_lease(lease_body(self.config, lease, self._wall()))
        except Exception as err:  # the API may be away; the next round tries again
            logger.warning("lease %s/%s: %s", self.config.namespace, self.config.name, err)
            return False

    def acquire(self) -> None:
        """Block until this candidate leads."""
        logger.info("standing by for the lease %s/%s as %s", self.config.namespace, self.config.name, self.config.identity)
        while not self._stop.is_set():
            if self.try_acquire_or_renew():
                self.leading = True
                logger.info("leading as %s", self.config.identity)
                return
            self._stop.wait(self.config.retry_period)

    def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew every retry period on a daemon thread; call `on_lost` after renewDeadline of failures."""

        def renew() -> None:
            last_renewed = self._clock()
            while not self._stop.wait(self.config.retry_period):
                if self.try_acquire_or_renew():
                    last_renewed = self._clock()
                elif self._taken_by_another() or self._clock() - last_renewed >= self.config.renew_deadline:
                    self.leading = False
                    on_lost()
                    return

        self._renewer = threading.Thread(target=renew, name="modelops-lease", daemon=True)
        self._renewer.start()

    def _taken_by_another(self) -> bool:
        holder = self._seen[0] if self._seen else None
        return bool(holder) and holder != self.config.identity

    def release(self) -> None:
        """Stop renewing and hand the Lease back, so a standby takes over at once."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.config.retry_period + 5)
        if not self.leading:
            return
        self.leading = False
        try:
            lease = self.store.get_lease(self.config.namespace, self.config.name)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.config.identity:
                self.store.replace_lease(lease_body(self.config, lease, self._wall(), release=True))
                logger.info("released the lease %s/%s", self.config.namespace, self.config.name)
        except Exception as err:
            logger.warning("could not release the lease: %s", err)

    @property
    def alive(self) -> bool:
        return self._renewer is None or self._renewer.is_alive() or self._stop.is_set()

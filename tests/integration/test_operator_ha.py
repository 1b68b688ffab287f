"""Two replicas on one Lease: one leads and reconciles, the other stands by (healthy and ready)
and writes nothing; a killed leader is replaced within the lease duration plus a retry
period, never before its lease ran out; a cleanly stopped one hands over at once. The audit
log, which names each replica by its user agent, shows that no two replicas ever wrote
modelops objects in overlapping windows."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from tests.integration.conftest import (
    LEADER_ELECTION_RULES,
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    OPERATOR_USER,
    AuditLog,
    OperatorProcess,
    apply_docs,
    eventually,
    get_json,
    kubectl,
)

pytestmark = pytest.mark.integration

LEASE = "modelops-operator"
WRITES = {"create", "update", "patch"}


def grant_leases(testbed: Any, namespace: str) -> None:
    apply_docs(testbed, namespace, [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "leader-election"},
         "rules": LEADER_ELECTION_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "leader-election"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leader-election"},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}]},
    ])


def model(name: str) -> dict[str, Any]:
    """A Model whose credentials Secret is missing: the operator answers with a status write,
    without any storage involved."""
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "Model", "metadata": {"name": name},
        "spec": {
            "storage": {"endpoint": "http://127.0.0.1:1", "insecure": True, "bucket": "models",
                        "credentialsSecret": {"name": "absent"}},
            "signature": {"inputs": [{"name": "input", "dataType": "FP32", "dims": [4]}],
                          "outputs": [{"name": "output", "dataType": "FP32", "dims": [2]}]},
        },
    }


def lease(testbed: Any, namespace: str) -> dict[str, Any]:
    return get_json(testbed, namespace, "lease", LEASE)["spec"]


def holder(testbed: Any, namespace: str) -> str | None:
    result = kubectl(testbed, "get", "lease", LEASE, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout)["spec"].get("holderIdentity") if result.returncode == 0 else None


def has_status(testbed: Any, namespace: str, name: str) -> bool:
    return bool(get_json(testbed, namespace, "model", name).get("status", {}).get("conditions"))


def micro(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def write_windows(events: list[dict[str, Any]], namespace: str) -> dict[str, tuple[datetime, datetime]]:
    """First and last write to modelops objects per replica (user agent), from the audit log."""
    windows: dict[str, tuple[datetime, datetime]] = {}
    for event in events:
        ref = event.get("objectRef") or {}
        if (event.get("stage") != "ResponseComplete" or event.get("verb") not in WRITES
                or event.get("user", {}).get("username") != OPERATOR_USER
                or ref.get("apiGroup") != "modelops.dev" or ref.get("namespace") != namespace):
            continue
        agent = event.get("userAgent", "")
        at = micro(event["requestReceivedTimestamp"])
        first, last = windows.get(agent, (at, at))
        windows[agent] = (min(first, at), max(last, at))
    return windows


@pytest.fixture
def replicas(testbed: Any, namespace: str, start_operator: Callable[..., OperatorProcess]) -> Callable[..., OperatorProcess]:
    grant_leases(testbed, namespace)

    def start(identity: str, lease_duration: float) -> OperatorProcess:
        return start_operator(
            leader_election="true", leader_election_namespace=namespace, leader_election_identity=identity,
            lease_duration_seconds=str(lease_duration), lease_renew_deadline_seconds=str(lease_duration * 0.75),
            lease_retry_period_seconds="1",
        )

    return start


def test_a_killed_leader_is_replaced_by_the_standby_and_never_overlaps(
    testbed: Any, namespace: str, replicas: Callable[..., OperatorProcess], audit_log: AuditLog
) -> None:
    lease_duration, retry_period = 4.0, 1.0
    audit_log.mark()
    a = replicas("replica-a", lease_duration)
    eventually(lambda: holder(testbed, namespace) == "replica-a", 30, "replica-a to take the lease")
    b = replicas("replica-b", lease_duration)
    assert b.health("/healthz") == 200 and b.health("/readyz") == 200, "the standby answers its probes"

    apply_docs(testbed, namespace, [model("before")])
    eventually(lambda: has_status(testbed, namespace, "before"), 30, "the leader to write the first Model's status")
    assert holder(testbed, namespace) == "replica-a"

    last_renewal = micro(lease(testbed, namespace)["renewTime"])
    a.kill()
    spec = eventually(lambda: (s := lease(testbed, namespace)).get("holderIdentity") == "replica-b" and s,
                      30, "replica-b to take over")
    handover = (micro(spec["acquireTime"]) - last_renewal).total_seconds()
    print(f"\nhandover {handover:.2f} s after the killed leader's last renewal "
          f"(lease {lease_duration:.0f} s, retry {retry_period:.0f} s)")
    # Never before the old lease ran out (safety); within one retry period after it (liveness).
    # The killed leader may have renewed once more after we read renewTime, so allow one retry.
    assert handover >= lease_duration - retry_period
    assert handover <= lease_duration + retry_period + 1.0
    assert spec.get("leaseTransitions", 0) >= 1

    apply_docs(testbed, namespace, [model("after")])
    eventually(lambda: has_status(testbed, namespace, "after"), 30, "the new leader to write the second Model's status")

    windows = write_windows(audit_log.events_since_mark(), namespace)
    by_replica = {agent.rsplit("(", 1)[-1].rstrip(")"): window for agent, window in windows.items()}
    assert set(by_replica) == {"replica-a", "replica-b"}, windows
    assert by_replica["replica-a"][1] < by_replica["replica-b"][0], f"writes overlapped: {by_replica}"
    assert by_replica["replica-b"][0] >= micro(spec["acquireTime"]), "the standby wrote before it held the lease"


def test_a_cleanly_stopped_leader_hands_over_at_once(
    testbed: Any, namespace: str, replicas: Callable[..., OperatorProcess]
) -> None:
    lease_duration = 30.0  # far longer than a clean handover may take
    a = replicas("replica-a", lease_duration)
    eventually(lambda: holder(testbed, namespace) == "replica-a", 30, "replica-a to take the lease")
    replicas("replica-b", lease_duration)
    a.stop()
    spec = eventually(lambda: (s := lease(testbed, namespace)).get("holderIdentity") == "replica-b" and s,
                      lease_duration / 2, "replica-b to take over the released lease")
    released = a.process is not None and a.process.returncode == 0
    assert released, "the leader stopped cleanly"
    apply_docs(testbed, namespace, [model("after-handover")])
    eventually(lambda: has_status(testbed, namespace, "after-handover"), 30, "the new leader to reconcile")
    assert spec["holderIdentity"] == "replica-b"

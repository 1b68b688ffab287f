"""Two replicas on one Lease: one leads and reconciles, the other stands by (healthy and ready)
and writes nothing; a killed leader is replaced within the lease duration plus a retry
period, never before its lease ran out; a cleanly stopped one hands over at once. The audit
log, which names each replica by its user agent, shows that no two replicas ever wrote
modelops objects in overlapping windows. The chart-installed operator that exits on a lost
Lease (an API server outage) is restarted by the node agent, leads again and reconciles, and
its pod is never reported running while its process is gone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from e2e.testbed import cluster
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


# -- the chart-installed operator through an API server outage -----------------------------------

CHART = Path(__file__).resolve().parents[2] / "charts" / "modelops"
INSTALL_TIMEOUT_S = 300
# The Lease is lost 4 s into the outage (renewDeadline); the outage lasts long enough for the
# operator to notice and exit while the API server is away.
OUTAGE_S = 15.0
# A status the node agent got wrong is corrected at its next report (it looks every 0.1 s);
# this bounds how long a stale report may take to reach `kubectl get`, not how fast it is.
CORRECTED_WITHIN_S = 10.0


def process_gone(pid: int) -> bool:
    """No such process, or one that exited and that nobody reaped (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def stale_claims(pods: list[dict[str, Any]], state_dir: Path) -> dict[tuple[str, str, str], str]:
    """Containers reported running whose process is gone or is not the one in the node agent's
    process table (its pid files), each with what is wrong."""
    claims = {}
    for pod in pods:
        uid, node = pod["metadata"]["uid"], pod["spec"].get("nodeName", "")
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if "running" not in (status.get("state") or {}):
                continue
            key = (pod["metadata"]["name"], status["name"], status.get("containerID", ""))
            pid = int(status.get("containerID", "modelops://0").removeprefix("modelops://") or 0)
            pidfile = state_dir / "nodes" / node / "pods" / uid / f"{status['name']}.pid"
            table = pidfile.read_text().strip() if pidfile.exists() else None
            if not pid or process_gone(pid):
                claims[key] = f"reported running as pid {pid}, which is gone"
            elif table != str(pid):
                claims[key] = f"reported running as pid {pid}; the node agent's table says {table}"
    return claims


class RunningWatch(threading.Thread):
    """For the whole test, `kubectl get pods` of one release, checked against the processes on
    this machine (the test bed's pods run here): a container reported running whose process is
    gone is a violation unless the next reports correct it."""

    def __init__(self, testbed: Any, namespace: str, selector: str) -> None:
        super().__init__(name="running-watch", daemon=True)
        self.testbed, self.namespace, self.selector = testbed, namespace, selector
        self.state_dir = Path(testbed.state_dir)
        self.done = threading.Event()
        self.polls = self.failed_polls = 0
        self.pending: dict[tuple[str, str, str], tuple[float, str]] = {}
        self.violations: list[str] = []
        self.restart_counts: set[int] = set()

    def run(self) -> None:
        while not self.done.wait(0.2):
            result = self.testbed.run_kubectl("get", "pods", "-n", self.namespace, "-l", self.selector, "-o", "json",
                                              check=False, timeout=10)
            if result.returncode != 0:
                self.failed_polls += 1  # the API server is away
                continue
            self.polls += 1
            pods = json.loads(result.stdout)["items"]
            self.restart_counts |= {s["restartCount"] for p in pods for s in (p.get("status") or {}).get("containerStatuses") or []}
            claims = stale_claims(pods, self.state_dir)
            now = time.monotonic()
            self.pending = {key: self.pending.get(key, (now, why)) for key, why in claims.items()}
            for key, (since, why) in list(self.pending.items()):
                if now - since >= CORRECTED_WITHIN_S:
                    self.violations.append(f"{key[0]}/{key[1]}: {why}, for {now - since:.0f} s")
                    del self.pending[key]

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)


def operator_pods(testbed: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
    return json.loads(testbed.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json"))["items"]


@pytest.mark.faults
def test_the_chart_operator_that_exits_on_a_lost_lease_is_restarted_and_leads_again(testbed: Any, namespace: str) -> None:
    release = "mo-" + namespace.rsplit("-", 1)[-1]  # unique: cluster-scoped RBAC objects carry this name
    fullname, selector = f"{release}-modelops", f"app.kubernetes.io/instance={release}"
    result = testbed.helm(
        "install", release, str(CHART), "--namespace", namespace, "--set", f"watchNamespaces={{{namespace}}}",
        "--set", "replicaCount=1", "--set", "leaderElection.leaseDurationSeconds=6",
        "--set", "leaderElection.renewDeadlineSeconds=4", "--set", "leaderElection.retryPeriodSeconds=1",
        "--wait", f"--timeout={INSTALL_TIMEOUT_S}s", timeout=INSTALL_TIMEOUT_S + 60)
    assert result.returncode == 0, result.stderr
    watch = RunningWatch(testbed, namespace, selector)
    try:
        (pod,) = operator_pods(testbed, namespace, selector)
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        eventually(lambda: lease_of(testbed, namespace, fullname).get("holderIdentity") == name, 60, "the operator to lead")
        apply_docs(testbed, namespace, [model("before")])
        eventually(lambda: has_status(testbed, namespace, "before"), 60, "the operator to reconcile before the outage")
        watch.start()

        layout = cluster.Layout.from_env()
        outage = datetime.now(UTC).replace(microsecond=0)  # startedAt has whole seconds
        cluster.stop_component(layout, "kube-apiserver")
        time.sleep(OUTAGE_S)  # the outage itself
        cluster.start_component(layout, "kube-apiserver")

        def restarted() -> dict[str, Any] | None:
            assert not watch.violations, "reported running with no process:\n" + "\n".join(watch.violations)
            (now,) = operator_pods(testbed, namespace, selector)
            (status,) = now["status"]["containerStatuses"]
            ready = {c["type"]: c["status"] for c in now["status"]["conditions"]}.get("Ready") == "True"
            return status if status["restartCount"] >= 1 and ready and now["metadata"]["uid"] == uid else None

        status = eventually(restarted, 120, "the node agent to restart the operator in the same pod, and it to be Ready")
        # The instance before exited as designed; the node agent recorded how.
        assert status["lastState"]["terminated"]["exitCode"] == 1, status
        assert "lost the leader lease; exiting" in testbed.kubectl("logs", name, "-n", namespace, "-c", "operator", "--previous")
        # It leads again: the Lease is renewed by the restarted instance, after the outage.
        started = micro(status["state"]["running"]["startedAt"])
        assert started >= outage, f"the running instance started at {started}, before the outage ({outage})"
        eventually(lambda: (spec := lease_of(testbed, namespace, fullname)).get("holderIdentity") == name
                   and micro(spec["renewTime"]) >= started, 60, "the restarted operator to renew the Lease")
        assert "leading as " + name in testbed.kubectl("logs", name, "-n", namespace, "-c", "operator")
        # And serves: a change made now is reconciled.
        apply_docs(testbed, namespace, [model("after")])
        eventually(lambda: has_status(testbed, namespace, "after"), 60, "the restarted operator to reconcile a new Model")
        # A rollout restart then replaces it: the old pod is stopped within its grace period (the
        # chart's default, 30 s) and removed, never left Terminating; its successor takes over.
        testbed.kubectl("rollout", "restart", f"deployment/{fullname}", "-n", namespace)
        testbed.kubectl("wait", "--for=delete", f"pod/{name}", "-n", namespace, "--timeout=90s")
        testbed.kubectl("rollout", "status", f"deployment/{fullname}", "-n", namespace, "--timeout=120s")
        (successor,) = operator_pods(testbed, namespace, selector)
        eventually(lambda: lease_of(testbed, namespace, fullname).get("holderIdentity") == successor["metadata"]["name"],
                   60, "the new pod to lead")
    finally:
        watch.stop()
        testbed.helm("uninstall", release, "--namespace", namespace, "--ignore-not-found", timeout=120)
        testbed.kubectl("delete", "clusterrole,clusterrolebinding", fullname, "--ignore-not-found", check=False)
    print(f"\nkubectl get pods: {watch.polls} answers, {watch.failed_polls} refused in the outage; "
          f"restart counts seen {sorted(watch.restart_counts)}")
    assert watch.failed_polls > 0 and watch.polls > 0, "the watch saw the outage and the pods on both sides of it"
    assert 0 in watch.restart_counts and max(watch.restart_counts) >= 1
    assert not watch.violations, "reported running with no process:\n" + "\n".join(watch.violations)
    assert not watch.pending, f"still reported running with no process at the end: {watch.pending}"


def lease_of(testbed: Any, namespace: str, name: str) -> dict[str, Any]:
    result = kubectl(testbed, "get", "lease", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout)["spec"] if result.returncode == 0 else {}

"""Faults, each asserted on the end state: kill -9s of the operator during a burst of creates
and rollouts, the API server stopped for 90 s, etcd stopped for 40 s. Afterwards there is exactly
one Job per ModelVersion that needs one and one Deployment and Service per ModelDeployment,
every status says what it should, and the operator converges soon after the fault ends.

Compression Jobs target no node and Triton Deployments have no replicas, so the faults meet
the operator's own work (status writes, child creation, template changes), not the load of
pods, except where a test says otherwise (MinIO outages, a crashing Triton pod). These
tests are marked `faults` and run with `make test-faults` (docs/testbed.md).
"""

from __future__ import annotations

import queue
import random
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from e2e.testbed import cluster
from tests.integration.conftest import (
    NOWHERE,
    OperatorProcess,
    Storage,
    apply_docs,
    digits_model_manifest,
    digits_version_manifest,
    eventually,
    get_json,
    kubectl,
    publish_cached,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SEED = 20261202




def deployment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
        "spec": {"model": "digits", "replicas": 0, "triton": {"backend": "python"},
                 "scheduling": {"nodeSelector": NOWHERE}, **spec},
    }


class Scenario:
    """Versions 1..n: the odd ones come from the compression cache (Ready at once), the even
    ones wait for a node that does not exist (Compressing, with a Job). Deployments: half
    Latest, half Pinned to a cached version."""

    def __init__(self, storage: Storage, versions: int, deployments: int) -> None:
        self.model = digits_model_manifest(storage, NOWHERE)
        self.versions = []
        for number in range(1, versions + 1):
            doc = digits_version_manifest(storage, number, storage.put(f"digits/{number}/model.onnx", f"artifact {number}".encode()))
            if number % 2:
                publish_cached(storage, self.model, doc, f"compressed {number}".encode())
            self.versions.append(doc)
        self.cached = [n for n in range(1, versions + 1) if n % 2]
        self.pinned: dict[str, int] = {}
        self.deployments = []
        for index in range(deployments):
            name = f"serve-{index}"
            if index % 2:
                self.pinned[name] = self.cached[index % len(self.cached)]
                self.deployments.append(deployment(name, versionPolicy="Pinned", version=self.pinned[name]))
            else:
                self.deployments.append(deployment(name))

    def problems(self, testbed: Any, namespace: str) -> list[str]:
        """What still differs from the converged end state; empty when converged."""
        found: list[str] = []
        versions = {v["metadata"]["name"]: v for v in get_json(testbed, namespace, "modelversions")["items"]}
        for doc in self.versions:
            name, number = doc["metadata"]["name"], doc["spec"]["version"]
            status = versions.get(name, {}).get("status") or {}
            want = "Ready" if number in self.cached else "Compressing"
            if status.get("phase") != want:
                found.append(f"{name}: phase {status.get('phase')}, want {want}")
        jobs_of: dict[str, list[str]] = {}
        for job in get_json(testbed, namespace, "jobs")["items"]:
            for ref in job["metadata"].get("ownerReferences", []):
                jobs_of.setdefault(ref["name"], []).append(job["metadata"]["name"])
        for doc in self.versions:
            name = doc["metadata"]["name"]
            want_jobs = 0 if doc["spec"]["version"] in self.cached else 1
            if len(jobs_of.get(name, [])) != want_jobs:
                found.append(f"{name}: Jobs {jobs_of.get(name, [])}, want {want_jobs}")
            elif want_jobs and (versions.get(name, {}).get("status") or {}).get("jobName") != jobs_of[name][0]:
                found.append(f"{name}: status.jobName does not name its Job {jobs_of[name][0]}")
        latest = max(self.cached)
        served = {d["metadata"]["name"]: d for d in get_json(testbed, namespace, "modeldeployments")["items"]}
        children = get_json(testbed, namespace, "deployments,services")["items"]
        for doc in self.deployments:
            name = doc["metadata"]["name"]
            live = served.get(name, {})
            status = live.get("status") or {}
            want = self.pinned.get(name, latest)
            if status.get("desiredVersion") != want:
                found.append(f"{name}: desiredVersion {status.get('desiredVersion')}, want {want}")
            if status.get("observedGeneration") != live.get("metadata", {}).get("generation"):
                found.append(f"{name}: observedGeneration {status.get('observedGeneration')} is behind")
            owned = sorted(c["kind"] for c in children
                           if [r["name"] for r in c["metadata"].get("ownerReferences", [])] == [name])
            if owned != ["Deployment", "Service"]:
                found.append(f"{name}: owns {owned}, want one Deployment and one Service")
            template = next((c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == name), None)
            if template is not None:
                served_version = template["spec"]["template"]["metadata"]["annotations"].get("modelops.dev/version")
                if served_version != str(want):
                    found.append(f"{name}: Deployment template at version {served_version}, want {want}")
        return found

    def repin(self, name: str, number: int) -> dict[str, Any]:
        """A rollout: move a Pinned deployment to another cached version."""
        self.pinned[name] = number
        return deployment(name, versionPolicy="Pinned", version=number)


def converge(testbed: Any, namespace: str, scenario: Scenario, timeout: float, what: str) -> float:
    """Seconds until the scenario's end state holds."""
    started, last = time.monotonic(), [""]

    def converged() -> bool:
        last[:] = scenario.problems(testbed, namespace)
        return not last

    try:
        eventually(converged, timeout, what, interval=1)
    except AssertionError:
        raise AssertionError(f"no convergence after {timeout:.0f} s: {last}") from None
    return time.monotonic() - started


class NewJobs:
    """`kubectl get jobs --watch-only`: the name of each new Job as soon as the API server has it."""

    def __init__(self, testbed: Any, namespace: str) -> None:
        self.process = subprocess.Popen(
            [testbed.kubectl_path, f"--kubeconfig={testbed.kubeconfig}", "get", "jobs", "-n", namespace,
             "--watch-only", "-o", "name"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )
        self.events: queue.Queue[str] = queue.Queue()
        self.seen: set[str] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(line.strip())

    def wait_new(self, timeout: float) -> str | None:
        """The next Job not seen before, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                name = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if name not in self.seen:
                self.seen.add(name)
                return name
        return None

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def test_fifty_kill9s_during_a_burst_leave_exactly_one_child_each_and_converge(
    testbed: Any, namespace: str, storage: Storage, start_operator: Callable[..., OperatorProcess]
) -> None:
    rng = random.Random(SEED)
    scenario = Scenario(storage, versions=16, deployments=8)
    apply_docs(testbed, namespace, [storage.secret("storage"), scenario.model])
    operator = start_operator()
    # The burst: creates in small batches, and rollouts of the pinned deployments, while the
    # operator is killed at random moments. A batch with a version that needs a Job is
    # killed as soon as that Job appears: the operator is then between creating the Job and
    # recording it in the version's status, where a create that is not idempotent across
    # restarts leaves a second Job (random moments rarely land in that window).
    pending = scenario.versions + scenario.deployments
    rng.shuffle(pending)
    pinned = sorted(scenario.pinned)
    kills = on_create = 0
    new_jobs = NewJobs(testbed, namespace)
    try:
        while kills < 50:
            batch, pending = pending[:2], pending[2:]
            if batch:
                apply_docs(testbed, namespace, batch)
            elif kills % 3 == 0:
                name = rng.choice(pinned)
                apply_docs(testbed, namespace, [scenario.repin(name, rng.choice(scenario.cached))])
            needs_job = any(d["kind"] == "ModelVersion" and d["spec"]["version"] not in scenario.cached for d in batch)
            if needs_job and new_jobs.wait_new(timeout=30) is not None:
                on_create += 1
            else:
                time.sleep(rng.uniform(0.05, 1.5))
            operator.kill()
            kills += 1
            operator = start_operator()
    finally:
        new_jobs.close()
    seconds = converge(testbed, namespace, scenario, 120, "convergence after the last restart")
    print(f"\n{kills} kill -9s ({on_create} as a Job appeared); converged {seconds:.1f} s after the last restart")
    assert on_create >= 4, f"only {on_create} kills came as a Job appeared"
    assert operator.process is not None and operator.process.poll() is None


def stop_for(component: str, seconds: float) -> None:
    layout = cluster.Layout.from_env()
    cluster.stop_component(layout, component)
    time.sleep(seconds)  # the outage itself
    cluster.start_component(layout, component)


# etcd stays away longer than the API server's storage timeout (about 34 s), so requests in
# flight fail with 504 instead of merely waiting, and the operator has to retry them.
@pytest.mark.parametrize(("component", "outage"), [("kube-apiserver", 90.0), ("etcd", 40.0)])
def test_a_control_plane_outage_mid_burst_converges_soon_after_it_ends(
    testbed: Any, namespace: str, storage: Storage, start_operator: Callable[..., OperatorProcess],
    component: str, outage: float,
) -> None:
    scenario = Scenario(storage, versions=10, deployments=6)
    apply_docs(testbed, namespace, [storage.secret("storage"), scenario.model])
    operator = start_operator()
    half = len(scenario.versions) // 2
    apply_docs(testbed, namespace, scenario.versions[:half] + scenario.deployments[:3])
    outage_thread = threading.Thread(target=stop_for, args=(component, outage))
    outage_thread.start()
    outage_thread.join()
    # Whatever the operator did during the outage, it is either still running or it exited;
    # a kubelet would restart it, and so do we.
    restarted = operator.process is not None and operator.process.poll() is not None
    if restarted:
        operator = start_operator()
    apply_docs(testbed, namespace, scenario.versions[half:] + scenario.deployments[3:])
    seconds = converge(testbed, namespace, scenario, 60, f"convergence after the {component} came back")
    print(f"\n{component} down {outage:.0f} s; operator {'restarted' if restarted else 'kept running'}; "
          f"converged {seconds:.1f} s after it came back")
    # The API server's own etcd check may lag the outage's end by a few seconds.
    eventually(lambda: kubectl(testbed, "get", "--raw", "/readyz", check=False).stdout.strip() == "ok", 30,
               "the API server to report ready")


def served_digits(storage: Storage, digits: Any) -> list[dict[str, Any]]:
    """Two real digits versions from the compression cache and a deployment pinned to v1 with
    one Triton pod (python backend, on the CPU node)."""
    served_model = digits_model_manifest(storage, NOWHERE)
    served_model["spec"]["versionDefaults"] = {"scheduling": {"gpus": 0}}
    docs = [storage.secret("storage"), served_model]
    for number in (1, 2):
        doc = digits_version_manifest(storage, number, storage.put(f"digits/{number}/model.onnx", digits.onnx[number - 1]))
        publish_cached(storage, served_model, doc, digits.onnx[number - 1])
        docs.append(doc)
    docs.append({
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
        "spec": {"model": "digits", "versionPolicy": "Pinned", "version": 1, "replicas": 1,
                 "triton": {"backend": "python"}},
    })
    return docs


def repinned(server: dict[str, Any], number: int) -> dict[str, Any]:
    return {**server, "spec": {**server["spec"], "version": number}}


def deployment_status(testbed: Any, namespace: str) -> dict[str, Any]:
    return get_json(testbed, namespace, "modeldeployment", "digits").get("status") or {}


def condition(testbed: Any, namespace: str, kind: str) -> dict[str, Any]:
    return next((c for c in deployment_status(testbed, namespace).get("conditions", []) if c["type"] == kind), {})


def template_version(testbed: Any, namespace: str) -> str | None:
    annotations = get_json(testbed, namespace, "deployment", "digits")["spec"]["template"]["metadata"]["annotations"]
    return annotations.get("modelops.dev/version")


def test_the_standby_finishes_a_rollout_whose_leader_was_killed(
    testbed: Any, namespace: str, storage: Storage, digits: Any, start_operator: Callable[..., OperatorProcess]
) -> None:
    from tests.integration.test_operator_ha import grant_leases, holder

    docs = served_digits(storage, digits)
    grant_leases(testbed, namespace)
    lease = {"leader_election": "true", "leader_election_namespace": namespace, "lease_duration_seconds": "4",
             "lease_renew_deadline_seconds": "3", "lease_retry_period_seconds": "1"}
    leader = start_operator(leader_election_identity="replica-a", **lease)
    eventually(lambda: holder(testbed, namespace) == "replica-a", 30, "replica-a to lead")
    start_operator(leader_election_identity="replica-b", **lease)
    apply_docs(testbed, namespace, docs)
    eventually(lambda: deployment_status(testbed, namespace).get("servedVersion") == 1, 300, "version 1 to be served")

    apply_docs(testbed, namespace, [repinned(docs[-1], 2)])
    # The leader starts the rollout (the Deployment's template moves to version 2), then dies.
    eventually(lambda: template_version(testbed, namespace) == "2", 60, "the leader to start the rollout")
    leader.kill()
    eventually(lambda: holder(testbed, namespace) == "replica-b", 30, "replica-b to take over",
               detail=lambda: f"the Lease is held by {holder(testbed, namespace)!r}")
    eventually(lambda: deployment_status(testbed, namespace).get("servedVersion") == 2, 300,
               "the standby to finish the rollout")
    status = deployment_status(testbed, namespace)
    assert status["rollouts"][-1]["version"] == 2 and status["rollouts"][-1]["outcome"] == "Succeeded"
    assert condition(testbed, namespace, "Ready")["status"] == "True"


def fetch_states(testbed: Any, namespace: str) -> dict[str, Any]:
    """Each pod's fetch init container: its state and its last state."""
    pods = get_json(testbed, namespace, "pods", "-l", "app.kubernetes.io/instance=digits")["items"]
    return {p["metadata"]["name"]: [(s.get("state"), s.get("lastState")) for s in p["status"].get("initContainerStatuses", [])]
            for p in pods}


def ready_pods(testbed: Any, namespace: str) -> list[dict[str, Any]]:
    pods = get_json(testbed, namespace, "pods", "-l", "app.kubernetes.io/instance=digits")["items"]
    return [p for p in pods if {c["type"]: c["status"] for c in p["status"].get("conditions", [])}.get("Ready") == "True"]


def test_minio_down_during_a_model_fetch_keeps_the_old_version_serving_then_recovers(
    testbed: Any, namespace: str, storage: Storage, digits: Any, start_operator: Callable[..., OperatorProcess]
) -> None:
    docs = served_digits(storage, digits)
    start_operator()
    apply_docs(testbed, namespace, docs)
    eventually(lambda: deployment_status(testbed, namespace).get("servedVersion") == 1, 300, "version 1 to be served")
    (old_pod,) = ready_pods(testbed, namespace)

    testbed.stop_minio()
    try:
        apply_docs(testbed, namespace, [repinned(docs[-1], 2)])

        def fetch_failed() -> bool:
            pods = get_json(testbed, namespace, "pods", "-l", "app.kubernetes.io/instance=digits")["items"]
            return any(s.get("restartCount", 0) >= 1 or "terminated" in (s.get("lastState") or {})
                       for p in pods for s in p["status"].get("initContainerStatuses", []))

        eventually(fetch_failed, 120, "the new pod's model fetch to fail while storage is down",
                   detail=lambda: f"fetch containers: {fetch_states(testbed, namespace)}")
        # Nothing that should not be served is: the old pod keeps serving version 1.
        assert [p["metadata"]["name"] for p in ready_pods(testbed, namespace)] == [old_pod["metadata"]["name"]]
        assert deployment_status(testbed, namespace).get("servedVersion") == 1
        assert condition(testbed, namespace, "Progressing").get("status") == "True"
    finally:
        testbed.start_minio()
    eventually(lambda: deployment_status(testbed, namespace).get("servedVersion") == 2, 300,
               "the rollout to finish once storage is back")
    assert condition(testbed, namespace, "Ready")["status"] == "True"


def test_a_triton_pod_that_crashes_after_ready_is_degraded_then_heals(
    testbed: Any, namespace: str, storage: Storage, digits: Any, start_operator: Callable[..., OperatorProcess]
) -> None:
    import os
    import signal

    docs = served_digits(storage, digits)
    start_operator()
    apply_docs(testbed, namespace, docs)
    eventually(lambda: condition(testbed, namespace, "Ready").get("status") == "True", 300, "version 1 to be Ready")
    (pod,) = ready_pods(testbed, namespace)
    (triton,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == "triton"]
    os.killpg(int(triton["containerID"].removeprefix("modelops://")), signal.SIGKILL)

    degraded = eventually(lambda: (c := condition(testbed, namespace, "Degraded")).get("status") == "True" and c,
                          60, "the deployment to report Degraded",
                          detail=lambda: f"Degraded is {condition(testbed, namespace, 'Degraded')}")
    print(f"\nDegraded: {degraded['reason']}: {degraded['message']}")
    assert degraded["reason"] not in ("AsExpected", "")
    eventually(lambda: condition(testbed, namespace, "Ready").get("status") == "True"
               and condition(testbed, namespace, "Degraded").get("status") == "False", 300,
               "the deployment to heal once Triton restarted")


def test_minio_down_during_compression_is_a_condition_serves_nothing_new_then_recovers(
    testbed: Any, namespace: str, storage: Storage, digits: Any, start_operator: Callable[..., OperatorProcess]
) -> None:
    """Version 1 is served (Latest); version 2 is compressed by a real Job, and MinIO dies as
    its pod starts. Version 2 says that its Job retries on unreachable storage, the deployment
    keeps serving version 1 and nothing else, and once MinIO is back version 2 is compressed
    and rolled out."""
    from tests.integration.test_compression_lifecycle import (
        EXIT_TRANSIENT,
        exit_codes,
        job_pods,
        node_gate,
        open_gate,
        status_of,
        upload_version,
        wait_job_pending,
    )
    from tests.integration.test_compression_lifecycle import condition as version_condition

    docs = served_digits(storage, digits)
    *base, v2, server = docs
    latest = {**server, "spec": {k: v for k, v in server["spec"].items() if k != "version"} | {"versionPolicy": "Latest"}}
    start_operator(job_backoff_limit=3)
    apply_docs(testbed, namespace, [*base, latest])
    eventually(lambda: deployment_status(testbed, namespace).get("servedVersion") == 1, 300, "version 1 to be served")
    (old_pod,) = ready_pods(testbed, namespace)

    # Version 2 is not in the cache: a fresh artifact, compressed by a real Job on the gated GPU node.
    uri, sha, _ = upload_version(storage, digits, namespace, 2, seed=1)
    v2 = {**v2, "spec": {**v2["spec"], "artifact": {**v2["spec"]["artifact"], "uri": uri, "sha256": sha}}}
    with node_gate(testbed, namespace) as selector:
        v2["spec"]["scheduling"] = {"nodeSelector": selector, "gpus": 1}
        apply_docs(testbed, namespace, [v2])
        job = wait_job_pending(testbed, namespace, "digits-v2")["jobName"]
        testbed.stop_minio()
        try:
            open_gate(testbed, namespace)
            eventually(lambda: EXIT_TRANSIENT in exit_codes(job_pods(testbed, namespace, job)), 300,
                       "the compressor to give up on storage with the transient exit code")
            retrying = eventually(
                lambda: version_condition(s := status_of(testbed, namespace, "digits-v2"), "Ready")["reason"] == "JobRetrying" and s,
                60, "version 2 to say that its Job retries",
                detail=lambda: f"version 2 is {(s := status_of(testbed, namespace, 'digits-v2')).get('phase')}: "
                               f"{[(c['type'], c.get('reason'), c.get('message')) for c in s.get('conditions') or []]}",
            )
            message = version_condition(retrying, "Ready")["message"]
            print(f"\nwhile MinIO is down: {retrying['phase']}: {message}")
            assert retrying["phase"] == "Compressing" and "StorageUnreachable" in message, message
            # Nothing that should not be served is: version 1 only, on the pod that served it.
            status = deployment_status(testbed, namespace)
            assert (status.get("desiredVersion"), status.get("servedVersion")) == (1, 1), status
            assert [p["metadata"]["name"] for p in ready_pods(testbed, namespace)] == [old_pod["metadata"]["name"]]
            assert template_version(testbed, namespace) == "1"
        finally:
            testbed.start_minio()
        eventually(lambda: status_of(testbed, namespace, "digits-v2").get("phase") == "Ready", 600,
                   "version 2 to be compressed once MinIO is back")
    eventually(lambda: deployment_status(testbed, namespace).get("servedVersion") == 2, 300, "version 2 to be rolled out")
    assert condition(testbed, namespace, "Ready")["status"] == "True"
    assert exit_codes(job_pods(testbed, namespace, job))[-1] == 0

"""Retry after a fix, as a newcomer meets it: the first rollout fails because the test bed's
Triton has no onnxruntime backend, a retry without a fix fails again on its own deadline, and
the fix (spec.triton.backend: python) is served with no delete: with a retry on Latest, and
on Pinned by the spec change alone (nothing was served, so the change is a new attempt).
"""

from __future__ import annotations

import json

import pytest

from e2e import lifecycle as lc
from e2e.support import eventually as wait_for

pytestmark = pytest.mark.e2e

DEADLINE = 20
NAMES = ("digits-latest", "digits-pinned")


@pytest.fixture(scope="module")
def bed(testbed):
    with lc.serving_namespace(testbed, "e2e-retry") as ns:
        testbed.apply(ns.namespace, [lc.version_manifest(1, ns.model_uri, ns.model_sha)])
        yield {"cluster": testbed, "namespace": ns.namespace}


def status(bed, name: str) -> dict:
    return bed["cluster"].get(bed["namespace"], "modeldeployment", name).get("status", {})


def outcomes(bed, name: str) -> list[str]:
    return [r["outcome"] for r in status(bed, name).get("rollouts") or []]


def degraded(bed, name: str) -> dict:
    return next(c for c in status(bed, name)["conditions"] if c["type"] == "Degraded")


def annotate(bed, name: str, value: str) -> None:
    bed["cluster"].kubectl("annotate", "modeldeployment", name, "-n", bed["namespace"],
                           f"modelops.dev/retry={value}", "--overwrite")


def test_retry_after_fixing_the_backend_serves_without_a_delete(bed):
    cluster, namespace = bed["cluster"], bed["namespace"]
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "modelversion/digits-v1", "--timeout=300s", timeout=330)
    manifests = []
    for name in NAMES:
        md = lc.deployment_manifest(name, pinned=1 if name.endswith("pinned") else None, progress_deadline=DEADLINE)
        md["spec"]["triton"]["backend"] = "onnxruntime"  # the samples' backend; the test bed's Triton lacks it
        manifests.append(md)
    cluster.apply(namespace, manifests)

    # 1. The first rollout fails: nothing was ever served, and the pods' cause is named.
    for name in NAMES:
        wait_for(lambda name=name: outcomes(bed, name) == ["RolledBack"], 240, f"{name}'s first rollout to fail")
        message = degraded(bed, name)["message"]
        print(f"{name} Degraded: {message}")
        assert "nothing was ever served" in message and "rolled back; serving" not in message, message
        cause = status(bed, name)["rollouts"][-1].get("message") or ""
        assert "container triton" in cause and "spec.triton" in cause, cause
    events = cluster.get(namespace, "events", "--field-selector", "reason=RolledBack")["items"]
    assert events and all("rolling back to" not in e["message"] for e in events), [e["message"] for e in events]

    # 2. A retry without a fix is a new attempt, judged on its own deadline, and fails again.
    for name in NAMES:
        annotate(bed, name, "1")
    for name in NAMES:
        wait_for(lambda name=name: outcomes(bed, name) == ["RolledBack", "RolledBack"], 240,
                 f"{name}'s retried rollout to fail on its own")
        assert status(bed, name)["failedVersions"] == [1]

    # 3. The fix: the Deployment is rendered again from the current spec and served. Latest
    #    gets the fix and a retry, as docs/api.md says; Pinned only the fix, which is a new
    #    attempt by itself while nothing is served.
    for name in NAMES:
        cluster.kubectl("patch", "modeldeployment", name, "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"triton": {"backend": "python"}}}))
    annotate(bed, "digits-latest", "2")
    for name in NAMES:
        cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"modeldeployment/{name}",
                        "--timeout=240s", timeout=270)
        md = status(bed, name)
        assert md["servedVersion"] == 1 and "failedVersions" not in md, md
        assert md["lastRetry"] == ("2" if name == "digits-latest" else "1")
        assert outcomes(bed, name) == ["RolledBack", "RolledBack", "Succeeded"]
        deployment = cluster.get(namespace, "deployment", name)
        config = next(e["value"] for c in deployment["spec"]["template"]["spec"]["initContainers"]
                      for e in c.get("env", []) if e["name"] == "MODELOPS_TRITON_CONFIG")
        assert 'backend: "python"' in config, config
    assert lc.ready_server_ips(cluster, namespace, "digits-latest")

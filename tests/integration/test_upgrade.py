"""An upgrade of the operator from the last release (LAST_RELEASE) to HEAD restarts no model.

The release's chart and CRDs (`git archive` of LAST_RELEASE) install the release's operator,
which serves three deployments of the digits model, each on real Triton pods: one pinned, one
autoscaled by the operator, and one whose canary of version 2 is in progress (it waits for
requests). The upgrade is the one the chart's NOTES tell users: HEAD's CRDs server-side, then
`helm upgrade` to HEAD's chart, whose operator image has another tag, as a new release has.
Afterwards the same Triton pods run (same UIDs, no restart), no pod template changed, the
statuses are kept, no version is compressed again, and the canary finishes under HEAD's
operator, whose new pods get HEAD's fetcher.

The test bed has no registry: an operator image whose tag `make images` did not build runs in
the project's Python environment with the checkout at /app (e2e/nodeagent/images.py), so the
release's operator runs its own code from the release's tree under build/ (PYTHONPATH, set with
the chart's extraEnv). The Triton pods' fetcher runs the checkout's code either way.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2e import lifecycle as lc
from e2e import support
from e2e.loadgen import InferenceCall, run_load
from e2e.nodeagent.images import PROJECT_MOUNT
from tests import crdcompat
from tests.integration.canaryload import publish_versions, serve
from tests.integration.conftest import ROOT, Storage, apply_docs, eventually, get_json, kubectl
from tests.integration.test_helm_chart import INSTALL_TIMEOUT_S, LEASE_SETTINGS, helm_ok

pytestmark = pytest.mark.integration

PINNED, AUTO, CANARY = "digits", "auto", "serve"
DEPLOYMENTS = (PINNED, AUTO, CANARY)
KEPT = ("desiredVersion", "servedVersion", "previousVersion", "failedVersions", "rollouts", "endpoints")
CANARY_KEPT = ("version", "phase", "step")
STEPS = [{"weight": 50, "pause": "1s"}]
# The canary waits for requests: it is still in progress at the upgrade, and finishes after it.
ANALYSIS = {"minRequests": 20, "interval": "2s", "maxErrorRatio": 0.01}
SERVED_TIMEOUT_S = 600


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    """The release's tree (operator/, charts/) where the node agent's pods see it: /app/build/..."""
    commit = crdcompat.last_release()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "operator", "charts"],
                             check=True, capture_output=True).stdout
    tree = ROOT / "build" / f"upgrade-{tmp_path.name}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    yield tree
    subprocess.run(["rm", "-rf", str(tree)], check=False)


def deployments(storage: Storage, digits: Any) -> list[dict[str, Any]]:
    model, versions = publish_versions(storage, digits, count=2)  # cache hits: no compression Job runs
    pinned = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": PINNED},
              "spec": {"model": "digits", "versionPolicy": "Pinned", "version": 1, "replicas": 1,
                       "triton": {"backend": "python"}}}
    auto = {**pinned, "metadata": {"name": AUTO},
            "spec": {"model": "digits", "versionPolicy": "Pinned", "version": 1, "triton": {"backend": "python"},
                     "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "inferences-per-second", "target": 1000}}}
    canary = serve(1, STEPS, ANALYSIS, progress_deadline=1800)
    canary["spec"] |= {"versionPolicy": "Pinned", "version": 1}
    return [storage.secret("storage"), model, versions[1], versions[2], pinned, auto, canary]


def status_of(testbed: Any, namespace: str, name: str) -> dict[str, Any]:
    return get_json(testbed, namespace, "modeldeployment", name).get("status") or {}


def ready(status: dict[str, Any]) -> bool:
    return {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready") == "True"


def serving_v1(testbed: Any, namespace: str) -> bool:
    return all(status_of(testbed, namespace, name).get("servedVersion") == 1 and ready(status_of(testbed, namespace, name))
               and status_of(testbed, namespace, name).get("readyReplicas") == 1 for name in DEPLOYMENTS)


def canary_waiting(testbed: Any, namespace: str) -> bool:
    canary = status_of(testbed, namespace, CANARY).get("canary") or {}
    if canary.get("version") != 2 or canary.get("phase") != "Progressing" or not canary.get("lastAnalysis"):
        return False  # not analysed yet: then it waits for requests
    pods = get_json(testbed, namespace, "pods", "-l", "modelops.dev/track=canary")["items"]
    return any({c["type"]: c["status"] for c in (p.get("status") or {}).get("conditions", [])}.get("Ready") == "True"
               for p in pods)


def pods(testbed: Any, namespace: str, name: str) -> list[tuple[str, int]]:
    """(UID, restarts) of every Triton pod of a ModelDeployment, its canary's included."""
    found = get_json(testbed, namespace, "pods", "-l", f"app.kubernetes.io/instance={name}")["items"]
    return sorted((p["metadata"]["uid"], sum(s.get("restartCount", 0) for s in p["status"].get("containerStatuses", [])))
                  for p in found)


def templates(testbed: Any, namespace: str, name: str) -> dict[str, Any]:
    found = get_json(testbed, namespace, "deployments", "-l", f"app.kubernetes.io/instance={name}")["items"]
    return {d["metadata"]["name"]: d["spec"]["template"] for d in found}


def snapshot(testbed: Any, namespace: str) -> dict[str, Any]:
    """What an upgrade must keep: pods (UIDs and restarts), pod templates, statuses, no Jobs."""
    kept: dict[str, Any] = {"jobs": [j["metadata"]["name"] for j in get_json(testbed, namespace, "jobs")["items"]]}
    for name in DEPLOYMENTS:
        status = status_of(testbed, namespace, name)
        kept[name] = {"pods": pods(testbed, namespace, name), "templates": templates(testbed, namespace, name),
                      "status": {k: status.get(k) for k in KEPT},
                      "conditions": sorted((c["type"], c["status"], c["reason"]) for c in status.get("conditions", [])),
                      "canary": {k: (status.get("canary") or {}).get(k) for k in CANARY_KEPT}}
    for version in ("digits-v1", "digits-v2"):
        status = get_json(testbed, namespace, "modelversion", version)["status"]
        kept[version] = {k: status.get(k) for k in ("phase", "compressedArtifact", "jobName")}
    return kept


def reconciled_by_head(testbed: Any, namespace: str) -> bool:
    """status.availableReplicasHighWater is new since the release: only HEAD's operator writes it
    (on the served deployments; a canary's leaves it unset)."""
    return all(status_of(testbed, namespace, name).get("availableReplicasHighWater") is not None for name in (PINNED, AUTO))


def last_analysis(testbed: Any, namespace: str) -> str | None:
    return ((status_of(testbed, namespace, CANARY).get("canary") or {}).get("lastAnalysis") or {}).get("time")


def release_operator_gone(testbed: Any, namespace: str, image: str) -> bool:
    found = get_json(testbed, namespace, "pods", "-l", "app.kubernetes.io/name=modelops")["items"]
    return bool(found) and all(c["image"] != image for p in found for c in p["spec"]["containers"])


def fetch_images(template: dict[str, Any]) -> set[str]:
    return {c["image"] for c in template["spec"].get("initContainers", []) if c["name"] == "fetch"}


@pytest.mark.timeout(2400)
def test_an_upgrade_from_the_last_release_restarts_no_triton_pod(
    testbed: Any, namespace: str, storage: Storage, digits: Any, release: Path
) -> None:
    name = "mo-" + namespace.rsplit("-", 1)[-1]  # unique: cluster-scoped RBAC objects carry this name
    fullname = f"{name}-modelops"
    release_image = f"ghcr.io/modelops/modelops-operator:release-{crdcompat.last_release()[:12]}"
    common = ("--namespace", namespace, "--set", f"watchNamespaces={{{namespace}}}", "--set", "operator.retrySeconds=2",
              *LEASE_SETTINGS, "--wait", f"--timeout={INSTALL_TIMEOUT_S}s")
    try:
        # -- the last release, as it was installed --------------------------------------------------
        kubectl(testbed, "apply", "--server-side", "--force-conflicts", "-f", str(release / "charts" / "modelops" / "crds"))
        helm_ok(testbed, "install", name, str(release / "charts" / "modelops"), "--skip-crds", *common,
                "--set", f"image.tag={release_image.rsplit(':', 1)[1]}",
                "--set-json", f'extraEnv=[{{"name":"PYTHONPATH","value":"{PROJECT_MOUNT}/build/{release.name}/operator"}}]',
                timeout=INSTALL_TIMEOUT_S + 60)
        apply_docs(testbed, namespace, deployments(storage, digits))
        eventually(lambda: serving_v1(testbed, namespace), SERVED_TIMEOUT_S, "the release's operator to serve version 1")
        kubectl(testbed, "patch", "-n", namespace, f"modeldeployment/{CANARY}", "--type=merge", "-p", '{"spec":{"version":2}}')
        eventually(lambda: canary_waiting(testbed, namespace), SERVED_TIMEOUT_S, "the canary of version 2 to wait for requests")
        assert not reconciled_by_head(testbed, namespace) and last_analysis(testbed, namespace) is not None
        before = snapshot(testbed, namespace)
        assert before["jobs"] == [] and all(fetch_images(t) == {release_image}
                                            for n in DEPLOYMENTS for t in before[n]["templates"].values())

        # -- the upgrade, as the chart's NOTES tell it ----------------------------------------------
        kubectl(testbed, "apply", "--server-side", "-f", str(ROOT / "charts" / "modelops" / "crds"))
        helm_ok(testbed, "upgrade", name, str(ROOT / "charts" / "modelops"), *common, timeout=INSTALL_TIMEOUT_S + 60)
        operator = get_json(testbed, namespace, "deployment", fullname)["spec"]["template"]["spec"]["containers"][0]
        assert operator["image"] != release_image and not any(e["name"] == "PYTHONPATH" for e in operator.get("env", []))
        eventually(lambda: release_operator_gone(testbed, namespace, release_image), 120, "the release's operator pod to be gone")
        analysed = last_analysis(testbed, namespace)
        eventually(lambda: reconciled_by_head(testbed, namespace), 120, "HEAD's operator to reconcile the served deployments")
        # The canary's analysis is written at each interval: a new one is HEAD's.
        eventually(lambda: last_analysis(testbed, namespace) != analysed, 120, "HEAD's operator to analyse the canary")
        assert all(ready(status_of(testbed, namespace, n)) for n in (PINNED, AUTO)), "the served deployments still Ready"
        after = snapshot(testbed, namespace)
        for deployment in DEPLOYMENTS:
            assert after[deployment]["pods"] == before[deployment]["pods"], f"{deployment}: Triton pods replaced or restarted"
            assert after[deployment]["templates"] == before[deployment]["templates"], f"{deployment}: a pod template changed"
            assert after[deployment]["status"] == before[deployment]["status"], f"{deployment}: its status changed"
            assert after[deployment]["canary"] == before[deployment]["canary"], f"{deployment}: its canary changed"
            assert after[deployment]["conditions"] == before[deployment]["conditions"], f"{deployment}: its conditions changed"
        assert after == before  # no Job: no version compressed again; the versions as they were
        kept = {n: after[n]["pods"] for n in DEPLOYMENTS}
        print(f"\nupgraded {release_image} -> {operator['image']}; Triton pods (UID, restarts) before and after: {kept}")

        # -- the canary finishes under HEAD's operator ----------------------------------------------
        endpoints = lc.ServiceEndpoints(testbed.kubeconfig, namespace, CANARY)
        try:
            eventually(lambda: len(endpoints()) == 2, 120, "the stable and the canary pod behind the Service")
            inputs = np.load(support.digits_model(0).eval_npz)["inputs"][:1].astype(np.float32)
            call = InferenceCall(model_name="digits", inputs={"input": inputs}, outputs=["logits"])
            report = run_load(endpoints, call, requests=200, concurrency=4, time_limit_s=60, request_timeout_s=10)
        finally:
            endpoints.stop()
        assert report.failures == 0 and report.requests == 200
        eventually(lambda: (status_of(testbed, namespace, CANARY).get("canary") or {}).get("phase") == "Promoted"
                   and status_of(testbed, namespace, CANARY).get("servedVersion") == 2, 300, "the canary promoted")
        stable = get_json(testbed, namespace, "deployment", CANARY)["spec"]["template"]
        assert fetch_images(stable) == {operator["image"]}, "the promoted pods run HEAD's fetcher"
        assert [j["metadata"]["name"] for j in get_json(testbed, namespace, "jobs")["items"]] == []
    finally:
        testbed.helm("uninstall", name, "--namespace", namespace, "--ignore-not-found", timeout=120)
        kubectl(testbed, "delete", "clusterrole,clusterrolebinding", fullname, "--ignore-not-found", check=False)
        # Later tests run on HEAD's CRDs.
        kubectl(testbed, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))

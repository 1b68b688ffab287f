"""The reconcilers against a small fake of the Kubernetes client (tests/unit/fakekube.py): the
branches that the test bed reaches only slowly, and who writes which field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modelops import kube as k8s
from modelops.api.deployment import ModelDeploymentSpec
from modelops.api.model import ModelSpec
from modelops.core import naming, render
from modelops.core.conditions import find
from modelops.core.objects import OwnerRef, VersionView
from modelops.handlers.deployments import reconcile_deployment
from modelops.handlers.models import reconcile_model
from modelops.handlers.queue import Key
from modelops.handlers.versions import reconcile_version
from tests.unit.fakekube import FakeKube, context, refill

pytestmark = pytest.mark.unit

NS = "ns"
SHA = "0" * 64
MODEL_SPEC: dict[str, Any] = {
    "storage": {"endpoint": "https://minio.example:9000", "bucket": "models", "credentialsSecret": {"name": "creds"}},
    "signature": {"maxBatchSize": 8, "inputs": [{"name": "input", "dataType": "FP32", "dims": [64]}],
                  "outputs": [{"name": "logits", "dataType": "FP32", "dims": [10]}]},
}


def model() -> dict[str, Any]:
    return {"metadata": {"name": "digits", "namespace": NS, "generation": 1}, "spec": MODEL_SPEC}


# A child the Model already owns (FakeKube gives the Model the uid uid-digits).
ADOPTED = [{"apiVersion": "modelops.dev/v1alpha1", "kind": "Model", "name": "digits", "uid": "uid-digits",
            "controller": True, "blockOwnerDeletion": False}]


def unadopted(body: dict[str, Any]) -> dict[str, Any]:
    del body["metadata"]["ownerReferences"]
    return body


def ready_version(number: int, name: str | None = None, **status: Any) -> dict[str, Any]:
    ready = {"type": "Ready", "status": "True", "reason": "Compressed", "message": "m", "lastTransitionTime": "2025-01-01T00:00:00Z"}
    return {
        "metadata": {"name": name or f"digits-v{number}", "namespace": NS, "generation": 1,
                     "creationTimestamp": f"2025-01-0{number}T00:00:00Z", "ownerReferences": ADOPTED},
        "spec": {"model": "digits", "version": number,
                 "artifact": {"uri": f"s3://models/digits/{number}/model.onnx", "format": "onnx", "sha256": SHA}},
        "status": {"phase": "Ready", "conditions": [ready],
                   "compressedArtifact": {"uri": f"s3://models/c/{number}/model.onnx", "sha256": SHA, "format": "onnx"},
                   **status},
    }


def deployment(name: str, *failed: int, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "generation": 1, "ownerReferences": ADOPTED},
            "spec": {"model": "digits", "triton": {"backend": "python"}, **spec},
            "status": {"failedVersions": list(failed)} if failed else {}}


def bed(*objects: tuple[k8s.Resource, dict[str, Any]]) -> FakeKube:
    kube = FakeKube()
    for resource, body in objects:
        kube.put(resource, body)
    return kube


def stored(kube: FakeKube, resource: k8s.Resource, name: str) -> dict[str, Any]:
    """What the fake API server holds (not a read of the reconcile's: kube.reads stays as it is)."""
    body = kube.objects.get((resource.plural, NS, name))
    assert body is not None
    return copy.deepcopy(body)


# -- failedBy: derived by the version, from the deployments' failedVersions --------------------


def test_a_version_derives_failed_by_from_the_deployments_that_failed_it() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(1)), (k8s.MODELVERSIONS, ready_version(2)),
               (k8s.MODELDEPLOYMENTS, deployment("gpu", 2)), (k8s.MODELDEPLOYMENTS, deployment("cpu")),
               (k8s.MODELDEPLOYMENTS, deployment("both", 1, 2)))
    ctx = context(kube)
    assert reconcile_version(ctx, Key("ModelVersion", NS, "digits-v2")) is None
    status = stored(kube, k8s.MODELVERSIONS, "digits-v2")["status"]
    assert status["failedBy"] == ["both", "gpu"] and status["phase"] == "Ready"
    mark = find(status["conditions"], "RolloutFailed")
    assert (mark["status"], mark["reason"]) == ("True", "RolledBack") and "both, gpu" in mark["message"]
    assert find(status["conditions"], "Ready")["status"] == "True", "the rest of the status is kept"
    assert [(w.verb, w.name, w.subresource) for w in kube.writes] == [("patch", "digits-v2", "status")]

    kube.writes.clear()
    refill(ctx, kube)
    reconcile_version(ctx, Key("ModelVersion", NS, "digits-v2"))
    assert kube.writes == [], "a resync of a version whose marks agree writes nothing"


def test_a_version_no_deployment_failed_gets_no_rollout_failed_condition() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(1)), (k8s.MODELDEPLOYMENTS, deployment("serve", 2)))
    reconcile_version(context(kube), Key("ModelVersion", NS, "digits-v1"))
    assert kube.writes == []
    assert "failedBy" not in stored(kube, k8s.MODELVERSIONS, "digits-v1")["status"]


def test_a_failed_by_left_by_an_older_operator_is_derived_again() -> None:
    """The older operator wrote names itself; a deleted deployment's or a retried one's name that
    it left behind goes, and a verdict it missed is added."""
    rolled_back = {"type": "RolloutFailed", "status": "True", "reason": "RolledBack", "message": "m",
                   "lastTransitionTime": "2025-01-01T00:00:00Z"}
    old = ready_version(2, failedBy=["gone", "retried"])
    old["status"]["conditions"].append(rolled_back)
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, old), (k8s.MODELDEPLOYMENTS, deployment("retried")),
               (k8s.MODELDEPLOYMENTS, deployment("missed", 2)))
    reconcile_version(context(kube), Key("ModelVersion", NS, "digits-v2"))
    status = stored(kube, k8s.MODELVERSIONS, "digits-v2")["status"]
    assert status["failedBy"] == ["missed"]

    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, old))
    reconcile_version(context(kube), Key("ModelVersion", NS, "digits-v2"))
    status = stored(kube, k8s.MODELVERSIONS, "digits-v2")["status"]
    assert "failedBy" not in status
    assert (find(status["conditions"], "RolloutFailed")["status"], find(status["conditions"], "RolloutFailed")["reason"]) == (
        "False", "NoFailedRollout")


def test_of_two_versions_with_one_number_only_the_owner_carries_the_marks() -> None:
    duplicate = ready_version(2, name="digits-v2-again")
    duplicate["metadata"]["creationTimestamp"] = "2025-02-01T00:00:00Z"
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(2)), (k8s.MODELVERSIONS, duplicate),
               (k8s.MODELDEPLOYMENTS, deployment("serve", 2)))
    ctx = context(kube)
    reconcile_version(ctx, Key("ModelVersion", NS, "digits-v2-again"))
    assert kube.writes == []
    reconcile_version(ctx, Key("ModelVersion", NS, "digits-v2"))
    assert stored(kube, k8s.MODELVERSIONS, "digits-v2")["status"]["failedBy"] == ["serve"]


def test_a_deleting_deployment_marks_nothing() -> None:
    leaving = deployment("serve", 2)
    leaving["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(2, failedBy=["serve"])), (k8s.MODELDEPLOYMENTS, leaving))
    reconcile_version(context(kube), Key("ModelVersion", NS, "digits-v2"))
    assert "failedBy" not in stored(kube, k8s.MODELVERSIONS, "digits-v2")["status"]


def test_the_model_writes_only_its_own_status() -> None:
    """A Model sums up its versions; a stale failedBy is the version's to derive away, and each
    child adopts itself."""
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, unadopted(ready_version(2, failedBy=["gone"]))),
               (k8s.MODELDEPLOYMENTS, unadopted(deployment("serve"))))
    reconcile_model(context(kube), Key("Model", NS, "digits"))
    assert [(w.plural, w.subresource) for w in kube.writes] == [("models", "status")]
    version = stored(kube, k8s.MODELVERSIONS, "digits-v2")
    assert "ownerReferences" not in version["metadata"] and version["status"]["failedBy"] == ["gone"]


def test_a_finished_version_adopts_itself_to_its_model_once() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, unadopted(ready_version(1))))
    ctx = context(kube)
    reconcile_version(ctx, Key("ModelVersion", NS, "digits-v1"))
    assert [(w.verb, w.plural) for w in kube.writes] == [("json-patch", "modelversions")]
    refs = stored(kube, k8s.MODELVERSIONS, "digits-v1")["metadata"]["ownerReferences"]
    assert refs == [OwnerRef.of(stored(kube, k8s.MODELS, "digits")).reference()]
    kube.writes.clear()
    reconcile_version(ctx, Key("ModelVersion", NS, "digits-v1"))  # from the cache the patch's answer filled
    assert kube.writes == []


def test_a_version_keeps_the_owners_it_has_and_adds_the_model_beside_them() -> None:
    other = {"apiVersion": "example.com/v1", "kind": "Release", "name": "r", "uid": "uid-r", "controller": True}
    version = ready_version(1)
    version["metadata"]["ownerReferences"] = [other]  # owned by something else, not yet by the Model
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, version))
    reconcile_version(context(kube), Key("ModelVersion", NS, "digits-v1"))
    refs = stored(kube, k8s.MODELVERSIONS, "digits-v1")["metadata"]["ownerReferences"]
    assert refs[0] == other and (refs[1]["kind"], refs[1]["controller"]) == ("Model", False)


def test_a_version_whose_owners_changed_meanwhile_is_retried_not_overwritten() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, unadopted(ready_version(1))))
    ctx = context(kube)
    stale = stored(kube, k8s.MODELVERSIONS, "digits-v1")
    stale["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "uid-c"}]
    kube.objects[("modelversions", NS, "digits-v1")] = stale  # written by someone, not yet watched
    with pytest.raises(k8s.Conflict):
        reconcile_version(ctx, Key("ModelVersion", NS, "digits-v1"))
    assert stored(kube, k8s.MODELVERSIONS, "digits-v1")["metadata"]["ownerReferences"] == stale["metadata"]["ownerReferences"]


def test_a_version_without_its_model_adopts_nothing() -> None:
    kube = bed((k8s.MODELVERSIONS, unadopted(ready_version(1))))
    reconcile_version(context(kube), Key("ModelVersion", NS, "digits-v1"))
    assert kube.written("modelversions") == []


def test_a_deployment_adopts_itself_to_its_model() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(1)), (k8s.MODELDEPLOYMENTS, unadopted(deployment("serve"))))
    reconcile_deployment(context(kube), Key("ModelDeployment", NS, "serve"))
    refs = stored(kube, k8s.MODELDEPLOYMENTS, "serve")["metadata"]["ownerReferences"]
    assert [(r["kind"], r["name"], r["controller"]) for r in refs] == [("Model", "digits", True)]
    assert [w.verb for w in kube.written("modeldeployments")] == ["json-patch", "patch"]  # adoption, then status
    assert stored(kube, k8s.DEPLOYMENTS, "serve")["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment", (
        "what the operator creates carries its owner from the start")


def live_server(kube: FakeKube, body: dict[str, Any], number: int, **status: Any) -> dict[str, Any]:
    """The Triton Deployment the operator renders for version `number`, as the Deployment
    controller left it."""
    desired = render.render_deployment(render.DeploymentInputs(
        name="serve", namespace=NS, owner=OwnerRef.of(body), spec=ModelDeploymentSpec.model_validate(deployment("serve")["spec"]),
        model_name="digits", model=ModelSpec.model_validate(MODEL_SPEC),
        version=VersionView.from_body(stored(kube, k8s.MODELVERSIONS, f"digits-v{number}")),
        settings=context(kube).settings, retry=None,
    ))
    desired["metadata"]["generation"] = 1
    desired["status"] = {"observedGeneration": 1, **status}
    return desired


def test_a_rollback_writes_the_verdict_into_the_deployment_and_no_model_version() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(1)), (k8s.MODELVERSIONS, ready_version(2)))
    serving = deployment("serve")
    serving["status"] = {"desiredVersion": 2, "servedVersion": 1, "previousVersion": None,
                         "rollouts": [{"version": 2, "outcome": "Progressing", "startedAt": "2025-03-01T11:50:00Z"}]}
    body = kube.put(k8s.MODELDEPLOYMENTS, serving)
    exceeded = {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
                "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    live = live_server(kube, body, 2, **exceeded)
    kube.put(k8s.DEPLOYMENTS, live)
    ctx = context(kube)
    reconcile_deployment(ctx, Key("ModelDeployment", NS, "serve"))

    status = stored(kube, k8s.MODELDEPLOYMENTS, "serve")["status"]
    assert status["failedVersions"] == [2] and status["rollouts"][-1]["outcome"] == "RolledBack"
    template = stored(kube, k8s.DEPLOYMENTS, "serve")["spec"]["template"]
    assert template["metadata"]["annotations"][naming.ANNOTATION_VERSION] == "1", "the rollback renders version 1 again"
    assert kube.written("modelversions") == [], "the verdict is the deployment's own; the version derives failedBy"
    assert ("Warning", "RolledBack") in [(t, r) for t, r, _ in kube.events]

    # The version's own reconcile then derives the mark: its one write.
    refill(ctx, kube)
    reconcile_version(ctx, Key("ModelVersion", NS, "digits-v2"))
    assert [(w.verb, w.name, w.subresource) for w in kube.written("modelversions")] == [("patch", "digits-v2", "status")]
    assert stored(kube, k8s.MODELVERSIONS, "digits-v2")["status"]["failedBy"] == ["serve"]


# -- one read path: every read a reconcile makes comes from the watch-fed cache ---------------


def provider_deployment(provider: str) -> dict[str, Any]:
    auto = {"minReplicas": 1, "maxReplicas": 3, "target": 0.5, "provider": provider}
    if provider == "keda":
        auto["prometheusAddress"] = "http://prometheus:9090"
    return deployment("serve", autoscaling=auto,
                      rollout={"strategy": "Canary", "canary": {"httpRoute": {"parent": "gateway"}}})


@pytest.mark.parametrize("provider", ["hpa", "keda"])
def test_a_deployment_with_scalers_and_a_route_reads_nothing_live(provider: str) -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(1)), (k8s.MODELDEPLOYMENTS, provider_deployment(provider)))
    ctx = context(kube)
    reconcile_deployment(ctx, Key("ModelDeployment", NS, "serve"))
    scaler = "horizontalpodautoscalers" if provider == "hpa" else "scaledobjects"
    created = {w.plural for w in kube.writes if w.verb == "apply"}
    assert {"deployments", "services", scaler, "httproutes"} <= created
    assert kube.reads == [], "the children, the Model and its versions are read from the cache"

    # Once the watches brought the children back, nothing differs: no child is written again
    # (the status moves on, since the Deployment now exists).
    kube.writes.clear()
    refill(ctx, kube)
    reconcile_deployment(ctx, Key("ModelDeployment", NS, "serve"))
    assert [w for w in kube.writes if w.plural != "modeldeployments"] == [] and kube.reads == []


def test_a_hand_edit_of_a_cached_hpa_is_reverted() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(1)), (k8s.MODELDEPLOYMENTS, provider_deployment("hpa")))
    ctx = context(kube)
    reconcile_deployment(ctx, Key("ModelDeployment", NS, "serve"))
    hpa = stored(kube, k8s.HPAS, "serve")
    hpa["spec"]["maxReplicas"] = 99
    kube.put(k8s.HPAS, hpa)
    refill(ctx, kube)
    kube.writes.clear()
    reconcile_deployment(ctx, Key("ModelDeployment", NS, "serve"))
    assert [(w.verb, w.plural) for w in kube.writes if w.plural != "modeldeployments"] == [("apply", "horizontalpodautoscalers")]
    assert stored(kube, k8s.HPAS, "serve")["spec"]["maxReplicas"] == 3


def triton_pod(name: str, deployment_name: str, **status: Any) -> dict[str, Any]:
    labels = {**naming.server_selector(deployment_name), naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
              naming.LABEL_COMPONENT: naming.COMPONENT_SERVER, naming.LABEL_VERSION: "2"}
    return {"metadata": {"name": name, "namespace": NS, "labels": labels}, "spec": {"containers": [{"name": "triton"}]},
            "status": status}


def test_a_rollback_names_its_cause_from_the_cached_pods() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(1)), (k8s.MODELVERSIONS, ready_version(2)))
    serving = deployment("serve")
    serving["status"] = {"desiredVersion": 2, "servedVersion": 1,
                         "rollouts": [{"version": 2, "outcome": "Progressing", "startedAt": "2025-03-01T11:50:00Z"}]}
    body = kube.put(k8s.MODELDEPLOYMENTS, serving)
    exceeded = {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
                "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    kube.put(k8s.DEPLOYMENTS, live_server(kube, body, 2, **exceeded))
    pulling = {"name": "triton", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
    kube.put(k8s.PODS, triton_pod("serve-abc", "serve", containerStatuses=[pulling]))
    kube.put(k8s.PODS, triton_pod("other-abc", "other"))
    ctx = context(kube)
    assert [p["metadata"]["name"] for p in ctx.reads.server_pods(NS, "serve")] == ["serve-abc"]
    assert "spec" not in ctx.reads.server_pods(NS, "serve")[0], "a pod's spec is nothing a reconcile reads"
    reconcile_deployment(ctx, Key("ModelDeployment", NS, "serve"))
    status = stored(kube, k8s.MODELDEPLOYMENTS, "serve")["status"]
    assert status["rollouts"][-1]["outcome"] == "RolledBack"
    assert "cannot pull its image" in status["rollouts"][-1]["message"] and "spec.triton.image" in status["rollouts"][-1]["message"]
    assert kube.reads == []


def test_with_the_node_cache_a_namespace_gets_its_volume_and_claim_once() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(1)),
               (k8s.MODELDEPLOYMENTS, deployment("a")), (k8s.MODELDEPLOYMENTS, deployment("b")))
    ctx = context(kube, node_cache_claim="modelops-nodecache", node_cache_path="/srv/cache")
    for name in ("a", "b", "a"):
        reconcile_deployment(ctx, Key("ModelDeployment", NS, name))
    assert [w.name for w in kube.written("persistentvolumes")] == [f"modelops-nodecache-{NS}"]
    assert [w.name for w in kube.written("persistentvolumeclaims")] == ["modelops-nodecache"]
    volume = kube.objects[("persistentvolumes", "", f"modelops-nodecache-{NS}")]
    assert volume["spec"]["local"]["path"] == "/srv/cache" and volume["spec"]["claimRef"]["namespace"] == NS
    pod = stored(kube, k8s.DEPLOYMENTS, "a")["spec"]["template"]["spec"]
    assert {"name": "node-cache", "persistentVolumeClaim": {"claimName": "modelops-nodecache", "readOnly": True}} in pod["volumes"]


def test_without_the_node_cache_no_volume_is_written() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.MODELVERSIONS, ready_version(1)), (k8s.MODELDEPLOYMENTS, deployment("a")))
    reconcile_deployment(context(kube), Key("ModelDeployment", NS, "a"))
    assert not kube.written("persistentvolumes") and not kube.written("persistentvolumeclaims")

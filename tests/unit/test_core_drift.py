"""Drift of a live child from its render: defaults and other parties' fields are not drift; a
changed, missing or added rendered field is."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from modelops.api import ModelDeploymentSpec, ModelSpec
from modelops.core.drift import Difference, differences, quantity, removals
from modelops.core.objects import OwnerRef, VersionView
from modelops.core.render import DeploymentInputs, render_deployment, render_service
from modelops.settings import Settings

pytestmark = pytest.mark.unit

OWNER = OwnerRef("modelops.dev/v1alpha1", "ModelDeployment", "digits", "uid-md")
MODEL = ModelSpec.model_validate({
    "storage": {"endpoint": "https://minio:9000", "bucket": "models", "credentialsSecret": {"name": "s3"}},
    "signature": {"inputs": [{"name": "x", "dataType": "FP32", "dims": [64]}],
                  "outputs": [{"name": "y", "dataType": "FP32", "dims": [10]}], "maxBatchSize": 8},
})
SERVED = VersionView("digits-v1", "digits", 1, "Ready", compressed_uri="s3://models/c/1.onnx", compressed_sha256="ab" * 32)


def rendered(**spec: Any) -> dict[str, Any]:
    md = ModelDeploymentSpec.model_validate({"model": "digits", **spec})
    return render_deployment(DeploymentInputs(name="digits", namespace="ns", owner=OWNER, spec=md, model_name="digits", model=MODEL,
                             version=SERVED, settings=Settings.from_env({})))


def as_stored(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server gives back: the object plus defaults, bookkeeping and status."""
    live = copy.deepcopy(obj)
    meta = live["metadata"]
    meta.update(uid="uid-dep", resourceVersion="42", generation=3, creationTimestamp="2025-01-01T00:00:00Z",
                managedFields=[{"manager": "modelops", "operation": "Apply"}])
    meta["annotations"]["deployment.kubernetes.io/revision"] = "3"
    meta["labels"]["argocd.argoproj.io/instance"] = "models"  # another party's label
    pod = live["spec"]["template"]["spec"]
    pod.update(dnsPolicy="ClusterFirst", schedulerName="default-scheduler", restartPolicy="Always")
    for container in pod["containers"] + pod["initContainers"]:
        container.update(terminationMessagePath="/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                container[probe]["httpGet"]["scheme"] = "HTTP"
                container[probe]["successThreshold"] = 1
    del pod["containers"][0]["env"]  # an empty list is not stored
    live["status"] = {"replicas": 1, "readyReplicas": 1, "observedGeneration": 3}
    return live


def containers(live: dict[str, Any]) -> list[dict[str, Any]]:
    return live["spec"]["template"]["spec"]["containers"]


def test_a_stored_object_with_defaults_has_no_drift() -> None:
    desired = rendered()
    assert differences(desired, as_stored(desired)) == []


def test_quantities_compare_by_value() -> None:
    desired = rendered(scheduling={"gpus": 1}, triton={"resources": {"limits": {"cpu": "0.5", "memory": "1Gi"}}})
    live = as_stored(desired)
    limits = containers(live)[0]["resources"]["limits"]
    limits.update({"nvidia.com/gpu": "1", "cpu": "500m", "memory": "1024Mi"})  # canonical forms
    assert differences(desired, live) == []
    limits["cpu"] = "2"
    assert [str(d) for d in differences(desired, live)] == ["changed /spec/template/spec/containers/0/resources/limits/cpu"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", Decimal(1)), (1, Decimal(1)), ("500m", Decimal("0.5")), ("1Gi", Decimal(2**30)), ("1e3", Decimal(1000)),
     ("2k", Decimal(2000)), ("nonsense", None)],
)
def test_quantity(text, value) -> None:
    assert quantity(text) == value


def test_a_scale_is_drift() -> None:
    desired = rendered(replicas=2)
    live = as_stored(desired)
    live["spec"]["replicas"] = 0
    assert differences(desired, live) == [Difference("/spec/replicas", "changed")]


def test_a_changed_env_value_is_drift() -> None:
    desired = rendered()
    live = as_stored(desired)
    env = live["spec"]["template"]["spec"]["initContainers"][0]["env"]
    region = next(i for i, e in enumerate(env) if e["name"] == "MODELOPS_S3_REGION")
    env[region]["value"] = "elsewhere"
    assert differences(desired, live) == [
        Difference(f"/spec/template/spec/initContainers/0/env/{region}/value", "changed")
    ]


def test_an_env_var_added_to_a_container_that_renders_none_is_extra() -> None:
    desired = rendered()
    live = as_stored(desired)
    containers(live)[0]["env"] = [{"name": "HAND_EDIT", "value": "1"}]  # kubectl set env -c triton HAND_EDIT=1
    found = differences(desired, live)
    assert [(d.kind, d.path, d.key) for d in found] == [
        ("extra", "/spec/template/spec/containers/0/env/0", ("name", "HAND_EDIT"))
    ]
    assert removals(found) == [
        {"op": "test", "path": "/spec/template/spec/containers/0/env/0/name", "value": "HAND_EDIT"},
        {"op": "remove", "path": "/spec/template/spec/containers/0/env/0"},
    ]


def test_an_entry_added_to_a_rendered_list_is_extra() -> None:
    desired = rendered()
    live = as_stored(desired)
    fetch_env = live["spec"]["template"]["spec"]["initContainers"][0]["env"]
    fetch_env.insert(1, {"name": "HAND_EDIT", "value": "1"})
    fetch_env.append({"name": "ANOTHER", "value": "2"})
    found = differences(desired, live)
    assert [(d.kind, d.path) for d in found] == [
        ("extra", "/spec/template/spec/initContainers/0/env/1"),
        ("extra", f"/spec/template/spec/initContainers/0/env/{len(fetch_env) - 1}"),
    ]
    ops = removals(found)
    # The last entry goes first, so the earlier index still points at the right entry.
    assert ops == [
        {"op": "test", "path": f"/spec/template/spec/initContainers/0/env/{len(fetch_env) - 1}/name", "value": "ANOTHER"},
        {"op": "remove", "path": f"/spec/template/spec/initContainers/0/env/{len(fetch_env) - 1}"},
        {"op": "test", "path": "/spec/template/spec/initContainers/0/env/1/name", "value": "HAND_EDIT"},
        {"op": "remove", "path": "/spec/template/spec/initContainers/0/env/1"},
    ]


def test_an_added_container_is_extra() -> None:
    desired = rendered()
    live = as_stored(desired)
    containers(live).append({"name": "sidecar", "image": "busybox"})
    assert [(d.kind, d.key) for d in differences(desired, live)] == [("extra", ("name", "sidecar"))]


def test_a_changed_arg_is_drift() -> None:
    desired = rendered()
    live = as_stored(desired)
    containers(live)[0]["args"] = [*containers(live)[0]["args"], "--log-verbose=1"]
    assert differences(desired, live) == [Difference("/spec/template/spec/containers/0/args", "changed")]


def test_a_missing_object_is_drift() -> None:
    assert differences(rendered(), None) == [Difference("", "missing")]


def test_other_owners_and_labels_are_not_drift() -> None:
    desired = render_service(name="digits", namespace="ns", owner=OWNER, model_name="digits")
    live = as_stored_service(desired)
    live["metadata"]["ownerReferences"].append({"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u2"})
    assert differences(desired, live) == []
    live["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u2"}]
    assert [d.kind for d in differences(desired, live)] == ["missing"]


def as_stored_service(obj: dict[str, Any]) -> dict[str, Any]:
    live = copy.deepcopy(obj)
    live["metadata"].update(uid="uid-svc", resourceVersion="7", labels={**obj["metadata"]["labels"], "team": "ml"})
    live["spec"].update(clusterIP="10.0.0.12", clusterIPs=["10.0.0.12"], ipFamilies=["IPv4"], sessionAffinity="None")
    return live


def test_a_changed_service_selector_is_drift() -> None:
    desired = render_service(name="digits", namespace="ns", owner=OWNER, model_name="digits")
    live = as_stored_service(desired)
    assert differences(desired, live) == []
    live["spec"]["selector"] = {"app": "something-else"}
    assert {d.kind for d in differences(desired, live)} == {"missing"}

"""Branches of the reconcilers, `keep` and the scaler that the test bed reaches only slowly or
not at all (a Job whose termination message is lost, a Job name taken, a scaler between two
readings), against the in-memory client of tests/unit/fakekube.py."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from modelops import kube as k8s
from modelops import tritonmetrics
from modelops.api import ModelSpec, ModelVersionSpec
from modelops.api.deployment import ModelDeploymentSpec
from modelops.cachekey import COMPRESSOR_VERSION, recipe_hash
from modelops.core import autoscale, naming
from modelops.core.conditions import find
from modelops.core.objects import OwnerRef
from modelops.core.versions import effective_recipe, output_prefix
from modelops.handlers import scaling
from modelops.handlers.children import keep
from modelops.handlers.context import Context
from modelops.handlers.models import reconcile_model
from modelops.handlers.queue import Key, RetryLater
from modelops.handlers.reads import StorageReads
from modelops.handlers.versions import reconcile_version
from modelops.storage import ObjectInfo, ObjectNotFound, StorageUnreachable
from tests.unit.fakekube import NOW, FakeKube, context
from tests.unit.test_handlers_reconcile import ADOPTED, MODEL_SPEC, NS, SHA, bed, deployment, model, stored

pytestmark = pytest.mark.unit

CREDS = {"metadata": {"name": "creds", "namespace": NS},
         "data": {k: base64.b64encode(b"x").decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}


@dataclass
class MemoryStore:
    """Objects by URI, as an ObjectStore answers for them; `down` makes every call fail as an
    unreachable endpoint does."""

    objects: dict[str, bytes] = field(default_factory=dict)
    down: bool = False

    def _up(self) -> None:
        if self.down:
            raise StorageUnreachable("connection refused")

    def head(self, uri: str) -> ObjectInfo:
        self._up()
        if uri not in self.objects:
            raise ObjectNotFound(uri)
        data = self.objects[uri]
        return ObjectInfo(len(data), hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())  # noqa: S324 - an ETag

    def read_bytes(self, uri: str) -> bytes:
        self.head(uri)
        return self.objects[uri]

    def bucket_exists(self, bucket: str) -> bool:
        self._up()
        return True


def with_store(ctx: Context, store: MemoryStore) -> Context:
    reads = StorageReads(store)  # type: ignore[arg-type]
    ctx.stores.get = lambda config: reads  # type: ignore[method-assign]
    return ctx


def pending_version(number: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": f"digits-v{number}", "namespace": NS, "generation": 1, "ownerReferences": ADOPTED,
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"model": "digits", "version": number,
                     "artifact": {"uri": f"s3://models/digits/{number}/model.onnx", "format": "onnx", "sha256": SHA}},
            "status": {"phase": "Compressing"}}


def job_of(kube: FakeKube, version_name: str, *conditions: str, owner_uid: str | None = None, **status: Any) -> dict[str, Any]:
    version = stored(kube, k8s.MODELVERSIONS, version_name)
    owner = OwnerRef.of(version).reference()
    if owner_uid is not None:
        owner = {**owner, "uid": owner_uid}
    job = {"metadata": {"name": naming.job_name(version_name), "namespace": NS, "uid": "uid-job",
                        "labels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}, "ownerReferences": [owner]},
           "status": {"conditions": [{"type": c, "status": "True", "reason": f"{c}Reason", "message": f"the Job is {c}"}
                                     for c in conditions], **status}}
    return kube.put(k8s.JOBS, job)


def record_for(version: dict[str, Any], artifact: bytes) -> dict[str, bytes]:
    """What a finished Job leaves under the version's cache key: its artifact and report.json."""
    spec, model_spec = ModelVersionSpec.model_validate(version["spec"]), ModelSpec.model_validate(MODEL_SPEC)
    prefix = output_prefix(spec, model_spec)
    digest = hashlib.sha256(artifact).hexdigest()
    report = {
        "outcome": "Passed", "reason": "Compressed", "message": "ok", "device": "cpu",
        "artifact": {"uri": prefix + "model.onnx", "sha256": digest, "bytes": len(artifact), "format": "onnx",
                     "etag": hashlib.md5(artifact).hexdigest()},  # noqa: S324 - an ETag
        "source": {"uri": spec.artifact.uri, "sha256": spec.artifact.sha256},
        "recipeHash": recipe_hash(effective_recipe(spec, model_spec)), "compressorVersion": COMPRESSOR_VERSION,
        "bytesBefore": 4 * len(artifact), "bytesAfter": len(artifact), "ratio": 4.0,
    }
    return {prefix + "model.onnx": artifact, prefix + "report.json": json.dumps(report).encode()}


# -- reconcile_version: the Job's answers ------------------------------------------------------


def test_a_job_whose_termination_message_is_lost_is_judged_by_what_it_left_in_storage() -> None:
    """The Job completed but its pod (and with it the report in the termination message) is
    gone: the record the Job wrote to storage decides, as a cache hit would."""
    version = pending_version()
    kube = bed((k8s.MODELS, model()), (k8s.SECRETS, CREDS), (k8s.MODELVERSIONS, version))
    job_of(kube, "digits-v1", "Complete", succeeded=1)
    ctx = with_store(context(kube), MemoryStore(record_for(version, b"compressed bytes")))
    reconcile_version(ctx, Key("ModelVersion", NS, "digits-v1"))
    status = stored(kube, k8s.MODELVERSIONS, "digits-v1")["status"]
    assert status["phase"] == "Ready", status
    assert status["compressedArtifact"]["sha256"] == hashlib.sha256(b"compressed bytes").hexdigest()
    assert ("Normal", "Compressed") in [(t, r) for t, r, _ in kube.events]


def test_a_lost_termination_message_and_unreachable_storage_is_a_missing_report() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.SECRETS, CREDS), (k8s.MODELVERSIONS, pending_version()))
    job_of(kube, "digits-v1", "Complete", succeeded=1)
    ctx = with_store(context(kube), MemoryStore(down=True))
    reconcile_version(ctx, Key("ModelVersion", NS, "digits-v1"))
    status = stored(kube, k8s.MODELVERSIONS, "digits-v1")["status"]
    ready = find(status["conditions"], "Ready")
    assert (status["phase"], ready["reason"]) == ("Failed", "ReportMissing")
    assert "recreate the ModelVersion" in ready["message"]
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", "ReportMissing")]


def test_a_failed_job_whose_pods_are_gone_names_the_jobs_own_condition() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.SECRETS, CREDS), (k8s.MODELVERSIONS, pending_version()))
    job_of(kube, "digits-v1", "Failed", failed=3)
    reconcile_version(context(kube), Key("ModelVersion", NS, "digits-v1"))
    status = stored(kube, k8s.MODELVERSIONS, "digits-v1")["status"]
    assert status["phase"] == "Failed"
    assert "FailedReason: the Job is Failed" in find(status["conditions"], "Ready")["message"]


def test_a_job_with_the_versions_name_that_it_does_not_own_waits_with_a_reason() -> None:
    kube = bed((k8s.MODELS, model()), (k8s.SECRETS, CREDS), (k8s.MODELVERSIONS, pending_version()))
    job_of(kube, "digits-v1", owner_uid="uid-someone-else")
    ctx = context(kube)
    retry = reconcile_version(ctx, Key("ModelVersion", NS, "digits-v1"))
    status = stored(kube, k8s.MODELVERSIONS, "digits-v1")["status"]
    assert (status["phase"], find(status["conditions"], "Ready")["reason"]) == ("Pending", "JobNameTaken")
    assert retry == ctx.settings.retry_seconds, "nothing wakes it when the Job goes: it looks again on a timer"
    assert kube.written("jobs") == []


def test_a_version_of_a_model_that_does_not_exist_starts_no_job() -> None:
    kube = bed((k8s.MODELVERSIONS, pending_version()))
    reconcile_version(context(kube), Key("ModelVersion", NS, "digits-v1"))
    status = stored(kube, k8s.MODELVERSIONS, "digits-v1")["status"]
    assert status["phase"] == "Pending" and "digits" in find(status["conditions"], "Ready")["message"]
    assert kube.written("jobs") == []


def test_unreachable_storage_before_the_artifact_was_checked_names_the_artifact() -> None:
    """The bucket HEAD is the first request: when it fails, the condition still says what the
    version was checking, and retries on a timer without a Job."""
    version = {**pending_version(), "status": {}}
    kube = bed((k8s.MODELS, model()), (k8s.SECRETS, CREDS), (k8s.MODELVERSIONS, version))
    ctx = with_store(context(kube), MemoryStore(down=True))
    retry = reconcile_version(ctx, Key("ModelVersion", NS, "digits-v1"))
    status = stored(kube, k8s.MODELVERSIONS, "digits-v1")["status"]
    ready = find(status["conditions"], "Ready")
    assert (status["phase"], ready["reason"]) == ("Verifying", "StorageUnreachable")
    assert "spec.artifact.uri s3://models/digits/1/model.onnx" in ready["message"] and "retrying" in ready["message"]
    assert retry is not None and kube.written("jobs") == []


def test_a_deleted_version_is_forgotten_and_nothing_is_written() -> None:
    kube = bed((k8s.MODELS, model()))
    ctx = context(kube)
    ctx.metrics.versions.set(NS, "gone", "Ready")
    assert reconcile_version(ctx, Key("ModelVersion", NS, "gone")) is None
    assert kube.writes == [] and kube.events == []


# -- reconcile_model ---------------------------------------------------------------------------


def test_a_model_whose_secret_is_missing_says_so_and_looks_again_only_when_woken() -> None:
    kube = bed((k8s.MODELS, model()))
    assert reconcile_model(context(kube), Key("Model", NS, "digits")) is None
    status = stored(kube, k8s.MODELS, "digits")["status"]
    ready = find(status["conditions"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "CredentialsNotFound")
    assert "spec.storage.credentialsSecret" in ready["message"]


# -- keep ----------------------------------------------------------------------------------------


def service(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "serve", "namespace": NS, "labels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}},
            "spec": {"ports": [{"name": "http", "port": 8000}], **spec}}


def test_keep_creates_a_missing_child_and_leaves_an_equal_one_alone() -> None:
    kube = FakeKube()
    ctx = context(kube)
    keep(ctx, k8s.SERVICES, None, service())
    assert [w.verb for w in kube.writes] == ["apply"]
    live = ctx.reads.get(k8s.SERVICES, NS, "serve")
    assert live is not None, "the write's answer is read back at once, before any watch event"
    kube.writes.clear()
    keep(ctx, k8s.SERVICES, live, service())
    assert kube.writes == []


def test_keep_removes_what_was_added_by_hand_to_a_rendered_list() -> None:
    kube = FakeKube()
    ctx = context(kube)
    added = service()
    added["spec"]["ports"].append({"name": "debug", "port": 9999})
    live = kube.put(k8s.SERVICES, added)
    keep(ctx, k8s.SERVICES, live, service())
    assert [w.verb for w in kube.writes] == ["json-patch"], "apply leaves entries it does not own: they are removed"
    assert stored(kube, k8s.SERVICES, "serve")["spec"]["ports"] == [{"name": "http", "port": 8000}]


def test_keep_retries_when_the_list_changed_while_it_removed_entries() -> None:
    kube = FakeKube()
    ctx = context(kube)
    added = service()
    added["spec"]["ports"].append({"name": "debug", "port": 9999})
    live = kube.put(k8s.SERVICES, added)
    changed = copy.deepcopy(added)
    changed["spec"]["ports"].insert(0, {"name": "other", "port": 7000})
    kube.put(k8s.SERVICES, changed)  # someone else's write, not yet in what keep was given
    with pytest.raises(RetryLater):
        keep(ctx, k8s.SERVICES, live, service())


# -- scale ---------------------------------------------------------------------------------------


def autoscaled(provider: str = "operator", **auto: Any) -> dict[str, Any]:
    body = deployment("serve", autoscaling={"minReplicas": 1, "maxReplicas": 4, "target": 0.5, "provider": provider, **auto})
    body["metadata"]["uid"] = "uid-serve"
    return body


def test_an_hpa_owns_the_count_and_the_plan_takes_it_within_the_bounds() -> None:
    body = autoscaled("hpa")
    ctx = context(FakeKube())
    spec = ModelDeploymentSpec.model_validate(body["spec"])
    assert scaling.scale(ctx, spec, body, {"spec": {"replicas": 3}}).spec.replicas == 3
    assert scaling.scale(ctx, spec, body, {"spec": {"replicas": 9}}).spec.replicas == 4
    assert scaling.scale(ctx, spec, body, None).spec.replicas == 1


def test_the_operators_scaler_reads_once_per_interval_and_asks_to_be_woken_for_the_next() -> None:
    body = autoscaled(interval="10s")
    kube = FakeKube()
    ctx = context(kube)
    spec = ModelDeploymentSpec.model_validate(body["spec"])
    ctx.readings[(NS, "serve")] = autoscale.Reading(NOW - timedelta(seconds=4), {})
    scaled = scaling.scale(ctx, spec, body, {"spec": {"replicas": 2}, "status": {"readyReplicas": 2}})
    assert scaled.requeue == pytest.approx(6.0), "the next reading is due in 10 - 4 seconds"
    assert scaled.spec.replicas == 2 and kube.reads == []


def test_an_unreadable_metrics_endpoint_keeps_the_count_and_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(url: str, timeout: float) -> str:
        raise OSError("connection refused")

    monkeypatch.setattr(tritonmetrics, "_get", refused)
    body = autoscaled()
    kube = FakeKube()
    labels = {**naming.server_selector("serve"), naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
              naming.LABEL_COMPONENT: naming.COMPONENT_SERVER}
    kube.put(k8s.PODS, {"metadata": {"name": "serve-a", "namespace": NS, "labels": labels},
                        "status": {"podIP": "10.9.9.9", "conditions": [{"type": "Ready", "status": "True"}]}})
    ctx = context(kube)
    spec = ModelDeploymentSpec.model_validate(body["spec"])
    live = {"spec": {"replicas": 2}, "status": {"readyReplicas": 2}}
    first = scaling.scale(ctx, spec, body, live)
    assert first.spec.replicas == 2 and first.status is not None
    assert first.warning is not None and "serve-a" in first.warning and "10.9.9.9" in first.warning
    assert kube.reads == [], "the pods come from the cache"
    body["status"] = {"autoscaling": first.status.wire()}
    again = scaling.scale(ctx, spec, body, live)
    assert again.spec.replicas == 2 and again.warning is None, "the same reason is not posted as an event again"

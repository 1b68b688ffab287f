"""The watch-fed cache keeps what reconciles read, indexes children by Model, never goes back
in time, never resurrects a deleted object; storage reads are reused by URI and ETag;
a watch event wakes only what it can change."""

from __future__ import annotations

from typing import Any

import pytest

from modelops import kube as k8s
from modelops.core import dependents
from modelops.handlers.informer import Informer, Packed, slim
from modelops.handlers.reads import StorageReads
from modelops.storage import ObjectInfo, ObjectNotFound

pytestmark = pytest.mark.unit


def version(name: str, model: str = "m", number: int = 1, rv: str = "1", phase: str | None = None, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelops.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {
            "name": name, "namespace": "ns", "resourceVersion": rv, "uid": f"uid-{name}",
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"},
        },
        "spec": {"model": model, "version": number},
        "status": {"phase": phase, **status} if phase else {},
    }


def deployment(name: str, policy: str = "Latest", number: int | None = None, served: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": "m", "versionPolicy": policy}
    if number is not None:
        spec["version"] = number
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec, "status": {"servedVersion": served} if served else {}}


def test_slim_drops_managed_fields_and_last_applied_but_keeps_what_reconciles_read() -> None:
    kept = slim(k8s.MODELVERSIONS, version("a", phase="Ready"))
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"keep": "me"}
    assert kept["spec"] == {"model": "m", "version": 1} and kept["status"] == {"phase": "Ready"}
    pod = slim(k8s.PODS, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "x"}]}, "status": {"phase": "Running"}})
    assert "spec" not in pod and pod["status"] == {"phase": "Running"} and pod["kind"] == "Pod"


def test_children_are_found_by_model_and_move_when_their_model_changes() -> None:
    cache = Informer()
    cache.observe(k8s.MODELVERSIONS, version("a", rv="1"))
    cache.observe(k8s.MODELVERSIONS, version("b", rv="2"))
    cache.observe(k8s.MODELVERSIONS, version("c", model="other", rv="3"))
    assert [b["metadata"]["name"] for b in cache.versions_of("ns", "m")] == ["a", "b"]
    cache.observe(k8s.MODELVERSIONS, version("b", model="other", rv="4"))
    assert [b["metadata"]["name"] for b in cache.versions_of("ns", "m")] == ["a"]
    assert [b["metadata"]["name"] for b in cache.versions_of("ns", "other")] == ["b", "c"]
    cache.forget(k8s.MODELVERSIONS, version("a", rv="5"))
    assert cache.versions_of("ns", "m") == [] and cache.get(k8s.MODELVERSIONS, "ns", "a") is None
    assert cache.counts()[k8s.MODELVERSIONS.plural] == 2


def test_an_older_copy_never_replaces_a_newer_one() -> None:
    cache = Informer()
    cache.store(k8s.MODELVERSIONS, version("a", rv="10", phase="Ready"))  # our write returned
    cache.observe(k8s.MODELVERSIONS, version("a", rv="9", phase="Pending"))  # the watch lags
    assert cache.get(k8s.MODELVERSIONS, "ns", "a")["status"]["phase"] == "Ready"
    cache.observe(k8s.MODELVERSIONS, version("a", rv="11", phase="Failed"))
    assert cache.get(k8s.MODELVERSIONS, "ns", "a")["status"]["phase"] == "Failed"


def test_the_same_resource_version_keeps_the_copy_already_held() -> None:
    cache = Informer()
    watched = version("a", rv="5", phase="Ready")
    cache.observe(k8s.MODELVERSIONS, watched)
    held = cache.get(k8s.MODELVERSIONS, "ns", "a")
    cache.store(k8s.MODELVERSIONS, version("a", rv="5", phase="Ready"))  # our write's answer, seen already
    assert cache.get(k8s.MODELVERSIONS, "ns", "a") is held


def test_deployments_and_services_are_kept_packed_and_read_back_whole() -> None:
    cache = Informer()
    live = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "ns", "resourceVersion": "3", "managedFields": [{"manager": "x"}]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "triton", "args": ["--a"] * 50}]}}},
            "status": {"readyReplicas": 2}}
    cache.observe(k8s.DEPLOYMENTS, live)
    assert cache.get(k8s.DEPLOYMENTS, "ns", "d") == slim(k8s.DEPLOYMENTS, live)
    packed = sum(len(kept.data) for kept in cache._objects[k8s.DEPLOYMENTS.plural].values() if isinstance(kept, Packed))
    assert 0 < packed < len(str(slim(k8s.DEPLOYMENTS, live)))
    cache.observe(k8s.DEPLOYMENTS, {**live, "metadata": {**live["metadata"], "resourceVersion": "2"}, "status": {}})
    assert cache.get(k8s.DEPLOYMENTS, "ns", "d")["status"] == {"readyReplicas": 2}  # an older copy never wins
    assert cache.forget(k8s.DEPLOYMENTS, live) == slim(k8s.DEPLOYMENTS, live)
    assert cache.get(k8s.DEPLOYMENTS, "ns", "d") is None


def test_a_write_that_returns_after_the_deletion_does_not_bring_the_object_back() -> None:
    cache = Informer()
    cache.observe(k8s.MODELVERSIONS, version("a", rv="1"))
    cache.forget(k8s.MODELVERSIONS, version("a", rv="3"))
    cache.store(k8s.MODELVERSIONS, version("a", rv="2", phase="Ready"))
    assert cache.get(k8s.MODELVERSIONS, "ns", "a") is None
    cache.observe(k8s.MODELVERSIONS, version("a", rv="7"))  # created again under the same name
    assert cache.get(k8s.MODELVERSIONS, "ns", "a") is not None


def test_job_pods_are_found_by_their_job_uid() -> None:
    cache = Informer()
    for name, uid in (("p1", "j1"), ("p2", "j1"), ("p3", "j2")):
        cache.observe(k8s.PODS, {"metadata": {"name": name, "namespace": "ns", "labels": {"batch.kubernetes.io/controller-uid": uid}}})
    assert [p["metadata"]["name"] for p in cache.pods_of_job("ns", "j1")] == ["p1", "p2"]


class CountingStore:
    def __init__(self) -> None:
        self.etag = "e1"
        self.heads = self.reads = 0
        self.missing = False

    def head(self, uri: str) -> ObjectInfo:
        self.heads += 1
        if self.missing:
            raise ObjectNotFound(uri)
        return ObjectInfo(size=2, etag=self.etag, sha256=None)

    def read_bytes(self, uri: str) -> bytes:
        self.reads += 1
        return self.etag.encode()


def test_reports_are_reused_by_uri_and_etag_and_heads_stay_fresh() -> None:
    now = [0.0]
    store = CountingStore()
    reads = StorageReads(store, ttl=10, clock=lambda: now[0])  # type: ignore[arg-type]
    assert reads.read_bytes("s3://b/r.json") == b"e1" and reads.read_bytes("s3://b/r.json") == b"e1"
    assert (store.heads, store.reads) == (2, 1)  # a fresh HEAD each time, the bytes once
    store.etag = "e2"  # replaced in place: seen at once, read again
    assert reads.head("s3://b/r.json").etag == "e2" and reads.read_bytes("s3://b/r.json") == b"e2" and store.reads == 2


def test_an_artifacts_existence_is_reused_for_the_ttl_and_a_miss_never_is() -> None:
    now = [0.0]
    store = CountingStore()
    reads = StorageReads(store, ttl=10, clock=lambda: now[0])  # type: ignore[arg-type]
    reads.head_recent("s3://b/a")
    reads.head_recent("s3://b/a")
    assert store.heads == 1
    now[0] = 11
    reads.head_recent("s3://b/a")
    assert store.heads == 2
    store.missing = True
    with pytest.raises(ObjectNotFound):
        reads.head_recent("s3://b/new")
    store.missing = False
    assert reads.head_recent("s3://b/new").etag == "e1"  # uploaded since: seen at once


class BucketStore:
    def __init__(self) -> None:
        self.exists, self.asked = False, 0

    def bucket_exists(self, bucket: str) -> bool:
        self.asked += 1
        return self.exists


def test_a_bucket_seen_is_reused_for_the_ttl_and_a_missing_one_is_asked_every_time() -> None:
    now = [0.0]
    store = BucketStore()
    reads = StorageReads(store, ttl=10, clock=lambda: now[0])  # type: ignore[arg-type]
    assert not reads.bucket_exists_recent("b") and not reads.bucket_exists_recent("b")
    assert store.asked == 2  # a miss is never kept: a bucket created since is seen at once
    store.exists = True
    assert reads.bucket_exists_recent("b") and reads.bucket_exists_recent("b")
    assert store.asked == 3
    now[0] = 11
    store.exists = False  # deleted: seen once the ttl has passed
    assert not reads.bucket_exists_recent("b") and store.asked == 4


def test_a_denied_head_bucket_is_no_verdict_on_the_bucket() -> None:
    from modelops.handlers.versions import bucket_missing
    from modelops.storage import AccessDenied, StorageUnreachable

    class Refusing(BucketStore):
        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

        def bucket_exists(self, bucket: str) -> bool:
            raise self.error

    assert not bucket_missing(StorageReads(Refusing(AccessDenied("403")), ttl=10), "b")  # type: ignore[arg-type]
    with pytest.raises(StorageUnreachable):  # an unreachable endpoint is reported, not skipped
        bucket_missing(StorageReads(Refusing(StorageUnreachable("503")), ttl=10), "b")  # type: ignore[arg-type]
    assert bucket_missing(StorageReads(BucketStore(), ttl=10), "b")  # type: ignore[arg-type]


def test_a_model_wakes_its_children_only_when_its_spec_changes() -> None:
    model = {"metadata": {"name": "m"}, "spec": {"signature": 1}, "status": {"phase": "a"}}
    assert dependents.model_changed(None, model) and dependents.model_changed(model, None)
    assert not dependents.model_changed(model, {**model, "status": {"phase": "b"}})
    assert dependents.model_changed(model, {**model, "spec": {"signature": 2}})
    versions = [version("a", phase="Ready"), version("b", phase="Compressing")]
    assert dependents.waiting_versions(versions) == ["b"]
    # A new Model also wakes a finished version it does not own yet, which then adopts itself.
    assert dependents.waiting_versions(versions, "uid-m") == ["a", "b"]
    owned = {**versions[0], "metadata": {**versions[0]["metadata"], "ownerReferences": [{"uid": "uid-m"}]}}
    assert dependents.waiting_versions([owned, versions[1]], "uid-m") == ["b"]


def test_a_version_wakes_latest_deployments_and_pinned_ones_that_name_its_number() -> None:
    deployments = [deployment("latest"), deployment("pin1", "Pinned", 1), deployment("pin2", "Pinned", 2),
                   deployment("was1", "Pinned", 2, served=1)]
    old = dependents.view_of(version("a", number=1, phase="Compressing"))
    new = dependents.view_of(version("a", number=1, phase="Ready", compressedArtifact={"uri": "s3://x", "sha256": "0" * 64}))
    assert dependents.deployments_to_wake(old, new, deployments) == ["latest", "pin1", "was1"]
    assert dependents.deployments_to_wake(old, old, deployments) == []  # nothing a plan reads changed


def test_a_version_that_appears_or_goes_wakes_the_versions_with_its_number() -> None:
    siblings = [version("a", number=1, phase="Ready"), version("b", number=1), version("c", number=2)]
    new = dependents.view_of(version("d", number=1))
    # A waiting one learns whether it may start, a Ready one whether it carries the marks.
    assert dependents.siblings_to_wake(None, new, siblings) == ["a", "b"]
    assert dependents.siblings_to_wake(new, new, siblings) == []


def failing(name: str, *numbers: int, model: str = "m", deleting: bool = False) -> dict[str, Any]:
    body = {"metadata": {"name": name, "namespace": "ns"}, "spec": {"model": model},
            "status": {"failedVersions": list(numbers)} if numbers else {}}
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return body


def test_a_deployment_wakes_the_versions_whose_failed_by_its_verdicts_change() -> None:
    assert dependents.verdicts_changed(failing("d", 2), failing("d", 2)) == {}  # a resync reaches nothing
    assert dependents.verdicts_changed(failing("d"), failing("d", 2)) == {"m": {2}}  # a rollback
    assert dependents.verdicts_changed(failing("d", 2, 3), failing("d", 3)) == {"m": {2}}  # a retry, one failed again
    assert dependents.verdicts_changed(failing("d", 2), None) == {"m": {2}}  # deleted
    assert dependents.verdicts_changed(failing("d", 2), failing("d", 2, deleting=True)) == {"m": {2}}
    assert dependents.verdicts_changed(failing("d", 2), failing("d", 3, model="n")) == {"m": {2}, "n": {3}}  # moved
    assert dependents.verdicts_changed(None, failing("d")) == {}
    versions = [version("a", number=1), version("b", number=2), version("c", number=2)]
    assert dependents.versions_numbered(versions, {2}) == ["b", "c"]


def test_a_version_wakes_its_model_only_for_what_the_model_reads() -> None:
    ready = version("a", phase="Ready", compressedArtifact={"uri": "s3://x", "sha256": "0" * 64})
    marked = {**ready, "status": {**ready["status"], "failedBy": ["d"]}}
    assert not dependents.model_wake_needed(ready, marked)  # failedBy is nothing the Model reads
    assert dependents.model_wake_needed(version("a", phase="Compressing"), ready)
    assert dependents.model_wake_needed(None, ready) and dependents.model_wake_needed(ready, None)
    adopted = {**ready, "metadata": {**ready["metadata"], "ownerReferences": [{"uid": "m"}]}}
    assert not dependents.model_wake_needed(ready, adopted)  # the version adopts itself


def test_a_failed_by_change_wakes_no_deployment() -> None:
    ready = version("a", phase="Ready", compressedArtifact={"uri": "s3://x", "sha256": "0" * 64})
    marked = {**ready, "status": {**ready["status"], "failedBy": ["d"]}}
    assert dependents.deployments_to_wake(dependents.view_of(ready), dependents.view_of(marked), [deployment("latest")]) == []


def test_every_read_has_one_freshness_rule() -> None:
    from modelops import kube as k8s
    from modelops.handlers.informer import WATCHED_KINDS, Informer
    from modelops.handlers.reads import FRESHNESS, Freshness, Reads
    from tests.unit.fakekube import FakeKube

    assert {FRESHNESS[r.plural] for r in WATCHED_KINDS} == {Freshness.WATCHED}
    kube = FakeKube()
    kube.put(k8s.SECRETS, {"metadata": {"name": "creds", "namespace": "ns"}, "data": {"k": "djE="}})
    kube.put(k8s.DEPLOYMENTS, {"metadata": {"name": "live-only", "namespace": "ns"}})
    now = [0.0]
    reads = Reads(Informer(), kube, ttl=10, clock=lambda: now[0])  # type: ignore[arg-type]

    assert reads.get(k8s.DEPLOYMENTS, "ns", "live-only") is None, "a watched kind is never read live"
    first = reads.get(k8s.SECRETS, "ns", "creds")
    assert first is not None and reads.get(k8s.SECRETS, "ns", "creds") is first
    assert kube.reads == [("get", "secrets")], "a Secret is reused for the TTL"
    now[0] = 10.5
    reads.get(k8s.SECRETS, "ns", "creds")
    assert len(kube.reads) == 2, "and read again after it"
    reads.forget_recent("ns")
    reads.get(k8s.SECRETS, "ns", "creds")
    assert len(kube.reads) == 3, "a changed Model reads its namespace's Secrets afresh"
    with pytest.raises(KeyError):
        reads.get(k8s.LEASES, "ns", "x")  # no reconcile reads Leases


def test_triton_pods_are_indexed_by_their_deployment_and_job_pods_by_their_job() -> None:
    from modelops import kube as k8s
    from modelops.core import naming
    from modelops.handlers.informer import JOB_UID_LABEL, Informer

    cache = Informer()
    server = {**naming.server_selector("serve"), naming.LABEL_COMPONENT: naming.COMPONENT_SERVER}
    cache.observe(k8s.PODS, {"metadata": {"name": "s1", "namespace": "ns", "labels": server}, "status": {"podIP": "10.0.0.1"}})
    cache.observe(k8s.PODS, {"metadata": {"name": "j1", "namespace": "ns", "labels": {JOB_UID_LABEL: "u1"}}})
    assert [p["metadata"]["name"] for p in cache.server_pods("ns", "serve")] == ["s1"]
    assert cache.server_pods("ns", "other") == [] and cache.server_pods("other-ns", "serve") == []
    assert [p["metadata"]["name"] for p in cache.pods_of_job("ns", "u1")] == ["j1"]
    cache.forget(k8s.PODS, {"metadata": {"name": "s1", "namespace": "ns", "resourceVersion": "9"}})
    assert cache.server_pods("ns", "serve") == []

"""Watch-fed, in-memory copies of the objects that reconciles read, as controller-runtime's
informers keep them: reconciles read here, never with live GETs or LISTs; writes still go to
the API (server-side apply, or guarded by resourceVersion) and what they return is kept here
too, so a reconcile that follows its own write does not work from the state before it.

Only what some reconcile reads is kept: managedFields, kubectl's last-applied annotation, the
pod template of a Job and the spec of a Pod are dropped on the way in. The children that only
their owner's reconcile reads, one at a time (Deployments with their pod templates, Services,
HPAs, ScaledObjects, HTTPRoutes), are kept as compressed JSON, a fifth of their size as Python
objects, and unpacked on each read. Pods are the compressor pods of Jobs and the Triton pods.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from modelops import kube as k8s
from modelops.core import naming

# The top-level fields kept per collection (metadata always, minus what no reconcile reads).
KEPT_FIELDS: dict[str, tuple[str, ...]] = {
    k8s.MODELS.plural: ("spec", "status"),
    k8s.MODELVERSIONS.plural: ("spec", "status"),
    k8s.MODELDEPLOYMENTS.plural: ("spec", "status"),
    k8s.JOBS.plural: ("status",),
    k8s.DEPLOYMENTS.plural: ("spec", "status"),
    k8s.SERVICES.plural: ("spec",),
    k8s.PODS.plural: ("status",),
    k8s.HPAS.plural: ("spec",),
    k8s.SCALEDOBJECTS.plural: ("spec",),
    k8s.HTTPROUTES.plural: ("spec",),
}
PACKED = {k8s.DEPLOYMENTS.plural, k8s.SERVICES.plural, k8s.HPAS.plural, k8s.SCALEDOBJECTS.plural, k8s.HTTPROUTES.plural}
WATCHED_KINDS = (k8s.MODELS, k8s.MODELVERSIONS, k8s.MODELDEPLOYMENTS, k8s.JOBS, k8s.DEPLOYMENTS, k8s.SERVICES, k8s.PODS,
          k8s.HPAS, k8s.SCALEDOBJECTS, k8s.HTTPROUTES)
DROPPED_METADATA = ("managedFields",)
DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
SERVER_POD = "server/"  # the index of a Triton pod: this and its ModelDeployment's label value
# Deletions remembered, so that a write that returns after the object's DELETED event cannot
# bring it back into the informer.
TOMBSTONES = 4096

Body = dict[str, Any]
Ref = tuple[str, str]  # (namespace, name)


def slim(resource: k8s.Resource, body: Body) -> Body:
    """The part of `body` that reconciles read."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in DROPPED_METADATA}
    annotations = meta.get("annotations")
    if annotations and any(a in annotations for a in DROPPED_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in DROPPED_ANNOTATIONS}
    kept: Body = {"apiVersion": body.get("apiVersion") or resource.api_version, "kind": body.get("kind") or resource.kind, "metadata": meta}
    for field in KEPT_FIELDS[resource.plural]:
        if field in body:
            kept[field] = body[field]
    return kept


@dataclass(frozen=True)
class Packed:
    """A kept body as compressed compact JSON (PACKED collections), with the one field the
    informer itself compares."""

    resource_version: str | None
    data: bytes

    @classmethod
    def of(cls, body: Body) -> Packed:
        text = json.dumps(body, separators=(",", ":")).encode()
        return cls(body["metadata"].get("resourceVersion"), zlib.compress(text, 1))

    def body(self) -> Body:
        return json.loads(zlib.decompress(self.data))  # type: ignore[no-any-return]


Kept = Body | Packed


def _resource_version(kept: Kept) -> str | None:
    return kept.resource_version if isinstance(kept, Packed) else kept["metadata"].get("resourceVersion")


def _unpacked(kept: Kept | None) -> Body | None:
    return kept.body() if isinstance(kept, Packed) else kept


def _older(candidate: str | None, than: str | None) -> bool:
    """Whether resourceVersion `candidate` is older than `than` (etcd revisions are integers)."""
    if candidate and than and candidate.isdigit() and than.isdigit():
        return int(candidate) < int(than)
    return False


def _secondary(resource: k8s.Resource, body: Body) -> str | None:
    """The index a collection is also looked up by: a child's Model, a Job pod's Job uid."""
    if resource in (k8s.MODELVERSIONS, k8s.MODELDEPLOYMENTS):
        return str((body.get("spec") or {}).get("model") or "")
    if resource == k8s.PODS:
        labels = (body.get("metadata") or {}).get("labels") or {}
        if JOB_UID_LABEL in labels:
            return str(labels[JOB_UID_LABEL])
        server = labels.get(naming.LABEL_DEPLOYMENT)
        return f"{SERVER_POD}{server}" if server and labels.get(naming.LABEL_COMPONENT) == naming.COMPONENT_SERVER else None
    return None


class Informer:
    """Objects by collection, namespace and name, plus the indexes reconciles look up by.
    Fed from the event loop, read from reconcile threads; the objects handed out are shared
    and must not be changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Ref, Kept]] = {r.plural: {} for r in WATCHED_KINDS}
        self._index: dict[tuple[str, str, str], set[str]] = {}
        self._gone: OrderedDict[tuple[str, str, str], str] = OrderedDict()

    # -- feeding ---------------------------------------------------------------------------

    def observe(self, resource: k8s.Resource, body: Body) -> Body | None:
        """A watch event (added or modified). Returns what was kept before."""
        return self._put(resource, slim(resource, body))

    def store(self, resource: k8s.Resource, body: Body | None) -> None:
        """What a write of ours returned: kept unless the watch already brought something newer."""
        if body and body.get("metadata", {}).get("name"):
            self._put(resource, slim(resource, body))

    def forget(self, resource: k8s.Resource, body: Body) -> Body | None:
        """A watch event (deleted). Returns what was kept before."""
        meta = body.get("metadata") or {}
        ref = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            self._gone[(resource.plural, *ref)] = meta.get("resourceVersion", "")
            while len(self._gone) > TOMBSTONES:
                self._gone.popitem(last=False)
            old = self._objects[resource.plural].pop(ref, None)
            if isinstance(old, dict):
                self._unindex(resource, ref, old)
            return _unpacked(old)

    def _put(self, resource: k8s.Resource, body: Body) -> Body | None:
        meta = body["metadata"]
        ref = (meta.get("namespace", ""), meta["name"])
        version = meta.get("resourceVersion")
        with self._lock:
            objects = self._objects[resource.plural]
            old = objects.get(ref)
            # The same resourceVersion is the same object: the copy held already stays, so the
            # watch's copy and our write's answer are never both kept.
            if old is not None and (_older(version, _resource_version(old)) or (version and version == _resource_version(old))):
                return _unpacked(old)
            gone = self._gone.get((resource.plural, *ref))
            if old is None and gone is not None:
                if not _older(gone, version):  # deleted after this write: stays deleted
                    return None
                del self._gone[(resource.plural, *ref)]
            if isinstance(old, dict):
                self._unindex(resource, ref, old)
            if resource.plural in PACKED:
                objects[ref] = Packed.of(body)
                return _unpacked(old)
            objects[ref] = body
            secondary = _secondary(resource, body)
            if secondary is not None:
                self._index.setdefault((resource.plural, ref[0], secondary), set()).add(ref[1])
            return _unpacked(old)

    def _unindex(self, resource: k8s.Resource, ref: Ref, body: Body) -> None:
        secondary = _secondary(resource, body)
        if secondary is None:
            return
        key = (resource.plural, ref[0], secondary)
        names = self._index.get(key)
        if names is not None:
            names.discard(ref[1])
            if not names:
                del self._index[key]

    # -- reading ---------------------------------------------------------------------------

    def get(self, resource: k8s.Resource, namespace: str, name: str) -> Body | None:
        with self._lock:
            kept = self._objects[resource.plural].get((namespace, name))
        return _unpacked(kept)

    def _by_index(self, resource: k8s.Resource, namespace: str, value: str) -> list[Body]:
        with self._lock:
            objects = self._objects[resource.plural]
            names = sorted(self._index.get((resource.plural, namespace, value), ()))
            return [objects[(namespace, n)] for n in names]  # type: ignore[misc]  # indexed kinds are never packed

    def versions_of(self, namespace: str, model: str) -> list[Body]:
        """The ModelVersions whose spec.model is `model`."""
        return self._by_index(k8s.MODELVERSIONS, namespace, model)

    def deployments_of(self, namespace: str, model: str) -> list[Body]:
        """The ModelDeployments whose spec.model is `model`."""
        return self._by_index(k8s.MODELDEPLOYMENTS, namespace, model)

    def pods_of_job(self, namespace: str, job_uid: str) -> list[Body]:
        return self._by_index(k8s.PODS, namespace, job_uid)

    def server_pods(self, namespace: str, deployment: str) -> list[Body]:
        """The Triton pods of one ModelDeployment (stable and canary), by the labels the operator
        sets on them (`naming.server_selector`)."""
        return self._by_index(k8s.PODS, namespace, f"{SERVER_POD}{naming.label_value(deployment)}")

    # -- accounting ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {plural: len(objects) for plural, objects in self._objects.items()}

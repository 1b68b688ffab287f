"""The kopf wiring. Every watch event feeds the informer and wakes the keys it can affect
(`modelops.core.dependents` decides which); nothing here decides anything else.

Only event-watching and indexing handlers are used: kopf then stores no progress, diff-base
or finalizer on our objects, so a resync with nothing changed writes nothing. The indexing
handlers feed the informer; kopf runs them for every object of the initial listings of all
watched kinds before it runs any other handler, so no reconcile ever sees a half-filled informer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf

from modelops import kube as k8s
from modelops.api.types import GROUP, VERSION
from modelops.core import dependents, naming, podcause
from modelops.handlers.operator import Operator
from modelops.handlers.queue import Key
from modelops.settings import KOPF_PREFIX

logger = logging.getLogger(__name__)

MANAGED = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
COMPRESSOR_PODS = {**MANAGED, naming.LABEL_COMPONENT: naming.COMPONENT_COMPRESSOR}
SERVER_PODS = {**MANAGED, naming.LABEL_COMPONENT: naming.COMPONENT_SERVER}


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds a diff-base (a deep copy of the whole body) on every watch event, for its
    on.create/on.update/on.resume handlers. The operator registers none, only event and index
    handlers (a unit test holds it to that), so nothing reads one: none is built or stored.
    That was a tenth of the operator's CPU at scale."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf's own marks, should it ever write any, live under modelops.dev."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.finalizer = f"{KOPF_PREFIX}/finalizer"
    settings.posting.enabled = False  # the operator posts its own, meaningful events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


def _owner_key(body: dict[str, Any], kind: str, group: str = GROUP) -> Key | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("apiVersion", "").startswith(f"{group}/"):
            return Key(kind, body["metadata"]["namespace"], ref["name"])
    return None


# What the informer keeps, with the labels that select the operator's own objects. A kind whose
# API is not served (KEDA or the Gateway API not installed) is not watched: kopf starts its
# watch when the CRD appears.
FEEDS: tuple[tuple[k8s.Resource, dict[str, Any] | None, str], ...] = (
    (k8s.MODELS, None, ""), (k8s.MODELVERSIONS, None, ""), (k8s.MODELDEPLOYMENTS, None, ""),
    (k8s.JOBS, MANAGED, ""), (k8s.DEPLOYMENTS, MANAGED, ""), (k8s.SERVICES, MANAGED, ""),
    (k8s.PODS, COMPRESSOR_PODS, ""), (k8s.PODS, SERVER_PODS, "-triton"),
    (k8s.HPAS, MANAGED, ""), (k8s.SCALEDOBJECTS, MANAGED, ""), (k8s.HTTPROUTES, MANAGED, ""),
)
# The children of a ModelDeployment: any change to one, by anyone, wakes its owner, so a hand
# edit, a scale or a deletion is reverted by the owner's next reconcile (what it renders, it keeps).
DEPLOYMENT_CHILDREN = (k8s.DEPLOYMENTS, k8s.SERVICES, k8s.HPAS, k8s.SCALEDOBJECTS, k8s.HTTPROUTES)

Before = dict[str, Any] | None


class _Wiring:
    """The handlers of one registry, in groups: lifecycle, informer feeds, custom resources, children."""

    def __init__(self, operator: Operator) -> None:
        self.operator = operator
        self.informer = operator.informer
        self.registry = kopf.OperatorRegistry()
        self._last: dict[tuple[str, str, str], Before] = {}

    def follow(self, resource: k8s.Resource, event: kopf.RawEvent) -> None:
        """The indexing handler keeps what is added or modified; a deletion is dropped here."""
        if event.get("type") == "DELETED":
            self.informer.forget(resource, dict(event["object"]))

    def previous(self, resource: k8s.Resource, event: kopf.RawEvent) -> tuple[Before, Before]:
        """(before, after) of this event, for the kinds whose change decides what it wakes: the
        indexing handler already kept `after`; `before` is what the previous event left."""
        body: dict[str, Any] = dict(event["object"])
        meta = body.get("metadata") or {}
        ref = (resource.plural, meta.get("namespace", ""), meta.get("name", ""))
        if event.get("type") == "DELETED":
            self.informer.forget(resource, body)
            return self._last.pop(ref, None), None
        after = self.informer.get(resource, ref[1], ref[2])
        before = self._last.get(ref)
        self._last[ref] = after
        return before, after

    def wake_all(self, kind: str, namespace: str, names: Iterable[str]) -> None:
        for name in names:
            self.operator.wake(Key(kind, namespace, name))

    def lifecycle(self) -> None:
        operator, registry = self.operator, self.registry

        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            # The same sources as the kubernetes client: in-cluster account or $KUBECONFIG.
            return kopf.login_via_client(**kwargs)

        @kopf.on.startup(registry=registry)
        async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
            configure_kopf(settings)
            await operator.start()

        @kopf.on.cleanup(registry=registry)
        async def cleanup(**_: Any) -> None:
            await operator.stop()

    def feeds(self) -> None:
        """Keep the informer current from kopf's watches (deletions come as events)."""
        for resource, labels, part in FEEDS:
            self._feed(resource, labels, part)

    def _feed(self, resource: k8s.Resource, labels: dict[str, Any] | None, part: str) -> None:
        informer = self.informer

        @kopf.on.index(resource.group, resource.version, resource.plural, labels=labels, id=f"informer-{resource.plural}{part}",
                       registry=self.registry)
        def index(body: kopf.Body, **_: Any) -> None:
            informer.observe(resource, dict(body))

    def custom_resources(self) -> None:
        operator, informer, registry = self.operator, self.informer, self.registry

        @kopf.on.event(GROUP, VERSION, "models", registry=registry)
        async def model_event(event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
            namespace = namespace or ""
            key = Key("Model", namespace, name)
            before, after = self.previous(k8s.MODELS, event)
            operator.seen(key, after is None)
            operator.wake(key)
            if dependents.model_changed(before, after):  # only its spec reaches below it
                if operator.ctx is not None:
                    operator.ctx.reads.forget_recent(namespace)
                uid = after["metadata"].get("uid") if after is not None else None
                self.wake_all("ModelVersion", namespace, dependents.waiting_versions(informer.versions_of(namespace, name), uid))
                self.wake_all("ModelDeployment", namespace, (d["metadata"]["name"] for d in informer.deployments_of(namespace, name)))

        @kopf.on.event(GROUP, VERSION, "modelversions", registry=registry)
        async def version_event(event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
            namespace = namespace or ""
            key = Key("ModelVersion", namespace, name)
            before, after = self.previous(k8s.MODELVERSIONS, event)
            operator.seen(key, after is None)
            operator.wake(key)
            model = (body.get("spec") or {}).get("model", "")
            if dependents.model_wake_needed(before, after):
                operator.wake(Key("Model", namespace, model))
            old, new = dependents.view_of(before), dependents.view_of(after)
            self.wake_all("ModelVersion", namespace, dependents.siblings_to_wake(old, new, informer.versions_of(namespace, model)))
            self.wake_all("ModelDeployment", namespace,
                          dependents.deployments_to_wake(old, new, informer.deployments_of(namespace, model)))

        @kopf.on.event(GROUP, VERSION, "modeldeployments", registry=registry)
        async def deployment_event(event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
            namespace = namespace or ""
            key = Key("ModelDeployment", namespace, name)
            before, after = self.previous(k8s.MODELDEPLOYMENTS, event)
            operator.seen(key, after is None)
            operator.wake(key)  # it adopts itself to its Model; the Model reads nothing of it
            # The versions whose failedBy this deployment's verdicts decide derive it again.
            for model, numbers in dependents.verdicts_changed(before, after).items():
                self.wake_all("ModelVersion", namespace, dependents.versions_numbered(informer.versions_of(namespace, model), numbers))

    def children(self) -> None:
        operator, informer, registry = self.operator, self.informer, self.registry

        @kopf.on.event("batch", "v1", "jobs", labels=MANAGED, registry=registry)
        async def job_event(event: kopf.RawEvent, body: Any, **_: Any) -> None:
            self.follow(k8s.JOBS, event)
            owner = _owner_key(dict(body), "ModelVersion")
            if owner is not None:
                operator.wake(owner)

        @kopf.on.event("", "v1", "pods", labels=COMPRESSOR_PODS, registry=registry)
        async def job_pod_event(event: kopf.RawEvent, body: Any, **_: Any) -> None:
            self.follow(k8s.PODS, event)
            job = _owner_key(dict(body), "Job", group="batch")
            owner = _owner_key(informer.get(k8s.JOBS, job.namespace, job.name) or {}, "ModelVersion") if job else None
            if owner is not None:
                operator.wake(owner)

        for resource in DEPLOYMENT_CHILDREN:
            self._child(resource)

        # What a rollout decides on reaches the Deployment's status, which wakes the owner; the
        # pods are read (their metrics endpoints, a rollback's cause) when it reconciles. Only a
        # fetch that refused its artifact wakes the owner from a pod: the Deployment's status
        # does not change when an init container fails, and the refusal is reported at once.
        @kopf.on.event("", "v1", "pods", labels=SERVER_PODS, id="follow-pods-triton", registry=registry)
        async def server_pod_event(event: kopf.RawEvent, body: Any, **_: Any) -> None:
            self.follow(k8s.PODS, event)
            pod = dict(body)
            owner = (pod.get("metadata", {}).get("labels") or {}).get(naming.LABEL_DEPLOYMENT)
            if owner and event.get("type") != "DELETED" and podcause.refused_fetch(pod) is not None:
                operator.wake(Key("ModelDeployment", pod["metadata"]["namespace"], owner))

    def _child(self, resource: k8s.Resource) -> None:
        @kopf.on.event(resource.group, resource.version, resource.plural, labels=MANAGED, id=f"child-{resource.plural}",
                       registry=self.registry)
        async def child_event(event: kopf.RawEvent, body: Any, **_: Any) -> None:
            self.follow(resource, event)
            owner = _owner_key(dict(body), "ModelDeployment")
            if owner is not None:
                self.operator.wake(owner)


def build_registry(operator: Operator) -> kopf.OperatorRegistry:
    """Register the handlers on a fresh registry (no import-time registration)."""
    wiring = _Wiring(operator)
    wiring.lifecycle()
    wiring.feeds()
    wiring.custom_resources()
    wiring.children()
    return wiring.registry

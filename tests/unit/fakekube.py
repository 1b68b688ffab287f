"""A small in-memory stand-in for `modelops.kube.Kube`, for unit tests of the reconcilers: it
keeps objects by (plural, namespace, name), applies merge patches the way the API server does,
and records every write, so a test can say exactly what a reconcile wrote."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelops import kube as k8s
from modelops.handlers.context import Context, StorePool
from modelops.handlers.informer import WATCHED_KINDS
from modelops.operatormetrics import Metrics
from modelops.settings import Settings

Body = dict[str, Any]
WATCHED = {r.plural: r for r in WATCHED_KINDS}
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


@dataclass(frozen=True)
class Write:
    verb: str
    plural: str
    name: str
    subresource: str | None = None


@dataclass
class FakeKube:
    objects: dict[tuple[str, str, str], Body] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    reads: list[tuple[str, str]] = field(default_factory=list)
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def put(self, resource: k8s.Resource, body: Body) -> Body:
        body = copy.deepcopy(body)
        body.setdefault("apiVersion", resource.api_version)
        body.setdefault("kind", resource.kind)
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[(resource.plural, meta.get("namespace", ""), meta["name"])] = body  # "": cluster-scoped
        return copy.deepcopy(body)

    def written(self, plural: str) -> list[Write]:
        return [w for w in self.writes if w.plural == plural]

    # -- reads -------------------------------------------------------------------------

    def get(self, resource: k8s.Resource, namespace: str, name: str) -> Body | None:
        self.reads.append(("get", resource.plural))
        found = self.objects.get((resource.plural, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list(self, resource: k8s.Resource, namespace: str, *, label_selector: str | None = None,
             field_selector: str | None = None) -> list[Body]:
        self.reads.append(("list", resource.plural))
        wanted = dict(part.split("=", 1) for part in (label_selector or "").split(",") if part)
        return [
            copy.deepcopy(body) for (plural, ns, _), body in sorted(self.objects.items())
            if plural == resource.plural and ns == namespace
            and all((body["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    # -- writes ------------------------------------------------------------------------

    def create(self, resource: k8s.Resource, body: Body) -> tuple[Body, bool]:
        meta = body["metadata"]
        existing = self.objects.get((resource.plural, meta["namespace"], meta["name"]))
        if existing is not None:
            return copy.deepcopy(existing), False
        self.writes.append(Write("create", resource.plural, meta["name"]))
        return self.put(resource, body), True

    def apply(self, resource: k8s.Resource, body: Body) -> Body:
        meta = body["metadata"]
        self.writes.append(Write("apply", resource.plural, meta["name"]))
        old = self.objects.get((resource.plural, meta.get("namespace", ""), meta["name"]))
        return self.put(resource, merge(old or {}, body))

    def patch(self, resource: k8s.Resource, namespace: str, name: str, patch: Body, subresource: str | None = None) -> Body | None:
        old = self.objects.get((resource.plural, namespace, name))
        if old is None:
            return None
        self.writes.append(Write("patch", resource.plural, name, subresource))
        return self.put(resource, merge(old, patch))

    def json_patch(self, resource: k8s.Resource, namespace: str, name: str, ops: Sequence[Body]) -> Body | None:
        old = self.objects.get((resource.plural, namespace, name))
        if old is None:
            return None
        self.writes.append(Write("json-patch", resource.plural, name))
        new = copy.deepcopy(old)
        for op in ops:
            *parents, last = op["path"].strip("/").split("/")
            target = new
            for part in parents:
                target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
            if op["op"] == "test":
                if target.get(last) != op["value"]:
                    raise k8s.Invalid("test failed", 422)
            elif op["op"] in ("add", "replace"):
                target[last] = copy.deepcopy(op["value"])
            elif op["op"] == "remove" and isinstance(target, list):
                del target[int(last)]
            elif op["op"] == "remove":
                del target[last]
        return self.put(resource, new)

    def patch_status(self, resource: k8s.Resource, namespace: str, name: str, status_patch: Body) -> Body | None:
        return self.patch(resource, namespace, name, {"status": status_patch}, subresource="status")

    def emit_event(self, involved: Body, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def close(self) -> None:
        return None


def context(kube: FakeKube, **settings: Any) -> Context:
    """A Context over `kube`, its cache filled from everything `kube` holds (as the watches do)."""
    ctx = Context(settings=Settings(**settings), kube=kube, metrics=Metrics(), stores=StorePool(),  # type: ignore[arg-type]
                  clock=lambda: NOW)
    refill(ctx, kube)
    return ctx


def refill(ctx: Context, kube: FakeKube) -> None:
    """What the watches would have delivered by now."""
    for (plural, _, _), body in kube.objects.items():
        if plural in WATCHED:
            ctx.reads.informer.observe(WATCHED[plural], copy.deepcopy(body))

"""Reconcile one Model: aggregate its versions into its status, the only object it writes (each
ModelVersion and ModelDeployment adopts itself, `Context.adopt`). What a change of the Model
wakes is decided when its watch event arrives (`modelops.core.dependents`)."""

from __future__ import annotations

from modelops import kube as k8s
from modelops.api.model import ModelReason, ModelSpec, TransportReason
from modelops.api.types import ConditionType
from modelops.core.conditions import FALSE, Cond
from modelops.core.models import model_status, transport_condition
from modelops.core.objects import VersionView
from modelops.handlers.context import BucketProblem, Context, CredentialsProblem
from modelops.handlers.queue import Key


def reconcile_model(ctx: Context, key: Key) -> float | None:
    body = ctx.reads.get(k8s.MODELS, key.namespace, key.name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    spec = ModelSpec.model_validate(body["spec"])
    versions = ctx.reads.versions_of(key.namespace, key.name)
    problem: str | None = None
    reason: str | None = None
    retry: float | None = None
    try:
        ctx.check_storage(key.namespace, spec.storage)
        ctx.check_bucket(key.namespace, spec.storage)
    except BucketProblem as err:
        # Nothing tells the operator when a bucket is created: look again on a timer.
        problem, reason, retry = str(err), err.reason, ctx.settings.retry_seconds
    except CredentialsProblem as err:
        problem, reason = str(err), err.reason
    views = [VersionView.from_body(v) for v in versions]
    transport = transport_condition(spec.storage)
    if reason == ModelReason.ENDPOINT_NOT_ALLOWED and problem is not None:
        # Never a connection, so nothing to say about its protection but the refusal.
        transport = Cond(ConditionType.STORAGE_TRANSPORT, FALSE, TransportReason.ENDPOINT_NOT_ALLOWED, problem)
    status = model_status(
        body.get("status"), key.name, views, problem, body["metadata"].get("generation"), ctx.clock(),
        transport=transport, **({"problem_reason": reason} if reason else {}),
    )
    if ctx.write_status(k8s.MODELS, body, status) and transport.status == "False":
        old = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
        before = old.get(ConditionType.STORAGE_TRANSPORT) or {}
        if (before.get("status"), before.get("reason")) != (transport.status, transport.reason):
            ctx.kube.emit_event(body, "Warning", transport.reason, transport.message)
    return retry

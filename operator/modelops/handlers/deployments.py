"""Reconcile one ModelDeployment: resolve the version, render Triton, keep the children as
rendered, and record this deployment's verdicts on the ModelVersions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from modelops import kube as k8s
from modelops import tritonmetrics
from modelops.api.deployment import DeploymentReason, ModelDeploymentSpec, RolloutStrategy
from modelops.api.model import ModelSpec
from modelops.api.types import ConditionType
from modelops.core import naming, podcause, render
from modelops.core.canary import CanaryServer
from modelops.core.conditions import find
from modelops.core.drift import differences, removals
from modelops.core.objects import OwnerRef, VersionView, owned_by
from modelops.core.rollout import (
    RolloutPlan,
    ServerState,
    Verdict,
    failed_by_status,
    plan_rollout,
    verdicts_of,
)
from modelops.handlers import scaling
from modelops.handlers.context import Context
from modelops.handlers.queue import Key, RetryLater
from modelops.serving import ServingConfigError


def reconcile_deployment(ctx: Context, key: Key) -> float | None:
    namespace, name = key.namespace, key.name
    body = ctx.cache.get(k8s.MODELDEPLOYMENTS, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    spec = ModelDeploymentSpec.model_validate(body["spec"])
    uid = body["metadata"]["uid"]
    model_body = ctx.cache.get(k8s.MODELS, namespace, spec.model)
    versions = [VersionView.from_body(v) for v in ctx.cache.versions_of(namespace, spec.model)] if model_body is not None else []
    live_deployment = ctx.cache.get(k8s.DEPLOYMENTS, namespace, name)
    live_service = ctx.cache.get(k8s.SERVICES, namespace, name)
    scaled = scaling.scale(ctx, spec, body, live_deployment)
    spec = scaled.spec
    canary_inputs = _canary_inputs(ctx, spec, body, name, namespace)
    retry = (body["metadata"].get("annotations") or {}).get(naming.ANNOTATION_RETRY)
    server = ServerState.from_deployment(live_deployment) if live_deployment is not None else None
    cause = None
    if server is not None and live_deployment is not None and model_body is not None and server.deadline_exceeded:
        server = replace(server, current=_template_current(ctx, spec, body, model_body, versions, live_deployment, server, retry))
        if server.current and server.version not in ((body.get("status") or {}).get("failedVersions") or ()):
            # A rollback is due: its cause is read from the pods, once (pods are not cached).
            pods = ctx.kube.list(k8s.PODS, namespace, label_selector=naming.selector_text(naming.server_selector(name)))
            cause = podcause.failure_cause(pods, server.version or 0)

    def plan(blocked: tuple[str, str] | None = None) -> RolloutPlan:
        return plan_rollout(
            spec=spec,
            generation=body["metadata"].get("generation"),
            old_status=body.get("status"),
            versions=versions,
            server=server,
            model_exists=model_body is not None,
            endpoints=render.endpoints(name, namespace),
            now=ctx.clock(),
            history=ctx.settings.rollout_history,
            blocked=blocked,
            retry=retry,
            canary_server=canary_inputs[1],
            canary_metrics=canary_inputs[2].metrics if canary_inputs[2] is not None else None,
            canary_metrics_error=canary_inputs[2].error if canary_inputs[2] is not None else None,
            cause=cause,
        )

    taken = _name_taken(live_deployment, live_service, uid, name)
    result = plan(taken)
    if result.target is not None and model_body is not None:
        owner = OwnerRef.of(body)
        try:
            desired = render.render_deployment(
                name=name, namespace=namespace, owner=owner, spec=spec, model_name=spec.model,
                model=ModelSpec.model_validate(model_body["spec"]), version=result.target, settings=ctx.settings,
                retry=retry,
            )
        except ServingConfigError as err:
            result = plan(("InvalidServingConfig", f"the Triton configuration is invalid: {err}"))
        else:
            service = render.render_service(name=name, namespace=namespace, owner=owner, model_name=spec.model)
            keep(ctx, k8s.DEPLOYMENTS, live_deployment, desired)
            keep(ctx, k8s.SERVICES, live_service, service)
            keep_canary(ctx, result, canary_inputs[0], spec, model_body, versions, name, namespace, owner, retry)
            split = result.canary.weights if result.canary is not None and result.canary.hold else None
            canary_status = result.status.canary
            scaling.keep_providers(ctx, keep, spec, name, namespace, owner, split,
                                   canary_status.stable_version if canary_status is not None and split else None)

    status = result.status
    if scaled.status is not None:
        status = status.model_copy(update={"autoscaling": scaled.status})
    if scaled.refused is not None:
        status = status.model_copy(update={"conditions": scaling.refusal_degrades(
            status.conditions, scaled.refused, body["metadata"].get("generation"), ctx.clock())})
    ctx.write_status(k8s.MODELDEPLOYMENTS, body, status.wire())
    if scaled.message is not None:
        ctx.kube.emit_event(body, "Normal", DeploymentReason.SCALED, scaled.message)
    if scaled.warning is not None:
        ctx.kube.emit_event(body, "Warning", DeploymentReason.METRICS_UNAVAILABLE, f"autoscaler: {scaled.warning}")
    was = find((body.get("status") or {}).get("conditions"), ConditionType.DEGRADED) or {}
    if scaled.refused is not None and was.get("reason") != DeploymentReason.ENDPOINT_NOT_ALLOWED:
        ctx.kube.emit_event(body, "Warning", DeploymentReason.ENDPOINT_NOT_ALLOWED, scaled.refused)
    for event in result.events:
        ctx.kube.emit_event(body, event.type, event.reason, event.message)
    if result.started is not None:
        ctx.metrics.rollouts.labels("started").inc()
    if result.succeeded is not None:
        ctx.metrics.rollouts.labels("succeeded").inc()
        ctx.metrics.rollout_seconds.observe(result.succeeded[1])
    if result.rolled_back is not None:
        ctx.metrics.rollbacks.inc()
    # Level-triggered: this deployment's name sits on exactly the versions it failed.
    for verdict in verdicts_of(name, result.status.failed_versions or (), versions):
        record_verdict(ctx, namespace, verdict)
    waits = [w for w in (result.requeue, scaled.requeue) if w is not None]
    return min(waits) if waits else None


def _canary_inputs(
    ctx: Context, spec: ModelDeploymentSpec, body: dict[str, Any], name: str, namespace: str
) -> tuple[dict[str, Any] | None, CanaryServer | None, tritonmetrics.Readout | None]:
    """The live canary Deployment and, while a canary runs, Triton's counters of every pod
    (from the pods, or through Prometheus when the operator is given one)."""
    live = ctx.cache.get(k8s.DEPLOYMENTS, namespace, naming.canary_name(name))
    if spec.rollout.strategy != RolloutStrategy.CANARY and live is None:
        return None, None, None
    server = None
    if live is not None:
        state = ServerState.from_deployment(live)
        server = CanaryServer(state.version, state.replicas, state.available, state.updated, state.deadline_exceeded)
    metrics = None
    if server is not None and server.available and ((body.get("status") or {}).get("canary") or {}).get("phase") == "Progressing":
        selector = naming.selector_text(naming.server_selector(name))
        metrics = tritonmetrics.read(ctx.kube.list(k8s.PODS, namespace, label_selector=selector), spec.model, namespace,
                                     tritonmetrics.PrometheusSource.of(ctx.settings))
    return live, server, metrics


def keep_canary(
    ctx: Context, result: RolloutPlan, live: dict[str, Any] | None, spec: ModelDeploymentSpec,
    model_body: dict[str, Any], versions: list[VersionView], name: str, namespace: str, owner: OwnerRef,
    retry: str | None,
) -> None:
    """The canary Deployment as the canary plan wants it; never created just to hold 0 pods,
    and scaled to 0 (kept, for its history) when no canary runs."""
    plan = result.canary
    view = None
    if plan is not None and plan.canary_version is not None:
        view = next((v for v in versions if v.version == plan.canary_version and v.ready), None)
    if plan is None or view is None or (plan.canary_replicas == 0 and live is None):
        if live is not None and (live.get("spec") or {}).get("replicas"):
            ctx.kube.json_patch(k8s.DEPLOYMENTS, namespace, naming.canary_name(name),
                                [{"op": "replace", "path": "/spec/replicas", "value": 0}])
        return
    desired = render.render_deployment(
        name=name, namespace=namespace, owner=owner, spec=spec, model_name=spec.model,
        model=ModelSpec.model_validate(model_body["spec"]), version=view, settings=ctx.settings,
        canary_replicas=plan.canary_replicas, retry=retry,
    )
    keep(ctx, k8s.DEPLOYMENTS, live, desired)


def _template_current(
    ctx: Context, spec: ModelDeploymentSpec, body: dict[str, Any], model_body: dict[str, Any],
    versions: list[VersionView], live: dict[str, Any], server: ServerState, retry: str | None,
) -> bool:
    """Whether the live pod template is what the current spec and retry render for the version
    it runs. When it is not, its exceeded deadline belongs to an older attempt."""
    view = next((v for v in versions if v.version == server.version and v.ready), None)
    if view is None:
        return True
    meta = body["metadata"]
    try:
        desired = render.render_deployment(
            name=meta["name"], namespace=meta["namespace"], owner=OwnerRef.of(body), spec=spec, model_name=spec.model,
            model=ModelSpec.model_validate(model_body["spec"]), version=view, settings=ctx.settings, retry=retry,
        )
    except (ServingConfigError, ValueError):
        return True
    return not differences(desired["spec"]["template"], (live.get("spec") or {}).get("template"))


def keep(ctx: Context, resource: k8s.Resource, live: dict[str, Any] | None, desired: dict[str, Any]) -> None:
    """Make the live child what we render: server-side apply when a rendered field is missing
    or different (this also recreates a deleted child), then remove the entries that someone
    added to a rendered list, which apply leaves to their owner. No write when nothing differs."""
    found = differences(desired, live)
    if not found:
        return
    if any(d.kind != "extra" for d in found):
        live = ctx.kube.apply(resource, desired)
        ctx.cache.store(resource, live)
        found = differences(desired, live)
    ops = removals(found)
    if ops:
        meta = desired["metadata"]
        try:
            ctx.cache.store(resource, ctx.kube.json_patch(resource, meta["namespace"], meta["name"], ops))
        except k8s.Invalid:  # a guarding test failed: the list changed since it was read
            raise RetryLater(f"{resource.kind} {meta['name']} changed while entries added by hand were removed") from None


VERDICT_ATTEMPTS = 5


def record_verdict(ctx: Context, namespace: str, verdict: Verdict) -> None:
    """Change one ModelVersion's failedBy without losing a concurrent change: each write is
    guarded by the resourceVersion it was computed from, and a conflict reads again (from the
    API: the cache has not seen the change that conflicted)."""
    for attempt in range(VERDICT_ATTEMPTS):
        if attempt == 0:
            body = ctx.cache.get(k8s.MODELVERSIONS, namespace, verdict.version_name)
        else:
            body = ctx.kube.get(k8s.MODELVERSIONS, namespace, verdict.version_name)
        if body is None:
            return
        status = failed_by_status(body.get("status"), verdict, ctx.clock())
        if status is None:
            return
        patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": status}
        try:
            patched = ctx.kube.patch(k8s.MODELVERSIONS, namespace, verdict.version_name, patch, subresource="status")
            ctx.cache.store(k8s.MODELVERSIONS, patched)
            return
        except k8s.Conflict:
            continue
    raise k8s.Conflict(f"ModelVersion {verdict.version_name} kept changing while its failedBy was updated", 409)


def _name_taken(deployment: dict[str, Any] | None, service: dict[str, Any] | None, uid: str, name: str) -> tuple[str, str] | None:
    for kind, live in (("Deployment", deployment), ("Service", service)):
        if live is not None and not owned_by(live, uid):
            return ("NameTaken", f"a {kind} named {name} exists that this ModelDeployment does not own; delete it or rename the ModelDeployment")
    return None

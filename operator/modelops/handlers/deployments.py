"""Reconcile one ModelDeployment: resolve the version, render Triton, apply what changed."""

from __future__ import annotations

from typing import Any

from modelops import kube as k8s
from modelops.api.deployment import ModelDeploymentSpec
from modelops.api.model import ModelSpec
from modelops.core import naming, render
from modelops.core.objects import OwnerRef, VersionView, owned_by
from modelops.core.rollout import RolloutPlan, ServerState, plan_rollout, rollout_failed_conditions
from modelops.handlers.context import Context
from modelops.handlers.queue import Key
from modelops.serving import ServingConfigError


def reconcile_deployment(ctx: Context, key: Key) -> float | None:
    namespace, name = key.namespace, key.name
    body = ctx.kube.get(k8s.MODELDEPLOYMENTS, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    spec = ModelDeploymentSpec.model_validate(body["spec"])
    uid = body["metadata"]["uid"]
    model_body = ctx.kube.get(k8s.MODELS, namespace, spec.model)
    versions = (
        [VersionView.from_body(v) for v in ctx.kube.list(k8s.MODELVERSIONS, namespace, field_selector=f"spec.model={spec.model}")]
        if model_body is not None
        else []
    )
    live_deployment = ctx.kube.get(k8s.DEPLOYMENTS, namespace, name)
    live_service = ctx.kube.get(k8s.SERVICES, namespace, name)

    def plan(blocked: tuple[str, str] | None = None) -> RolloutPlan:
        return plan_rollout(
            spec=spec,
            generation=body["metadata"].get("generation"),
            old_status=body.get("status"),
            versions=versions,
            server=ServerState.from_deployment(live_deployment) if live_deployment is not None else None,
            model_exists=model_body is not None,
            endpoints=render.endpoints(name, namespace),
            now=ctx.clock(),
            history=ctx.settings.rollout_history,
            blocked=blocked,
            retry=(body["metadata"].get("annotations") or {}).get(naming.ANNOTATION_RETRY),
        )

    taken = _name_taken(live_deployment, live_service, uid, name)
    result = plan(taken)
    if result.target is not None and model_body is not None:
        owner = OwnerRef.of(body)
        try:
            desired = render.render_deployment(
                name=name, namespace=namespace, owner=owner, spec=spec, model_name=spec.model,
                model=ModelSpec.model_validate(model_body["spec"]), version=result.target, settings=ctx.settings,
            )
        except ServingConfigError as err:
            result = plan(("InvalidServingConfig", f"the Triton configuration is invalid: {err}"))
        else:
            service = render.render_service(name=name, namespace=namespace, owner=owner, model_name=spec.model)
            if render.needs_apply(live_deployment, desired):
                ctx.kube.apply(k8s.DEPLOYMENTS, desired)
            if render.needs_apply(live_service, service):
                ctx.kube.apply(k8s.SERVICES, service)

    ctx.write_status(k8s.MODELDEPLOYMENTS, body, result.status)
    for event in result.events:
        ctx.kube.emit_event(body, event.type, event.reason, event.message)
    if result.started is not None:
        ctx.metrics.rollouts.labels("started").inc()
    if result.succeeded is not None:
        ctx.metrics.rollouts.labels("succeeded").inc()
        ctx.metrics.rollout_seconds.observe(result.succeeded[1])
    if result.rolled_back is not None:
        ctx.metrics.rollbacks.inc()
        _mark_version(ctx, namespace, versions, result.rolled_back, True, (
            f"the rollout of version {result.rolled_back} on ModelDeployment {name} did not become available "
            f"within {spec.rollout.progress_deadline_seconds}s and was rolled back; Latest skips it until the "
            f"modelops.dev/retry annotation on {name} changes"))
    for number in result.cleared:
        _mark_version(ctx, namespace, versions, number, False,
                      f"ModelDeployment {name} was asked to retry version {number} (modelops.dev/retry)")
    return None


def _mark_version(ctx: Context, namespace: str, versions: list[VersionView], number: int, failed: bool,
                  message: str) -> None:
    """Record a deployment's verdict on the ModelVersion itself, where `kubectl get mv` users look."""
    view = next((v for v in versions if v.version == number and not v.deleting), None)
    body = ctx.kube.get(k8s.MODELVERSIONS, namespace, view.name) if view else None
    if body is None:
        return
    conditions = rollout_failed_conditions((body.get("status") or {}).get("conditions"), failed, message, ctx.clock())
    if conditions is not None:
        ctx.kube.patch_status(k8s.MODELVERSIONS, namespace, view.name, {"conditions": conditions})


def _name_taken(deployment: dict[str, Any] | None, service: dict[str, Any] | None, uid: str, name: str) -> tuple[str, str] | None:
    for kind, live in (("Deployment", deployment), ("Service", service)):
        if live is not None and not owned_by(live, uid):
            return ("NameTaken", f"a {kind} named {name} exists that this ModelDeployment does not own; delete it or rename the ModelDeployment")
    return None

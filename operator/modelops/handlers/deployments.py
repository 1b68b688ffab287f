"""Reconcile one ModelDeployment: resolve the version, render Triton, keep the children as
rendered, and record this deployment's verdicts in its own status (failedVersions). It writes
no ModelVersion: each version derives its failedBy from the deployments' failedVersions. It is
the one writer of its ModelDeployment: status, and the ownerReference to the Model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from modelops import kube as k8s
from modelops import tritonmetrics
from modelops.api.deployment import DeploymentReason, ModelDeploymentSpec, ModelDeploymentStatus, RolloutOutcome, RolloutStrategy
from modelops.api.model import ModelSpec
from modelops.core import naming, podcause, render
from modelops.core.canary import CanaryInputs
from modelops.core.drift import differences
from modelops.core.objects import OwnerRef, ServerState, VersionView, owned_by
from modelops.core.rollout import RolloutInputs, RolloutPlan, plan_rollout
from modelops.core.upgrade import keep_running_fetcher
from modelops.handlers import scaling
from modelops.handlers.children import keep
from modelops.handlers.context import Context
from modelops.handlers.queue import Key
from modelops.serving import ServingConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Work:
    """What one reconcile of a ModelDeployment works with, read once at its start."""

    ctx: Context
    body: dict[str, Any]
    spec: ModelDeploymentSpec  # with replicas as the scaler asks
    model_body: dict[str, Any] | None
    versions: list[VersionView]
    live: dict[str, Any] | None  # the stable Triton Deployment
    service: dict[str, Any] | None
    retry: str | None

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def owner(self) -> OwnerRef:
        return OwnerRef.of(self.body)

    def ready(self, version: int | None) -> VersionView | None:
        return next((v for v in self.versions if v.version == version and v.ready), None)

    def render(self, version: VersionView, canary_replicas: int | None = None) -> dict[str, Any]:
        """The Triton Deployment (stable, or the canary with `canary_replicas`) for `version`."""
        assert self.model_body is not None
        return render.render_deployment(render.DeploymentInputs(
            name=self.name, namespace=self.namespace, owner=self.owner, spec=self.spec, model_name=self.spec.model,
            model=ModelSpec.model_validate(self.model_body["spec"]), version=version, settings=self.ctx.settings,
            retry=self.retry, canary_replicas=canary_replicas,
        ))


def reconcile_deployment(ctx: Context, key: Key) -> float | None:
    body = ctx.reads.get(k8s.MODELDEPLOYMENTS, key.namespace, key.name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        ctx.metrics.past_deadline.set(key.namespace, key.name, None)
        return None
    body = ctx.adopt(k8s.MODELDEPLOYMENTS, body)
    spec = ModelDeploymentSpec.model_validate(body["spec"])
    model_body = ctx.reads.get(k8s.MODELS, key.namespace, spec.model)
    versions = [VersionView.from_body(v) for v in ctx.reads.versions_of(key.namespace, spec.model)] if model_body is not None else []
    if ctx.settings.node_cache_claim and model_body is not None:
        _ensure_node_cache_volume(ctx, key.namespace)
    live = ctx.reads.get(k8s.DEPLOYMENTS, key.namespace, key.name)
    scaled = scaling.scale(ctx, spec, body, live)
    work = _Work(ctx, body, scaled.spec, model_body, versions, live, ctx.reads.get(k8s.SERVICES, key.namespace, key.name),
                 (body["metadata"].get("annotations") or {}).get(naming.ANNOTATION_RETRY))
    canary_live, canary = _canary_inputs(work)
    result = _plan_and_keep(work, _rollout_inputs(work, canary, scaled.refused), canary_live)
    _record(work, result, scaled)
    waits = [w for w in (result.requeue, scaled.requeue) if w is not None]
    return min(waits) if waits else None


def _ensure_node_cache_volume(ctx: Context, namespace: str) -> None:
    """The namespace's claim on the node cache, which its Triton pods mount, applied once."""
    if namespace in ctx.node_cache_namespaces:
        return
    volume, claim = render.render_node_cache_volume(namespace, ctx.settings)
    try:
        ctx.kube.apply(k8s.PERSISTENTVOLUMES, volume)
        ctx.kube.apply(k8s.PERSISTENTVOLUMECLAIMS, claim)
    except k8s.Invalid as err:
        # A bound volume's path and a claim's volume cannot change (a changed nodeCache.path):
        # the pods keep the cache they have until the volume and claim are deleted.
        logger.warning("node cache volume %s in namespace %s kept as it is: %s", volume["metadata"]["name"], namespace, err)
    ctx.node_cache_namespaces.add(namespace)


def _rollout_inputs(work: _Work, canary: CanaryInputs, scaler_refused: str | None) -> RolloutInputs:
    server = ServerState.from_deployment(work.live) if work.live is not None else None
    cause = refused = None
    if server is not None and server.version is not None:
        refused = podcause.fetch_refusal(work.ctx.reads.server_pods(work.namespace, work.name), server.version)
    if server is not None and work.live is not None and work.model_body is not None and server.deadline_exceeded:
        server = replace(server, current=_template_current(work, work.live, server))
        if server.current and server.version not in ((work.body.get("status") or {}).get("failedVersions") or ()):
            # A rollback is due: its cause is read from the pods, once.
            cause = podcause.failure_cause(work.ctx.reads.server_pods(work.namespace, work.name), server.version or 0)
    return RolloutInputs(
        spec=work.spec,
        generation=work.body["metadata"].get("generation"),
        old=ModelDeploymentStatus.model_validate(work.body.get("status") or {}),
        versions=work.versions,
        server=server,
        model_exists=work.model_body is not None,
        endpoints=render.endpoints(work.name, work.namespace),
        now=work.ctx.clock(),
        history=work.ctx.settings.rollout_history,
        blocked=_name_taken(work.live, work.service, work.body["metadata"]["uid"], work.name),
        retry=work.retry,
        canary=canary,
        cause=cause,
        scaler_refused=scaler_refused,
        refused=refused,
        pods=_rollout_pods(work),
    )


def _rollout_pods(work: _Work) -> tuple[dict[str, Any], ...]:
    """The Triton pods while a rollout is in progress (its steps are timed from them), else none."""
    rollouts = (work.body.get("status") or {}).get("rollouts") or []
    if not rollouts or rollouts[-1].get("outcome") != RolloutOutcome.PROGRESSING:
        return ()
    return tuple(work.ctx.reads.server_pods(work.namespace, work.name))


def _plan_and_keep(work: _Work, given: RolloutInputs, canary_live: dict[str, Any] | None) -> RolloutPlan:
    """Plan, then keep the children as the plan renders them; a Triton configuration that
    cannot be rendered blocks the rollout instead."""
    ctx = work.ctx
    result = plan_rollout(given)
    if result.target is None or work.model_body is None:
        return result
    try:
        desired = work.render(result.target)
    except ServingConfigError as err:
        return plan_rollout(replace(given, blocked=("InvalidServingConfig", f"the Triton configuration is invalid: {err}")))
    keep(ctx, k8s.DEPLOYMENTS, work.live, desired)
    keep(ctx, k8s.SERVICES, work.service, render.render_service(name=work.name, namespace=work.namespace, owner=work.owner,
                                                                 model_name=work.spec.model))
    keep_canary(work, result, canary_live)
    split = result.canary.weights if result.canary is not None and result.canary.hold else None
    canary_status = result.status.canary
    scaling.keep_providers(ctx, work.spec, work.name, work.namespace, work.owner, split,
                           canary_status.stable_version if canary_status is not None and split else None)
    return result


def _record(work: _Work, result: RolloutPlan, scaled: scaling.Scaling) -> None:
    """The status, the events and the metrics of this reconcile."""
    ctx, body = work.ctx, work.body
    status = result.status
    if scaled.status is not None:
        status = status.model_copy(update={"autoscaling": scaled.status})
    wire = status.wire()
    ctx.write_status(k8s.MODELDEPLOYMENTS, body, wire)
    ctx.metrics.past_deadline.set(work.namespace, work.name, wire.get("conditions"))
    if scaled.message is not None:
        ctx.kube.emit_event(body, "Normal", DeploymentReason.SCALED, scaled.message)
    if scaled.warning is not None:
        ctx.kube.emit_event(body, "Warning", DeploymentReason.METRICS_UNAVAILABLE, f"autoscaler: {scaled.warning}")
    for event in result.events:
        ctx.kube.emit_event(body, event.type, event.reason, event.message)
    if result.started is not None:
        ctx.metrics.rollouts.labels("started").inc()
    if result.succeeded is not None:
        ctx.metrics.rollout_succeeded(result.succeeded[1], (status.rollouts or [])[-1].timings or [])
    if result.rolled_back is not None:
        ctx.metrics.rollbacks.inc()


def _canary_inputs(work: _Work) -> tuple[dict[str, Any] | None, CanaryInputs]:
    """The live canary Deployment and, while a canary runs, Triton's counters of every pod
    (from the pods, or through Prometheus when the operator is given one)."""
    ctx, spec = work.ctx, work.spec
    live = ctx.reads.get(k8s.DEPLOYMENTS, work.namespace, naming.canary_name(work.name))
    if spec.rollout.strategy != RolloutStrategy.CANARY and live is None:
        return None, CanaryInputs()
    server = ServerState.from_deployment(live) if live is not None else None
    progressing = ((work.body.get("status") or {}).get("canary") or {}).get("phase") == "Progressing"
    if server is None or not server.available or not progressing:
        return live, CanaryInputs(server)
    readout = tritonmetrics.read(ctx.reads.server_pods(work.namespace, work.name), spec.model, work.namespace,
                                 tritonmetrics.PrometheusSource.of(ctx.settings))
    return live, CanaryInputs(server, readout.metrics, readout.error)


def keep_canary(work: _Work, result: RolloutPlan, live: dict[str, Any] | None) -> None:
    """The canary Deployment as the canary plan wants it; never created just to hold 0 pods,
    and scaled to 0 (kept, for its history) when no canary runs."""
    plan = result.canary
    view = work.ready(plan.canary_version) if plan is not None and plan.canary_version is not None else None
    if plan is None or view is None or (plan.canary_replicas == 0 and live is None):
        if live is not None and (live.get("spec") or {}).get("replicas"):
            work.ctx.reads.wrote(k8s.DEPLOYMENTS, work.ctx.kube.json_patch(
                k8s.DEPLOYMENTS, work.namespace, naming.canary_name(work.name),
                [{"op": "replace", "path": "/spec/replicas", "value": 0}]))
        return
    keep(work.ctx, k8s.DEPLOYMENTS, live, work.render(view, canary_replicas=plan.canary_replicas))


def _template_current(work: _Work, live: dict[str, Any], server: ServerState) -> bool:
    """Whether the live pod template is what the current spec and retry render for the version
    it runs. When it is not, its exceeded deadline belongs to an older attempt."""
    view = work.ready(server.version)
    if view is None:
        return True
    try:
        desired = work.render(view)
    except (ServingConfigError, ValueError):
        return True
    desired = keep_running_fetcher(desired, live)
    return not differences(desired["spec"]["template"], (live.get("spec") or {}).get("template"))


def _name_taken(deployment: dict[str, Any] | None, service: dict[str, Any] | None, uid: str, name: str) -> tuple[str, str] | None:
    for kind, live in (("Deployment", deployment), ("Service", service)):
        if live is not None and not owned_by(live, uid):
            return ("NameTaken", f"a {kind} named {name} exists that this ModelDeployment does not own; delete it or rename the ModelDeployment")
    return None

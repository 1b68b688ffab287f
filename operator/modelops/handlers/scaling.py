"""Autoscaling and traffic objects of one ModelDeployment, for the deployment handler: the
operator's scaler (reads Triton's counters on the pods, decides with core/autoscale.py), and
the HorizontalPodAutoscaler, KEDA ScaledObject and HTTPRoute the other providers need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelops import kube as k8s
from modelops import tritonmetrics
from modelops.api.deployment import AutoscalingProvider, AutoscalingStatus, ModelDeploymentSpec
from modelops.core import autoscale, httproute, scalers
from modelops.core.canary import seconds
from modelops.core.objects import OwnerRef
from modelops.handlers.children import keep
from modelops.handlers.context import Context


@dataclass(frozen=True)
class Scaling:
    spec: ModelDeploymentSpec  # with replicas as the scaler asks
    status: AutoscalingStatus | None = None
    message: str | None = None
    requeue: float | None = None
    warning: str | None = None  # a new reason why the metric could not be read, for an event
    refused: str | None = None  # why KEDA may not be pointed at spec.autoscaling.prometheusAddress


PROMETHEUS_ADDRESS_FIELD = "spec.autoscaling.prometheusAddress"


def refused_prometheus(ctx: Context, spec: ModelDeploymentSpec) -> str | None:
    """Why KEDA may not query the deployment's Prometheus address (checked like a storage
    endpoint, since KEDA sends its queries from inside the cluster), or None."""
    auto = spec.autoscaling
    if auto is None or auto.provider != AutoscalingProvider.KEDA or not auto.prometheus_address:
        return None
    return ctx.endpoint_problem(auto.prometheus_address, PROMETHEUS_ADDRESS_FIELD)


def scale(ctx: Context, spec: ModelDeploymentSpec, body: dict[str, Any], live: dict[str, Any] | None) -> Scaling:
    """The replica count that the autoscaler (if any) asks for, as spec.replicas."""
    auto = spec.autoscaling
    meta = body["metadata"]
    if auto is None or spec.suspended:
        return Scaling(spec)
    live_replicas = int((live or {}).get("spec", {}).get("replicas", auto.min_replicas))
    if auto.provider != AutoscalingProvider.OPERATOR:
        # The HPA (or KEDA's) owns the count: plan with what it set.
        count = max(auto.min_replicas, min(live_replicas, auto.max_replicas))
        return Scaling(spec.model_copy(update={"replicas": count}), refused=refused_prometheus(ctx, spec))
    key = (meta["namespace"], meta["name"])
    now = ctx.clock()
    interval = float(seconds(auto.interval))
    value, pods, unavailable = None, None, None
    before = ctx.readings.get(key)
    since = (now - before.time).total_seconds() if before is not None else interval
    if since >= interval:  # one reading per interval, however often the object is reconciled
        read = tritonmetrics.read(ctx.reads.server_pods(meta["namespace"], meta["name"]), spec.model,
                                  meta["namespace"], tritonmetrics.PrometheusSource.of(ctx.settings))
        if read.metrics is None:
            unavailable = read.error
        else:
            reading = autoscale.Reading(now, read.metrics[1])  # the stable pods
            if before is not None:
                value = autoscale.metric_value(auto.metric, before, reading)
                pods = autoscale.measured(before, reading)
            ctx.readings[key] = reading
        since = 0.0
    ready = int(((live or {}).get("status") or {}).get("readyReplicas", 0))
    old = (body.get("status") or {}).get("autoscaling")
    decision = autoscale.decide(auto, live_replicas, value, old, now, pods, ready, unavailable)
    warning = decision.status.message if decision.status.message != (old or {}).get("message") else None
    return Scaling(spec.model_copy(update={"replicas": decision.replicas}), decision.status, decision.message,
                   max(0.5, interval - since), warning)


def keep_providers(
    ctx: Context, spec: ModelDeploymentSpec, name: str, namespace: str, owner: OwnerRef,
    weights: tuple[int, int] | None, stable_version: int | None,
) -> None:
    """The HPA or ScaledObject, and the HTTPRoute with its Services, where the spec asks for them."""
    auto = spec.autoscaling
    if auto is not None and auto.provider == AutoscalingProvider.HPA:
        desired = scalers.render_hpa(name=name, namespace=namespace, model=spec.model, owner=owner, spec=auto)
        keep(ctx, k8s.HPAS, ctx.reads.get(k8s.HPAS, namespace, name), desired)
    if auto is not None and auto.provider == AutoscalingProvider.KEDA and refused_prometheus(ctx, spec) is None:
        desired = scalers.render_scaled_object(name=name, namespace=namespace, model=spec.model, owner=owner, spec=auto)
        keep(ctx, k8s.SCALEDOBJECTS, ctx.reads.get(k8s.SCALEDOBJECTS, namespace, name), desired)
    canary = spec.rollout.canary
    if canary is not None and canary.http_route is not None:
        if stable_version is not None:
            for service in httproute.render_split_services(name=name, namespace=namespace, owner=owner, model=spec.model,
                                                           stable_version=stable_version):
                keep(ctx, k8s.SERVICES, ctx.reads.get(k8s.SERVICES, namespace, service["metadata"]["name"]), service)
        route = httproute.render_httproute(name=name, namespace=namespace, owner=owner, model=spec.model,
                                           parent=canary.http_route, weights=weights if stable_version is not None else None)
        keep(ctx, k8s.HTTPROUTES, ctx.reads.get(k8s.HTTPROUTES, namespace, name), route)

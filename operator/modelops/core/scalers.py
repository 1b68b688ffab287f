"""The autoscalers the operator renders for spec.autoscaling.provider hpa and keda. Pure.

Both read Triton's counters through Prometheus (the Triton pods carry the prometheus.io/scrape
annotations). The HorizontalPodAutoscaler needs a Prometheus adapter that serves the Pods
metrics `triton_queue_time_ratio` and `triton_inferences_per_second` (docs/serving.md gives
the adapter rules); KEDA queries Prometheus itself.
"""

from __future__ import annotations

from typing import Any

from modelops.api.deployment import AutoscalingMetric, AutoscalingSpec
from modelops.core import naming
from modelops.core.canary import seconds
from modelops.core.objects import OwnerRef
from modelops.serving.triton import TRITON

HPA_METRICS = {
    AutoscalingMetric.QUEUE_TIME_RATIO: "triton_queue_time_ratio",
    AutoscalingMetric.INFERENCES_PER_SECOND: "triton_inferences_per_second",
}
KEDA_POLLING_SECONDS = 15
RATE_WINDOW = "1m"


def quantity(value: float) -> str:
    """A target as a Kubernetes quantity, in thousandths ("500m", "12")."""
    milli = round(value * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def _metadata(name: str, namespace: str, model: str, owner: OwnerRef) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": naming.server_labels(name, model),
            "ownerReferences": [owner.reference()]}


def render_hpa(*, name: str, namespace: str, model: str, owner: OwnerRef, spec: AutoscalingSpec) -> dict[str, Any]:
    """An autoscaling/v2 HorizontalPodAutoscaler of the stable Triton Deployment on a Pods metric."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, namespace, model, owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [{
                "type": "Pods",
                "pods": {
                    "metric": {"name": HPA_METRICS[spec.metric]},
                    "target": {"type": "AverageValue", "averageValue": quantity(spec.target)},
                },
            }],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": seconds(spec.stabilization_window)}},
        },
    }


def prometheus_query(metric: AutoscalingMetric, name: str, namespace: str) -> str:
    """PromQL over the stable pods (`<name>-<hash>-<hash>`; the canary's are `<name>-canary-...`)."""
    selector = f'namespace="{namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"'
    names = TRITON.metrics
    if metric == AutoscalingMetric.INFERENCES_PER_SECOND:
        return f"sum(rate({names.inferences}{{{selector}}}[{RATE_WINDOW}]))"
    return (f"sum(rate({names.queue_us}{{{selector}}}[{RATE_WINDOW}])) / "
            f"sum(rate({names.compute_us}{{{selector}}}[{RATE_WINDOW}]))")


def render_scaled_object(*, name: str, namespace: str, model: str, owner: OwnerRef, spec: AutoscalingSpec) -> dict[str, Any]:
    """A KEDA ScaledObject (keda.sh/v1alpha1) with a Prometheus trigger. inferences-per-second
    is a total that KEDA divides by the replicas (AverageValue); queue-time-ratio is one value
    for the whole Deployment (Value)."""
    per_pod = spec.metric == AutoscalingMetric.INFERENCES_PER_SECOND
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(name, namespace, model, owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            "pollingInterval": KEDA_POLLING_SECONDS,
            "cooldownPeriod": seconds(spec.cooldown),
            "advanced": {"horizontalPodAutoscalerConfig": {
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": seconds(spec.stabilization_window)}},
            }},
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue" if per_pod else "Value",
                "metadata": {
                    "serverAddress": spec.prometheus_address or "",
                    "query": prometheus_query(spec.metric, name, namespace),
                    "threshold": f"{spec.target:g}",
                },
            }],
        },
    }

"""The operator's own scaler (spec.autoscaling.provider: operator): the metric from two
readings of Triton's counters, and the replica count it asks for. Pure; the handler keeps the
previous reading and applies the count.

The count follows the HorizontalPodAutoscaler's rule, desired = ceil(measured * value / target)
over the pods that were measured (ready in both readings), left alone within 10 % of the
target, and kept between minReplicas and maxReplicas. A scale-up happens at once; a
scale-down takes the highest recommendation of the stabilisation window, waits for the
cooldown since the last change, and never happens while pods of an earlier change are still
starting, so that a dip in the load (or a slow start) does not flap the pods.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from modelops.api.deployment import AutoscalingMetric, AutoscalingSpec, AutoscalingStatus
from modelops.core.canary import PodMetrics, seconds
from modelops.core.conditions import timestamp

TOLERANCE = 0.1
_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Reading:
    """Triton's counters of every ready pod at one moment."""

    time: datetime
    pods: Mapping[str, PodMetrics]


def measured(before: Reading, after: Reading) -> int:
    """The pods a metric_value covers."""
    return sum(1 for name in after.pods if name in before.pods)


def metric_value(metric: AutoscalingMetric, before: Reading, after: Reading) -> float | None:
    """The metric between two readings, over the pods in both (a new pod counts from its next
    reading). None when no pod is in both, or the time did not advance."""
    elapsed = (after.time - before.time).total_seconds()
    common = [name for name in after.pods if name in before.pods]
    if elapsed <= 0 or not common:
        return None
    deltas = [after.pods[n].minus_counters(before.pods[n]) for n in common]
    if metric == AutoscalingMetric.INFERENCES_PER_SECOND:
        return sum(d.inferences for d in deltas) / elapsed / len(common)
    compute = sum(d.compute_us for d in deltas)
    queue = sum(d.queue_us for d in deltas)
    return queue / compute if compute > 0 else 0.0


def _parse(text: str | None, tz: object) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, _FORMAT).replace(tzinfo=tz)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int
    status: AutoscalingStatus
    message: str | None = None  # set when the count changes


def decide(
    spec: AutoscalingSpec, current: int, value: float | None, old: Mapping[str, object] | None, now: datetime,
    pods: int | None = None, ready: int | None = None, metrics_error: str | None = None,
) -> ScaleDecision:
    """The replicas to run. `current` is what the Deployment asks for now, `pods` the pods the
    value was measured on, `ready` the Deployment's ready pods.
    Without a new value (no reading yet, or not an interval since the last) nothing changes,
    so a reconcile between readings writes nothing. `metrics_error` says why a reading failed:
    the count stays, and status.autoscaling.message says so until a value is read again."""
    previous = AutoscalingStatus.model_validate(old) if old else None
    failed = f"{metrics_error}; replicas stay as they are" if metrics_error else None
    if value is None and previous is not None:
        held = max(spec.min_replicas, min(previous.replicas, spec.max_replicas))
        return ScaleDecision(held, previous.model_copy(update={"replicas": held, "message": failed or previous.message}))
    replicas = previous.replicas if previous is not None else max(spec.min_replicas, min(current, spec.max_replicas))
    replicas = max(spec.min_replicas, min(replicas, spec.max_replicas))
    # A scaler that just started has nothing to stabilise on: its cooldown starts now.
    last_change = _parse(previous.last_scale_time, now.tzinfo) if previous else now
    window = timedelta(seconds=seconds(spec.stabilization_window))
    recommendations = [
        r for r in (previous.recommendations or [] if previous else [])
        if (_parse(r.time, now.tzinfo) or now) > now - window
    ]
    message = None
    if value is not None:
        ratio = value / spec.target
        base = pods if pods else replicas
        raw = replicas if abs(ratio - 1) <= TOLERANCE else math.ceil(base * ratio)
        raw = max(spec.min_replicas, min(raw, spec.max_replicas))
        recommendations.append({"time": timestamp(now), "replicas": raw})  # type: ignore[arg-type]
        wanted = replicas
        if raw > replicas:
            wanted = raw
        else:
            highest = max(int(r["replicas"] if isinstance(r, dict) else r.replicas) for r in recommendations)
            cooled = last_change is None or (now - last_change).total_seconds() >= seconds(spec.cooldown)
            settled = ready is None or ready >= replicas
            if highest < replicas and cooled and settled:
                wanted = highest
        if wanted != replicas:
            message = (f"scaled from {replicas} to {wanted} replicas: {spec.metric} is {value:.3g} "
                       f"against a target of {spec.target:g}")
            replicas, last_change = wanted, now
    status = AutoscalingStatus.model_validate({
        "replicas": replicas,
        "metric": spec.metric,
        "value": None if value is None else round(value, 4),
        "lastScaleTime": timestamp(last_change) if last_change else None,
        "recommendations": [r if isinstance(r, dict) else r.wire() for r in recommendations] or None,
        "message": failed,
    })
    return ScaleDecision(replicas, status, message)

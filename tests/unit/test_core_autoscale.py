"""The operator's scaler: the metrics from two readings of Triton's counters, and the replica
count with its stabilisation window and cooldown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelops.api.deployment import AutoscalingMetric, AutoscalingSpec, ModelDeploymentSpec
from modelops.core.autoscale import Reading, decide, metric_value
from modelops.core.canary import PodMetrics
from modelops.core.render import managed_replicas

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SPEC = AutoscalingSpec.model_validate({"minReplicas": 1, "maxReplicas": 4, "metric": "inferences-per-second", "target": 100,
                                       "stabilizationWindow": "30s", "cooldown": "60s"})


def test_inferences_per_second_per_pod_and_queue_time_ratio() -> None:
    before = Reading(T0, {"a": PodMetrics(inferences=100, queue_us=1000, compute_us=10_000),
                          "b": PodMetrics(inferences=50, queue_us=0, compute_us=5000)})
    after = Reading(T0 + timedelta(seconds=10), {
        "a": PodMetrics(inferences=1100, queue_us=6000, compute_us=20_000),
        "b": PodMetrics(inferences=2050, queue_us=5000, compute_us=15_000),
        "new": PodMetrics(inferences=999_999)})  # not in the earlier reading: counted next time
    assert metric_value(AutoscalingMetric.INFERENCES_PER_SECOND, before, after) == pytest.approx((1000 + 2000) / 10 / 2)
    assert metric_value(AutoscalingMetric.QUEUE_TIME_RATIO, before, after) == pytest.approx(10_000 / 20_000)
    assert metric_value(AutoscalingMetric.QUEUE_TIME_RATIO, after, after) is None


def test_a_restarted_pod_counts_from_zero() -> None:
    before = Reading(T0, {"a": PodMetrics(inferences=5000)})
    after = Reading(T0 + timedelta(seconds=10), {"a": PodMetrics(inferences=300)})
    assert metric_value(AutoscalingMetric.INFERENCES_PER_SECOND, before, after) == 30


def run(values: list[tuple[int, float | None]], start: int = 1) -> list[int]:
    """Replicas after each (seconds, value) reading."""
    old, out = None, []
    for offset, value in values:
        decision = decide(SPEC, start, value, old, T0 + timedelta(seconds=offset))
        old, out = decision.status.wire(), out + [decision.replicas]
    return out


def test_scales_up_at_once_and_down_after_the_window_and_cooldown() -> None:
    assert run([(0, 50), (10, 250), (20, 400), (30, 100)]) == [1, 3, 4, 4]
    #            up at 10 s to 3, 20 s to 4 (max); low load from 30 s: down only once both
    #            the 30 s window has no high recommendation and 60 s passed since the last change
    timeline = run([(10, 250), (20, 400), (30, 10), (50, 10), (70, 10), (90, 10)])
    assert timeline == [3, 4, 4, 4, 4, 1]


def test_within_the_tolerance_nothing_changes_and_a_missing_value_holds() -> None:
    assert run([(0, 108), (10, 92), (20, None)], start=2) == [2, 2, 2]
    first = decide(SPEC, 1, 250, None, T0)
    # Between readings the status stays exactly as it was: a reconcile then writes nothing.
    assert decide(SPEC, 3, None, first.status.wire(), T0 + timedelta(seconds=3)).status == first.status


def test_an_unreadable_metric_holds_the_count_and_says_why_until_a_value_comes() -> None:
    first = decide(SPEC, 1, 250, None, T0)
    why = "Prometheus at http://prom:9090 could not be read: connection refused"
    blind = decide(SPEC, 3, None, first.status.wire(), T0 + timedelta(seconds=10), metrics_error=why)
    assert blind.replicas == 3 and blind.message is None
    assert blind.status.message == f"{why}; replicas stay as they are"
    # Between readings the message stays; the next value clears it.
    assert decide(SPEC, 3, None, blind.status.wire(), T0 + timedelta(seconds=11)).status.message == blind.status.message
    assert decide(SPEC, 3, 300, blind.status.wire(), T0 + timedelta(seconds=20)).status.message is None
    # With no status yet, the count is the Deployment's, within the bounds.
    assert decide(SPEC, 9, None, None, T0, metrics_error=why).status.message == blind.status.message


def test_bounds() -> None:
    assert run([(0, 10_000)]) == [4]
    assert run([(0, 0), (100, 0)], start=4) == [4, 1]


def test_a_scale_writes_a_message_with_the_figures() -> None:
    decision = decide(SPEC, 1, 250, None, T0)
    assert decision.message == "scaled from 1 to 3 replicas: inferences-per-second is 250 against a target of 100"
    assert decision.status.last_scale_time == "2025-03-01T12:00:00Z"
    assert decide(SPEC, 3, 100, decision.status.wire(), T0 + timedelta(seconds=5)).message is None


def test_the_replicas_belong_to_the_scaler() -> None:
    base = {"model": "digits", "replicas": 7}
    for provider, rendered in (("hpa", None), ("keda", None), ("operator", 7)):
        auto = {"minReplicas": 1, "maxReplicas": 4, "target": 1, "provider": provider}
        if provider == "keda":
            auto["prometheusAddress"] = "http://prometheus:9090"
        assert managed_replicas(ModelDeploymentSpec.model_validate({**base, "autoscaling": auto})) == rendered
    assert managed_replicas(ModelDeploymentSpec.model_validate({**base, "suspended": True, "autoscaling": {
        "minReplicas": 1, "maxReplicas": 4, "target": 1, "provider": "hpa"}})) == 0


def test_the_ratio_is_over_the_measured_pods_and_no_scale_down_while_pods_start() -> None:
    up = decide(SPEC, 1, 250, None, T0, pods=1, ready=1)
    assert up.replicas == 3
    # 3 asked for, 1 ready and measured: 1 x 150 / 100 asks for 2, but pods are still starting.
    later = decide(SPEC, 3, 150, up.status.wire(), T0 + timedelta(seconds=120), pods=1, ready=1)
    assert later.replicas == 3
    settled = decide(SPEC, 3, 20, later.status.wire(), T0 + timedelta(seconds=240), pods=3, ready=3)
    assert settled.replicas == 1

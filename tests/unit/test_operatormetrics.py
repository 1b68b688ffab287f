"""The operator's own metrics: names that follow Prometheus's conventions, the leader gauge,
and the per-stage time to ready that the ModelVersion phases give."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelops.api.version import Phase
from modelops.operatormetrics import STAGE_SERVE, Metrics

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def stage_count(metrics: Metrics, stage: str) -> float:
    return samples(metrics).get(("modelops_phase_duration_seconds_count", (("stage", stage),)), 0.0)


def stage_sum(metrics: Metrics, stage: str) -> float:
    return samples(metrics)[("modelops_phase_duration_seconds_sum", (("stage", stage),))]


def test_counters_end_in_total_and_durations_in_seconds() -> None:
    metrics = Metrics()
    metrics.reconciles.labels("Model", "ok").inc()
    metrics.reconcile_errors.labels("Model", "Throttled").inc()
    text = metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("modelops_"), family.name
        if family.type == "counter":
            assert any(s.name == f"{family.name}_total" for s in family.samples) or not family.samples, family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
    assert "modelops_leader 0.0" in text


def test_a_fresh_version_is_timed_through_each_stage() -> None:
    clock = Clock()
    metrics = Metrics(clock)
    metrics.versions.set("ns", "v1", Phase.VERIFYING, fresh=True)
    clock.now += 3
    metrics.versions.set("ns", "v1", Phase.VERIFYING)  # a reconcile in the same phase
    clock.now += 2
    metrics.versions.set("ns", "v1", Phase.COMPRESSING)
    clock.now += 40
    metrics.versions.set("ns", "v1", Phase.READY)
    assert stage_count(metrics, "verify") == 1 and stage_sum(metrics, "verify") == 5
    assert stage_count(metrics, "compress") == 1 and stage_sum(metrics, "compress") == 40
    assert stage_count(metrics, "gate") == 0
    metrics.rollout_succeeded(12.5, [])
    assert stage_sum(metrics, STAGE_SERVE) == 12.5
    assert samples(metrics)[("modelops_rollouts_total", (("outcome", "succeeded"),))] == 1


def test_a_phase_under_way_at_start_is_not_timed() -> None:
    clock = Clock()
    metrics = Metrics(clock)
    metrics.versions.set("ns", "v1", Phase.COMPRESSING)  # seen first after a restart
    clock.now += 40
    metrics.versions.set("ns", "v1", Phase.READY)
    assert stage_count(metrics, "compress") == 0
    assert samples(metrics)[("modelops_model_versions", (("phase", "Ready"),))] == 1


def test_a_deleted_version_leaves_the_tally_and_times_nothing() -> None:
    clock = Clock()
    metrics = Metrics(clock)
    metrics.versions.set("ns", "v1", Phase.EVALUATING, fresh=True)
    clock.now += 9
    metrics.versions.set("ns", "v1", None)
    assert stage_count(metrics, "gate") == 0
    assert samples(metrics)[("modelops_model_versions", (("phase", "Evaluating"),))] == 0


def test_a_rollout_past_its_deadline_counts_until_its_conditions_clear() -> None:
    metrics = Metrics()
    past = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
    metrics.past_deadline.set("ns", "a", past)
    metrics.past_deadline.set("ns", "b", past)
    metrics.past_deadline.set("ns", "b", [{"type": "Progressing", "status": "True", "reason": "RolloutInProgress"}])
    assert samples(metrics)[("modelops_rollouts_past_deadline", ())] == 1
    metrics.past_deadline.set("ns", "a", None)  # deleted
    assert samples(metrics)[("modelops_rollouts_past_deadline", ())] == 0

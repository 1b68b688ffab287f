"""Canary planning: replica counts for a weight, the analysis of Triton's counters, and the
step machine from start to promotion or abort, as plan_rollout drives it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from modelops.api.deployment import CanaryAnalysis, CanarySpec, ModelDeploymentSpec, ModelDeploymentStatus
from modelops.core.canary import (
    FAIL,
    PASS,
    WAIT,
    CanaryInputs,
    Measurement,
    PodMetrics,
    canary_replicas,
    effective_weight,
    judge,
    measure,
    plan_canary,
    seconds,
)
from modelops.core.conditions import find
from modelops.core.objects import ServerState
from modelops.core.rollout import RolloutInputs, plan_rollout
from tests.unit.test_core_rollout import ENDPOINTS, done, v

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("stable", "weight", "canary", "share"), [
    (9, 10, 1, 10.0),
    (9, 50, 9, 50.0),
    (9, 25, 3, 25.0),
    (4, 10, 1, 20.0),   # 0.44 pods round up to the one pod a canary needs
    (4, 20, 1, 20.0),
    (4, 50, 4, 50.0),
    (1, 10, 1, 50.0),
    (1, 66, 2, 66.7),   # 1.94 rounds to 2
    (3, 90, 27, 90.0),
    (2, 30, 1, 33.3),   # 0.857 rounds to 1
])
def test_canary_replicas_approximate_the_weight(stable, weight, canary, share) -> None:
    assert canary_replicas(stable, weight) == canary
    assert effective_weight(stable, canary) == share


@pytest.mark.parametrize(("text", "value"), [("30s", 30), ("2m", 120), ("1h", 3600), ("0s", 0)])
def test_durations(text, value) -> None:
    assert seconds(text) == value


def test_measure_counts_from_the_baseline_and_a_restarted_pod_from_zero() -> None:
    pods = {"a": PodMetrics(success=150, failure=5, duration_us=310_000, p99_us=4000),
            "b": PodMetrics(success=20, failure=0, duration_us=40_000, p99_us=9000)}
    baseline = {"a": {"success": 50, "failure": 5, "durationUs": 110_000},
                "b": {"success": 40, "failure": 0, "durationUs": 90_000}}  # b restarted: counters went down
    m = measure(pods, baseline)
    assert (m.requests, m.failures) == (120, 0)
    assert m.mean_latency_ms == pytest.approx((200_000 + 40_000) / 120 / 1000)  # 120 successes
    assert m.p99_latency_ms == 9.0


ANALYSIS = CanaryAnalysis.model_validate({"maxErrorRatio": 0.01, "maxP99LatencyMs": 50, "maxLatencyRatio": 3, "minRequests": 100})


@pytest.mark.parametrize(("canary", "stable", "paused", "verdict", "why"), [
    (Measurement(99, 50, 1.0, 2.0), None, True, WAIT, "99/100 requests"),
    (Measurement(200, 3, 1.0, 2.0), Measurement(1000, 0, 1.0, 2.0), False, FAIL, "error ratio 0.015"),
    (Measurement(200, 2, 1.0, 2.0), Measurement(1000, 0, 1.0, 2.0), False, WAIT, "pause"),
    (Measurement(200, 2, 1.0, 2.0), Measurement(1000, 0, 1.0, 2.0), True, PASS, "within"),
    (Measurement(200, 0, 1.0, 60.0), None, True, FAIL, "p99 latency 60.00 ms"),
    (Measurement(200, 0, 9.0, 60.0), Measurement(1000, 0, 1.0, 2.0), False, WAIT, "latency is judged"),
    (Measurement(200, 0, 3.5, 20.0), Measurement(1000, 0, 1.0, 2.0), True, FAIL, "3.50x"),
    (Measurement(200, 0, 2.9, 20.0), Measurement(1000, 0, 1.0, 2.0), True, PASS, "within"),
    (Measurement(200, 0, 3.5, None), None, True, PASS, "within"),  # no stable pods: no ratio to judge
])
def test_judge(canary, stable, paused, verdict, why) -> None:
    got, message = judge(ANALYSIS, canary, stable, paused)
    assert (got, why in message) == (verdict, True), message


CANARY = CanarySpec.model_validate({"steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "30s"}],
                                    "analysis": {"maxErrorRatio": 0.01, "minRequests": 100, "interval": "5s"}})


def step(old, server=None, metrics=None, now=T0, candidate=2, stable_version=1, replicas=9, metrics_error=None):
    return plan_canary(canary_spec=CANARY, replicas=replicas, stable_version=stable_version, candidate=candidate,
                       old=old, live=CanaryInputs(server, metrics, metrics_error), now=now)


def ready(version: int, replicas: int) -> ServerState:
    return ServerState(version, replicas, available=replicas, updated=replicas)


def pods(canary: tuple[float, float], stable: tuple[float, float] = (0, 0)) -> tuple[dict, dict]:
    """Canary pod c0 and stable pod s0 with (success, failure) counters and 1 ms per request."""
    def metrics(success: float, failure: float) -> PodMetrics:
        return PodMetrics(success=success, failure=failure, duration_us=1000 * (success + failure))
    return {"c0": metrics(*canary)}, {"s0": metrics(*stable)}


def test_no_canary_without_a_stable_version_or_a_change() -> None:
    assert step(None, stable_version=None).status is None
    first = step(None, candidate=1)
    assert (first.hold, first.canary_replicas, first.status) == (False, 0, None)


def test_a_good_canary_walks_its_steps_and_is_promoted() -> None:
    start = step(None)
    assert (start.hold, start.canary_version, start.canary_replicas, start.weights) == (True, 2, 1, (90, 10))
    assert [e.reason for e in start.events] == ["CanaryStarted"]
    assert start.status.effective_weight == 10.0

    waiting = step(start.status, server=ServerState(2, 1, available=0, updated=1))
    assert waiting.hold and "0/1 available" in waiting.status.message and waiting.status.step_started_at is None

    counting = step(waiting.status, server=ready(2, 1), metrics=pods((5, 0), (40, 0)), now=T0 + timedelta(seconds=5))
    assert counting.status.step_started_at == "2025-03-01T12:00:05Z"
    assert {b.pod: b.success for b in counting.status.baseline} == {"c0": 5, "s0": 40}

    early = step(counting.status, server=ready(2, 1), metrics=pods((200, 0), (2000, 0)), now=T0 + timedelta(seconds=20))
    assert early.hold and early.status.step == 0 and early.status.last_analysis.verdict.startswith("Wait")
    assert early.status.last_analysis.canary.requests == 195

    passed = step(early.status, server=ready(2, 1), metrics=pods((300, 1), (3000, 0)), now=T0 + timedelta(seconds=40))
    assert [e.reason for e in passed.events] == ["CanaryStepPassed"]
    assert (passed.status.step, passed.status.weight, passed.canary_replicas, passed.weights) == (1, 50, 9, (50, 50))
    assert passed.status.baseline is None

    # The second step's pods come up, a new baseline is taken, and the step passes.
    second = step(passed.status, server=ready(2, 9), metrics=pods((300, 1), (3000, 0)), now=T0 + timedelta(seconds=45))
    assert second.status.step_started_at == "2025-03-01T12:00:45Z"
    promoted = step(second.status, server=ready(2, 9), metrics=pods((900, 1), (3600, 0)), now=T0 + timedelta(seconds=80))
    assert [e.reason for e in promoted.events] == ["CanaryPromoted"]
    assert (promoted.hold, promoted.status.phase, promoted.canary_replicas) == (False, "Promoted", 9)

    # While the stable Deployment rolls to version 2 the canary keeps its pods; then they go.
    assert step(promoted.status).canary_replicas == 9 and not step(promoted.status).hold
    after = step(promoted.status, stable_version=2)
    assert (after.canary_replicas, after.status.phase) == (0, "Promoted")


def test_a_failing_canary_is_aborted_before_its_pause_is_over() -> None:
    start = step(None)
    counting = step(start.status, server=ready(2, 1), metrics=pods((0, 0), (0, 0)), now=T0 + timedelta(seconds=5))
    aborted = step(counting.status, server=ready(2, 1), metrics=pods((60, 60), (1000, 0)), now=T0 + timedelta(seconds=10))
    assert (aborted.abort, aborted.canary_replicas, aborted.hold, aborted.status.phase) == (2, 0, True, "Aborted")
    [event] = aborted.events
    assert event.type == "Warning" and event.reason == "CanaryAborted"
    assert "error ratio 0.500" in event.message and "60/120 failed" in event.message and "keeps 9 pods" in event.message
    assert aborted.status.last_analysis.canary.failures == 60


def test_canary_pods_that_never_become_available_are_aborted() -> None:
    start = step(None)
    stuck = step(start.status, server=ServerState(2, 1, available=0, updated=1, deadline_exceeded=True))
    assert stuck.abort == 2 and "did not become available" in stuck.status.message


def test_unreadable_metrics_wait() -> None:
    start = step(None)
    blind = step(start.status, server=ready(2, 1), metrics=None)
    assert blind.hold and blind.abort is None and "could not be read" in blind.status.message


def test_a_prometheus_without_series_is_said_once_and_never_promotes() -> None:
    counting = step(step(None).status, server=ready(2, 1), metrics=pods((0, 0), (0, 0)))
    why = "Prometheus at http://prom:9090 has no series of Triton's counters of model digits for pod(s) c0 in ns"
    blind = step(counting.status, server=ready(2, 1), metrics_error=why, now=T0 + timedelta(minutes=5))
    assert (blind.hold, blind.abort, blind.metrics_unavailable, blind.status.phase) == (True, None, True, "Progressing")
    assert blind.status.message == f"step 1/2 at 10 %: {why}; the analysis waits and tries again"
    [event] = blind.events
    assert (event.type, event.reason) == ("Warning", "MetricsUnavailable") and why in event.message
    # The same cause again: the status stays as it is and no second event is recorded.
    again = step(blind.status, server=ready(2, 1), metrics_error=why, now=T0 + timedelta(minutes=6))
    assert again.events == () and again.status == blind.status
    # Once the counters read again, the step goes on from its baseline.
    back = step(again.status, server=ready(2, 1), metrics=pods((300, 0), (3000, 0)), now=T0 + timedelta(minutes=7))
    assert back.status.step == 1 and not back.metrics_unavailable


def test_plan_rollout_says_metrics_unavailable_in_progressing() -> None:
    served = {"servedVersion": 1, "desiredVersion": 1, "rollouts": [
        {"version": 1, "startedAt": "2025-03-01T11:00:00Z", "outcome": "Succeeded"}]}
    start = rollout(served, done(1, 9))
    blind = rollout(start.status, done(1, 9), ready(2, 1), None, error="Prometheus at http://prom:9090 could not be read: refused")
    progressing = find(blind.status["conditions"], "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "MetricsUnavailable")
    assert "could not be read: refused" in progressing["message"]
    assert [e.reason for e in blind.events] == ["MetricsUnavailable"]


def test_a_newer_version_restarts_the_canary() -> None:
    start = step(None)
    newer = step(start.status, candidate=3)
    assert (newer.status.version, newer.status.step, newer.canary_version) == (3, 0, 3)


# -- through plan_rollout --------------------------------------------------------------------


def canary_spec(**extra) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({
        "model": "digits", "replicas": 9,
        "rollout": {"strategy": "Canary", "canary": CANARY.wire()}, **extra})


def rollout(old, server, canary_server=None, metrics=None, now=T0, md=None, error=None):
    p = plan_rollout(RolloutInputs(spec=md or canary_spec(), generation=1, old=ModelDeploymentStatus.model_validate(old or {}),
                                   versions=[v(1), v(2)], server=server, model_exists=True, endpoints=ENDPOINTS, now=now,
                                   canary=CanaryInputs(canary_server, metrics, error)))
    return replace(p, status=p.status.wire())


def test_plan_rollout_holds_stable_during_a_canary_and_records_the_abort() -> None:
    served = {"servedVersion": 1, "desiredVersion": 1, "rollouts": [
        {"version": 1, "startedAt": "2025-03-01T11:00:00Z", "outcome": "Succeeded"}]}
    start = rollout(served, done(1, 9))
    assert start.target.version == 1 and start.canary.canary_version == 2 and start.requeue == 5.0
    assert find(start.status["conditions"], "Progressing")["reason"] == "CanaryProgressing"
    assert start.status["rollouts"][-1] == {"version": 2, "fromVersion": 1, "startedAt": "2025-03-01T12:00:00Z",
                                            "outcome": "Progressing"}
    counting = rollout(start.status, done(1, 9), ready(2, 1), pods((0, 0), (0, 0)))
    aborted = rollout(counting.status, done(1, 9), ready(2, 1), pods((100, 100), (900, 0)), now=T0 + timedelta(seconds=5))
    assert aborted.target.version == 1 and aborted.canary.canary_replicas == 0
    assert aborted.status["failedVersions"] == [2]
    assert aborted.status["rollouts"][-1]["outcome"] == "Aborted"
    degraded = find(aborted.status["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "CanaryAborted")
    assert "100/200 failed" in degraded["message"]
    assert find(aborted.status["conditions"], "Ready")["status"] == "True"  # version 1 serves on, as Latest now asks
    # The next reconcile keeps it so: version 2 is skipped, the canary stays at 0.
    later = rollout(aborted.status, done(1, 9), ready(2, 0))
    assert later.target.version == 1 and later.canary.canary_replicas == 0
    assert find(later.status["conditions"], "Degraded")["reason"] == "CanaryAborted"


def test_plan_rollout_rolls_stable_after_a_promotion() -> None:
    old = {"servedVersion": 1, "desiredVersion": 2, "canary": {
        "version": 2, "stableVersion": 1, "phase": "Promoted", "step": 1, "steps": 2, "weight": 50,
        "canaryReplicas": 9, "stableReplicas": 9, "effectiveWeight": 50.0}}
    rolling = rollout(old, ServerState(1, 9, updated=0, ready=9, available=9, total=9), ready(2, 9))
    assert rolling.target.version == 2 and rolling.canary.canary_replicas == 9
    finished = rollout(rolling.status, done(2, 9), ready(2, 9))
    assert finished.status["servedVersion"] == 2
    cleaned = rollout(finished.status, done(2, 9), ready(2, 9))
    assert cleaned.canary.canary_replicas == 0 and find(cleaned.status["conditions"], "Ready")["reason"] == "Serving"


def test_a_suspended_canary_deployment_stops_its_canary_pods_too() -> None:
    old = {"servedVersion": 1, "canary": {
        "version": 2, "stableVersion": 1, "phase": "Progressing", "step": 0, "steps": 2, "weight": 10,
        "canaryReplicas": 1, "stableReplicas": 9, "effectiveWeight": 10.0}}
    p = rollout(old, done(1, 9), ready(2, 1), md=canary_spec(suspended=True))
    assert p.canary.canary_replicas == 0 and p.target.version == 1
    assert find(p.status["conditions"], "Ready")["reason"] == "Suspended"


def test_between_analyses_a_reconcile_changes_nothing() -> None:
    start = step(None)
    counting = step(start.status, server=ready(2, 1), metrics=pods((0, 0), (0, 0)), now=T0 + timedelta(seconds=5))
    analysed = step(counting.status, server=ready(2, 1), metrics=pods((50, 0), (200, 0)), now=T0 + timedelta(seconds=10))
    soon = step(analysed.status, server=ready(2, 1), metrics=pods((60, 0), (240, 0)), now=T0 + timedelta(seconds=12))
    assert soon.status == analysed.status and soon.events == () and soon.requeue == 3.0

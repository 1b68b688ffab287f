"""Canary planning for a ModelDeployment: how many canary pods a step needs, what Triton's
counters say about the step, and whether it passes, waits or aborts. Pure: the handler reads
the canary Deployment and the metrics, and applies what this decides.

Without Gateway API, traffic follows pods: the stable Deployment keeps its full size and a
second Deployment `<name>-canary`, whose pods match the same Service, gets

    canaryReplicas = max(1, round_half_up(replicas * weight / (100 - weight)))

so that canary / (canary + stable) is the nearest share a whole number of pods can give to
the step's weight (never zero pods). With 9 stable replicas, 10 % is 1 canary pod (exactly
10 %) and 50 % is 9 (exactly 50 %); with 1 stable replica every weight up to 66 % is one canary
pod (50 %). status.canary.effectiveWeight shows the share the pods give.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelops.api.deployment import CanaryAnalysis, CanaryPhase, CanarySpec, CanaryStatus
from modelops.api.deployment import DeploymentReason as Reason
from modelops.core.conditions import timestamp

NORMAL, WARNING = "Normal", "Warning"
PASS, FAIL, WAIT = "Pass", "Fail", "Wait"
_DURATION = re.compile(r"^([0-9]+)(s|m|h)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def seconds(duration: str) -> int:
    """"30s", "2m", "1h" as seconds (the API's pattern guarantees the shape)."""
    match = _DURATION.match(duration)
    if match is None:
        raise ValueError(f"not a duration: {duration!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def canary_replicas(stable: int, weight: int) -> int:
    """Canary pods next to `stable` full-size stable pods for a share of `weight` percent."""
    if stable <= 0:
        return 1
    return max(1, math.floor(stable * weight / (100 - weight) + 0.5))


def effective_weight(stable: int, canary: int) -> float:
    total = stable + canary
    return round(100.0 * canary / total, 1) if total else 0.0


@dataclass(frozen=True)
class PodMetrics:
    """Triton's counters of one pod, summed over the model's versions."""

    success: float = 0.0
    failure: float = 0.0
    duration_us: float = 0.0
    queue_us: float = 0.0
    compute_us: float = 0.0
    p99_us: float | None = None  # nv_inference_request_summary_us{quantile="0.99"}
    inferences: float = 0.0  # nv_inference_count

    def minus_counters(self, earlier: PodMetrics) -> PodMetrics:
        """Every counter since `earlier`; a pod that restarted since then counts from zero."""
        if self.success < earlier.success or self.inferences < earlier.inferences or self.compute_us < earlier.compute_us:
            return self
        return PodMetrics(
            self.success - earlier.success, self.failure - earlier.failure, self.duration_us - earlier.duration_us,
            self.queue_us - earlier.queue_us, self.compute_us - earlier.compute_us, self.p99_us,
            self.inferences - earlier.inferences,
        )

    def minus(self, base: Mapping[str, Any] | None) -> PodMetrics:
        """Counters since `base`; a pod that restarted since then counts from zero."""
        if not base:
            return self
        earlier = PodMetrics(
            float(base.get("success", 0)), float(base.get("failure", 0)),
            float(base.get("durationUs", 0)), float(base.get("queueUs", 0)),
        )
        if self.success < earlier.success or self.failure < earlier.failure or self.duration_us < earlier.duration_us:
            return self
        return PodMetrics(
            self.success - earlier.success, self.failure - earlier.failure,
            self.duration_us - earlier.duration_us, max(0.0, self.queue_us - earlier.queue_us),
            self.compute_us, self.p99_us,
        )


@dataclass(frozen=True)
class Measurement:
    requests: int
    failures: int
    mean_latency_ms: float | None
    p99_latency_ms: float | None

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def wire(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "failures": self.failures, "errorRatio": round(self.error_ratio, 4),
            "meanLatencyMs": None if self.mean_latency_ms is None else round(self.mean_latency_ms, 3),
            "p99LatencyMs": None if self.p99_latency_ms is None else round(self.p99_latency_ms, 3),
        }

    def __str__(self) -> str:
        text = f"{self.failures}/{self.requests} failed ({100 * self.error_ratio:.1f} %)"
        if self.mean_latency_ms is not None:
            text += f", mean {self.mean_latency_ms:.2f} ms"
        if self.p99_latency_ms is not None:
            text += f", p99 {self.p99_latency_ms:.2f} ms"
        return text


def measure(pods: Mapping[str, PodMetrics], baseline: Mapping[str, Mapping[str, Any]]) -> Measurement:
    """The pods' traffic since the step's baseline."""
    deltas = [metrics.minus(baseline.get(name)) for name, metrics in pods.items()]
    success = sum(d.success for d in deltas)
    failure = sum(d.failure for d in deltas)
    requests = int(success + failure)
    duration = sum(d.duration_us for d in deltas)
    p99s = [d.p99_us for d in deltas if d.p99_us is not None]
    return Measurement(
        requests=requests,
        failures=int(failure),
        # Triton's duration counter covers the successful requests.
        mean_latency_ms=duration / success / 1000.0 if success else None,
        p99_latency_ms=max(p99s) / 1000.0 if p99s else None,
    )


def judge(analysis: CanaryAnalysis, canary: Measurement, stable: Measurement | None, paused: bool) -> tuple[str, str]:
    """(Pass | Fail | Wait, why). Errors abort as soon as the canary has served minRequests,
    even before the pause is over. Latency is judged at the end of the pause, so that the
    first requests of freshly started pods (cold caches, lazy initialisation) weigh little."""
    if canary.requests < analysis.min_requests:
        return WAIT, f"{canary.requests}/{analysis.min_requests} requests reached the canary"
    if canary.error_ratio > analysis.max_error_ratio:
        return FAIL, f"error ratio {canary.error_ratio:.3f} is above maxErrorRatio {analysis.max_error_ratio}"
    if not paused:
        return WAIT, "no errors above the limit so far; latency is judged when the step's pause is over"
    if analysis.max_p99_latency_ms is not None and canary.p99_latency_ms is not None \
            and canary.p99_latency_ms > analysis.max_p99_latency_ms:
        return FAIL, f"p99 latency {canary.p99_latency_ms:.2f} ms is above maxP99LatencyMs {analysis.max_p99_latency_ms}"
    if analysis.max_latency_ratio is not None and stable is not None and canary.mean_latency_ms is not None \
            and stable.mean_latency_ms:
        ratio = canary.mean_latency_ms / stable.mean_latency_ms
        if ratio > analysis.max_latency_ratio:
            return FAIL, f"mean latency is {ratio:.2f}x the stable pods', above maxLatencyRatio {analysis.max_latency_ratio}"
    return PASS, "within the limits"


@dataclass(frozen=True)
class CanaryServer:
    """The live canary Deployment, reduced to what the steps need."""

    version: int | None
    replicas: int
    available: int
    updated: int
    deadline_exceeded: bool = False

    def ready_at(self, version: int, replicas: int) -> bool:
        return self.version == version and self.replicas == replicas and self.updated >= replicas and self.available >= replicas


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class CanaryPlan:
    status: CanaryStatus | None
    hold: bool  # keep the stable Deployment at the stable version
    canary_version: int | None  # the version the canary Deployment runs (None: nothing to render)
    canary_replicas: int  # 0 scales the canary away
    abort: int | None = None  # a version that failed its analysis
    abort_message: str = ""
    events: tuple[Event, ...] = ()
    requeue: float | None = None
    weights: tuple[int, int] = (100, 0)  # (stable, canary) percent, for an HTTPRoute
    wants_metrics: bool = False
    metrics_unavailable: bool = False  # the step waits because Triton's counters could not be read


def _analysis_status(now: datetime, canary: Measurement, stable: Measurement | None, verdict: str, why: str) -> dict[str, Any]:
    return {"time": timestamp(now), "canary": canary.wire(), "stable": stable.wire() if stable else None, "verdict": f"{verdict}: {why}"}


def plan_canary(
    *,
    canary_spec: CanarySpec,
    replicas: int,
    stable_version: int | None,
    candidate: int | None,
    old: Mapping[str, Any] | None,
    server: CanaryServer | None,
    metrics: tuple[Mapping[str, PodMetrics], Mapping[str, PodMetrics]] | None,
    now: datetime,
    metrics_error: str | None = None,
) -> CanaryPlan:
    """One step of the canary state machine.

    `candidate` is the version a rolling update would render now (already skipping failed
    versions), `stable_version` the one every stable pod serves. `metrics` is (canary pods,
    stable pods) by pod name, read this reconcile; None when they could not be read, and
    `metrics_error` then says why (an unreachable Prometheus, a pod it has no series of).
    """
    interval = float(seconds(canary_spec.analysis.interval))
    previous = CanaryStatus.model_validate(old) if old else None
    steps = canary_spec.steps

    # No canary to run: the first version (nothing stable to compare with), no change, or
    # a promoted version whose stable rollout has finished.
    if candidate is None or stable_version is None or candidate == stable_version:
        keep = previous
        if previous is not None and previous.phase == CanaryPhase.PROGRESSING:
            # The candidate went away (a pin moved back, the version was deleted).
            keep = previous.model_copy(update={"phase": CanaryPhase.ABORTED, "canary_replicas": 0,
                                               "message": f"version {previous.version} is no longer the candidate"})
        elif previous is not None and previous.canary_replicas:
            keep = previous.model_copy(update={"canary_replicas": 0})
        return CanaryPlan(status=keep, hold=False, canary_version=previous.version if previous else None, canary_replicas=0)

    # A promoted canary keeps serving while the stable Deployment rolls to its version.
    if previous is not None and previous.version == candidate and previous.phase == CanaryPhase.PROMOTED:
        return CanaryPlan(status=previous, hold=False, canary_version=candidate,
                          canary_replicas=previous.canary_replicas, weights=(100, 0))

    events: list[Event] = []
    if previous is None or previous.version != candidate or previous.phase != CanaryPhase.PROGRESSING:
        weight = steps[0].weight
        count = canary_replicas(replicas, weight)
        status = {
            "version": candidate, "stableVersion": stable_version, "phase": CanaryPhase.PROGRESSING,
            "step": 0, "steps": len(steps), "weight": weight, "canaryReplicas": count, "stableReplicas": replicas,
            "effectiveWeight": effective_weight(replicas, count),
            "message": f"step 1/{len(steps)}: starting {count} canary pod(s) of version {candidate}",
        }
        events.append(Event(NORMAL, Reason.CANARY_STARTED,
                             f"canary of version {candidate} next to version {stable_version}: step 1/{len(steps)} at "
                             f"{weight} % ({count} canary + {replicas} stable pods, {status['effectiveWeight']} %)"))
        return CanaryPlan(status=CanaryStatus.model_validate(status), hold=True, canary_version=candidate,
                          canary_replicas=count, events=tuple(events), requeue=interval,
                          weights=(100 - weight, weight))

    data = previous.wire()
    step = previous.step
    weight = steps[min(step, len(steps) - 1)].weight
    count = canary_replicas(replicas, weight)
    data.update({"steps": len(steps), "weight": weight, "canaryReplicas": count, "stableReplicas": replicas,
                 "effectiveWeight": effective_weight(replicas, count), "stableVersion": stable_version})
    label = f"step {step + 1}/{len(steps)} at {weight} %"

    def abort(why: str, figures: str) -> CanaryPlan:
        message = f"canary of version {candidate} aborted at {label}: {why}; canary {figures}; stable version {stable_version} keeps {replicas} pods"
        data.update({"phase": CanaryPhase.ABORTED, "canaryReplicas": 0, "message": message, "baseline": None})
        events.append(Event(WARNING, Reason.CANARY_ABORTED, message))
        return CanaryPlan(status=CanaryStatus.model_validate(data), hold=True, canary_version=candidate, canary_replicas=0,
                          abort=candidate, abort_message=message, events=tuple(events))

    def waiting(message: str, wants_metrics: bool = False, unavailable: bool = False) -> CanaryPlan:
        data["message"] = f"{label}: {message}"
        return CanaryPlan(status=CanaryStatus.model_validate(data), hold=True, canary_version=candidate, canary_replicas=count,
                          events=tuple(events), requeue=interval, weights=(100 - weight, weight), wants_metrics=wants_metrics,
                          metrics_unavailable=unavailable)

    if server is not None and server.deadline_exceeded and server.version == candidate:
        return abort("the canary pods did not become available", "served no request")
    if server is None or not server.ready_at(candidate, count):
        data.update({"stepStartedAt": None, "baseline": None})
        available = server.available if server is not None and server.version == candidate else 0
        return waiting(f"waiting for canary pods ({available}/{count} available)")
    if metrics is None:
        # Never a verdict without the counters: the step waits, says why, and an event records
        # each new cause (not every retry: the message is then the same).
        why = metrics_error or "Triton's metrics could not be read"
        message = f"{why}; the analysis waits and tries again"
        if previous.message != f"{label}: {message}":
            events.append(Event(WARNING, Reason.METRICS_UNAVAILABLE, f"canary of version {candidate} at {label}: {why}"))
        return waiting(message, wants_metrics=True, unavailable=True)
    canary_pods, stable_pods = metrics
    if not data.get("stepStartedAt"):
        data["stepStartedAt"] = timestamp(now)
        data["baseline"] = [
            {"pod": name, "success": m.success, "failure": m.failure, "durationUs": m.duration_us, "queueUs": m.queue_us}
            for name, m in sorted({**stable_pods, **canary_pods}.items())
        ]
        data["lastAnalysis"] = None
        return waiting("the canary pods are ready; counting requests from now", wants_metrics=True)

    # One analysis per interval, however often the object is reconciled (each status write
    # wakes it): between analyses the status stays as it is, so nothing is written.
    last = (data.get("lastAnalysis") or {}).get("time") or data["stepStartedAt"]
    since = (now - datetime.strptime(last, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=now.tzinfo)).total_seconds()
    if since < interval:
        return CanaryPlan(status=CanaryStatus.model_validate(data), hold=True, canary_version=candidate, canary_replicas=count,
                          events=tuple(events), requeue=max(0.5, interval - since), weights=(100 - weight, weight),
                          wants_metrics=True)
    baseline = {entry["pod"]: entry for entry in data.get("baseline") or []}
    canary = measure(canary_pods, baseline)
    stable = measure(stable_pods, baseline) if stable_pods else None
    started = datetime.strptime(data["stepStartedAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=now.tzinfo)
    paused = (now - started).total_seconds() >= seconds(steps[step].pause)
    verdict, why = judge(canary_spec.analysis, canary, stable, paused)
    data["lastAnalysis"] = _analysis_status(now, canary, stable, verdict, why)
    if verdict == FAIL:
        stable_text = f"; stable {stable}" if stable is not None else ""
        return abort(why, f"{canary}{stable_text}")
    if verdict == WAIT:
        return waiting(why, wants_metrics=True)

    figures = f"canary {canary}" + (f"; stable {stable}" if stable is not None else "")
    if step + 1 >= len(steps):
        message = f"canary of version {candidate} passed {len(steps)} step(s) and is promoted: {figures}"
        data.update({"phase": CanaryPhase.PROMOTED, "message": message, "baseline": None})
        events.append(Event(NORMAL, Reason.CANARY_PROMOTED, message))
        return CanaryPlan(status=CanaryStatus.model_validate(data), hold=False, canary_version=candidate,
                          canary_replicas=count, events=tuple(events), weights=(100, 0))
    next_weight = steps[step + 1].weight
    next_count = canary_replicas(replicas, next_weight)
    events.append(Event(NORMAL, Reason.CANARY_STEP_PASSED,
                         f"canary of version {candidate} passed {label} ({figures}); step {step + 2}/{len(steps)} at "
                         f"{next_weight} % ({next_count} canary pods)"))
    data.update({
        "step": step + 1, "weight": next_weight, "canaryReplicas": next_count,
        "effectiveWeight": effective_weight(replicas, next_count), "stepStartedAt": None, "baseline": None,
        "message": f"step {step + 2}/{len(steps)} at {next_weight} %: starting {next_count} canary pod(s)",
    })
    return CanaryPlan(status=CanaryStatus.model_validate(data), hold=True, canary_version=candidate, canary_replicas=next_count,
                      events=tuple(events), requeue=interval, weights=(100 - next_weight, next_weight))

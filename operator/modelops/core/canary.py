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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelops.api.deployment import CanaryAnalysis, CanaryPhase, CanarySpec, CanaryStatus
from modelops.api.deployment import DeploymentReason as Reason
from modelops.core.conditions import timestamp
from modelops.core.objects import Event, ServerState

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


@dataclass(frozen=True)
class CanaryInputs:
    """The live canary Deployment and Triton's counters of the (canary, stable) pods by pod
    name, read this reconcile; `metrics` is None when they could not be read, and
    `metrics_error` then says why (an unreachable Prometheus, a pod it has no series of)."""

    server: ServerState | None = None
    metrics: tuple[Mapping[str, PodMetrics], Mapping[str, PodMetrics]] | None = None
    metrics_error: str | None = None


def plan_canary(
    *,
    canary_spec: CanarySpec,
    replicas: int,
    stable_version: int | None,
    candidate: int | None,
    old: CanaryStatus | None,
    live: CanaryInputs,
    now: datetime,
) -> CanaryPlan:
    """One step of the canary state machine.

    `candidate` is the version a rolling update would render now (already skipping failed
    versions), `stable_version` the one every stable pod serves.
    """
    if candidate is None or stable_version is None or candidate == stable_version:
        return _no_canary(old)
    # A promoted canary keeps serving while the stable Deployment rolls to its version.
    if old is not None and old.version == candidate and old.phase == CanaryPhase.PROMOTED:
        return CanaryPlan(status=old, hold=False, canary_version=candidate, canary_replicas=old.canary_replicas, weights=(100, 0))
    if old is None or old.version != candidate or old.phase != CanaryPhase.PROGRESSING:
        return _start(canary_spec, replicas, stable_version, candidate)
    step = _Step.of(canary_spec, replicas, stable_version, candidate, old, now)
    for phase in (_pods_ready, _counters_read, _counting_started, _analysis_due):
        plan = phase(step, live)
        if plan is not None:
            return plan
    return _judge(step, live)


def _no_canary(old: CanaryStatus | None) -> CanaryPlan:
    """No canary to run: the first version (nothing stable to compare with), no change, or a
    promoted version whose stable rollout has finished."""
    keep = old
    if old is not None and old.phase == CanaryPhase.PROGRESSING:
        # The candidate went away (a pin moved back, the version was deleted).
        keep = old.model_copy(update={"phase": CanaryPhase.ABORTED, "canary_replicas": 0,
                                      "message": f"version {old.version} is no longer the candidate"})
    elif old is not None and old.canary_replicas:
        keep = old.model_copy(update={"canary_replicas": 0})
    return CanaryPlan(status=keep, hold=False, canary_version=old.version if old else None, canary_replicas=0)


def _start(canary_spec: CanarySpec, replicas: int, stable_version: int, candidate: int) -> CanaryPlan:
    steps = canary_spec.steps
    weight = steps[0].weight
    count = canary_replicas(replicas, weight)
    status = {
        "version": candidate, "stableVersion": stable_version, "phase": CanaryPhase.PROGRESSING,
        "step": 0, "steps": len(steps), "weight": weight, "canaryReplicas": count, "stableReplicas": replicas,
        "effectiveWeight": effective_weight(replicas, count),
        "message": f"step 1/{len(steps)}: starting {count} canary pod(s) of version {candidate}",
    }
    event = Event(NORMAL, Reason.CANARY_STARTED,
                  f"canary of version {candidate} next to version {stable_version}: step 1/{len(steps)} at "
                  f"{weight} % ({count} canary + {replicas} stable pods, {status['effectiveWeight']} %)")
    return CanaryPlan(status=CanaryStatus.model_validate(status), hold=True, canary_version=candidate,
                      canary_replicas=count, events=(event,), requeue=float(seconds(canary_spec.analysis.interval)),
                      weights=(100 - weight, weight))


@dataclass
class _Step:
    """A step of a canary in progress, as this reconcile sees it; `data` is the status it writes."""

    spec: CanarySpec
    replicas: int
    stable_version: int
    candidate: int
    old: CanaryStatus
    now: datetime
    data: dict[str, Any]
    weight: int
    count: int
    events: list[Event] = field(default_factory=list)

    @classmethod
    def of(cls, spec: CanarySpec, replicas: int, stable_version: int, candidate: int, old: CanaryStatus, now: datetime) -> _Step:
        steps = spec.steps
        weight = steps[min(old.step, len(steps) - 1)].weight
        count = canary_replicas(replicas, weight)
        data = old.wire()
        data.update({"steps": len(steps), "weight": weight, "canaryReplicas": count, "stableReplicas": replicas,
                     "effectiveWeight": effective_weight(replicas, count), "stableVersion": stable_version})
        return cls(spec, replicas, stable_version, candidate, old, now, data, weight, count)

    @property
    def interval(self) -> float:
        return float(seconds(self.spec.analysis.interval))

    @property
    def label(self) -> str:
        return f"step {self.old.step + 1}/{len(self.spec.steps)} at {self.weight} %"

    def plan(self, requeue: float | None = None, wants_metrics: bool = False, unavailable: bool = False) -> CanaryPlan:
        """The step holds: the stable Deployment stays, the canary runs its pods."""
        return CanaryPlan(status=CanaryStatus.model_validate(self.data), hold=True, canary_version=self.candidate,
                          canary_replicas=self.count, events=tuple(self.events), requeue=requeue,
                          weights=(100 - self.weight, self.weight), wants_metrics=wants_metrics, metrics_unavailable=unavailable)

    def waiting(self, message: str, wants_metrics: bool = False, unavailable: bool = False) -> CanaryPlan:
        self.data["message"] = f"{self.label}: {message}"
        return self.plan(self.interval, wants_metrics, unavailable)

    def abort(self, why: str, figures: str) -> CanaryPlan:
        message = (f"canary of version {self.candidate} aborted at {self.label}: {why}; canary {figures}; "
                   f"stable version {self.stable_version} keeps {self.replicas} pods")
        self.data.update({"phase": CanaryPhase.ABORTED, "canaryReplicas": 0, "message": message, "baseline": None})
        self.events.append(Event(WARNING, Reason.CANARY_ABORTED, message))
        return CanaryPlan(status=CanaryStatus.model_validate(self.data), hold=True, canary_version=self.candidate,
                          canary_replicas=0, abort=self.candidate, abort_message=message, events=tuple(self.events))

    def started_at(self, text: str) -> datetime:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=self.now.tzinfo)


def _pods_ready(step: _Step, live: CanaryInputs) -> CanaryPlan | None:
    server = live.server
    if server is not None and server.deadline_exceeded and server.version == step.candidate:
        return step.abort("the canary pods did not become available", "served no request")
    if server is None or not server.ready_at(step.candidate, step.count):
        step.data.update({"stepStartedAt": None, "baseline": None})
        available = server.available if server is not None and server.version == step.candidate else 0
        return step.waiting(f"waiting for canary pods ({available}/{step.count} available)")
    return None


def _counters_read(step: _Step, live: CanaryInputs) -> CanaryPlan | None:
    """Never a verdict without the counters: the step waits, says why, and an event records
    each new cause (not every retry: the message is then the same)."""
    if live.metrics is not None:
        return None
    why = live.metrics_error or "Triton's metrics could not be read"
    message = f"{why}; the analysis waits and tries again"
    if step.old.message != f"{step.label}: {message}":
        step.events.append(Event(WARNING, Reason.METRICS_UNAVAILABLE, f"canary of version {step.candidate} at {step.label}: {why}"))
    return step.waiting(message, wants_metrics=True, unavailable=True)


def _counting_started(step: _Step, live: CanaryInputs) -> CanaryPlan | None:
    """The first look with every canary pod ready takes the baseline the step counts from."""
    if step.data.get("stepStartedAt"):
        return None
    assert live.metrics is not None
    canary_pods, stable_pods = live.metrics
    step.data["stepStartedAt"] = timestamp(step.now)
    step.data["baseline"] = [
        {"pod": name, "success": m.success, "failure": m.failure, "durationUs": m.duration_us, "queueUs": m.queue_us}
        for name, m in sorted({**stable_pods, **canary_pods}.items())
    ]
    step.data["lastAnalysis"] = None
    return step.waiting("the canary pods are ready; counting requests from now", wants_metrics=True)


def _analysis_due(step: _Step, live: CanaryInputs) -> CanaryPlan | None:
    """One analysis per interval, however often the object is reconciled (each status write
    wakes it): between analyses the status stays as it is, so nothing is written."""
    last = (step.data.get("lastAnalysis") or {}).get("time") or step.data["stepStartedAt"]
    since = (step.now - step.started_at(last)).total_seconds()
    if since < step.interval:
        return step.plan(max(0.5, step.interval - since), wants_metrics=True)
    return None


def _judge(step: _Step, live: CanaryInputs) -> CanaryPlan:
    assert live.metrics is not None
    canary_pods, stable_pods = live.metrics
    data, steps = step.data, step.spec.steps
    baseline = {entry["pod"]: entry for entry in data.get("baseline") or []}
    canary = measure(canary_pods, baseline)
    stable = measure(stable_pods, baseline) if stable_pods else None
    paused = (step.now - step.started_at(data["stepStartedAt"])).total_seconds() >= seconds(steps[step.old.step].pause)
    verdict, why = judge(step.spec.analysis, canary, stable, paused)
    data["lastAnalysis"] = _analysis_status(step.now, canary, stable, verdict, why)
    if verdict == FAIL:
        stable_text = f"; stable {stable}" if stable is not None else ""
        return step.abort(why, f"{canary}{stable_text}")
    if verdict == WAIT:
        return step.waiting(why, wants_metrics=True)
    figures = f"canary {canary}" + (f"; stable {stable}" if stable is not None else "")
    return _promote(step, figures) if step.old.step + 1 >= len(steps) else _next_step(step, figures)


def _promote(step: _Step, figures: str) -> CanaryPlan:
    message = f"canary of version {step.candidate} passed {len(step.spec.steps)} step(s) and is promoted: {figures}"
    step.data.update({"phase": CanaryPhase.PROMOTED, "message": message, "baseline": None})
    step.events.append(Event(NORMAL, Reason.CANARY_PROMOTED, message))
    return CanaryPlan(status=CanaryStatus.model_validate(step.data), hold=False, canary_version=step.candidate,
                      canary_replicas=step.count, events=tuple(step.events), weights=(100, 0))


def _next_step(step: _Step, figures: str) -> CanaryPlan:
    steps, number = step.spec.steps, step.old.step
    next_weight = steps[number + 1].weight
    next_count = canary_replicas(step.replicas, next_weight)
    step.events.append(Event(NORMAL, Reason.CANARY_STEP_PASSED,
                             f"canary of version {step.candidate} passed {step.label} ({figures}); step {number + 2}/{len(steps)} at "
                             f"{next_weight} % ({next_count} canary pods)"))
    step.data.update({
        "step": number + 1, "weight": next_weight, "canaryReplicas": next_count,
        "effectiveWeight": effective_weight(step.replicas, next_count), "stepStartedAt": None, "baseline": None,
        "message": f"step {number + 2}/{len(steps)} at {next_weight} %: starting {next_count} canary pod(s)",
    })
    step.weight, step.count = next_weight, next_count
    return step.plan(step.interval)

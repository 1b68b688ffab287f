"""Prometheus metrics of the operator, in a registry of its own (no process-global state)."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelops.api.deployment import DeploymentReason
from modelops.api.types import Step, StepTiming
from modelops.api.version import Phase

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ROLLOUT_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_STEP_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
# The stages of a version's way to serving, as modelops_phase_duration_seconds{stage} names
# them: the ModelVersion phase each one is timed in (serve is the rollout, timed by the
# ModelDeployment). A compression Job evaluates the gate in the same run, so `compress`
# includes its gate; `gate` alone is a cached compression evaluated on this version's dataset.
STAGES: dict[str, str] = {Phase.VERIFYING: "verify", Phase.COMPRESSING: "compress", Phase.EVALUATING: "gate"}
STAGE_SERVE = "serve"


class _VersionPhases(Collector):
    """modelops_model_versions{phase}: the phase of every ModelVersion the operator has seen.

    It also times the stages: when a version leaves a phase of STAGES that this process saw
    it enter, the time spent there goes to `on_stage_done`. A version's first phase is timed
    from its first sighting only when it is `fresh` (it had no phase before); a phase already
    under way when the operator started has no known start and is not timed."""

    def __init__(self, on_stage_done: Callable[[str, float], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._phases: dict[tuple[str, str], tuple[str, float | None]] = {}
        self._lock = threading.Lock()
        self._on_stage_done = on_stage_done
        self._clock = clock

    def set(self, namespace: str, name: str, phase: str | None, fresh: bool = False) -> None:
        now = self._clock()
        with self._lock:
            before = self._phases.pop((namespace, name), None)
            if phase is not None:
                if before is not None and before[0] == phase:
                    entered = before[1]
                else:
                    entered = now if before is not None or fresh else None
                self._phases[(namespace, name)] = (phase, entered)
        if phase is not None and before is not None and before[0] != phase and before[1] is not None and before[0] in STAGES:
            self._on_stage_done(STAGES[before[0]], now - before[1])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            tally = Tally(phase for phase, _ in self._phases.values())
        family = GaugeMetricFamily("modelops_model_versions", "ModelVersions by phase.", labels=["phase"])
        for phase in Phase:
            family.add_metric([phase], tally.get(phase, 0))
        yield family


class _PastDeadline(Collector):
    """modelops_rollouts_past_deadline: ModelDeployments whose rollout is past its progress
    deadline and was not rolled back (auto-rollback off, or nothing served to go back to)."""

    def __init__(self) -> None:
        self._keys: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, conditions: list[dict[str, Any]] | None) -> None:
        past = any(c.get("reason") == DeploymentReason.PROGRESS_DEADLINE_EXCEEDED for c in conditions or [])
        with self._lock:
            (self._keys.add if past else self._keys.discard)((namespace, name))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            count = len(self._keys)
        yield GaugeMetricFamily(
            "modelops_rollouts_past_deadline", "ModelDeployments whose rollout is past its deadline and was not rolled back.", value=count
        )


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter("modelops_reconcile", "Reconciles by kind and result.", ["kind", "result"], registry=r)
        self.reconcile_errors = Counter("modelops_reconcile_errors", "Failed reconciles by kind and error.", ["kind", "error"], registry=r)
        self.reconcile_seconds = Histogram(
            "modelops_reconcile_duration_seconds", "Time spent in one reconcile.", ["kind"], buckets=_RECONCILE_BUCKETS, registry=r
        )
        self.rollouts = Counter("modelops_rollouts", "Rollouts of a new version, by outcome (started, succeeded).", ["outcome"], registry=r)
        self.rollbacks = Counter("modelops_rollbacks", "Rollouts reverted because they missed their deadline.", registry=r)
        self.phase_seconds = Histogram(
            "modelops_phase_duration_seconds",
            "Time a version spent in each stage on its way to serving: verify, compress (with its gate), gate "
            "(a cached compression evaluated alone) and serve (a rollout's start to all its pods serving).",
            ["stage"], buckets=_ROLLOUT_BUCKETS, registry=r,
        )
        self.step_seconds = Histogram(
            "modelops_step_duration_seconds",
            "The steps of a model's time to ready, as status records them (api Step): a version's verify, "
            "download, compress and evaluate; a rollout's schedule, fetch and load of its first ready pod, and ready.",
            ["step"], buckets=_STEP_BUCKETS, registry=r,
        )
        for each in Step:
            self.step_seconds.labels(each.value)
        self.jobs_created = Counter("modelops_compression_jobs_created", "Compression Jobs created.", registry=r)
        self.cache_hits = Counter("modelops_compression_cache_hits", "Versions made Ready from an earlier identical compression.", registry=r)
        self.kube_requests = Counter(
            "modelops_kube_requests", "Kubernetes API requests by verb, resource and HTTP status.", ["verb", "resource", "code"], registry=r
        )
        self.queue_depth = Gauge("modelops_queue_depth", "Objects waiting to be reconciled.", registry=r)
        # Known label values start at 0, so that rate() and increase() see them from the first scrape.
        for stage in (*STAGES.values(), STAGE_SERVE):
            self.phase_seconds.labels(stage)
        for outcome in ("started", "succeeded"):
            self.rollouts.labels(outcome)
        self.leader = Gauge("modelops_leader", "1 while this replica holds the leader Lease and reconciles, 0 while it stands by.", registry=r)
        self.phase_changes = Counter(
            "modelops_version_phase_changes", "ModelVersion phase changes written, by new phase and reason.", ["phase", "reason"], registry=r
        )
        self.past_deadline = _PastDeadline()
        r.register(self.past_deadline)
        self.versions = _VersionPhases(lambda stage, seconds: self.phase_seconds.labels(stage).observe(seconds), clock)
        r.register(self.versions)

    def rollout_succeeded(self, seconds: float, steps: list[StepTiming]) -> None:
        self.rollouts.labels("succeeded").inc()
        self.phase_seconds.labels(STAGE_SERVE).observe(seconds)
        self.steps_timed(steps)

    def steps_timed(self, steps: list[StepTiming]) -> None:
        for timing in steps:
            self.step_seconds.labels(timing.step.value).observe(timing.seconds)

    def observe_request(self, verb: str, resource: str, code: int) -> None:
        self.kube_requests.labels(verb, resource, str(code)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of the operator, in a registry of its own (no process-global state)."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelops.api.version import Phase

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ROLLOUT_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class _VersionPhases(Collector):
    """modelops_model_versions{phase}: the phase of every ModelVersion the operator has seen."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            tally = Tally(self._phases.values())
        family = GaugeMetricFamily("modelops_model_versions", "ModelVersions by phase.", labels=["phase"])
        for phase in Phase:
            family.add_metric([phase], tally.get(phase, 0))
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter("modelops_reconcile", "Reconciles by kind and result.", ["kind", "result"], registry=r)
        self.reconcile_errors = Counter("modelops_reconcile_errors", "Failed reconciles by kind and error.", ["kind", "error"], registry=r)
        self.reconcile_seconds = Histogram(
            "modelops_reconcile_duration_seconds", "Time spent in one reconcile.", ["kind"], buckets=_RECONCILE_BUCKETS, registry=r
        )
        self.rollouts = Counter("modelops_rollouts", "Rollouts of a new version, by outcome (started, succeeded).", ["outcome"], registry=r)
        self.rollbacks = Counter("modelops_rollbacks", "Rollouts reverted because they missed their deadline.", registry=r)
        self.rollout_seconds = Histogram(
            "modelops_rollout_duration_seconds", "Time from a rollout's start to all pods serving it.", buckets=_ROLLOUT_BUCKETS, registry=r
        )
        self.jobs_created = Counter("modelops_compression_jobs_created", "Compression Jobs created.", registry=r)
        self.cache_hits = Counter("modelops_compression_cache_hits", "Versions made Ready from an earlier identical compression.", registry=r)
        self.kube_requests = Counter(
            "modelops_kube_requests", "Kubernetes API requests by verb, resource and HTTP status.", ["verb", "resource", "code"], registry=r
        )
        self.queue_depth = Gauge("modelops_queue_depth", "Objects waiting to be reconciled.", registry=r)
        self.versions = _VersionPhases()
        r.register(self.versions)

    def observe_request(self, verb: str, resource: str, code: int) -> None:
        self.kube_requests.labels(verb, resource, str(code)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

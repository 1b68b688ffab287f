"""Triton's counters of a deployment's ready pods, for the canary analysis and the operator's
autoscaler: from each pod's own metrics endpoint (port 8002), needing no Prometheus, or through
Prometheus's HTTP API where the operator is given one (MODELOPS_PROMETHEUS_URL).

Parsing is pure (`parse` here, core/promql.py for Prometheus); `read` does the HTTP: one short
GET per ready pod, or one instant query.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelops.core import naming, promql
from modelops.core.canary import PodMetrics
from modelops.serving.triton import TRITON
from modelops.settings import Settings

logger = logging.getLogger(__name__)


def parse(text: str, model: str | None = None) -> PodMetrics:
    """Sum Triton's counters over the versions of `model` (all models when None)."""
    counters = TRITON.metrics.counters
    totals = dict.fromkeys(counters.values(), 0.0)
    p99: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if model is not None and sample.labels.get("model") != model:
                continue
            # The parser names a counter's samples <name>_total.
            key = counters.get(sample.name.removesuffix("_total"))
            if key is not None:
                totals[key] += float(sample.value)
            elif sample.name == TRITON.metrics.p99_summary and sample.labels.get("quantile") == TRITON.metrics.p99_quantile:
                value = float(sample.value)
                if value == value:  # NaN while the summary has no observation
                    p99 = value if p99 is None else max(p99, value)
    return PodMetrics(p99_us=p99, **totals)


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp") or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http to a pod IP
        return str(response.read().decode())


@dataclass(frozen=True)
class Readout:
    """(canary pods, stable pods) by name; or, when a ready pod's counters could not be read,
    None and why (the analysis then waits, rather than judge on part of the pods)."""

    metrics: tuple[dict[str, PodMetrics], dict[str, PodMetrics]] | None
    error: str | None = None


@dataclass(frozen=True)
class PrometheusSource:
    """Prometheus's HTTP API at `url`; `ca_file` verifies its certificate (None: the system's)."""

    url: str
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    timeout: float = 5.0

    @classmethod
    def of(cls, settings: Settings) -> PrometheusSource | None:
        if not settings.prometheus_url:
            return None
        return cls(settings.prometheus_url.rstrip("/"), settings.prometheus_ca_file or None,
                   settings.prometheus_insecure_skip_verify)

    def query(self, expression: str) -> Mapping[str, Any]:
        """An instant query (POST, so that a long pod list fits); Prometheus's JSON answer,
        also for its 4xx errors, whose body says what was wrong."""
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.insecure_skip_verify:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        request = urllib.request.Request(
            f"{self.url}/api/v1/query", data=urllib.parse.urlencode({"query": expression}).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as response:  # noqa: S310
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as err:
            body = err.read()
            try:
                return dict(json.loads(body))
            except ValueError:
                raise OSError(f"HTTP {err.code}: {body[:200]!r}") from None


def _split(pods: Iterable[dict[str, Any]], metrics: Mapping[str, PodMetrics]) -> tuple[dict[str, PodMetrics], dict[str, PodMetrics]]:
    canary: dict[str, PodMetrics] = {}
    stable: dict[str, PodMetrics] = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        labels = pod["metadata"].get("labels") or {}
        side = canary if labels.get(naming.LABEL_TRACK) == naming.TRACK_CANARY else stable
        side[name] = metrics[name]
    return canary, stable


def read(
    pods: Iterable[dict[str, Any]], model: str, namespace: str, prometheus: PrometheusSource | None = None,
    timeout: float = 2.0,
) -> Readout:
    """Triton's counters of every ready pod of `pods`: from the pods, or through `prometheus`."""
    ready = [p for p in pods if _ready(p)]
    if prometheus is not None:
        return _through_prometheus(prometheus, ready, model, namespace)

    def one(pod: dict[str, Any]) -> tuple[str, PodMetrics | str]:
        name = pod["metadata"]["name"]
        url = f"http://{pod['status']['podIP']}:{TRITON.metrics_port}{TRITON.metrics_path}"
        try:
            return name, parse(_get(url, timeout), model)
        except (urllib.error.URLError, OSError, ValueError) as err:
            logger.info("could not read Triton metrics of pod %s: %s", name, err)
            return name, f"Triton's metrics endpoint of pod {name} could not be read ({url}: {err})"

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(ready)))) as pool:
        results = dict(pool.map(one, ready))
    errors = [r for r in results.values() if isinstance(r, str)]
    if errors:
        return Readout(None, errors[0] + (f" (and {len(errors) - 1} more pod(s))" if len(errors) > 1 else ""))
    return Readout(_split(ready, {n: m for n, m in results.items() if isinstance(m, PodMetrics)}))


def _through_prometheus(source: PrometheusSource, ready: list[dict[str, Any]], model: str, namespace: str) -> Readout:
    if not ready:
        return Readout(({}, {}))
    names = [p["metadata"]["name"] for p in ready]
    try:
        metrics, missing = promql.parse_counters(source.query(promql.counters_query(namespace, names, model)), names)
    except (urllib.error.URLError, OSError, ValueError) as err:
        logger.info("could not query Prometheus at %s: %s", source.url, err)
        return Readout(None, f"Prometheus at {source.url} could not be read: {err}")
    if missing:
        return Readout(None, f"Prometheus at {source.url} has no series of Triton's counters of model {model} for pod(s) "
                             f"{', '.join(missing)} in {namespace} (does it scrape them, with the labels namespace and pod?)")
    return Readout(_split(ready, metrics))

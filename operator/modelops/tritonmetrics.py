"""Triton's own metrics endpoint (port 8002), read straight from the pods: no Prometheus.

Parsing is pure (`parse`); `read_pods` does the HTTP, one short GET per ready pod.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelops.core import naming
from modelops.core.canary import PodMetrics

logger = logging.getLogger(__name__)

METRICS_PORT = 8002
_COUNTERS = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_request_duration_us": "duration_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_us",
    "nv_inference_count": "inferences",
}
_SUMMARY = "nv_inference_request_summary_us"


def parse(text: str, model: str | None = None) -> PodMetrics:
    """Sum Triton's counters over the versions of `model` (all models when None)."""
    totals = dict.fromkeys(_COUNTERS.values(), 0.0)
    p99: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if model is not None and sample.labels.get("model") != model:
                continue
            # The parser names a counter's samples <name>_total.
            key = _COUNTERS.get(sample.name.removesuffix("_total"))
            if key is not None:
                totals[key] += float(sample.value)
            elif sample.name == _SUMMARY and sample.labels.get("quantile") == "0.99":
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


def read_pods(
    pods: Iterable[dict[str, Any]], model: str, timeout: float = 2.0
) -> tuple[dict[str, PodMetrics], dict[str, PodMetrics]] | None:
    """(canary pods, stable pods) by name, from every ready pod; None when one cannot be read
    (the analysis then waits, rather than judging on part of the pods)."""
    ready = [p for p in pods if _ready(p)]

    def one(pod: dict[str, Any]) -> tuple[dict[str, Any], PodMetrics | None]:
        url = f"http://{pod['status']['podIP']}:{METRICS_PORT}/metrics"
        try:
            return pod, parse(_get(url, timeout), model)
        except (urllib.error.URLError, OSError, ValueError) as err:
            logger.info("could not read Triton metrics of pod %s: %s", pod["metadata"]["name"], err)
            return pod, None

    canary: dict[str, PodMetrics] = {}
    stable: dict[str, PodMetrics] = {}
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(ready)))) as pool:
        for pod, metrics in pool.map(one, ready):
            if metrics is None:
                return None
            labels = pod["metadata"].get("labels") or {}
            side = canary if labels.get(naming.LABEL_TRACK) == naming.TRACK_CANARY else stable
            side[pod["metadata"]["name"]] = metrics
    return canary, stable

"""Triton's counters through Prometheus's HTTP API, for the canary analysis and the operator's
autoscaler: the PromQL that reads them for a set of pods, and the reading of the answer.
Pure; modelops/tritonmetrics.py sends the query.

The query asks for each pod's counters as Prometheus last scraped them, not for an
`increase()` or `rate()` over a window: the analysis subtracts the baseline it recorded in the
status when the step's pods were all ready, and the autoscaler divides the change between two
readings by the time between them, exactly as they do with the counters read from the pods.
So a step's figures are whole request counts, both sources go through one decision, and no
range has to be chosen against Prometheus's scrape interval. Series are selected by the
labels that Kubernetes service discovery's usual relabelling gives (`namespace`, `pod`), with
the pod names the operator listed as ready, and Triton's own `model` label.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from modelops.core.canary import PodMetrics
from modelops.serving.triton import TRITON

NAMESPACE_LABEL, POD_LABEL, MODEL_LABEL = "namespace", "pod", "model"


class PrometheusAnswerError(ValueError):
    """Prometheus answered, but not with a vector of samples: the message says what it said."""


def _string(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def counters_query(namespace: str, pods: Iterable[str], model: str) -> str:
    """One instant query for the six counters and the p99 summary of `model` on `pods`."""
    names = "|".join(re.escape(name) for name in (*TRITON.metrics.counters, TRITON.metrics.p99_summary))
    pod_names = "|".join(re.escape(pod) for pod in sorted(set(pods)))
    return (f"{{__name__=~{_string(names)},{NAMESPACE_LABEL}={_string(namespace)},"
            f"{POD_LABEL}=~{_string(pod_names)},{MODEL_LABEL}={_string(model)}}}")


def parse_counters(answer: Mapping[str, Any], pods: Iterable[str]) -> tuple[dict[str, PodMetrics], list[str]]:
    """(PodMetrics by pod, the pods with no series) from a /api/v1/query answer. As for a
    pod's own endpoint, counters are summed over the model's versions and the p99 is the
    highest of theirs; a pod counts as seen once Prometheus has any of its counters."""
    if answer.get("status") != "success":
        raise PrometheusAnswerError(f"{answer.get('errorType', 'error')}: {answer.get('error', 'no error message')}")
    data = answer.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusAnswerError(f"expected a vector, got {data.get('resultType')!r}")
    wanted = set(pods)
    totals: dict[str, dict[str, float]] = {}
    p99: dict[str, float] = {}
    for series in data.get("result") or []:
        labels = series.get("metric") or {}
        pod, name = labels.get(POD_LABEL), labels.get("__name__")
        if pod not in wanted:
            continue
        try:
            value = float(series["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise PrometheusAnswerError(f"a sample of {name} for pod {pod} has no number: {series.get('value')!r}") from None
        key = TRITON.metrics.counters.get(name or "")
        if key is not None:
            counters = totals.setdefault(pod, dict.fromkeys(TRITON.metrics.counters.values(), 0.0))
            counters[key] += value
        elif name == TRITON.metrics.p99_summary and labels.get("quantile") == TRITON.metrics.p99_quantile and not math.isnan(value):
            p99[pod] = max(p99.get(pod, value), value)
    metrics = {pod: PodMetrics(p99_us=p99.get(pod), **counters) for pod, counters in totals.items()}
    return metrics, sorted(wanted - set(metrics))

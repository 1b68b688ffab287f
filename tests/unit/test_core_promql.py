"""Triton's counters through Prometheus: the PromQL for a set of pods and the reading of the
answer, as Prometheus's /api/v1/query returns it (shapes from Prometheus v0.316.0's API)."""

from __future__ import annotations

import pytest

from modelops.core.promql import PrometheusAnswerError, counters_query, parse_counters

pytestmark = pytest.mark.unit


def sample(name: str, pod: str, value: str, **labels: str) -> dict:
    return {"metric": {"__name__": name, "namespace": "ns", "pod": pod, "model": "digits", **labels},
            "value": [1767225600.123, value]}


def answer(*result: dict) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": list(result)}}


def test_the_query_selects_the_counters_of_the_model_on_exactly_the_named_pods() -> None:
    query = counters_query("ns", ["serve-canary-7d9f-abcde", "serve-5c8b-fghij", "serve-5c8b-fghij"], "digits")
    assert query == (
        '{__name__=~"nv_inference_request_success|nv_inference_request_failure|nv_inference_request_duration_us|'
        'nv_inference_queue_duration_us|nv_inference_compute_infer_duration_us|nv_inference_count|'
        'nv_inference_request_summary_us",namespace="ns",pod=~"serve\\\\-5c8b\\\\-fghij|serve\\\\-canary\\\\-7d9f\\\\-abcde",'
        'model="digits"}'
    )


def test_a_pod_name_with_a_dot_matches_only_itself() -> None:
    # Kubernetes names may hold dots; unescaped, "a.b" would also match "axb".
    assert 'pod=~"a\\\\.b"' in counters_query("ns", ["a.b"], "m")


def test_label_values_are_quoted() -> None:
    assert 'namespace="n\\"s"' in counters_query('n"s', ["p"], "m")


def test_counters_are_summed_over_versions_and_the_p99_is_the_highest() -> None:
    metrics, missing = parse_counters(answer(
        sample("nv_inference_request_success", "c0", "20", version="1"),
        sample("nv_inference_request_success", "c0", "5", version="2"),
        sample("nv_inference_request_failure", "c0", "3", version="1", reason="BACKEND"),
        sample("nv_inference_request_duration_us", "c0", "131900", version="1"),
        sample("nv_inference_queue_duration_us", "c0", "2202", version="1"),
        sample("nv_inference_compute_infer_duration_us", "c0", "68781", version="1"),
        sample("nv_inference_count", "c0", "25", version="1"),
        sample("nv_inference_request_summary_us", "c0", "874", version="1", quantile="0.99"),
        sample("nv_inference_request_summary_us", "c0", "900", version="2", quantile="0.99"),
        sample("nv_inference_request_summary_us", "c0", "450", version="1", quantile="0.5"),
        sample("nv_inference_request_success", "s0", "7", version="1"),
        sample("nv_inference_request_summary_us", "s0", "NaN", version="1", quantile="0.99"),
        sample("nv_inference_request_success", "gone", "99", version="1"),  # not asked for
    ), ["c0", "s0"])
    assert missing == []
    c0 = metrics["c0"]
    assert (c0.success, c0.failure, c0.duration_us, c0.queue_us, c0.compute_us, c0.inferences, c0.p99_us) == (
        25, 3, 131900, 2202, 68781, 25, 900)
    assert (metrics["s0"].success, metrics["s0"].p99_us) == (7, None)  # NaN: no observation yet
    assert set(metrics) == {"c0", "s0"}


def test_pods_without_series_are_named() -> None:
    metrics, missing = parse_counters(answer(sample("nv_inference_request_success", "s0", "1")), ["s0", "c1", "c0"])
    assert set(metrics) == {"s0"} and missing == ["c0", "c1"]
    assert parse_counters(answer(), ["s0"]) == ({}, ["s0"])


@pytest.mark.parametrize(("body", "message"), [
    ({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}, "bad_data: parse error at char 3"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "expected a vector, got 'matrix'"),
    (answer({"metric": {"__name__": "nv_inference_count", "pod": "s0"}, "value": [1.0]}), "has no number"),
])
def test_an_answer_that_is_not_a_vector_of_samples_is_an_error(body: dict, message: str) -> None:
    with pytest.raises(PrometheusAnswerError, match=message):
        parse_counters(body, ["s0"])

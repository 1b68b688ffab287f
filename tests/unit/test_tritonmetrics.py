"""Parsing of Triton's metrics text, as tritonserver 2.51 (nvidia-pytriton 0.7.0) writes it
with --metrics-config=summary_latencies=true."""

from __future__ import annotations

import pytest

from modelops.tritonmetrics import parse

pytestmark = pytest.mark.unit

TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="digits",version="1"} 20
nv_inference_request_success{model="other",version="1"} 7
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="digits",reason="OTHER",version="1"} 1
nv_inference_request_failure{model="digits",reason="BACKEND",version="1"} 3
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="digits",version="1"} 20
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="digits",version="1"} 131900
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="digits",version="1"} 2202
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in microseconds
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="digits",version="1"} 68781
# HELP nv_inference_request_summary_us Summary of inference request duration in microseconds
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{model="digits",version="1"} 20
nv_inference_request_summary_us_sum{model="digits",version="1"} 72860
nv_inference_request_summary_us{model="digits",version="1",quantile="0.5"} 450
nv_inference_request_summary_us{model="digits",version="1",quantile="0.99"} 874
nv_inference_request_summary_us{model="other",version="1",quantile="0.99"} 99999
"""


def test_counters_of_one_model() -> None:
    m = parse(TEXT, "digits")
    assert (m.success, m.failure, m.duration_us, m.queue_us, m.compute_us, m.p99_us) == (20, 4, 131900, 2202, 68781, 874)
    assert m.inferences == 20


def test_all_models_and_a_server_without_summaries() -> None:
    assert parse(TEXT).success == 27
    counters_only = "\n".join(line for line in TEXT.splitlines() if "summary" not in line) + "\n"
    assert parse(counters_only, "digits").p99_us is None

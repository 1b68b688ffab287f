"""The Triton benchmark's pure parts: cache key, serving configs, point selection by the
stability rule, target evaluation and the report table."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from bench import triton_bench as tb
from e2e.loadgen import LoadReport, WindowStats

pytestmark = pytest.mark.unit

WINDOW_S = 5.0


def window(index: int, throughput: float, latency_ms: float, length_s: float = WINDOW_S) -> WindowStats:
    return WindowStats(
        start_s=index * WINDOW_S,
        length_s=length_s,
        successes=round(throughput * length_s),
        failures=0,
        throughput_rps=throughput,
        mean_latency_ms=latency_ms,
    )


def segment(throughputs: list[float], latencies: list[float], p95_ms: float = 10.0, tail: bool = True) -> LoadReport:
    windows = [window(i, t, lat) for i, (t, lat) in enumerate(zip(throughputs, latencies, strict=True))]
    if tail:
        # Requests still in flight when the segment's time ran out land in a short last window.
        windows.append(window(len(windows), 1.0, 500.0, length_s=0.4))
    return LoadReport(
        requests=sum(w.successes for w in windows),
        failures=0,
        duration_s=sum(w.length_s for w in windows),
        throughput_rps=0.0,
        p50_ms=p95_ms / 2,
        p95_ms=p95_ms,
        p99_ms=p95_ms * 1.2,
        windows=tuple(windows),
        stable_from_window=None,
    )


def test_cache_key_is_deterministic_and_covers_every_parameter() -> None:
    base = tb.EncoderSpec()
    assert base.cache_key() == tb.EncoderSpec().cache_key()
    changed = {
        replace(base, layers=10),
        replace(base, hidden=1024, heads=16),
        replace(base, heads=8),
        replace(base, ffn=2048),
        replace(base, seq_len=128),
        replace(base, vocab=4096),
        replace(base, classes=10),
        replace(base, seed=1),
    }
    keys = {spec.cache_key() for spec in changed}
    assert base.cache_key() not in keys
    assert len(keys) == len(changed)


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"layers": 0}, "layers"), ({"seq_len": -1}, "seq_len"), ({"seed": -1}, "seed"), ({"heads": 7}, "heads")],
)
def test_bad_encoder_spec_names_the_field(fields, named) -> None:
    with pytest.raises(ValueError, match=f"^{named}:"):
        tb.EncoderSpec(**fields)


def test_ort_config_sets_the_thread_pools() -> None:
    assert json.loads(tb.ort_config(2)) == {"session_options": {"intra_op_num_threads": 2, "inter_op_num_threads": 1}}
    with pytest.raises(ValueError, match="^intra_op_threads:"):
        tb.ort_config(0)


def test_batching_off_has_no_dynamic_batcher_and_on_has_preferred_sizes() -> None:
    spec = tb.EncoderSpec(seq_len=64, classes=16)
    off = tb.render_config_pbtxt(tb.model_config(spec, batching=False))
    on = tb.render_config_pbtxt(tb.model_config(spec, batching=True))
    for text in (off, on):
        assert 'backend: "python"' in text
        assert f"max_batch_size: {tb.MAX_BATCH_SIZE}" in text
        assert "dims: [64]" in text and "dims: [16]" in text
    assert "dynamic_batching" not in off
    assert "dynamic_batching {" in on
    assert "preferred_batch_size: [4, 8]" in on
    assert f"max_queue_delay_microseconds: {tb.QUEUE_DELAY_MICROSECONDS}" in on


def test_window_spread_takes_the_larger_of_throughput_and_latency() -> None:
    assert tb.window_spread([window(0, 100, 10), window(1, 105, 10), window(2, 100, 12)]) == pytest.approx(0.2)
    assert tb.window_spread([window(0, 100, 10), window(1, 100, 10)]) == math.inf
    assert tb.window_spread([window(0, 0, math.nan), window(1, 100, 10), window(2, 100, 10)]) == math.inf


def usage(other_cores: float) -> dict[str, float]:
    return {"client_cores": 0.1, "server_cores": 1.5, "other_cores": other_cores, "steal_cores": 0.0}


def test_point_takes_the_first_stable_quiet_segment_and_ignores_the_tail_window() -> None:
    unsettled = segment([50, 100, 100], [20, 10, 10], p95_ms=30.0)
    settled = segment([100, 104, 102], [10, 10.2, 10.1], p95_ms=11.0)
    later = segment([100, 100, 100], [10, 10, 10], p95_ms=99.0)
    point = tb.summarize_point([unsettled, settled, later], [usage(0.0), usage(0.1), usage(0.0)], WINDOW_S, 0.25)
    assert (point["stable"], point["quiet"], point["chosen_segment"]) == (True, True, 1)
    assert point["segments"] == 3
    assert point["p95_ms"] == 11.0
    assert point["throughput_rps"] == pytest.approx(102.0)
    assert point["window_throughputs_rps"] == [100, 104, 102]
    assert point["window_spread"] == pytest.approx(0.04)
    assert point["other_cores"] == 0.1


def test_stable_segment_while_others_took_the_cores_is_passed_over() -> None:
    busy = segment([50, 50, 50], [20, 20, 20], p95_ms=40.0)
    quiet = segment([100, 100, 100], [10, 10, 10], p95_ms=11.0)
    point = tb.summarize_point([busy, quiet], [usage(1.0), usage(0.05)], WINDOW_S, 0.25)
    assert (point["chosen_segment"], point["quiet"]) == (1, True)
    # Never quiet: the stable segment with the least other load, flagged as not quiet.
    point = tb.summarize_point([busy, quiet], [usage(1.0), usage(0.6)], WINDOW_S, 0.25)
    assert (point["chosen_segment"], point["stable"], point["quiet"]) == (1, True, False)


def test_point_that_never_settles_reports_its_least_spread_segment() -> None:
    wide = segment([50, 100, 100], [20, 10, 10], p95_ms=30.0)
    narrower = segment([90, 100, 100], [10, 10, 10], p95_ms=12.0)
    point = tb.summarize_point([wide, narrower], [usage(0.0), usage(0.0)], WINDOW_S, 0.25)
    assert point["stable"] is False
    assert point["p95_ms"] == 12.0
    assert point["window_spread"] == pytest.approx(100 / 90 - 1)
    assert point["chosen_segment"] == 1
    with pytest.raises(ValueError, match="^segments:"):
        tb.summarize_point([], [], WINDOW_S, 0.25)
    with pytest.raises(ValueError, match="^segments:"):
        tb.summarize_point([wide], [], WINDOW_S, 0.25)


def test_segment_cut_short_is_not_stable() -> None:
    short = segment([100, 100], [10, 10], tail=False)
    assert not tb.segment_is_stable(short, WINDOW_S)
    assert tb.summarize_point([short], [usage(0.0)], WINDOW_S, 0.25)["stable"] is False


def points(throughput: dict, p95: dict) -> list[dict]:
    return [
        {
            "precision": precision,
            "batching": batching,
            "concurrency": concurrency,
            "throughput_rps": throughput[precision, batching, concurrency],
            "p95_ms": p95[precision, batching, concurrency],
            "p50_ms": p95[precision, batching, concurrency] / 2,
            "mean_batch_size": 1.0,
            "stable": True,
            "window_spread": 0.02,
            "other_cores": 0.25,
            "quiet": True,
        }
        for precision in tb.PRECISIONS
        for batching in (False, True)
        for concurrency in tb.CONCURRENCIES
    ]


def grid(fp32_off: float, fp32_on8: float, int8_scale: float) -> dict:
    values = {}
    for precision, scale in (("fp32", 1.0), ("int8", int8_scale)):
        for concurrency in tb.CONCURRENCIES:
            values[precision, False, concurrency] = fp32_off * scale
            values[precision, True, concurrency] = (fp32_on8 if concurrency == 8 else fp32_off) * scale
    return values


@pytest.mark.parametrize(
    ("int8_scale", "batching_gain", "p95_on", "int8_met", "batching_met"),
    [
        (2.0, 3.0, 110.0, True, True),  # exactly at every target
        (1.99, 3.0, 100.0, False, True),
        (2.5, 2.99, 100.0, True, False),
        (2.5, 4.0, 111.0, True, False),  # throughput gained but p95 grew past 1.1x
    ],
)
def test_targets(int8_scale, batching_gain, p95_on, int8_met, batching_met) -> None:
    throughput = grid(10.0, 10.0 * batching_gain, int8_scale)
    p95 = {key: (p95_on if key[1] and key[2] == 8 else 100.0) for key in throughput}
    targets = tb.evaluate_targets(points(throughput, p95))
    assert targets["int8_speedup"]["met"] is int8_met
    assert targets["int8_speedup"]["lowest"] == pytest.approx(int8_scale)
    assert len(targets["int8_speedup"]["by_point"]) == 4
    assert targets["batching"]["met"] is batching_met
    rows = {row["precision"]: row for row in targets["batching"]["by_precision"]}
    assert rows["fp32"]["throughput_gain"] == pytest.approx(batching_gain)
    assert rows["int8"]["p95_ratio"] == pytest.approx(p95_on / 100.0)
    assert targets["all_points_stable"] is True


def test_targets_need_every_point() -> None:
    incomplete = points(grid(10.0, 30.0, 2.0), dict.fromkeys(grid(10.0, 30.0, 2.0), 1.0))[1:]
    with pytest.raises(KeyError, match="fp32, batching=False, concurrency=1"):
        tb.evaluate_targets(incomplete)


def test_markdown_table_lists_every_point_and_marks_misses() -> None:
    throughput = grid(10.0, 12.0, 3.0)
    measured = points(throughput, dict.fromkeys(throughput, 100.0))
    measured[0]["stable"] = False
    measured[1].update(other_cores=0.8, quiet=False)
    text = tb.markdown_table({"points": measured, "targets": tb.evaluate_targets(measured)})
    lines = text.splitlines()
    assert sum(line.startswith(("| fp32 |", "| int8 |")) for line in lines) == 8
    assert "| fp32 | off | 1 | 10.0 | 50.0 | 100.0 | 1.00 | NO (2.0%) | 0.25 |" in lines
    assert "| fp32 | off | 8 | 10.0 | 50.0 | 100.0 | 1.00 | yes (2.0%) | 0.80 (busy) |" in lines
    assert "| batching ≥ 3× throughput, fp32, concurrency 8 | 1.20× | **not met** |" in lines
    assert "| int8 ≥ 2× fp32 (batching on, concurrency 8) | 3.00× | met |" in lines


def test_markdown_states_the_onnxruntime_ceiling_when_measured() -> None:
    throughput = grid(10.0, 12.0, 3.0)
    measured = points(throughput, dict.fromkeys(throughput, 100.0))
    direct = {
        "fp32": {"batch1": {"best_ms": 60.0}, "batching_gain": 1.25},
        "int8": {"batch1": {"best_ms": 12.0}, "batching_gain": 1.5},
        "int8_speedup": {"batch1": 5.0, "batch8": 6.0},
    }
    text = tb.markdown_table(
        {"points": measured, "targets": tb.evaluate_targets(measured), "onnxruntime_direct": direct}
    )
    assert (
        "fp32 60.0 ms at batch 1 (fastest run), int8 12.0 ms; int8 speedup 5.00× at batch 1, 6.00× at batch 8" in text
    )
    assert "1.25× (fp32), 1.50× (int8)" in text


def test_cpu_usage_splits_the_machine_between_client_server_and_others() -> None:
    before = {"wall_s": 100.0, "machine_busy_s": 1000.0, "steal_s": 5.0, "client_s": 10.0, "server_s": 20.0}
    after = {"wall_s": 110.0, "machine_busy_s": 1018.0, "steal_s": 6.0, "client_s": 12.0, "server_s": 33.0}
    assert tb.cpu_usage(before, after) == pytest.approx(
        {"client_cores": 0.2, "server_cores": 1.3, "other_cores": 0.3, "steal_cores": 0.1}
    )
    # Sampling skew can make the parts add up to more than the machine; others never go negative.
    assert tb.cpu_usage(before, {**after, "machine_busy_s": 1014.0})["other_cores"] == 0.0
    with pytest.raises(ValueError, match="^after:"):
        tb.cpu_usage(before, before)


def test_compare_outputs() -> None:
    reference = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=np.float32)
    assert tb.compare_outputs(reference, reference) == {
        "rows": 2,
        "min_cosine": pytest.approx(1.0),
        "top1_agreement": 1.0,
    }
    flipped = reference.copy()
    flipped[1] = [1.0, 2.0, 3.0]
    result = tb.compare_outputs(reference, flipped)
    assert result["top1_agreement"] == 0.5
    assert result["min_cosine"] == pytest.approx(10 / 14)


def test_json_safe_turns_non_finite_floats_into_null() -> None:
    value = {"a": math.inf, "b": [1.5, math.nan], "c": ("x", 2)}
    assert json.dumps(tb.json_safe(value), allow_nan=False) == '{"a": null, "b": [1.5, null], "c": ["x", 2]}'


def test_point_state_adds_batch_statistics_over_all_visits() -> None:
    state = tb.PointState("int8", True, 8)
    state.segments.append(segment([100, 101, 100], [10, 10, 10]))
    state.usages.append(usage(0.0))
    state.model_stats = {"inferences": 800.0, "executions": 200.0, "queue_ns": 8e8, "compute_ns": 4e9}
    state.visits = 2
    summary = state.summary(WINDOW_S, 0.25)
    assert (summary["precision"], summary["batching"], summary["concurrency"], summary["visits"]) == (
        "int8",
        True,
        8,
        2,
    )
    assert summary["mean_batch_size"] == 4.0
    assert summary["compute_ms_per_request"] == pytest.approx(5.0)
    assert summary["queue_ms_per_request"] == pytest.approx(1.0)
    assert summary["stable"] is True

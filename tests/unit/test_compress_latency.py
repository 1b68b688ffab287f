"""Latency measurement: interleaved rounds after a warm-up, with the spread reported."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from modelops.compress import runtime

pytestmark = pytest.mark.unit


def fake_runner(cost: float, ticks: list[float]) -> runtime.Runner:
    """A runner that advances a fake clock by `cost` seconds per call."""

    def run(feeds):
        ticks[0] += cost
        return np.zeros(1)

    return runtime.Runner(run=run, runtime="fake", inputs=())


def test_rounds_interleave_and_the_median_and_spread_come_from_them() -> None:
    ticks = [0.0]
    runners = {"slow": fake_runner(0.010, ticks), "fast": fake_runner(0.002, ticks)}
    measured = runtime.measure_latency(runners, {}, clock=lambda: ticks[0])
    assert measured["slow"].median_ms == pytest.approx(10.0) and measured["fast"].median_ms == pytest.approx(2.0)
    assert measured["slow"].spread == pytest.approx(0.0) and measured["slow"].rounds == runtime.LATENCY_ROUNDS
    # About LATENCY_ROUND_S of calls per round, whatever one call costs.
    assert measured["slow"].calls_per_round == 10 and measured["fast"].calls_per_round == 50


def test_a_disturbed_round_shows_in_the_spread_not_in_the_median() -> None:
    ticks, calls = [0.0], itertools.count()

    def run(feeds):
        # One call in every 40 is ten times slower: rounds disagree, the median does not move.
        ticks[0] += 0.05 if next(calls) % 40 == 39 else 0.005
        return np.zeros(1)

    measured = runtime.measure_latency({"m": runtime.Runner(run, "fake", ())}, {}, clock=lambda: ticks[0])["m"]
    assert measured.median_ms == pytest.approx(5.0)


def test_two_measurements_of_one_real_model_report_their_spread(tmp_path: Path) -> None:
    """Runs the real measurement twice on a small ONNX model. The agreement between the two
    runs is a property of the machine, so it is reported, not asserted; the benchmark
    records it (docs/compression.md)."""
    import onnx
    from onnx import TensorProto, helper

    weight = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    runner = runtime.onnx_runner(path, "cpu", 1)
    feeds = {"x": np.ones((32, 256), np.float32)}
    first = runtime.measure_latency({"m": runner}, feeds)["m"]
    second = runtime.measure_latency({"m": runner}, feeds)["m"]
    disagreement = abs(first.median_ms - second.median_ms) / min(first.median_ms, second.median_ms)
    print(
        f"latency of one model measured twice: {first.median_ms:.4f} ms and {second.median_ms:.4f} ms "
        f"({disagreement:.1%} apart; spread within runs {first.spread:.1%}, {second.spread:.1%})"
    )
    for measured in (first, second):
        assert measured.median_ms > 0 and measured.spread >= 0 and measured.rounds == runtime.LATENCY_ROUNDS
    assert runner.runtime.startswith("onnxruntime ") and "CPUExecutionProvider" in runner.runtime


def test_the_cpu_description_names_the_int8_features(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\nmodel name\t: Test CPU\n")
    assert runtime.cpu_description(cpuinfo) == "Test CPU (avx2, avx512f, avx512_vnni, vnni)"
    cpuinfo.write_text("model name\t: Old CPU\nflags\t\t: fpu avx2\n")
    assert runtime.cpu_description(cpuinfo) == "Old CPU (avx2, no vnni)"
    assert runtime.cpu_description(tmp_path / "absent") == "unknown CPU"

"""Run models for evaluation and latency: onnxruntime for ONNX, torch for TorchScript/ExportedProgram.

Only the torch runner imports torch, so compressing an ONNX model on a machine whose
onnxruntime has no CUDA provider never loads torch at all.

Latency is measured in the runtime that serves the artifact (onnxruntime, the same library
that Triton's onnxruntime and python backends run) on the Job's device. Models are timed in
interleaved rounds, so that a noisy neighbour or a frequency change slows every model alike,
and the figure is the median over rounds of each round's median call.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contract.interface import ONNX_TO_TRITON, VARIABLE, Interface, Tensor

EVAL_BATCH = 512
LATENCY_BATCH = 32
LATENCY_WARMUP_S = 0.3
LATENCY_MIN_WARMUP_CALLS = 3
LATENCY_ROUNDS = 7
LATENCY_ROUND_S = 0.1  # calls per round are chosen so that one round lasts about this long
LATENCY_MAX_CALLS_PER_ROUND = 1000

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """A model input as the runtime sees it: dims use -1 for a free dimension."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...] | None
    optional: bool = False  # has a default value in the artifact


@dataclass(frozen=True)
class Runner:
    """A loaded model: `run(feeds) -> first output`, its inputs, and the runtime that executes it."""

    run: Callable[[Feeds], np.ndarray]
    runtime: str
    inputs: tuple[InputSpec, ...]


def select_device(onnx_runtime_needed: bool) -> str:
    """ "cuda" only when torch sees a GPU and, if onnxruntime runs a model, it has the CUDA provider."""
    import onnxruntime as ort

    ort_has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if onnx_runtime_needed and not ort_has_cuda:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _ort_dims(shape: Any) -> tuple[int, ...] | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)


def input_specs(session: Any) -> tuple[InputSpec, ...]:
    """An onnxruntime session's inputs; those with a default value (an initializer of the same
    name) are optional, fed when the dataset has them."""
    required = {i.name for i in session.get_inputs()}
    declared = list(session.get_inputs()) + list(session.get_overridable_initializers())
    return tuple(
        InputSpec(i.name, np.dtype(_ORT_TYPES.get(i.type, np.float32)), _ort_dims(i.shape), i.name not in required)
        for i in declared
    )


def onnx_runner(path: Path, device: str, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    required = {i.name for i in session.get_inputs()}
    inputs = input_specs(session)
    output = session.get_outputs()[0].name

    def run(feeds: Feeds) -> np.ndarray:
        given = {spec.name: feeds[spec.name] for spec in inputs if spec.name in feeds or spec.name in required}
        return np.asarray(session.run([output], given)[0])

    return Runner(run=run, runtime=f"onnxruntime {ort.__version__} ({session.get_providers()[0]})", inputs=inputs)


def torch_runner(module: Any, device: str, input_names: list[str]) -> Runner:
    import torch

    def run(feeds: Feeds) -> np.ndarray:
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(device) for name in input_names]
            output = module(*args)
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output.detach().float().cpu().numpy()

    inputs = tuple(InputSpec(name, np.dtype(np.float32), None) for name in input_names)
    return Runner(run=run, runtime=f"torch {torch.__version__} ({device})", inputs=inputs)


def zero_feeds(inputs: tuple[InputSpec, ...], batch: int = 1) -> Feeds | None:
    """A zero batch for every input (free dimensions set to 1, the first to `batch`), or None
    when an input's rank is unknown."""
    feeds: Feeds = {}
    for spec in inputs:
        if spec.optional:
            continue
        if spec.dims is None:
            return None
        shape = [batch if axis == 0 and d == -1 else (1 if d == -1 else d) for axis, d in enumerate(spec.dims)]
        feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def slice_feeds(feeds: Mapping[str, np.ndarray], start: int, stop: int) -> Feeds:
    return {name: np.ascontiguousarray(array[start:stop]) for name, array in feeds.items()}


def run_all(runner: Runner, feeds: Mapping[str, np.ndarray], samples: int, batch: int = EVAL_BATCH) -> np.ndarray:
    return np.concatenate([runner.run(slice_feeds(feeds, i, i + batch)) for i in range(0, samples, batch)])


@dataclass(frozen=True)
class Latency:
    """The median call in milliseconds, and how far the rounds disagree: (max - min) / median."""

    median_ms: float
    spread: float
    rounds: int
    calls_per_round: int


def measure_latency(
    runners: Mapping[str, Runner], feeds: Feeds, clock: Callable[[], float] = time.perf_counter
) -> dict[str, Latency]:
    """Median latency of each runner on `feeds`, measured in interleaved rounds after a warm-up."""
    calls: dict[str, int] = {}
    for name, runner in runners.items():
        started, warmup_calls = clock(), 0
        while warmup_calls < LATENCY_MIN_WARMUP_CALLS or clock() - started < LATENCY_WARMUP_S:
            runner.run(feeds)
            warmup_calls += 1
        per_call = (clock() - started) / warmup_calls
        calls[name] = max(1, min(LATENCY_MAX_CALLS_PER_ROUND, math.ceil(LATENCY_ROUND_S / max(per_call, 1e-9))))
    rounds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(LATENCY_ROUNDS):
        for name, runner in runners.items():
            samples = []
            for _ in range(calls[name]):
                started = clock()
                runner.run(feeds)
                samples.append((clock() - started) * 1000.0)
            rounds[name].append(statistics.median(samples))
    result = {}
    for name, medians in rounds.items():
        median = statistics.median(medians)
        spread = (max(medians) - min(medians)) / median if median > 0 else 0.0
        result[name] = Latency(median, spread, LATENCY_ROUNDS, calls[name])
    return result


def read_interface(path: Path) -> Interface:
    """Graph inputs and outputs of an ONNX file, without loading external weight data."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def tensor(value: Any, has_default: bool = False) -> Tensor:
        tensor_type = value.type.tensor_type
        data_type = ONNX_TO_TRITON.get(tensor_type.elem_type, f"ONNX type {tensor_type.elem_type}")
        dims = None
        if tensor_type.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else VARIABLE for d in tensor_type.shape.dim)
        return Tensor(value.name, data_type, dims, has_default)

    return Interface(
        inputs=tuple(tensor(v, v.name in initializers) for v in graph.input),
        outputs=tuple(tensor(v) for v in graph.output),
    )


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model and the features that decide onnxruntime's int8 kernels (VNNI or not)."""
    model, flags = "unknown CPU", set[str]()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        return model
    features = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    vnni = "vnni" if {"avx512_vnni", "avx_vnni"} & flags else "no vnni"
    return f"{model} ({', '.join([*features, vnni])})"

"""Run models for evaluation and latency: onnxruntime for ONNX, torch for TorchScript/ExportedProgram.

Only the torch runner imports torch, so compressing an ONNX model on a machine whose
onnxruntime has no CUDA provider never loads torch at all.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EVAL_BATCH = 512
LATENCY_BATCH = 32
LATENCY_WARMUP = 3
LATENCY_MAX_RUNS = 50
LATENCY_BUDGET_S = 1.0


@dataclass(frozen=True)
class Runner:
    """A loaded model: `run(batch) -> first output`, and the runtime that executes it."""

    run: Callable[[np.ndarray], np.ndarray]
    runtime: str


def select_device(onnx_runtime_needed: bool) -> str:
    """ "cuda" only when torch sees a GPU and, if onnxruntime runs a model, it has the CUDA provider."""
    import onnxruntime as ort

    ort_has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if onnx_runtime_needed and not ort_has_cuda:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def onnx_runner(path: Path, device: str, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"evaluation supports models with one input; this one has {len(inputs)}")
    name = inputs[0].name
    dtype = _ORT_TYPES.get(inputs[0].type, np.float32)

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: batch.astype(dtype, copy=False)})[0])

    return Runner(run=run, runtime=f"onnxruntime ({session.get_providers()[0]})")


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def onnx_example_batch(path: Path) -> np.ndarray | None:
    """A zero batch shaped like the model's single input (free dimensions set to 1)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        return None
    tensor_type = inputs[0].type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tensor_type.shape.dim]
    return np.zeros(shape, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))


def torch_runner(module: Any, device: str) -> Runner:
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            output = module(torch.from_numpy(np.ascontiguousarray(batch)).to(device))
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output.detach().float().cpu().numpy()

    return Runner(run=run, runtime=f"torch ({device})")


def run_all(runner: Runner, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([runner.run(inputs[i : i + EVAL_BATCH]) for i in range(0, len(inputs), EVAL_BATCH)])


def median_latency_ms(runner: Runner, batch: np.ndarray, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median wall time of one call on `batch`, after a warm-up, within a fixed time budget."""
    for _ in range(LATENCY_WARMUP):
        runner.run(batch)
    samples: list[float] = []
    deadline = clock() + LATENCY_BUDGET_S
    while len(samples) < LATENCY_MAX_RUNS and (len(samples) < 5 or clock() < deadline):
        started = clock()
        runner.run(batch)
        samples.append((clock() - started) * 1000.0)
    return statistics.median(samples)

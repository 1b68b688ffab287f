"""What data-aware int4 learns from the calibration dataset: the Hessian X^T X of each weight's
input activations.

The fp32 source is rewritten, skeleton only, to also output the activations that feed each
MatMul/Gemm weight (the initializers are copied byte for byte by the streaming writer), run on
the calibration set batch by batch, and X^T X is summed per activation in float64. Only the
K×K sums are kept, never the activations of the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from modelops.compress import runtime
from modelops.compress.dataset import Dataset
from modelops.compress.onnx_stream import OnnxFile, OnnxStreamWriter, external_data_path

# Samples read from the calibration set; more change the Hessians little and cost time.
MAX_SAMPLES = 256
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class Calibration:
    """Per weight name: X^T X / rows of its input activations ([K, K] float32)."""

    hessians: dict[str, np.ndarray]
    samples: int
    activations: dict[str, str]  # weight name -> the activation it multiplies


def weight_activations(graph: onnx.GraphProto, initializers: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, int]]:
    """Weight name -> (the activation it multiplies, K) for 2-D MatMul and Gemm weights whose
    every use multiplies the same activation."""
    found: dict[str, set[tuple[str, int]]] = {}
    rejected: set[str] = set()
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        name = node.input[1]
        dims = initializers.get(name)
        if dims is None or len(dims) != 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            rejected.add(name)
            continue
        depth = dims[1] if node.op_type == "Gemm" and attrs.get("transB", 0) else dims[0]
        found.setdefault(name, set()).add((node.input[0], depth))
    return {name: next(iter(uses)) for name, uses in found.items() if len(uses) == 1 and name not in rejected}


def collect(source_path: Path, dataset: Dataset, workdir: Path, threads: int, device: str = "cpu") -> Calibration:
    """The Hessians of every MatMul/Gemm weight of the ONNX model at `source_path`."""
    probe = workdir / "calibration-probe.onnx"
    with OnnxFile(source_path) as source:
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(source.skeleton)
        weights = weight_activations(skeleton.graph, {t.name: t.dims for t in source.initializers})
        graph_inputs = {v.name for v in skeleton.graph.input}
        outputs = {v.name for v in skeleton.graph.output}
        for activation in sorted({a for a, _ in weights.values()} - graph_inputs - outputs):
            skeleton.graph.output.append(helper.make_empty_tensor_value_info(activation))
        with OnnxStreamWriter(probe, skeleton, external_data=source.has_external_data) as writer:
            for tensor in source.initializers:
                writer.copy(tensor)
                tensor.release()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(probe), options, providers=providers)
    specs = runtime.input_specs(session)
    feeds, batch = dataset.feeds(specs)
    samples = min(MAX_SAMPLES, len(next(iter(feeds.values()))))
    batch = batch if batch != runtime.EVAL_BATCH else CALIBRATION_BATCH
    activations = sorted({a for a, _ in weights.values()})
    depth = dict(weights.values())
    sums = {a: np.zeros((depth[a], depth[a]), dtype=np.float64) for a in activations}
    rows = dict.fromkeys(activations, 0)
    fetched = [a for a in activations if a not in feeds]
    for start in range(0, samples, batch):
        chunk = runtime.slice_feeds(feeds, start, min(start + batch, samples))
        values = dict(zip(fetched, session.run(fetched, chunk), strict=True)) if fetched else {}
        for activation in activations:
            x = np.asarray(values[activation] if activation in values else chunk[activation], dtype=np.float64)
            if x.shape[-1] != depth[activation]:
                continue  # a broadcast the weight's shape does not explain; that weight stays uncalibrated
            x = x.reshape(-1, depth[activation])
            sums[activation] += x.T @ x
            rows[activation] += len(x)
    del session
    probe.unlink()
    external_data_path(probe).unlink(missing_ok=True)
    hessians = {
        name: (sums[activation] / rows[activation]).astype(np.float32)
        for name, (activation, _) in weights.items()
        if rows[activation]
    }
    return Calibration(hessians, samples, {name: activation for name, (activation, _) in weights.items()})

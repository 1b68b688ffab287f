"""Apply a recipe to an ONNX model, one initializer at a time.

Weights are the float32 initializers that feed the weight input of MatMul, Gemm or Conv.
- pruning zeroes weights in place (same names, same shapes);
- fp16 / bf16 store every sizeable float32 initializer in the narrow type and add a Cast back
  to float32, so the model's interface and arithmetic stay float32 and any runtime can run it;
- int8 weight-only stores weights as int8 with one float32 scale per output channel and adds
  DequantizeLinear nodes (served directly by onnxruntime and Triton);
- int8 dynamic hands the (pruned) model to onnxruntime.quantization.quantize_dynamic, after
  rewriting Gemm as MatMul + Add, which is the form that quantizer handles. Weights are int8
  per channel with a reduced (7-bit) range: full-range int8 saturates in onnxruntime's U8S8
  kernels on x86 CPUs without VNNI, and 7-bit weights cannot (docs/compression.md has the
  measurement behind this choice).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from modelops.compress import weights as W
from modelops.compress.onnx_stream import LazyTensor, OnnxFile, OnnxStreamWriter
from modelops.compress.recipe import Recipe

# Tensors smaller than this stay float32: they are biases and constants (epsilons, scalars)
# whose size does not matter and whose precision sometimes does.
MIN_ELEMENTS = 64
# DequantizeLinear exists from opset 10; its per-axis form and Cast from bfloat16 need 13.
OPSET_DEQUANTIZE = 10
OPSET_PER_AXIS = 13


class UnsupportedModel(ValueError):
    """The model cannot take this recipe (an opset too old, a layout we do not handle)."""


@dataclass
class OnnxStats:
    tensors_total: int = 0
    tensors_pruned: int = 0
    tensors_quantized: int = 0
    tensors_cast: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise UnsupportedModel("the model imports no version of the default ONNX operator set")


def weight_axes(graph: onnx.GraphProto) -> dict[str, int]:
    """Initializer name -> its output-channel axis, for the weight inputs of MatMul, Gemm and Conv."""
    axes: dict[str, int] = {}
    conflicting: set[str] = set()
    for node in graph.node:
        if len(node.input) < 2 or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMul":
            axis = -1
        elif node.op_type == "Gemm":
            axis = 0 if attrs.get("transB", 0) else 1
        elif node.op_type == "Conv":
            axis = 0
        else:
            continue
        name = node.input[1]
        if name in axes and axes[name] != axis:
            conflicting.add(name)
        axes[name] = axis
    return {name: axis for name, axis in axes.items() if name not in conflicting}


class _Names:
    """Fresh value names that collide with nothing in the graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used: set[str] = {i.name for i in graph.initializer} | {v.name for v in graph.input}
        self.used |= {v.name for v in graph.output} | {v.name for v in graph.value_info}
        for node in graph.node:
            self.used.update(node.input)
            self.used.update(node.output)
            self.used.add(node.name)

    def fresh(self, base: str) -> str:
        candidate, counter = base, 1
        while candidate in self.used:
            candidate, counter = f"{base}_{counter}", counter + 1
        self.used.add(candidate)
        return candidate


@dataclass(frozen=True)
class _TensorPlan:
    """What happens to one initializer."""

    prune_axis: int | None = None  # set when the tensor is a weight that gets pruned
    quantize_axis: int | None = None  # per-channel axis; None with quantize=True means per tensor
    quantize: bool = False
    quantized_name: str = ""
    scale_name: str = ""
    cast_to: int | None = None  # onnx.TensorProto.FLOAT16 or BFLOAT16
    cast_name: str = ""
    transpose: bool = False


def _plan(
    model: onnx.ModelProto, tensors: Iterable[LazyTensor], recipe: Recipe, for_dynamic_int8: bool
) -> tuple[dict[str, _TensorPlan], list[onnx.NodeProto], OnnxStats]:
    graph = model.graph
    opset = default_opset(model)
    stats = OnnxStats()
    graph_inputs = {v.name for v in graph.input}
    tensors = list(tensors)
    by_name = {t.name: t for t in tensors}
    weights = {
        name: axis
        for name, axis in weight_axes(graph).items()
        if name in by_name and by_name[name].is_float32 and len(by_name[name].dims) >= 2 and name not in graph_inputs
    }
    names = _Names(graph)
    new_nodes: list[onnx.NodeProto] = []
    plans: dict[str, _TensorPlan] = {}

    if recipe.quantization == "int8-weight-only" and opset < OPSET_DEQUANTIZE:
        raise UnsupportedModel(f"int8-weight-only needs ONNX opset >= {OPSET_DEQUANTIZE}; the model uses opset {opset}")
    if recipe.quantization == "bf16" and opset < OPSET_PER_AXIS:
        raise UnsupportedModel(
            f"bf16 needs ONNX opset >= {OPSET_PER_AXIS} (Cast from bfloat16); the model uses opset {opset}"
        )
    per_channel = opset >= OPSET_PER_AXIS
    if recipe.quantization == "int8-weight-only" and not per_channel:
        stats.notes.append(f"opset {opset} has no per-axis DequantizeLinear: one scale per tensor")

    transposed = _rewrite_gemms(graph, weights) if for_dynamic_int8 else set()
    for tensor in tensors:
        stats.tensors_total += 1
        plan: dict[str, object] = {}
        axis = weights.get(tensor.name)
        if axis is not None and recipe.pruning_method != "none":
            plan["prune_axis"] = axis
            stats.tensors_pruned += 1
        if tensor.name in transposed:
            plan["transpose"] = True
        large_float = tensor.is_float32 and tensor.numel >= MIN_ELEMENTS and tensor.name not in graph_inputs
        if recipe.quantization == "int8-weight-only" and axis is not None and tensor.numel >= MIN_ELEMENTS:
            plan.update(
                quantize=True,
                quantize_axis=axis if per_channel else None,
                quantized_name=names.fresh(f"{tensor.name}_int8"),
                scale_name=names.fresh(f"{tensor.name}_scale"),
            )
            attrs = {"axis": axis} if per_channel else {}
            new_nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [plan["quantized_name"], plan["scale_name"]],
                    [tensor.name],
                    name=names.fresh(f"{tensor.name}_dequantize"),
                    **attrs,
                )
            )
            stats.tensors_quantized += 1
        elif recipe.quantization in ("fp16", "bf16") and large_float:
            target = onnx.TensorProto.FLOAT16 if recipe.quantization == "fp16" else onnx.TensorProto.BFLOAT16
            plan.update(cast_to=target, cast_name=names.fresh(f"{tensor.name}_{recipe.quantization}"))
            new_nodes.append(
                helper.make_node(
                    "Cast",
                    [plan["cast_name"]],
                    [tensor.name],
                    name=names.fresh(f"{tensor.name}_cast"),
                    to=onnx.TensorProto.FLOAT,
                )
            )
            stats.tensors_cast += 1
        if plan:
            plans[tensor.name] = _TensorPlan(**plan)  # type: ignore[arg-type]
    return plans, new_nodes, stats


def _rewrite_gemms(graph: onnx.GraphProto, weights: dict[str, int]) -> set[str]:
    """Replace Gemm(A, B, C) with MatMul + Add where B is a weight used only there.

    Returns the weights that must be stored transposed (those of Gemm with transB=1).
    """
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    names = _Names(graph)
    transposed: set[str] = set()
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        simple = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not simple or node.input[1] not in weights or uses.get(node.input[1]) != 1:
            rewritten.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            transposed.add(weight)
            weights[weight] = 1
        has_bias = len(node.input) > 2 and node.input[2]
        product = names.fresh(f"{node.output[0]}_matmul") if has_bias else node.output[0]
        rewritten.append(
            helper.make_node("MatMul", [node.input[0], weight], [product], name=names.fresh(f"{node.name}_matmul"))
        )
        if has_bias:
            rewritten.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=names.fresh(f"{node.name}_add")
                )
            )
    del graph.node[:]
    graph.node.extend(rewritten)
    return transposed


def _prune(array: np.ndarray, recipe: Recipe, axis: int) -> np.ndarray:
    if recipe.pruning_method == "unstructured":
        return W.prune_unstructured(array, recipe.pruning_amount)
    return W.prune_structured(array, recipe.pruning_amount, axis)


def _stream(source: OnnxFile, destination: Path, recipe: Recipe, threads: int, for_dynamic_int8: bool) -> OnnxStats:
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(source.skeleton)
    plans, new_nodes, stats = _plan(skeleton, source.initializers, recipe, for_dynamic_int8)
    # New nodes read only initializers, so putting them first keeps the graph topologically sorted.
    nodes = list(new_nodes) + list(skeleton.graph.node)
    del skeleton.graph.node[:]
    skeleton.graph.node.extend(nodes)
    started = time.perf_counter()
    with OnnxStreamWriter(destination, skeleton) as writer:
        for tensor in source.initializers:
            plan = plans.get(tensor.name)
            if plan is None:
                writer.add_encoded(tensor.encoded())
                tensor.release()
                continue
            array = tensor.array()
            if plan.transpose:
                array = np.ascontiguousarray(array.T)
            if plan.prune_axis is not None:
                array = _prune(array, recipe, plan.prune_axis)
            if plan.quantize:
                quantized, scale = W.quantize_int8(array, plan.quantize_axis, threads)
                writer.add_array(plan.quantized_name, quantized)
                writer.add_array(plan.scale_name, scale)
            elif plan.cast_to == onnx.TensorProto.FLOAT16:
                writer.add_array(plan.cast_name, W.to_fp16(array))
            elif plan.cast_to == onnx.TensorProto.BFLOAT16:
                writer.add_array(plan.cast_name, W.to_bf16(array), onnx.TensorProto.BFLOAT16)
            else:
                writer.add_array(tensor.name, array)
            del array
            tensor.release()
    stats.seconds = time.perf_counter() - started
    return stats


def compress_onnx(source_path: Path, destination: Path, recipe: Recipe, threads: int | None = None) -> OnnxStats:
    """Write the compressed form of the ONNX model at `source_path` to `destination`."""
    threads = threads or W.default_threads()
    with OnnxFile(source_path) as source:
        if recipe.quantization != "int8-dynamic":
            return _stream(source, destination, recipe, threads, for_dynamic_int8=False)
        with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            stats = _stream(source, prepared, recipe, threads, for_dynamic_int8=True)
            started = time.perf_counter()
            _quantize_dynamic(prepared, destination)
            stats.seconds += time.perf_counter() - started
            stats.notes.append(
                "int8 dynamic by onnxruntime.quantization.quantize_dynamic "
                "(uint8 activations, per-channel 7-bit int8 weights: exact on x86 with or without VNNI)"
            )
            return stats


def _quantize_dynamic(source: Path, destination: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs advice about calibration (irrelevant to dynamic quantization) on the root logger.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(source),
            str(destination),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights: u8 x s7 pair sums fit int16, so VPMADDUBSW (x86 without VNNI) never saturates.
            reduce_range=True,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)

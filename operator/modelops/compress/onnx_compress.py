"""Apply a recipe to an ONNX model, one initializer at a time.

Weights are the float32 initializers that feed the weight input of MatMul, Gemm or Conv.
- pruning zeroes weights in place (same names, same shapes);
- fp16 / bf16 store every sizeable float32 initializer in the narrow type and add a Cast back
  to float32, so the model's interface and arithmetic stay float32 and any runtime can run it;
- fp16-compute stores every float32 initializer as float16 under its own name and retypes the
  graph, so the model computes in float16, with Casts only at its float inputs and outputs
  (for CUDA serving; onnxruntime's CPU provider lacks float16 kernels for several ops);
- int8 weight-only stores weights as int8 with one float32 scale per output channel and adds
  DequantizeLinear nodes (served directly by onnxruntime and Triton). Embedding tables (the
  data of a Gather) get one scale per row, and only the gathered rows are dequantized:
  Gather(int8 table) and Gather(scales), then Cast and Mul. Another use of the table (a tied
  output projection) reads one DequantizeLinear of the same int8 table;
- int4 weight-only stores MatMul weights block-wise as com.microsoft MatMulNBits and embedding
  tables as GatherBlockQuantized (onnxruntime contrib operators), one float32 scale per block
  of `block_size` weights; a tied projection (MatMul on Transpose(table)) shares the table's
  blocks. Weights that neither operator takes (Conv, a weight used elsewhere) get int8, and
  the notes say how many;
- int4-mixed is int4 weight-only with the weights named in `Int4Options.int8` kept at int8
  (per channel, or per row for a table); the pipeline picks them against the gate. int4 blocks
  may be asymmetric (a zero point per block, MatMulNBits only: embedding tables stay
  symmetric) and rounded by GPTQ from the calibration set's Hessians (MatMul weights only);
- int8 dynamic writes, tensor by tensor, the graph onnxruntime's quantize_dynamic would:
  DynamicQuantizeLinear on the activations, MatMulInteger, then the scales (Gemm is first
  rewritten as MatMul + Add). Weights are int8 per channel with a reduced (7-bit) range:
  full-range int8 saturates in onnxruntime's U8S8 kernels on x86 CPUs without VNNI, and 7-bit
  weights cannot (docs/compression.md has the measurement behind this choice). Embedding
  tables are int8 per row as in int8 weight-only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from modelops.compress import weights as W
from modelops.compress.onnx_stream import LazyTensor, OnnxFile, OnnxStreamWriter
from modelops.compress.recipe import Recipe

# Tensors smaller than this stay float32: they are biases and constants (epsilons, scalars)
# whose size does not matter and whose precision sometimes does.
MIN_ELEMENTS = 64
# DequantizeLinear exists from opset 10; its per-axis form and Cast from bfloat16 need 13.
OPSET_DEQUANTIZE = 10
OPSET_PER_AXIS = 13
MS_DOMAIN = "com.microsoft"
INT4 = ("int4-weight-only", "int4-mixed")


@dataclass(frozen=True)
class Int4Options:
    """What int4 takes besides the recipe: the calibration Hessians (GPTQ) and the weights kept at int8."""

    hessians: dict[str, np.ndarray] = field(default_factory=dict)
    int8: frozenset[str] = frozenset()
    # Weight name -> its int4 blocks, filled by one build and read by the next of the same recipe.
    cache: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerStats:
    """One weight's stored precision, bytes (values, scales, zero points) and int4 error."""

    precision: str
    bytes: int
    error: float | None = None


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
    layers: dict[str, LayerStats] = field(default_factory=dict)  # int4's candidates: MatMul weights and tables
    gptq: int = 0  # weights rounded by GPTQ


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
    quantize_levels: int = W.INT8_MAX
    int4_rows_are_channels: bool | None = None  # set for int4: layout of the source weight
    int4_scale_names: tuple[str, ...] = ()  # the scales, written once per layout that reads them:
    int4_scale_kinds: tuple[str, ...] = ()  # "flat" [N * blocks] (MatMulNBits), "gather" [N, blocks, 1]
    int4_zero_name: str = ""  # asymmetric blocks: the packed zero points
    int4_candidate: bool = False  # a weight int4 could take (reported per layer by int4-mixed)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[int, onnx.NodeProto, int]]]:
    """Value name -> (node position, node, input index) of every use."""
    uses: dict[str, list[tuple[int, onnx.NodeProto, int]]] = {}
    for position, node in enumerate(graph.node):
        for index, name in enumerate(node.input):
            uses.setdefault(name, []).append((position, node, index))
    return uses


def _is_table_gather(node: onnx.NodeProto, index: int) -> bool:
    return node.op_type == "Gather" and node.domain in ("", "ai.onnx") and index == 0 and _attrs(node).get("axis", 0) == 0


def gather_tables(graph: onnx.GraphProto, candidates: dict[str, LazyTensor]) -> set[str]:
    """Float32 2-D initializers that are the data of a Gather on axis 0 (embedding tables)."""
    tables: set[str] = set()
    for node in graph.node:
        if node.input and _is_table_gather(node, 0):
            tensor = candidates.get(node.input[0])
            if tensor is not None and tensor.is_float32 and len(tensor.dims) == 2 and tensor.numel >= MIN_ELEMENTS:
                tables.add(tensor.name)
    return tables


@dataclass
class _Rewrite:
    """What planning adds to the graph besides per-tensor plans."""

    names: _Names
    head: list[onnx.NodeProto] = field(default_factory=list)  # nodes that read only initializers or inputs
    # Node position in the graph -> its replacement (protobuf wrappers have no stable identity).
    replaced: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # new small initializers

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.names.fresh(base)
        self.constants[name] = value
        return name

    def node(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> onnx.NodeProto:
        output = output or self.names.fresh(f"{inputs[0]}_{op_type.lower()}")
        domain = str(attrs.pop("domain", ""))
        return helper.make_node(op_type, inputs, [output], name=self.names.fresh(op_type), domain=domain, **attrs)

    def apply(self, graph: onnx.GraphProto) -> None:
        nodes = list(self.head)
        for position, node in enumerate(graph.node):
            nodes.extend(self.replaced.get(position, [node]))
        del graph.node[:]
        graph.node.extend(nodes)


@dataclass(frozen=True)
class _Weights:
    """The graph's initializers as planning sees them: by name (graph inputs excepted), the
    float32 weights with their output-channel axes, the embedding tables, and the weights a
    rewritten Gemm(transB=1) stores transposed."""

    graph: onnx.GraphProto
    by_name: dict[str, LazyTensor]
    axes: dict[str, int]
    tables: set[str]
    transposed: set[str]


@dataclass
class _Planning:
    """One recipe's plan as it is made: the graph rewrite, the plans of the tensors, and the
    int4 and dynamic-int8 plans made before the tensors are walked."""

    weights: _Weights
    recipe: Recipe
    rewrite: _Rewrite
    stats: OnnxStats
    per_channel: bool
    kept_int8: frozenset[str] = frozenset()
    int4: dict[str, dict[str, object]] = field(default_factory=dict)
    dynamic: dict[str, dict[str, object]] = field(default_factory=dict)
    plans: dict[str, _TensorPlan] = field(default_factory=dict)
    fallback: int = 0  # weights int4 or int8-dynamic does not fit, stored int8 weight-only

    @property
    def weight_only(self) -> bool:
        return self.recipe.quantization in ("int8-weight-only", *INT4, "int8-dynamic")


def _check_opset(quantization: str, opset: int) -> None:
    if quantization == "int8-weight-only" and opset < OPSET_DEQUANTIZE:
        raise UnsupportedModel(f"int8-weight-only needs ONNX opset >= {OPSET_DEQUANTIZE}; the model uses opset {opset}")
    if quantization in ("bf16", *INT4) and opset < OPSET_PER_AXIS:
        raise UnsupportedModel(
            f"{quantization} needs ONNX opset >= {OPSET_PER_AXIS} (per-axis DequantizeLinear, Cast from bfloat16); "
            f"the model uses opset {opset}"
        )


def _plan(
    model: onnx.ModelProto, tensors: Iterable[LazyTensor], recipe: Recipe, int4_options: Int4Options | None = None
) -> tuple[dict[str, _TensorPlan], dict[str, np.ndarray], OnnxStats]:
    """The plan of every initializer and the graph rewrite, in phases: check the opset, find the
    weights and tables, plan int4 or dynamic int8 (they rewrite the MatMuls), plan the int8
    tables' Gathers, walk the tensors, and note what was done."""
    graph = model.graph
    opset = default_opset(model)
    stats = OnnxStats()
    graph_inputs = {v.name for v in graph.input}
    tensors = list(tensors)
    by_name = {t.name: t for t in tensors if t.name not in graph_inputs}
    rewrite = _Rewrite(_Names(graph))
    quantization = recipe.quantization
    _check_opset(quantization, opset)
    if quantization == "fp16-compute":
        return _plan_fp16_compute(graph, tensors, by_name, rewrite, stats)
    planning = _Planning(_find_weights(graph, by_name, recipe, opset, stats), recipe, rewrite, stats, opset >= OPSET_PER_AXIS)
    found = planning.weights
    if quantization in INT4:
        if not any(entry.domain == MS_DOMAIN for entry in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        if int4_options is not None and quantization == "int4-mixed":
            planning.kept_int8 = int4_options.int8
        planning.int4 = _plan_int4(found, rewrite, recipe.block_size or 128, planning.kept_int8, recipe.asymmetric)
    if quantization == "int8-dynamic":
        planning.dynamic = _plan_dynamic_int8(graph, by_name, found.axes, found.tables, rewrite)
    for table in sorted(found.tables - set(planning.int4)):
        _rewrite_int8_gathers(graph, table, rewrite, planning.plans)
    for tensor in tensors:
        _plan_tensor(planning, tensor)
    stats.notes.extend(_plan_notes(planning))
    rewrite.apply(graph)
    return planning.plans, rewrite.constants, stats


def _find_weights(
    graph: onnx.GraphProto, by_name: dict[str, LazyTensor], recipe: Recipe, opset: int, stats: OnnxStats
) -> _Weights:
    """The weights, the tables (none below the per-row opset) and, for int8 dynamic and int4,
    the Gemms rewritten as MatMul + Add."""
    quantization = recipe.quantization
    if quantization == "int8-weight-only" and opset < OPSET_PER_AXIS:
        stats.notes.append(f"opset {opset} has no per-axis DequantizeLinear: one scale per tensor")
    axes = {
        name: axis
        for name, axis in weight_axes(graph).items()
        if name in by_name and by_name[name].is_float32 and len(by_name[name].dims) >= 2
    }
    transposed = _rewrite_gemms(graph, axes) if quantization in ("int8-dynamic", *INT4) else set()
    weight_only = quantization in ("int8-weight-only", *INT4, "int8-dynamic")
    tables = gather_tables(graph, by_name) if weight_only else set()
    if tables and opset < OPSET_PER_AXIS:
        stats.notes.append(f"opset {opset}: embedding tables stay float32 (per-row scales need opset {OPSET_PER_AXIS})")
        tables = set()
    return _Weights(graph, by_name, axes, tables, transposed)


def _plan_tensor(planning: _Planning, tensor: LazyTensor) -> None:
    """One initializer's plan: pruned, quantized (as planned with its rewrite, or int8 weight-only
    here), cast to a narrow float, or left as it is."""
    found, recipe, rewrite, stats = planning.weights, planning.recipe, planning.rewrite, planning.stats
    quantization, int4, dynamic, kept_int8 = recipe.quantization, planning.int4, planning.dynamic, planning.kept_int8
    stats.tensors_total += 1
    plan: dict[str, object] = {}
    axis = found.axes.get(tensor.name)
    if axis is not None and recipe.pruning_method != "none":
        plan["prune_axis"] = axis
        stats.tensors_pruned += 1
    if tensor.name in int4 or tensor.name in dynamic:
        plan.update(int4.get(tensor.name) or dynamic[tensor.name])
        if tensor.name in found.transposed:
            plan["transpose"] = "quantize_levels" in plan  # int4 reads [N, K] as it is
        stats.tensors_quantized += 1
    elif tensor.name in planning.plans:  # an int8 embedding table, planned with its Gathers
        plan.update(
            quantize=True,
            quantize_axis=0,
            quantized_name=planning.plans[tensor.name].quantized_name,
            scale_name=planning.plans[tensor.name].scale_name,
            int4_candidate=tensor.name in kept_int8,
        )
        stats.tensors_quantized += 1
    elif tensor.name in found.transposed:
        plan["transpose"] = True
    large_float = tensor.is_float32 and tensor.numel >= MIN_ELEMENTS and tensor.name in found.by_name
    if "quantized_name" in plan:
        pass  # planned above, with its graph rewrite
    elif planning.weight_only and axis is not None and tensor.numel >= MIN_ELEMENTS:
        per_channel = planning.per_channel
        plan.update(
            quantize=True,
            quantize_axis=axis if per_channel else None,
            quantized_name=rewrite.names.fresh(f"{tensor.name}_int8"),
            scale_name=rewrite.names.fresh(f"{tensor.name}_scale"),
        )
        attrs = {"axis": axis} if per_channel else {}
        rewrite.head.append(
            rewrite.node(
                "DequantizeLinear", [plan["quantized_name"], plan["scale_name"]], tensor.name, **attrs  # type: ignore[list-item]
            )
        )
        stats.tensors_quantized += 1
        kept = tensor.name in kept_int8
        plan["int4_candidate"] = kept
        planning.fallback += quantization in (*INT4, "int8-dynamic") and not kept
    elif quantization in ("fp16", "bf16") and large_float:
        target = onnx.TensorProto.FLOAT16 if quantization == "fp16" else onnx.TensorProto.BFLOAT16
        plan.update(cast_to=target, cast_name=rewrite.names.fresh(f"{tensor.name}_{quantization}"))
        rewrite.head.append(rewrite.node("Cast", [plan["cast_name"]], tensor.name, to=onnx.TensorProto.FLOAT))  # type: ignore[list-item]
        stats.tensors_cast += 1
    if plan:
        planning.plans[tensor.name] = _TensorPlan(**plan)  # type: ignore[arg-type]


def _plan_notes(planning: _Planning) -> list[str]:
    """What the report says of the plan: how int4 or int8 dynamic took the weights, and the tables."""
    recipe, tables, int4, kept_int8, fallback = planning.recipe, planning.weights.tables, planning.int4, planning.kept_int8, planning.fallback
    quantization = recipe.quantization
    notes: list[str] = []
    if quantization in INT4:
        gathered = sum(1 for name in int4 if name in tables)
        method = recipe.method or "rtn"
        notes.append(
            f"int4 block size {recipe.block_size or 128}, {'asymmetric' if recipe.asymmetric else 'symmetric'}, "
            f"{method}: {len(int4) - gathered} MatMul weights as MatMulNBits, "
            f"{gathered} embedding tables as GatherBlockQuantized (com.microsoft operators of onnxruntime)"
        )
        if kept_int8:
            notes.append(f"int4-mixed: {len(kept_int8)} weights most sensitive on the calibration set kept at int8")
        if fallback or tables - set(int4) - kept_int8:
            notes.append(
                f"int4 does not fit {fallback} weights and {len(tables - set(int4) - kept_int8)} embedding tables "
                "(Conv, other uses, a width not a multiple of the block): they are int8 per channel or per row"
            )
    elif quantization == "int8-dynamic":
        notes.append(
            f"int8 dynamic: {len(planning.dynamic)} MatMuls as DynamicQuantizeLinear + MatMulInteger (uint8 activations, "
            "per-channel 7-bit int8 weights: exact on x86 with or without VNNI)"
        )
        if fallback:
            notes.append(f"{fallback} weights outside MatMul (Conv, other uses) are int8 weight-only")
    if tables and quantization not in INT4:
        notes.append(f"{len(tables)} embedding tables int8 with one scale per row; only gathered rows are dequantized")
    return notes


def _rewrite_int8_gathers(graph: onnx.GraphProto, table: str, rewrite: _Rewrite, plans: dict[str, _TensorPlan]) -> None:
    """Gather(table, ids) -> Gather(int8, ids) · Unsqueeze(Gather(scales, ids), -1); other uses dequantize."""
    quantized = rewrite.names.fresh(f"{table}_int8")
    scale = rewrite.names.fresh(f"{table}_scale")
    plans[table] = _TensorPlan(quantize=True, quantize_axis=0, quantized_name=quantized, scale_name=scale)
    last_axis = rewrite.constant(f"{table}_last_axis", np.array([-1], dtype=np.int64))
    other_uses = False
    for position, node, index in _consumers(graph).get(table, []):
        if not _is_table_gather(node, index):
            other_uses = True
            continue
        ids = node.input[1]
        rows = rewrite.node("Gather", [quantized, ids], axis=0)
        row_scales = rewrite.node("Gather", [scale, ids], axis=0)
        column = rewrite.node("Unsqueeze", [row_scales.output[0], last_axis])
        widened = rewrite.node("Cast", [rows.output[0]], to=onnx.TensorProto.FLOAT)
        product = rewrite.node("Mul", [widened.output[0], column.output[0]], node.output[0])
        rewrite.replaced[position] = [rows, row_scales, column, widened, product]
    if other_uses:  # a tied projection: the same int8 table, dequantized whole where a MatMul needs it
        rewrite.head.append(rewrite.node("DequantizeLinear", [quantized, scale], table, axis=0))


def _plan_int4(
    found: _Weights, rewrite: _Rewrite, block_size: int, kept_int8: frozenset[str] = frozenset(), asymmetric: bool | None = False
) -> dict[str, dict[str, object]]:
    """Rewrite MatMuls on 2-D weights as MatMulNBits and table Gathers as GatherBlockQuantized;
    the weights in `kept_int8` are left to the int8 path."""
    int4 = _Int4(found, rewrite, block_size, _consumers(found.graph))
    plans: dict[str, dict[str, object]] = {}
    for name in sorted(found.axes):
        plan = int4.matmul_weight(name, kept_int8, bool(asymmetric))
        if plan is not None:
            plans[name] = plan
    for table in sorted(found.tables - kept_int8):
        plan = int4.table(table)
        if plan is not None:
            plans[table] = plan
    return plans


@dataclass(frozen=True)
class _Int4:
    """The int4 rewrite of one graph: MatMulNBits for MatMul weights, GatherBlockQuantized for tables."""

    found: _Weights
    rewrite: _Rewrite
    block_size: int
    uses: dict[str, list[tuple[int, onnx.NodeProto, int]]]

    def matmul_nbits(self, node: onnx.NodeProto, packed: str, scale: str, k: int, n: int, zero: str = "") -> onnx.NodeProto:
        return self.rewrite.node(
            "MatMulNBits", [node.input[0], packed, scale, *([zero] if zero else [])], node.output[0],
            domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=self.block_size,
        )  # fmt: skip

    def matmul_weight(self, name: str, kept_int8: frozenset[str], asymmetric: bool) -> dict[str, object] | None:
        """The plan of a weight read only as MatMul's second input, its MatMuls rewritten; None
        for a weight int4 does not take here."""
        tensor, rewrite = self.found.by_name[name], self.rewrite
        consumers = self.uses.get(name, [])
        if name in self.found.tables or name in kept_int8 or len(tensor.dims) != 2 or tensor.numel < MIN_ELEMENTS:
            return None
        if not consumers or not all(node.op_type == "MatMul" and index == 1 for _, node, index in consumers):
            return None
        rows_are_channels = name in self.found.transposed  # a Gemm transB weight is stored [N, K]
        n, k = tensor.dims if rows_are_channels else tensor.dims[::-1]
        packed = rewrite.names.fresh(f"{name}_int4")
        scale = rewrite.names.fresh(f"{name}_scale")
        zero = rewrite.names.fresh(f"{name}_zero_point") if asymmetric else ""
        for position, node, _ in consumers:
            rewrite.replaced[position] = [self.matmul_nbits(node, packed, scale, k, n, zero)]
        return {
            "int4_rows_are_channels": rows_are_channels,
            "quantized_name": packed,
            "int4_scale_names": (scale,),
            "int4_scale_kinds": ("flat",),
            "int4_zero_name": zero,
            "int4_candidate": True,
        }

    def table(self, table: str) -> dict[str, object] | None:
        """The plan of an embedding table whose every use is a Gather or a tied projection
        (MatMul on its Transpose), those rewritten; None when another use or its width does not fit."""
        rewrite, block_size, uses = self.rewrite, self.block_size, self.uses
        vocab, hidden = self.found.by_name[table].dims
        gathers, projections = [], []
        if hidden % block_size != 0:
            return None
        for position, node, index in uses.get(table, []):
            if _is_table_gather(node, index):
                gathers.append((position, node))
                continue
            transposes = node.op_type == "Transpose" and list(_attrs(node).get("perm", [1, 0])) == [1, 0]  # type: ignore[call-overload]
            readers = uses.get(node.output[0], []) if transposes else []
            if not readers or not all(r.op_type == "MatMul" and i == 1 for _, r, i in readers):
                return None
            projections.append((position, [(p, r) for p, r, _ in readers]))
        packed = rewrite.names.fresh(f"{table}_int4")
        gather_scale = rewrite.names.fresh(f"{table}_row_scale")
        scale_names, scale_kinds = [gather_scale], ["gather"]
        minus_one = rewrite.constant(f"{table}_minus_one", np.array([-1], dtype=np.int64))
        for position, node in gathers:
            ids = node.input[1]
            shape = rewrite.node("Shape", [ids])
            target = rewrite.node("Concat", [shape.output[0], minus_one], axis=0)
            blocks = rewrite.node(
                "GatherBlockQuantized", [packed, ids, gather_scale],
                domain=MS_DOMAIN, gather_axis=0, quantize_axis=2, block_size=block_size, bits=4,
            )  # fmt: skip
            rows = rewrite.node("Reshape", [blocks.output[0], target.output[0]], node.output[0])
            rewrite.replaced[position] = [shape, target, blocks, rows]
        if projections:
            flat_scale = rewrite.names.fresh(f"{table}_scale")
            scale_names.append(flat_scale)
            scale_kinds.append("flat")
            for transpose, matmuls in projections:
                rewrite.replaced[transpose] = []
                for reader_position, reader in matmuls:
                    rewrite.replaced[reader_position] = [self.matmul_nbits(reader, packed, flat_scale, hidden, vocab)]
        return {
            "int4_rows_are_channels": True,
            "quantized_name": packed,
            "int4_scale_names": tuple(scale_names),
            "int4_scale_kinds": tuple(scale_kinds),
            "int4_candidate": True,
        }


def _plan_dynamic_int8(
    graph: onnx.GraphProto,
    by_name: dict[str, LazyTensor],
    weights: dict[str, int],
    tables: set[str],
    rewrite: _Rewrite,
) -> dict[str, dict[str, object]]:
    """MatMul(A, W) -> DynamicQuantizeLinear(A), MatMulInteger, Cast, and Mul by the two scales.

    The form onnxruntime's quantize_dynamic writes, written here tensor by tensor. Weights are
    symmetric per output channel with |q| <= 64, so their zero point is 0 and omitted. One
    DynamicQuantizeLinear serves every MatMul that reads the same activation.
    """
    uses = _consumers(graph)
    plans: dict[str, dict[str, object]] = {}
    quantized_inputs: dict[str, tuple[str, str, str]] = {}
    matmuls: list[tuple[int, onnx.NodeProto, str]] = []
    for name in sorted(weights):
        tensor = by_name[name]
        consumers = uses.get(name, [])
        if name in tables or len(tensor.dims) != 2 or tensor.numel < MIN_ELEMENTS:
            continue
        if not consumers or not all(node.op_type == "MatMul" and index == 1 for _, node, index in consumers):
            continue
        plans[name] = {
            "quantize": True,
            "quantize_axis": -1,
            "quantized_name": rewrite.names.fresh(f"{name}_int8"),
            "scale_name": rewrite.names.fresh(f"{name}_scale"),
            "quantize_levels": W.REDUCED_RANGE,
        }
        matmuls += [(position, node, name) for position, node, _ in consumers]
    # In graph order, so that each activation's DynamicQuantizeLinear precedes all its readers.
    for position, node, name in sorted(matmuls, key=lambda entry: entry[0]):
        activation = node.input[0]
        replacement: list[onnx.NodeProto] = []
        if activation not in quantized_inputs:
            outputs = [rewrite.names.fresh(f"{activation}_{suffix}") for suffix in ("uint8", "scale", "zero")]
            replacement.append(
                helper.make_node("DynamicQuantizeLinear", [activation], outputs, name=rewrite.names.fresh("DynamicQuantize"))
            )
            quantized_inputs[activation] = (outputs[0], outputs[1], outputs[2])
        activation_q, activation_scale, activation_zero = quantized_inputs[activation]
        quantized, scale = plans[name]["quantized_name"], plans[name]["scale_name"]
        product = rewrite.node("MatMulInteger", [activation_q, quantized, activation_zero])  # type: ignore[list-item]
        widened = rewrite.node("Cast", [product.output[0]], to=onnx.TensorProto.FLOAT)
        scales = rewrite.node("Mul", [activation_scale, scale])  # type: ignore[list-item]
        result = rewrite.node("Mul", [widened.output[0], scales.output[0]], node.output[0])
        rewrite.replaced[position] = [*replacement, product, widened, scales, result]
    return plans


def _plan_fp16_compute(
    graph: onnx.GraphProto,
    tensors: list[LazyTensor],
    by_name: dict[str, LazyTensor],
    rewrite: _Rewrite,
    stats: OnnxStats,
) -> tuple[dict[str, _TensorPlan], dict[str, np.ndarray], OnnxStats]:
    """Every float32 value becomes float16; Casts convert the float inputs and outputs only."""
    single, half = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    plans: dict[str, _TensorPlan] = {}
    for tensor in tensors:
        stats.tensors_total += 1
        if tensor.is_float32 and tensor.name in by_name:
            plans[tensor.name] = _TensorPlan(cast_to=half, cast_name=tensor.name)
            stats.tensors_cast += 1
    renamed: dict[str, str] = {}
    for value in graph.input:
        if value.type.tensor_type.elem_type == single and value.name not in by_name:
            renamed[value.name] = rewrite.names.fresh(f"{value.name}_fp16")
            rewrite.head.append(rewrite.node("Cast", [value.name], renamed[value.name], to=half))
    tail: list[onnx.NodeProto] = []
    for value in graph.output:
        if value.type.tensor_type.elem_type == single:
            inner = rewrite.names.fresh(f"{value.name}_fp16")
            renamed[value.name] = inner
            tail.append(rewrite.node("Cast", [inner], value.name, to=single))
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renamed.get(name, name)
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == single:
                attribute.i = half
            elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == single:
                value = numpy_helper.to_array(attribute.t)
                attribute.t.CopyFrom(numpy_helper.from_array(W.to_fp16(value), attribute.t.name))
    graph.node.extend(tail)
    del graph.value_info[:]  # stale float32 annotations; runtimes infer the float16 ones
    stats.notes.append(
        "fp16-compute: weights and arithmetic in float16, Casts at the float inputs and outputs only (for CUDA serving)"
    )
    rewrite.apply(graph)
    return plans, rewrite.constants, stats


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


def _stream(
    source: OnnxFile, destination: Path, recipe: Recipe, threads: int, int4_options: Int4Options | None = None
) -> OnnxStats:
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(source.skeleton)
    plans, constants, stats = _plan(skeleton, source.initializers, recipe, int4_options)
    hessians = int4_options.hessians if int4_options is not None and recipe.method == "gptq" else {}
    # The first int4 form (symmetric, round to nearest) keeps its multi-threaded kernel and bytes.
    first_form = not recipe.asymmetric and not hessians and recipe.quantization == "int4-weight-only"
    started = time.perf_counter()
    # A source with external data gives an output with external data: it may be above 2 GiB too.
    with OnnxStreamWriter(destination, skeleton, external_data=source.has_external_data) as writer:
        for tensor in source.initializers:
            plan = plans.get(tensor.name)
            if plan is None:
                writer.copy(tensor)
                tensor.release()
                continue
            array = tensor.array()
            if plan.transpose:
                array = np.ascontiguousarray(array.T)
            if plan.prune_axis is not None:
                array = _prune(array, recipe, plan.prune_axis)
            if plan.int4_rows_are_channels is not None:
                block_size = recipe.block_size or 128
                if first_form:
                    packed, scales = W.quantize_int4_blocks(array, block_size, plan.int4_rows_are_channels, threads)
                    blocks = W.Int4Blocks(packed, scales, None, float("nan"))
                elif int4_options is not None and isinstance(int4_options.cache.get(tensor.name), W.Int4Blocks):
                    blocks = int4_options.cache[tensor.name]  # type: ignore[assignment]
                else:
                    # GPTQ for MatMul weights; a table's rows are looked up, not multiplied by activations.
                    hessian = hessians.get(tensor.name) if plan.int4_scale_kinds == ("flat",) else None
                    stats.gptq += hessian is not None
                    blocks = W.quantize_int4(
                        array, block_size, plan.int4_rows_are_channels, bool(plan.int4_zero_name), hessian
                    )
                    if int4_options is not None:
                        int4_options.cache[tensor.name] = blocks
                writer.add_array(plan.quantized_name, blocks.packed)
                for name, kind in zip(plan.int4_scale_names, plan.int4_scale_kinds, strict=True):
                    writer.add_array(name, blocks.scales.reshape(-1) if kind == "flat" else blocks.scales[:, :, None])
                if plan.int4_zero_name:
                    assert blocks.zero_points is not None
                    writer.add_array(plan.int4_zero_name, blocks.zero_points)
                error = None if first_form else blocks.error
                stats.layers[tensor.name] = LayerStats("int4", blocks.nbytes, error)
            elif plan.quantize:
                quantized, scale = W.quantize_int8(array, plan.quantize_axis, threads, plan.quantize_levels)
                writer.add_array(plan.quantized_name, quantized)
                writer.add_array(plan.scale_name, scale)
                if plan.int4_candidate:
                    stats.layers[tensor.name] = LayerStats("int8", quantized.nbytes + scale.nbytes)
            elif plan.cast_to == onnx.TensorProto.FLOAT16:
                writer.add_array(plan.cast_name, W.to_fp16(array))
            elif plan.cast_to == onnx.TensorProto.BFLOAT16:
                writer.add_array(plan.cast_name, W.to_bf16(array), onnx.TensorProto.BFLOAT16)
            else:
                writer.add_array(tensor.name, array)
            del array
            tensor.release()
        for name, value in constants.items():
            writer.add_array(name, value)
    if recipe.method == "gptq" and recipe.quantization in INT4:
        stats.notes.append(f"gptq: {stats.gptq} MatMul weights rounded from calibration Hessians, the rest to nearest")
    stats.seconds = time.perf_counter() - started
    return stats


# Forms built from operators that not every onnxruntime provider implements.
RUNTIME_CHECKED = (*INT4, "fp16-compute")


def check_runtime_support(path: Path, recipe: Recipe, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
    """Raise UnsupportedModel, naming the operator, when onnxruntime cannot load this form."""
    import onnxruntime as ort

    # Kernel lookup happens at session creation at any optimization level; without optimizations,
    # arena and prepacking the check costs about twice the output's size in memory, not more.
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types (NotImplemented, Fail, ...)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModel(
            f"onnxruntime {ort.__version__} ({', '.join(providers)}) cannot run the {recipe.quantization} form "
            f"of this model: {first_line}"
        ) from None


def compress_onnx(
    source_path: Path,
    destination: Path,
    recipe: Recipe,
    threads: int | None = None,
    providers: tuple[str, ...] | None = ("CPUExecutionProvider",),
    int4_options: Int4Options | None = None,
) -> OnnxStats:
    """Write the compressed form of the ONNX model at `source_path` to `destination`.

    Forms in RUNTIME_CHECKED are loaded once with onnxruntime on `providers` (None skips the
    check), so that a form the serving runtime cannot run fails here with UnsupportedModel
    instead of being replaced by another one.
    """
    threads = threads or W.default_threads()
    with OnnxFile(source_path) as source:
        stats = _stream(source, destination, recipe, threads, int4_options)
    if providers and recipe.quantization in RUNTIME_CHECKED:
        check_runtime_support(destination, recipe, providers)
    return stats

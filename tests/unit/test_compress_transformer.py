"""Transformer-class recipes on the generated BERT-shaped encoder: embeddings, int4, fp16 compute."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from modelops.compress import weights as W
from modelops.compress.onnx_compress import compress_onnx
from modelops.compress.recipe import Recipe
from models import transformer as T

pytestmark = pytest.mark.unit

SMALL = T.PRESETS["small"]
TIED = replace(SMALL, output="logits", tied_head=True)
TABLE = T.WORD_EMBEDDINGS


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _outputs(path: Path, config: T.TransformerConfig) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, T.eval_inputs(config, samples=8))[0]


def _compress(tmp_path: Path, config: T.TransformerConfig, recipe: dict) -> tuple[Path, Path, onnx.ModelProto]:
    source = T.export(tmp_path / "model.onnx", config)
    out = tmp_path / "out.onnx"
    compress_onnx(source, out, Recipe.from_dict(recipe), threads=2)
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    return source, out, model


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def test_int8_embedding_tables_dequantize_only_the_gathered_rows(tmp_path: Path) -> None:
    source, out, model = _compress(tmp_path, SMALL, {"quantization": "int8-weight-only"})
    tensors = _initializers(model)
    assert TABLE not in tensors
    table = tensors[f"{TABLE}_int8"]
    assert table.data_type == TensorProto.INT8 and tuple(table.dims) == (SMALL.vocab, SMALL.hidden)
    assert tuple(tensors[f"{TABLE}_scale"].dims) == (SMALL.vocab,)
    readers = [n for n in model.graph.node if f"{TABLE}_int8" in n.input]
    # Only Gathers read the table: no node turns the whole table back into float32.
    assert [n.op_type for n in readers] == ["Gather"]
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] == TABLE for n in model.graph.node)
    # No float32 tensor of table size is left anywhere in the file.
    assert all(t.data_type != TensorProto.FLOAT or np.prod(t.dims) <= SMALL.vocab for t in tensors.values())
    assert _cosine(_outputs(source, SMALL), _outputs(out, SMALL)) >= 0.999


def test_int8_rows_match_a_per_row_recomputation(tmp_path: Path) -> None:
    source, _, model = _compress(tmp_path, SMALL, {"quantization": "int8-weight-only"})
    original = numpy_helper.to_array(_initializers(onnx.load(source))[TABLE])
    tensors = _initializers(model)
    rows = numpy_helper.to_array(tensors[f"{TABLE}_int8"]).astype(np.float32)
    scale = numpy_helper.to_array(tensors[f"{TABLE}_scale"])
    np.testing.assert_allclose(scale, np.abs(original).max(axis=1) / 127, rtol=1e-6)
    assert np.all(np.abs(rows * scale[:, None] - original) <= scale[:, None] / 2 + 1e-7)


def test_int8_tied_projection_shares_the_int8_table(tmp_path: Path) -> None:
    source, out, model = _compress(tmp_path, TIED, {"quantization": "int8-weight-only"})
    tensors = _initializers(model)
    big = [t.name for t in tensors.values() if np.prod(t.dims) >= TIED.vocab * TIED.hidden]
    assert big == [f"{TABLE}_int8"]  # stored once
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == TABLE]
    assert len(dequantize) == 1 and dequantize[0].input[0] == f"{TABLE}_int8"
    assert [n.op_type for n in model.graph.node if n.input and n.input[0] == TABLE] == ["Transpose"]
    assert _cosine(_outputs(source, TIED), _outputs(out, TIED)) >= 0.999


@pytest.mark.parametrize("config", [SMALL, TIED], ids=["pooled", "tied-head"])
def test_int4_uses_matmulnbits_and_block_quantized_gathers(tmp_path: Path, config) -> None:
    source, out, model = _compress(tmp_path, config, {"quantization": "int4-weight-only", "blockSize": 32})
    ops = [n.op_type for n in model.graph.node]
    weights_in_source = sum(
        1 for n in onnx.load(source).graph.node if n.op_type == "MatMul" and n.input[1].endswith(".weight")
    )
    assert "MatMul" not in ops or ops.count("MatMulNBits") >= weights_in_source
    assert ops.count("GatherBlockQuantized") == len(T.input_names(config))  # token, position, token type
    assert "Transpose" not in {n.op_type for n in model.graph.node if n.input and TABLE in n.input[0]}
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert all({a.name: a.i for a in n.attribute}["block_size"] == 32 for n in nbits)
    if config.tied_head:
        projection = [n for n in nbits if {a.name: a.i for a in n.attribute}["N"] == config.vocab]
        gather = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized" and TABLE in n.input[0])
        assert len(projection) == 1 and projection[0].input[1] == gather.input[0]  # one packed table
    tensors = _initializers(model)
    assert all(t.data_type != TensorProto.FLOAT or np.prod(t.dims) < config.vocab * 4 for t in tensors.values())
    assert source.stat().st_size / out.stat().st_size >= 4.0
    assert _cosine(_outputs(source, config), _outputs(out, config)) >= 0.98


def _dequantize_int4_blocks(packed: np.ndarray, scales: np.ndarray, depth: int) -> np.ndarray:
    """The [N, depth] float32 values that `quantize_int4_blocks` encoded."""
    low = (packed & 0x0F).astype(np.float32)
    high = (packed >> 4).astype(np.float32)
    values = np.stack([low, high], axis=-1).reshape(packed.shape[0], packed.shape[1], -1) - W.INT4_ZERO_POINT
    return (values * scales[:, :, None]).reshape(packed.shape[0], -1)[:, :depth]


def test_int4_blocks_round_trip_within_half_a_step() -> None:
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((40, 72), dtype=np.float32)  # 72 is not a multiple of 32: padded
    packed, scales = W.quantize_int4_blocks(weight, 32, rows_are_channels=True, threads=2)
    assert packed.shape == (40, 3, 16) and scales.shape == (40, 3)
    restored = _dequantize_int4_blocks(packed, scales, 72)
    step = np.abs(np.repeat(scales, 32, axis=1)[:, :72])
    error = np.abs(restored - weight)
    # Each block's largest-magnitude value is exact (it maps to -8); values that round to +8
    # are clipped to +7 and may miss by one step, every other value by at most half a step.
    signed_scale = np.repeat(scales, 32, axis=1)[:, :72]
    clipped = weight / signed_scale > 7.5
    assert np.all(error[~clipped] <= step[~clipped] / 2 + 1e-6)
    assert np.all(error[clipped] <= step[clipped] + 1e-6)
    largest = np.abs(weight[:, :32]).argmax(axis=1)
    np.testing.assert_allclose(restored[np.arange(40), largest], weight[np.arange(40), largest], rtol=1e-6)
    # A MatMul weight [K, N] gives the same blocks as its transpose read by rows.
    columns = W.quantize_int4_blocks(np.ascontiguousarray(weight.T), 32, rows_are_channels=False, threads=1)
    np.testing.assert_array_equal(columns[0], packed)
    np.testing.assert_array_equal(columns[1], scales)


def test_fp16_compute_is_float16_inside_with_casts_only_at_the_edges(tmp_path: Path) -> None:
    source, out, model = _compress(tmp_path, SMALL, {"quantization": "fp16-compute"})
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types |= {t.name: t.data_type for t in inferred.graph.initializer}
    types |= {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.input, *inferred.graph.output]}
    matmuls = [n for n in inferred.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert matmuls and all(types[name] == TensorProto.FLOAT16 for n in matmuls for name in [*n.input, *n.output])
    assert not any(t.data_type == TensorProto.FLOAT for t in inferred.graph.initializer)
    edges = {v.name for v in inferred.graph.input} | {v.name for v in inferred.graph.output}
    casts = [n for n in inferred.graph.node if n.op_type == "Cast"]
    assert casts and all(n.input[0] in edges or n.output[0] in edges for n in casts)
    assert {types[v.name] for v in inferred.graph.output} == {TensorProto.FLOAT}
    # onnxruntime's CPU provider runs this graph too (float16 kernels for every op used here).
    assert _cosine(_outputs(source, SMALL), _outputs(out, SMALL)) >= 0.999


def test_bert_shaped_model_meets_the_size_and_cosine_bars(tmp_path: Path) -> None:
    """The full 30,522 × 768 embedding table with 2 encoder layers (the benchmark uses 4)."""
    config = replace(T.PRESETS["bert-base"], layers=2, sequence=32)
    source = T.export(tmp_path / "bert.onnx", config)
    reference = _outputs(source, config)
    ratios, cosines = {}, {}
    for recipe in ("int8-weight-only", "int4-weight-only"):
        out = tmp_path / f"{recipe}.onnx"
        compress_onnx(source, out, Recipe.from_dict({"quantization": recipe}), threads=2)
        ratios[recipe] = source.stat().st_size / out.stat().st_size
        cosines[recipe] = _cosine(reference, _outputs(out, config))
    assert ratios["int8-weight-only"] >= 3.5, ratios
    assert ratios["int4-weight-only"] >= 6.0, ratios
    assert cosines["int8-weight-only"] >= 0.99, cosines
    assert cosines["int4-weight-only"] >= 0.95, cosines


def test_a_form_onnxruntime_cannot_run_is_an_error_naming_the_operator(tmp_path: Path, monkeypatch) -> None:
    """Never a silent fallback: a graph the provider cannot load stops the compression."""
    from modelops.compress import onnx_compress

    source = T.export(tmp_path / "model.onnx", SMALL)
    original = onnx_compress._plan_fp16_compute

    def with_unknown_operator(graph, *args):
        result = original(graph, *args)
        graph.node[-1].op_type = "NoSuchOperator"  # stands in for an op without a float16 kernel
        return result

    monkeypatch.setattr(onnx_compress, "_plan_fp16_compute", with_unknown_operator)
    with pytest.raises(onnx_compress.UnsupportedModel, match=r"cannot run the fp16-compute form.*NoSuchOperator"):
        compress_onnx(source, tmp_path / "out.onnx", Recipe.from_dict({"quantization": "fp16-compute"}), threads=1)


def test_int8_dynamic_is_written_as_7_bit_matmulinteger_and_runs_exactly(tmp_path: Path) -> None:
    from onnx.reference import ReferenceEvaluator

    source, out, model = _compress(tmp_path, SMALL, {"quantization": "int8-dynamic"})
    ops = [n.op_type for n in model.graph.node]
    tensors = _initializers(model)
    integer = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert not any(n.op_type == "MatMul" and n.input[1] in tensors for n in model.graph.node)
    # query, key and value read one activation: one DynamicQuantizeLinear serves all three.
    assert 0 < ops.count("DynamicQuantizeLinear") < len(integer)
    for node in integer:
        weights = numpy_helper.to_array(tensors[node.input[1]])
        assert weights.dtype == np.int8 and np.abs(weights).max() <= 64  # cannot saturate VPMADDUBSW
    feeds = T.eval_inputs(SMALL, samples=4)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    exact = ReferenceEvaluator(model).run(None, feeds)[0]
    np.testing.assert_allclose(got, exact, atol=1e-4 * np.abs(exact).max())
    assert _cosine(_outputs(source, SMALL), _outputs(out, SMALL)) >= 0.999


def _tied_gemm_model() -> onnx.ModelProto:
    """An embedding table that a Gemm(transB=1) also uses: the 2-D form of a tied projection."""
    from onnx import helper

    rng = np.random.default_rng(4)
    table = rng.standard_normal((300, 64), dtype=np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
        helper.make_node("Tanh", ["rows"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "table"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tied_gemm",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 300])],
        [numpy_helper.from_array(table, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("quantization", ["int8-weight-only", "int4-weight-only", "int8-dynamic"])
def test_a_table_tied_to_a_gemm_is_stored_once_as_int8_rows(tmp_path: Path, quantization: str) -> None:
    onnx.save(_tied_gemm_model(), tmp_path / "m.onnx")
    stats = compress_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", Recipe.from_dict({"quantization": quantization}))
    model = onnx.load(tmp_path / "q.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [t.name for t in model.graph.initializer if np.prod(t.dims) >= 300 * 64] == ["table_int8"]
    if quantization == "int4-weight-only":  # GatherBlockQuantized cannot serve a Gemm: said, not hidden
        assert any("1 embedding tables" in note and "int8" in note for note in stats.notes), stats.notes
    ids = np.array([0, 5, 299], dtype=np.int64)
    expected = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    assert _cosine(expected, got) >= 0.999

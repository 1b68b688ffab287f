"""Streaming ONNX reader/writer: the output is an ordinary ONNX model, weights are read lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from modelops.compress.onnx_compress import compress_onnx, weight_axes
from modelops.compress.onnx_stream import OnnxFile, OnnxFormatError, OnnxStreamWriter
from modelops.compress.recipe import Recipe

pytestmark = pytest.mark.unit


def _mlp(opset: int = 17, gemm: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 8), dtype=np.float32)  # Gemm with transB: [out, in]
    b1 = rng.standard_normal(16, dtype=np.float32)
    w2 = rng.standard_normal((16, 4), dtype=np.float32)  # MatMul: [in, out]
    shape = numpy_helper.from_array(np.array([-1, 16], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1)
        if gemm
        else helper.make_node("MatMul", ["x", "w1t"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["r2"]),
        helper.make_node("MatMul", ["r2", "w2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        shape,
    ]
    if not gemm:
        inits[0] = numpy_helper.from_array(np.ascontiguousarray(w1.T), "w1t")
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="test")


def _run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    payload = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(payload, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_reader_splits_skeleton_and_lazy_initializers(tmp_path: Path) -> None:
    model = _mlp()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with OnnxFile(path) as source:
        assert len(source.skeleton.graph.initializer) == 0
        assert [n.op_type for n in source.skeleton.graph.node] == ["Gemm", "Relu", "Reshape", "MatMul"]
        assert source.skeleton.producer_name == "test"
        by_name = {t.name: t for t in source.initializers}
        assert list(by_name) == ["w1", "b1", "w2", "shape"]
        for tensor in model.graph.initializer:
            lazy = by_name[tensor.name]
            assert lazy.dims == tuple(tensor.dims) and lazy.data_type == tensor.data_type
            np.testing.assert_array_equal(lazy.array(), numpy_helper.to_array(tensor))
            assert bytes(lazy.encoded()) == tensor.SerializeToString()


def test_writer_output_is_a_valid_single_model(tmp_path: Path) -> None:
    model = _mlp()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = tmp_path / "copy.onnx"
    with OnnxFile(path) as source, OnnxStreamWriter(out, source.skeleton) as writer:
        for tensor in source.initializers:
            if tensor.name == "w2":
                writer.add_array("w2", tensor.array() * 2)
            else:
                writer.add_encoded(tensor.encoded())
            tensor.release()
    reloaded = onnx.load(out)
    onnx.checker.check_model(reloaded, full_check=True)
    assert [i.name for i in reloaded.graph.initializer] == ["w1", "b1", "w2", "shape"]
    x = np.random.default_rng(1).standard_normal((3, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(str(out), x), 2 * _run(model, x), rtol=1e-5)


def test_external_data_is_read_and_inlined(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(_mlp(), path, save_as_external_data=True, location="ext.data", size_threshold=0)
    out = tmp_path / "inline.onnx"
    compress_onnx(path, out, Recipe.from_dict({}), threads=1)
    x = np.ones((2, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(str(out), x), _run(_mlp(), x), rtol=1e-6)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in onnx.load(out).graph.initializer)


def test_external_data_may_not_escape_the_model_directory(tmp_path: Path) -> None:
    onnx.save(_mlp(), tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0)
    tampered = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    for tensor in tampered.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    onnx.save(tampered, tmp_path / "tampered.onnx")
    with (
        OnnxFile(tmp_path / "tampered.onnx") as source,
        pytest.raises(OnnxFormatError, match="not a plain relative path"),
    ):
        source.initializers[0].array()


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"", "empty"),
        (b"\x0a\xff\xff\xff\x0f", "runs past the end"),
        (b"\x3a\x80", "malformed varint"),
        (b"\x0f\x00", "wire type"),
        (b"\x08\x08", "empty graph"),
    ],
)
def test_malformed_files_raise_format_errors(tmp_path: Path, payload: bytes, complaint: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(payload)
    with pytest.raises(OnnxFormatError, match=complaint):
        OnnxFile(path)


def test_weight_axes_follow_each_operator() -> None:
    assert weight_axes(_mlp().graph) == {"w1": 0, "w2": -1}


@pytest.mark.parametrize("quantization", ["int8-weight-only", "fp16", "bf16", "int8-dynamic"])
def test_recipes_keep_the_interface_and_stay_close(tmp_path: Path, quantization: str) -> None:
    model = _mlp()
    onnx.save(model, tmp_path / "m.onnx")
    out = tmp_path / "q.onnx"
    compress_onnx(tmp_path / "m.onnx", out, Recipe.from_dict({"quantization": quantization}), threads=1)
    result = onnx.load(out)
    onnx.checker.check_model(result, full_check=True)
    assert [v.name for v in result.graph.input] == ["x"] and [v.name for v in result.graph.output] == ["y"]
    x = np.random.default_rng(2).standard_normal((5, 8), dtype=np.float32)
    expected = _run(model, x)
    got = _run(str(out), x)
    # 8-bit grids (weights, and activations for int8-dynamic) cost about 2% of the output's range here.
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())
    if quantization == "int8-dynamic":
        # onnx's reference evaluator does the integer arithmetic exactly (int32 accumulation), so
        # onnxruntime must agree with it on any CPU; a saturating kernel (x86 without VNNI and
        # full-range int8 weights) misses by several units.
        exact = ReferenceEvaluator(result).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, exact, atol=1e-4 * np.abs(expected).max())
    types = {t.name: t.data_type for t in result.graph.initializer}
    assert types["shape"] == TensorProto.INT64  # non-float constants are untouched
    if quantization == "int8-weight-only":
        assert {n.op_type for n in result.graph.node} >= {"DequantizeLinear", "Gemm", "MatMul"}
        assert types["w1_int8"] == TensorProto.INT8 and types["w2_int8"] == TensorProto.INT8
        assert "b1" in types and types["b1"] == TensorProto.FLOAT  # too small to matter
    if quantization in ("fp16", "bf16"):
        narrow = TensorProto.FLOAT16 if quantization == "fp16" else TensorProto.BFLOAT16
        assert types[f"w1_{quantization}"] == narrow and types[f"w2_{quantization}"] == narrow
    if quantization == "int8-dynamic":
        assert "Gemm" not in {n.op_type for n in result.graph.node}


def test_old_opsets_fall_back_to_one_scale_per_tensor(tmp_path: Path) -> None:
    model = _mlp(opset=11)
    onnx.save(model, tmp_path / "m.onnx")
    stats = compress_onnx(
        tmp_path / "m.onnx", tmp_path / "q.onnx", Recipe.from_dict({"quantization": "int8-weight-only"}), threads=1
    )
    assert any("one scale per tensor" in note for note in stats.notes)
    scales = [t for t in onnx.load(tmp_path / "q.onnx").graph.initializer if t.name.endswith("_scale")]
    assert scales and all(len(t.dims) == 0 for t in scales)

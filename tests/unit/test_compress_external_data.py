"""ONNX external data: every recipe reads it and writes its output with external data, and the
Job takes a file set (graph plus data files), each file verified by its own sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelops.api.version import file_set_digest
from modelops.compress.job import JobSpec, run
from modelops.compress.onnx_compress import compress_onnx
from modelops.compress.onnx_stream import (
    EXTERNAL_MIN_BYTES,
    OnnxFile,
    OnnxStreamWriter,
    external_data_files,
    external_data_path,
)
from modelops.compress.recipe import Recipe
from modelops.storage import ObjectStore, StorageConfig, TransferTuning

pytestmark = pytest.mark.unit

RECIPES = [
    {"quantization": "int8-weight-only"},
    {"quantization": "int8-dynamic"},
    {"quantization": "int4-weight-only", "blockSize": 16},
    {"quantization": "fp16"},
    {"quantization": "bf16"},
    {"quantization": "none", "pruning": {"method": "unstructured", "amount": 0.2}},
]


def _model(hidden: int = 64) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((32, hidden), dtype=np.float32) * 0.2
    w2 = rng.standard_normal((hidden, 10), dtype=np.float32) * 0.2
    b1 = rng.standard_normal(hidden, dtype=np.float32) * 0.1
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save_external(model: onnx.ModelProto, folder: Path, locations: dict[str, str]) -> Path:
    """Save with each named initializer's bytes in its own data file (onnx's own writer)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for tensor in model.graph.initializer:
        if tensor.name in locations:
            (folder / locations[tensor.name]).parent.mkdir(parents=True, exist_ok=True)
            onnx.external_data_helper.set_external_data(tensor, locations[tensor.name])
    onnx.external_data_helper.write_external_data_tensors(model, str(folder))
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return _save_external(_model(), tmp_path / "src", {"w1": "weights/w1.bin", "w2": "weights/w2.bin"})


def test_the_source_is_read_through_its_external_data(source: Path) -> None:
    with OnnxFile(source) as model:
        assert model.has_external_data
        by_name = {t.name: t for t in model.initializers}
        assert by_name["w1"].is_external and not by_name["b1"].is_external
        expected = numpy_helper.to_array(_model().graph.initializer[0])
        np.testing.assert_array_equal(by_name["w1"].array(), expected)


@pytest.mark.parametrize("recipe", RECIPES, ids=[json.dumps(r) for r in RECIPES])
def test_every_recipe_writes_external_data_that_onnxruntime_runs(source: Path, tmp_path: Path, recipe: dict) -> None:
    quantization = recipe["quantization"]
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    compress_onnx(source, out, Recipe.of(recipe), threads=1)
    assert external_data_files(out) == [external_data_path(out)]
    graph = onnx.load(str(out), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert external, "the large tensors went to the data file"
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        assert info["location"] == "model.onnx.data" and int(info["offset"]) % 64 == 0
    # The graph file holds no weight bytes of the large tensors, only their headers.
    assert out.stat().st_size < EXTERNAL_MIN_BYTES * 4
    x = np.random.default_rng(1).standard_normal((8, 32), dtype=np.float32)
    reference, compressed = _outputs(source, x), _outputs(out, x)
    cosine = float((reference * compressed).sum() / np.linalg.norm(reference) / np.linalg.norm(compressed))
    assert cosine > 0.98, (quantization, cosine)


def test_an_unchanged_external_tensor_is_copied_byte_for_byte(source: Path, tmp_path: Path) -> None:
    skeleton = onnx.ModelProto()
    out = tmp_path / "copy.onnx"
    with OnnxFile(source) as model:
        skeleton.CopyFrom(model.skeleton)
        with OnnxStreamWriter(out, skeleton, external_data=True) as writer:
            for tensor in model.initializers:
                writer.copy(tensor)
                tensor.release()
    x = np.ones((2, 32), dtype=np.float32)
    np.testing.assert_array_equal(_outputs(out, x), _outputs(source, x))
    loaded = onnx.load(str(out))  # onnx's own loader agrees
    assert {t.name for t in loaded.graph.initializer} == {"w1", "b1", "w2"}


def _publish(fake_s3, folder: Path, prefix: str) -> list[dict[str, str]]:
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        fake_s3.objects[("models", prefix + relative)] = (path.read_bytes(), {})
        files.append({"path": relative, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return files


def _spec(files: list[dict[str, str]], **changes) -> JobSpec:
    digest = file_set_digest("model.onnx", [(f["path"], f["sha256"]) for f in files])
    fields = {
        "source_uri": "s3://models/llm/1/",
        "source_sha256": digest,
        "source_format": "onnx",
        "recipe": {"quantization": "int8-weight-only"},
        "output_prefix": "s3://models/out/llm/",
        "threads": 1,
        "source_files": files,
        "source_entrypoint": "model.onnx",
    }
    fields.update(changes)
    return JobSpec(**fields)


def _store(fake_s3) -> ObjectStore:
    return ObjectStore(StorageConfig(), TransferTuning(part_size=4096), client=fake_s3, sleep=lambda _: None)


def test_the_job_compresses_a_file_set_and_publishes_one(source: Path, tmp_path: Path, fake_s3) -> None:
    files = _publish(fake_s3, source.parent, "llm/1/")
    assert len(files) == 3
    result = run(_spec(files), _store(fake_s3), tmp_path / "work")
    assert result.exit_code == 0, result.report
    artifact = result.report["artifact"]
    assert artifact["uri"] == "s3://models/out/llm/model.onnx"
    assert [f["path"] for f in artifact["files"]] == ["model.onnx", "model.onnx.data"]
    for item in artifact["files"]:
        body = fake_s3.objects[("models", "out/llm/" + item["path"])][0]
        assert hashlib.sha256(body).hexdigest() == item["sha256"] and len(body) == item["bytes"]
    assert artifact["bytes"] == sum(f["bytes"] for f in artifact["files"])
    assert result.report["source"]["sha256"] == _spec(files).source_sha256
    assert result.report["bytesBefore"] == sum((source.parent / f["path"]).stat().st_size for f in files)
    assert json.loads(fake_s3.objects[("models", "out/llm/report.json")][0])["artifact"] == artifact
    # How the three files arrived is in the report, and so in the termination message.
    download = result.report["download"]
    assert download["bytes"] == download["fetchedBytes"] == result.report["bytesBefore"]
    assert download["resumedParts"] == 0 and download["retries"] == 0
    from modelops.compress.report import compact

    assert json.loads(compact(result.report))["download"] == download


def test_a_tampered_data_file_fails_the_job_naming_the_file(source: Path, tmp_path: Path, fake_s3) -> None:
    files = _publish(fake_s3, source.parent, "llm/1/")
    body, meta = fake_s3.objects[("models", "llm/1/weights/w2.bin")]
    fake_s3.objects[("models", "llm/1/weights/w2.bin")] = (b"\x00" + body[1:], meta)
    result = run(_spec(files), _store(fake_s3), tmp_path / "work")
    assert result.exit_code == 10
    assert result.report["reason"] == "ChecksumMismatch"
    index = [f["path"] for f in files].index("weights/w2.bin")
    assert f"spec.artifact.files[{index}] (weights/w2.bin)" in result.report["message"]
    assert ("models", "out/llm/report.json") not in fake_s3.objects


def test_a_digest_that_does_not_match_the_files_is_a_usage_error(source: Path, tmp_path: Path, fake_s3) -> None:
    files = _publish(fake_s3, source.parent, "llm/1/")
    result = run(_spec(files, source_sha256="ab" * 32), _store(fake_s3), tmp_path / "work")
    assert result.exit_code == 2 and "source-files-json" in result.report["message"]

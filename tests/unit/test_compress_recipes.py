"""Every recipe on the real digits model, checked against an independent recomputation.

Each case runs the whole Job (download, verify, compress, evaluate, publish) against an
in-memory object store, then recomputes from the published bytes: the sizes, the sha256, the
metric with a fresh onnxruntime/torch session, and (for pruning) the sparsity of the weights.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from modelops.compress.job import JobSpec, run
from modelops.contract import exitcodes
from modelops.storage import ObjectStore, StorageConfig, TransferTuning

pytestmark = pytest.mark.unit

SOURCES = {"onnx": "model.onnx", "torchscript": "model.ts.pt", "exported-program": "model.pt2"}


@pytest.fixture
def published(digits_model, fake_s3):
    """An in-memory store holding the digits artifacts and the evaluation set."""
    store = ObjectStore(StorageConfig(), TransferTuning(part_size=64 * 1024), client=fake_s3, sleep=lambda _: None)
    for path in (digits_model.onnx, digits_model.torchscript, digits_model.exported_program, digits_model.eval_npz):
        fake_s3.objects[("models", f"digits/{path.name}")] = (path.read_bytes(), {})
    return store


def _run(store: ObjectStore, tmp_path: Path, digits_model, source_format: str, recipe: dict, evaluation: dict | None):
    source = Path(
        getattr(
            digits_model,
            {"onnx": "onnx", "torchscript": "torchscript", "exported-program": "exported_program"}[source_format],
        )
    )
    spec = JobSpec(
        source_uri=f"s3://models/digits/{source.name}",
        source_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
        source_format=source_format,
        recipe=recipe,
        output_prefix="s3://models/out/case/",
        evaluation=evaluation,
        output_names=["logits"],
        threads=1,
    )
    return run(spec, store, tmp_path / "work")


def _onnx_outputs(model_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def _torch_outputs(model_bytes: bytes, inputs: np.ndarray, source_format: str) -> np.ndarray:
    import torch

    buffer = io.BytesIO(model_bytes)
    if source_format == "exported-program":
        module = torch.export.load(buffer).module()
    else:
        module = torch.jit.load(buffer)
    with torch.no_grad():
        return module(torch.from_numpy(inputs)).float().numpy()


def _independent_metric(name: str, parent: np.ndarray, compressed: np.ndarray, labels: np.ndarray) -> dict:
    if name == "top1-accuracy":
        before = 100.0 * np.mean(parent.argmax(1) == labels)
        after = 100.0 * np.mean(compressed.argmax(1) == labels)
        return {"parent": before, "compressed": after, "drop": before - after}
    if name == "top1-agreement":
        return {"compressed": np.mean(parent.argmax(1) == compressed.argmax(1))}
    if name == "cosine-similarity":
        cos = [
            a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            for a, b in zip(parent.astype(np.float64), compressed.astype(np.float64), strict=True)
        ]
        return {"compressed": float(np.mean(cos))}
    return {"compressed": float(np.max(np.abs(parent.astype(np.float64) - compressed)))}


def _weight_sparsity(model: onnx.ModelProto) -> float:
    """Fraction of zeros over the 2-D weights (dequantized ones included)."""
    total = zeros = 0
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.ndim == 2 and values.size >= 64:
            total += values.size
            zeros += int(np.count_nonzero(values == 0))
    return zeros / total


ACC = {"datasetUri": "s3://models/digits/eval.npz", "metric": "top1-accuracy", "threshold": 1.0}

CASES = [
    # id, source format, recipe, evaluation, expected outcome, max output/source byte ratio
    ("onnx-none", "onnx", {}, ACC, "Passed", 1.001),
    ("onnx-fp16", "onnx", {"quantization": "fp16"}, ACC, "Passed", 0.52),
    (
        "onnx-bf16",
        "onnx",
        {"quantization": "bf16"},
        {**ACC, "metric": "top1-agreement", "threshold": 0.98},
        "Passed",
        0.52,
    ),
    ("onnx-int8-weight-only", "onnx", {"quantization": "int8-weight-only"}, {**ACC, "threshold": 0.5}, "Passed", 0.30),
    ("onnx-int8-dynamic", "onnx", {"quantization": "int8-dynamic"}, {**ACC, "threshold": 0.5}, "Passed", 0.30),
    (
        "onnx-int4-weight-only",
        "onnx",
        {"quantization": "int4-weight-only", "blockSize": 32},
        {**ACC, "threshold": 2.0},
        "Passed",
        0.20,
    ),
    ("onnx-fp16-compute", "onnx", {"quantization": "fp16-compute"}, ACC, "Passed", 0.52),
    ("onnx-unstructured-50", "onnx", {"pruning": {"method": "unstructured", "amount": 0.5}}, ACC, "Passed", 1.001),
    (
        "onnx-structured-5",
        "onnx",
        {"pruning": {"method": "structured", "amount": 0.05}},
        {**ACC, "metric": "cosine-similarity", "threshold": 0.9},
        "Passed",
        1.001,
    ),
    (
        "onnx-unstructured-50-int8",
        "onnx",
        {"quantization": "int8-weight-only", "pruning": {"method": "unstructured", "amount": 0.5}},
        ACC,
        "Passed",
        0.30,
    ),
    (
        "onnx-structured-30-fp16",
        "onnx",
        {"quantization": "fp16", "pruning": {"method": "structured", "amount": 0.3}},
        {**ACC, "metric": "max-abs-error", "threshold": 0.01},
        "Rejected",
        0.52,
    ),
    (
        "onnx-aggressive",
        "onnx",
        {"quantization": "int8-dynamic", "pruning": {"method": "unstructured", "amount": 0.9}},
        ACC,
        "Rejected",
        0.30,
    ),
    (
        "torchscript-int8-dynamic",
        "torchscript",
        {"quantization": "int8-dynamic"},
        {**ACC, "threshold": 0.5},
        "Passed",
        0.30,
    ),
    ("exported-program-fp16", "exported-program", {"quantization": "fp16"}, ACC, "Passed", 0.52),
    (
        "torchscript-to-torchscript-bf16",
        "torchscript",
        {"quantization": "bf16", "targetFormat": "torchscript"},
        {**ACC, "threshold": 2.0},
        "Passed",
        0.60,
    ),
    (
        "exported-program-to-torchscript-fp16-pruned",
        "exported-program",
        {"quantization": "fp16", "targetFormat": "torchscript", "pruning": {"method": "unstructured", "amount": 0.3}},
        {**ACC, "threshold": 2.0},
        "Passed",
        0.60,
    ),
]


@pytest.mark.parametrize(
    ("source_format", "recipe", "evaluation", "outcome", "max_ratio"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_recipe_on_digits_matches_independent_recomputation(
    published, fake_s3, digits_model, tmp_path, source_format, recipe, evaluation, outcome, max_ratio
) -> None:
    result = _run(published, tmp_path, digits_model, source_format, recipe, evaluation)
    report = result.report
    assert report["outcome"] == outcome, report["message"]
    assert result.exit_code == (exitcodes.SUCCESS if outcome == "Passed" else exitcodes.REJECTED)

    # Sizes and digests, from the published bytes.
    artifact_key = report["artifact"]["uri"].removeprefix("s3://models/")
    artifact, metadata = fake_s3.objects[("models", artifact_key)]
    source_bytes = fake_s3.objects[("models", report["source"]["uri"].removeprefix("s3://models/"))][0]
    assert report["bytesAfter"] == report["artifact"]["bytes"] == len(artifact)
    assert report["bytesBefore"] == len(source_bytes)
    assert report["ratio"] == pytest.approx(len(source_bytes) / len(artifact), abs=1e-4)
    assert report["artifact"]["sha256"] == hashlib.sha256(artifact).hexdigest() == metadata["sha256"]
    assert len(artifact) / len(source_bytes) <= max_ratio
    assert json.loads(fake_s3.objects[("models", "out/case/report.json")][0]) == report

    # The metric, recomputed with fresh sessions on the evaluation set.
    data = np.load(digits_model.eval_npz)
    inputs, labels = data["inputs"], data["labels"]
    parent = (
        _onnx_outputs(source_bytes, inputs)
        if source_format == "onnx"
        else _torch_outputs(source_bytes, inputs, source_format)
    )
    if report["artifact"]["format"] == "onnx":
        compressed = _onnx_outputs(artifact, inputs)
    else:
        compressed = _torch_outputs(artifact, inputs, "torchscript")
    expected = _independent_metric(evaluation["metric"], parent, compressed, labels)
    for key, value in expected.items():
        assert report["metric"][key] == pytest.approx(value, abs=1e-5), key
    assert report["metric"]["passed"] is (outcome == "Passed")
    assert report["device"] == "cpu"
    assert report["latencyMsBefore"] > 0 and report["latencyMsAfter"] > 0

    pruning = recipe.get("pruning")
    if pruning and report["artifact"]["format"] == "onnx" and recipe.get("quantization") != "int8-dynamic":
        model = onnx.load_from_string(artifact)
        # Unstructured pruning zeroes exactly floor(amount × size) per tensor; structured whole rows.
        assert _weight_sparsity(model) >= pruning["amount"] - 0.01


def test_int8_on_digits_meets_the_size_and_accuracy_bar(published, digits_model, tmp_path) -> None:
    result = _run(
        published, tmp_path, digits_model, "onnx", {"quantization": "int8-weight-only"}, {**ACC, "threshold": 0.5}
    )
    report = result.report
    assert report["bytesAfter"] <= 0.30 * report["bytesBefore"]
    assert report["metric"]["drop"] <= 0.5
    assert report["metric"]["parent"] >= 95.0  # the real model is a real classifier


def test_aggressive_recipe_is_rejected_with_the_measured_drop(published, digits_model, tmp_path) -> None:
    recipe = {"quantization": "int8-weight-only", "pruning": {"method": "unstructured", "amount": 0.9}}
    result = _run(published, tmp_path, digits_model, "onnx", recipe, ACC)
    report = result.report
    assert result.exit_code == exitcodes.REJECTED
    assert (report["outcome"], report["reason"]) == ("Rejected", "AccuracyGateRejected")
    drop = report["metric"]["drop"]
    assert drop > 1.0
    assert f"dropped {drop:.2f} points" in report["message"]

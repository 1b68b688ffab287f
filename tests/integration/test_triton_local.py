"""The real tritonserver (from the nvidia-pytriton wheel) serves a repository that our renderer
and layout wrote, through the python backend running onnxruntime, and answers exactly what
onnxruntime answers on the same file. No Kubernetes: the server is a local process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from e2e.loadgen import InferenceCall, run_load
from e2e.tritonlocal import serve_locally
from modelops.api.deployment import TritonSpec
from modelops.api.model import Signature
from modelops.serving import ServedModel, layout_model_repository, render_config_pbtxt

pytestmark = pytest.mark.integration

MODEL = "digits"
VERSION = 2
READY_DEADLINE_S = 120.0


def train_digits_onnx(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Train a small MLP on scikit-learn's digits and write it as ONNX with onnx.helper.

    Returns the held-out inputs, labels and scikit-learn's own accuracy on them.
    """
    digits = load_digits()
    inputs = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        inputs, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=0).fit(x_train, y_train)
    (w1, w2), (b1, b2) = classifier.coefs_, classifier.intercepts_
    initializers = [
        numpy_helper.from_array(array.astype(np.float32), name)
        for array, name in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["hidden_linear"]),
        helper.make_node("Relu", ["hidden_linear"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return x_test, y_test.astype(np.int64), float(classifier.score(x_test, y_test))


@dataclass(frozen=True)
class Served:
    http_url: str
    grpc_url: str
    onnx_path: Path
    eval_inputs: np.ndarray
    eval_labels: np.ndarray
    sklearn_accuracy: float


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("triton")
    onnx_path = work / "digits.onnx"
    eval_inputs, eval_labels, sklearn_accuracy = train_digits_onnx(onnx_path)
    signature = Signature.model_validate({
        "inputs": [{"name": "input", "dataType": "FP32", "dims": [64]}],
        "outputs": [{"name": "logits", "dataType": "FP32", "dims": [10]}, {"name": "label", "dataType": "INT64", "dims": [1]}],
        "maxBatchSize": 32,
    })
    triton = TritonSpec.model_validate({
        "backend": "python",
        "dynamicBatching": {"enabled": True, "preferredBatchSizes": [8, 16], "maxQueueDelayMicroseconds": 2000},
        "instanceGroups": [{"count": 1, "kind": "KIND_CPU"}],
    })
    config = ServedModel(MODEL, VERSION, signature, triton)
    repo = work / "models"
    layout_model_repository(repo, MODEL, VERSION, "python", onnx_path, render_config_pbtxt(config))
    # A version the policy does not name must not be served.
    layout_old = repo / MODEL / "1"
    layout_old.mkdir()

    with serve_locally(repo, work / "cache", work / "tritonserver.log", READY_DEADLINE_S) as server:
        yield Served(
            http_url=server.http_url,
            grpc_url=server.grpc_url,
            onnx_path=onnx_path,
            eval_inputs=eval_inputs,
            eval_labels=eval_labels,
            sklearn_accuracy=sklearn_accuracy,
        )


def direct(served: Served, inputs: np.ndarray) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(served.onnx_path), providers=["CPUExecutionProvider"])
    logits, label = session.run(["logits", "label"], {"input": inputs})
    return {"logits": logits, "label": label}


def test_http_inference_equals_onnxruntime(served: Served) -> None:
    batch = served.eval_inputs[:24]
    client = httpclient.InferenceServerClient(served.http_url)
    try:
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = client.infer(
            MODEL, [tensor], outputs=[httpclient.InferRequestedOutput("logits"), httpclient.InferRequestedOutput("label")]
        )
        metadata = client.get_model_metadata(MODEL)
    finally:
        client.close()
    expected = direct(served, batch)
    np.testing.assert_array_equal(result.as_numpy("logits"), expected["logits"])
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    assert result.as_numpy("label").dtype == np.int64
    assert metadata["versions"] == [str(VERSION)]


def test_grpc_inference_equals_onnxruntime(served: Served) -> None:
    batch = served.eval_inputs[24:31]
    client = grpcclient.InferenceServerClient(served.grpc_url)
    try:
        tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = client.infer(MODEL, [tensor], model_version=str(VERSION))
        assert client.is_model_ready(MODEL, str(VERSION))
        assert not client.is_model_ready(MODEL, "1")
    finally:
        client.close()
    expected = direct(served, batch)
    np.testing.assert_array_equal(result.as_numpy("logits"), expected["logits"])
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])


def test_served_accuracy_on_held_out_digits(served: Served) -> None:
    client = httpclient.InferenceServerClient(served.http_url)
    labels = []
    try:
        for start in range(0, len(served.eval_inputs), 32):
            batch = served.eval_inputs[start : start + 32]
            tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            labels.append(client.infer(MODEL, [tensor]).as_numpy("label")[:, 0])
    finally:
        client.close()
    accuracy = float((np.concatenate(labels) == served.eval_labels).mean())
    assert accuracy == pytest.approx(served.sklearn_accuracy)
    assert accuracy > 0.9


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_generator_against_tritonserver(served: Served, protocol: str) -> None:
    sample = served.eval_inputs[:1]
    expected = direct(served, sample)

    def validate(outputs):
        # Triton's batcher may run this request together with others; the answer must not change.
        np.testing.assert_allclose(outputs["logits"], expected["logits"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(outputs["label"], expected["label"])

    url = served.http_url if protocol == "http" else served.grpc_url
    stats_before = _model_stats(served)
    report = run_load(
        [url],
        InferenceCall(MODEL, {"input": sample}, ("logits", "label"), protocol=protocol, validate=validate),
        requests=300,
        concurrency=8,
        time_limit_s=60,
        window_s=0.5,
    )
    stats_after = _model_stats(served)
    assert (report.requests, report.failures) == (300, 0), report.errors
    assert 0 < report.p50_ms <= report.p95_ms <= report.p99_ms
    assert report.throughput_rps > 0
    assert sum(w.successes for w in report.windows) == 300
    inferences = stats_after["inference_count"] - stats_before["inference_count"]
    executions = stats_after["execution_count"] - stats_before["execution_count"]
    assert inferences == 300
    # Concurrent requests were batched: model.py ran fewer times than requests arrived.
    assert executions < inferences


def _model_stats(served: Served) -> dict[str, int]:
    with urllib.request.urlopen(f"http://{served.http_url}/v2/models/{MODEL}/versions/{VERSION}/stats", timeout=5) as r:
        stats = json.load(r)["model_stats"][0]
    return {"inference_count": int(stats["inference_count"]), "execution_count": int(stats["execution_count"])}

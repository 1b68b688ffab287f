"""Golden and table tests for the Triton config renderer, the repository layout and the
python-backend model.py (run against a stand-in for Triton's python-backend utilities)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2

from modelops.api.deployment import TritonSpec
from modelops.api.model import Signature, TensorSpec
from modelops.serving import (
    ServedModel,
    ServingConfigError,
    artifact_filename,
    default_model_filename,
    instance_kind_for,
    layout_model_repository,
    python_backend_model_source,
    render_config_pbtxt,
)

pytestmark = pytest.mark.unit


def tensor(name: str, data_type: str, dims: list[int]) -> TensorSpec:
    return TensorSpec.model_validate({"name": name, "dataType": data_type, "dims": dims})


def signature(inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch_size: int = 0) -> Signature:
    return Signature(inputs=inputs, outputs=outputs, max_batch_size=max_batch_size)


def triton(**wire) -> TritonSpec:
    """A TritonSpec as the apiserver hands it over (camelCase, defaults filled by the model)."""
    return TritonSpec.model_validate(wire)


DIGITS_INPUT = [tensor("input", "FP32", [64])]
DIGITS_OUTPUT = [tensor("probabilities", "FP32", [10])]

GOLDEN_ONNXRUNTIME_CPU_UNBATCHED = """\
name: "digits"
backend: "onnxruntime"
max_batch_size: 0
version_policy {
  specific {
    versions: [1]
  }
}
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [1, 64]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [1, 10]
  }
]
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

GOLDEN_PYTHON_GPU_BATCHED = """\
name: "digits-int8"
backend: "python"
max_batch_size: 32
version_policy {
  specific {
    versions: [7]
  }
}
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [64]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [10]
  },
  {
    name: "label"
    data_type: TYPE_INT64
    dims: [1]
  }
]
instance_group [
  {
    count: 2
    kind: KIND_GPU
  }
]
dynamic_batching {
  preferred_batch_size: [8, 16]
  max_queue_delay_microseconds: 500
}
"""

GOLDEN_PYTORCH_CPU_BATCHED = """\
name: "resnet"
platform: "pytorch_libtorch"
max_batch_size: 8
version_policy {
  specific {
    versions: [12]
  }
}
input [
  {
    name: "INPUT__0"
    data_type: TYPE_FP16
    dims: [3, -1, -1]
  }
]
output [
  {
    name: "OUTPUT__0"
    data_type: TYPE_FP16
    dims: [1000]
  }
]
instance_group [
  {
    count: 4
    kind: KIND_CPU
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 0
}
"""

GOLDEN_ONNXRUNTIME_TWO_GROUPS_BATCHING_OFF = """\
name: "tokens"
backend: "onnxruntime"
max_batch_size: 4
version_policy {
  specific {
    versions: [3]
  }
}
input [
  {
    name: "input_ids"
    data_type: TYPE_INT64
    dims: [-1]
  },
  {
    name: "attention_mask"
    data_type: TYPE_INT64
    dims: [-1]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [-1, 2]
  }
]
instance_group [
  {
    count: 1
    kind: KIND_GPU
  },
  {
    count: 2
    kind: KIND_CPU
  }
]
"""

GOLDEN_CASES = {
    "onnxruntime-cpu-unbatched": (
        ServedModel(
            "digits",
            1,
            signature([tensor("input", "FP32", [1, 64])], [tensor("probabilities", "FP32", [1, 10])]),
            triton(),
        ),
        GOLDEN_ONNXRUNTIME_CPU_UNBATCHED,
    ),
    "python-gpu-batched": (
        ServedModel(
            "digits-int8",
            7,
            signature(DIGITS_INPUT, DIGITS_OUTPUT + [tensor("label", "INT64", [1])], max_batch_size=32),
            triton(
                backend="python",
                dynamicBatching={"enabled": True, "preferredBatchSizes": [8, 16], "maxQueueDelayMicroseconds": 500},
                instanceGroups=[{"count": 2}],
            ),
            gpus=1,
        ),
        GOLDEN_PYTHON_GPU_BATCHED,
    ),
    "pytorch-cpu-batched": (
        ServedModel(
            "resnet",
            12,
            signature([tensor("INPUT__0", "FP16", [3, -1, -1])], [tensor("OUTPUT__0", "FP16", [1000])], max_batch_size=8),
            triton(backend="pytorch", dynamicBatching={"enabled": True}, instanceGroups=[{"count": 4}]),
        ),
        GOLDEN_PYTORCH_CPU_BATCHED,
    ),
    "onnxruntime-two-groups-batching-off": (
        ServedModel(
            "tokens",
            3,
            signature(
                [tensor("input_ids", "INT64", [-1]), tensor("attention_mask", "INT64", [-1])],
                [tensor("logits", "FP32", [-1, 2])],
                max_batch_size=4,
            ),
            # Settings of a disabled batcher must not leak into the config.
            triton(
                dynamicBatching={"enabled": False, "preferredBatchSizes": [2], "maxQueueDelayMicroseconds": 9},
                instanceGroups=[{"count": 1, "kind": "KIND_GPU"}, {"count": 2, "kind": "KIND_CPU"}],
            ),
        ),
        GOLDEN_ONNXRUNTIME_TWO_GROUPS_BATCHING_OFF,
    ),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_render_matches_golden(case: str) -> None:
    config, golden = GOLDEN_CASES[case]
    assert render_config_pbtxt(config) == golden


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_rendered_config_is_a_valid_triton_model_config(case: str) -> None:
    served, _ = GOLDEN_CASES[case]
    parsed = text_format.Parse(render_config_pbtxt(served), model_config_pb2.ModelConfig())
    assert parsed.name == served.name
    assert list(parsed.version_policy.specific.versions) == [served.version]
    assert parsed.max_batch_size == served.signature.max_batch_size
    assert [(t.name, list(t.dims)) for t in parsed.input] == [(t.name, t.dims) for t in served.signature.inputs]
    assert [model_config_pb2.DataType.Name(t.data_type) for t in parsed.output] == [
        f"TYPE_{t.data_type}" for t in served.signature.outputs
    ]
    kinds = [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in parsed.instance_group]
    expected = [g.kind or instance_kind_for(served.gpus) for g in served.triton.instance_groups or []]
    assert kinds == (expected or [instance_kind_for(served.gpus)])
    assert parsed.HasField("dynamic_batching") == served.triton.dynamic_batching.enabled
    if served.triton.backend == "pytorch":
        assert (parsed.platform, parsed.backend) == ("pytorch_libtorch", "")
    else:
        assert (parsed.platform, parsed.backend) == ("", served.triton.backend)


@pytest.mark.parametrize("name", ["onnx::Gemm_3", "input.1", "encoder/layer.0/out", "INPUT__0"])
def test_tensor_names_the_api_accepts_survive_the_round_trip(name: str) -> None:
    served = ServedModel("odd", 1, signature([tensor(name, "FP32", [2])], [tensor("y", "FP32", [2])]), triton())
    parsed = text_format.Parse(render_config_pbtxt(served), model_config_pb2.ModelConfig())
    assert [t.name for t in parsed.input] == [name]


@pytest.mark.parametrize(
    ("backend", "loaded", "artifact"),
    [("onnxruntime", "model.onnx", "model.onnx"), ("python", "model.py", "model.onnx"), ("pytorch", "model.pt", "model.pt")],
)
def test_model_filenames(backend: str, loaded: str, artifact: str) -> None:
    assert default_model_filename(backend) == loaded
    assert artifact_filename(backend) == artifact


@pytest.mark.parametrize(("gpus", "kind"), [(0, "KIND_CPU"), (1, "KIND_GPU"), (4, "KIND_GPU")])
def test_instance_kind_follows_gpu_request(gpus: int, kind: str) -> None:
    assert instance_kind_for(gpus) == kind


def _served(name: str = "digits", version: int = 1, max_batch_size: int = 8, **triton_wire) -> ServedModel:
    return ServedModel(name, version, signature(DIGITS_INPUT, DIGITS_OUTPUT, max_batch_size), triton(**triton_wire))


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: _served(name="../etc"), "name"),
        (lambda: _served(name=".."), "name"),
        (lambda: _served(name=""), "name"),
        (lambda: _served(version=0), "version"),
        (lambda: _served(version=True), "version"),
        (lambda: _served(max_batch_size=0, dynamicBatching={"enabled": True}), "triton.dynamicBatching.enabled"),
        (
            lambda: _served(dynamicBatching={"enabled": True, "preferredBatchSizes": [4, 16]}),
            "triton.dynamicBatching.preferredBatchSizes",
        ),
        (lambda: artifact_filename("tensorflow"), "backend"),
    ],
)
def test_settings_no_single_object_can_check_name_the_field(build, field: str) -> None:
    with pytest.raises(ServingConfigError) as caught:
        build()
    assert caught.value.field_name == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("model", "wire", "field"),
    [
        (TensorSpec, {"name": 'in"put', "dataType": "FP32", "dims": [1]}, "name"),
        (TensorSpec, {"name": "../x", "dataType": "FP32", "dims": [1]}, "name"),
        (TensorSpec, {"name": "x", "dataType": "FP31", "dims": [1]}, "dataType"),
        (TensorSpec, {"name": "x", "dataType": "FP32", "dims": []}, "dims"),
        (TensorSpec, {"name": "x", "dataType": "FP32", "dims": [0]}, "dims"),
        (TensorSpec, {"name": "x", "dataType": "FP32", "dims": [-2]}, "dims"),
        (Signature, {"inputs": [], "outputs": DIGITS_OUTPUT}, "inputs"),
        (Signature, {"inputs": DIGITS_INPUT * 2, "outputs": DIGITS_OUTPUT}, "inputs"),
        (Signature, {"inputs": DIGITS_INPUT, "outputs": DIGITS_OUTPUT, "maxBatchSize": -1}, "maxBatchSize"),
        (TritonSpec, {"backend": "tensorflow"}, "backend"),
        (TritonSpec, {"instanceGroups": [{"count": 0}]}, "instanceGroups"),
        (TritonSpec, {"instanceGroups": [{"kind": "KIND_TPU"}]}, "instanceGroups"),
        (TritonSpec, {"dynamicBatching": {"preferredBatchSizes": [0]}}, "dynamicBatching"),
        (TritonSpec, {"dynamicBatching": {"maxQueueDelayMicroseconds": -5}}, "dynamicBatching"),
    ],
)
def test_what_the_api_models_refuse_never_reaches_the_renderer(model, wire, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(wire)
    assert caught.value.errors()[0]["loc"][0] == field


def _write_mlp(path: Path, rng: np.random.Generator) -> None:
    """A small softmax classifier, [batch, 4] -> probabilities [batch, 3] and label [batch, 1]."""
    weights = rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]),
        ],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


MLP_CONFIG = ServedModel(
    "mlp",
    2,
    signature([tensor("input", "FP32", [4])], [tensor("probabilities", "FP32", [3]), tensor("label", "INT64", [1])], 16),
    triton(backend="python", dynamicBatching={"enabled": True}),
)


def test_layout_writes_triton_repository(tmp_path: Path) -> None:
    artifact = tmp_path / "downloaded.onnx"
    artifact.write_bytes(b"onnx bytes")
    repo = tmp_path / "repo"
    model_dir = layout_model_repository(repo, "mlp", 2, "python", artifact, "config text")
    assert model_dir == repo / "mlp"
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == [
        "mlp", "mlp/2", "mlp/2/model.onnx", "mlp/2/model.py", "mlp/config.pbtxt"
    ]
    assert (model_dir / "2" / "model.onnx").read_bytes() == b"onnx bytes"
    assert (model_dir / "2" / "model.py").read_text() == python_backend_model_source()
    assert (model_dir / "config.pbtxt").read_text() == "config text"
    assert artifact.exists()


def test_layout_replaces_an_existing_model_and_can_move(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    (repo / "mlp" / "1" / "model.pt").write_bytes(b"old")
    artifact = tmp_path / "new.onnx"
    artifact.write_bytes(b"new")
    layout_model_repository(repo, "mlp", 2, "onnxruntime", artifact, "cfg", place="move")
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == [
        "mlp", "mlp/2", "mlp/2/model.onnx", "mlp/config.pbtxt"
    ]
    assert not artifact.exists()


def test_layout_leaves_nothing_when_the_artifact_is_missing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(FileNotFoundError):
        layout_model_repository(repo, "mlp", 1, "pytorch", tmp_path / "absent.pt", "cfg")
    assert list(repo.iterdir()) == []


class _FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _FakeResponse:
    def __init__(self, output_tensors, error=None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class _FakeRequest:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = inputs


def _fake_pb_utils() -> types.ModuleType:
    """The parts of Triton's triton_python_backend_utils that model.py uses."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _FakeTensor
    module.InferenceResponse = _FakeResponse
    module.TritonError = lambda message: message
    module.TritonModelException = RuntimeError
    module.get_input_tensor_by_name = lambda request, name: (
        _FakeTensor(name, request.inputs[name]) if name in request.inputs else None
    )
    module.triton_string_to_numpy = lambda name: {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}[name]
    return module


@pytest.fixture
def python_backend_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """model.py from the package, loaded as Triton's python backend would, with a real ONNX file."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    artifact = tmp_path / "model.onnx"
    _write_mlp(artifact, np.random.default_rng(7))
    model_dir = layout_model_repository(tmp_path / "repo", "mlp", 2, "python", artifact, render_config_pbtxt(MLP_CONFIG))
    spec = importlib.util.spec_from_file_location("triton_model", model_dir / "2" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config_json = {
        "max_batch_size": MLP_CONFIG.signature.max_batch_size,
        "input": [{"name": "input", "data_type": "TYPE_FP32"}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32"}, {"name": "label", "data_type": "TYPE_INT64"}],
    }
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config_json),
            "model_repository": str(model_dir),
            "model_version": "2",
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
    )
    import onnxruntime

    reference = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    return model, reference, config_json, module


def test_python_backend_batches_requests_and_splits_answers(python_backend_model) -> None:
    model, reference, _, _ = python_backend_model
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 3, 2)]
    responses = model.execute([_FakeRequest(input=b) for b in batches])
    assert [r.error for r in responses] == [None, None, None]
    for batch, response in zip(batches, responses, strict=True):
        probabilities, label = reference.run(["probabilities", "label"], {"input": batch})
        np.testing.assert_allclose(response.outputs["probabilities"], probabilities, rtol=1e-6)
        assert np.array_equal(response.outputs["label"], label)
        assert response.outputs["label"].dtype == np.int64


def test_python_backend_answers_bad_requests_with_errors(python_backend_model) -> None:
    model, reference, _, _ = python_backend_model
    good = np.ones((2, 4), np.float32)
    responses = model.execute(
        [_FakeRequest(wrong_name=good), _FakeRequest(input=good), _FakeRequest(input=np.ones((1, 5), np.float32))]
    )
    assert "input tensor 'input' is missing" in responses[0].error
    assert responses[1].error is None
    np.testing.assert_allclose(responses[1].outputs["probabilities"], reference.run(["probabilities"], {"input": good})[0])
    assert responses[2].error.startswith("inference failed")


def test_python_backend_raises_when_every_request_of_a_call_fails(python_backend_model) -> None:
    model, _, _, _ = python_backend_model
    with pytest.raises(RuntimeError, match="inference failed"):
        model.execute([_FakeRequest(input=np.ones((1, 5), np.float32)), _FakeRequest(input=np.ones((2, 5), np.float32))])
    with pytest.raises(RuntimeError, match="is missing"):
        model.execute([_FakeRequest(wrong_name=np.ones((1, 4), np.float32))])


def test_python_backend_refuses_to_split_outputs_without_a_batch_dimension(python_backend_model) -> None:
    model, _, _, _ = python_backend_model

    class CollapsingSession:
        """Like a graph that reduces over the batch: rows cannot be handed back per request."""

        def run(self, names, feeds):
            return [np.zeros(3, np.float32), np.zeros(1, np.int64)]

    model._session = CollapsingSession()
    # Every request of the call fails: execute raises, so that Triton counts them as failures.
    with pytest.raises(RuntimeError, match="batch dimension"):
        model.execute([_FakeRequest(input=np.ones((2, 4), np.float32)), _FakeRequest(input=np.ones((1, 4), np.float32))])


def test_python_backend_rejects_a_config_that_does_not_match_the_file(python_backend_model) -> None:
    model, _, config_json, module = python_backend_model
    config_json = dict(config_json, output=[{"name": "scores", "data_type": "TYPE_FP32"}])
    args = {
        "model_config": json.dumps(config_json),
        "model_repository": str(Path(module.__file__).parent.parent),
        "model_version": "2",
        "model_instance_kind": "CPU",
        "model_instance_device_id": "0",
    }
    with pytest.raises(RuntimeError, match="does not have: \\['scores'\\]"):
        module.TritonPythonModel().initialize(args)

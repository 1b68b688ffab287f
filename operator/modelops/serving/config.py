"""Pure rendering of a Triton model configuration (config.pbtxt) from the API models.

The fields are the API's (Signature, TritonSpec, their tensors, batcher and instance groups),
which pydantic and the apiserver have already validated. What no single object can check,
such as batching settings of a ModelDeployment against its Model's maxBatchSize, raises
ServingConfigError with the field's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from modelops.api.deployment import Backend, InstanceKind, ModelDeploymentSpec, TritonSpec
from modelops.api.model import ModelSpec, Signature, TensorSpec
from modelops.api.version import ArtifactFormat
from modelops.contract.formats import ARTIFACT_FILES

# A model name becomes a directory and a URL path segment, so it is kept plain.
_MODEL_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")

# The artifact format each backend serves; its file name comes from the one format table.
# The python backend runs the same ONNX file as the onnxruntime backend, next to its model.py.
_SERVED_FORMAT: Final = {Backend.ONNXRUNTIME: ArtifactFormat.ONNX, Backend.PYTHON: ArtifactFormat.ONNX, Backend.PYTORCH: ArtifactFormat.TORCHSCRIPT}
PYTHON_BACKEND_FILE: Final = "model.py"


class ServingConfigError(ValueError):
    """A serving setting is invalid; the message starts with the field's name."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field_name = field_name
        self.problem = problem


def validate_model_name(name: str) -> str:
    if name in (".", "..") or not _MODEL_NAME.match(name):
        raise ServingConfigError(
            "name",
            f"{name!r} must start with a letter or digit and contain only letters, digits, "
            "'_', '.' or '-' (at most 128 characters)",
        )
    return name


def validate_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ServingConfigError("version", f"{version!r} must be a positive integer")
    return version


def backend_of(backend: str) -> Backend:
    try:
        return Backend(backend)
    except ValueError:
        expected = ", ".join(Backend)
        raise ServingConfigError("backend", f"{backend!r} is not supported; expected one of {expected}") from None


def default_model_filename(backend: str) -> str:
    """The file Triton loads from a version folder for this backend."""
    kind = backend_of(backend)
    return PYTHON_BACKEND_FILE if kind == Backend.PYTHON else artifact_filename(kind)


def artifact_filename(backend: str) -> str:
    """The file name the served artifact gets in a version folder."""
    return ARTIFACT_FILES[_SERVED_FORMAT[backend_of(backend)]]


def instance_kind_for(gpus: int) -> InstanceKind:
    """KIND_GPU when the serving pods request GPUs, else KIND_CPU."""
    return InstanceKind.GPU if gpus > 0 else InstanceKind.CPU


@dataclass(frozen=True)
class ServedModel:
    """Everything config.pbtxt says about one served model version."""

    name: str
    version: int
    signature: Signature
    triton: TritonSpec
    gpus: int = 0

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        validate_version(self.version)
        max_batch = self.signature.max_batch_size
        batching = self.triton.dynamic_batching
        if batching.enabled and max_batch == 0:
            raise ServingConfigError(
                "triton.dynamicBatching.enabled", "dynamic batching needs the Model's signature.maxBatchSize > 0"
            )
        too_big = [s for s in batching.preferred_batch_sizes or () if s > max_batch]
        if batching.enabled and too_big:
            raise ServingConfigError(
                "triton.dynamicBatching.preferredBatchSizes",
                f"{too_big} exceed the Model's signature.maxBatchSize {max_batch}",
            )


def served_model(model_name: str, model: ModelSpec, spec: ModelDeploymentSpec, version: int) -> ServedModel:
    """The served model of a ModelDeployment at one version of its Model."""
    return ServedModel(model_name, version, model.signature, spec.triton, spec.scheduling.gpus or 0)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _int_list(values: list[int]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _tensor_block(key: str, tensors: list[TensorSpec]) -> list[str]:
    lines = [f"{key} ["]
    for index, tensor in enumerate(tensors):
        lines += [
            "  {",
            f"    name: {_quote(tensor.name)}",
            f"    data_type: TYPE_{tensor.data_type}",
            f"    dims: {_int_list(tensor.dims)}",
            "  }" + ("," if index < len(tensors) - 1 else ""),
        ]
    lines.append("]")
    return lines


def render_config_pbtxt(served: ServedModel) -> str:
    """Render Triton's model configuration in protobuf text format."""
    signature, triton = served.signature, served.triton
    lines = [f"name: {_quote(served.name)}"]
    if triton.backend == Backend.PYTORCH:
        # TorchScript is served by the libtorch backend, which Triton selects by platform.
        lines.append('platform: "pytorch_libtorch"')
    else:
        lines.append(f"backend: {_quote(triton.backend)}")
    lines.append(f"max_batch_size: {signature.max_batch_size}")
    # Serve exactly the version the operator resolved, even if other folders exist.
    lines += [
        "version_policy {",
        "  specific {",
        f"    versions: [{served.version}]",
        "  }",
        "}",
    ]
    lines += _tensor_block("input", signature.inputs)
    lines += _tensor_block("output", signature.outputs)
    default_kind = instance_kind_for(served.gpus)
    groups = [(g.count, g.kind or default_kind) for g in triton.instance_groups or []] or [(1, default_kind)]
    lines.append("instance_group [")
    for index, (count, kind) in enumerate(groups):
        lines += [
            "  {",
            f"    count: {count}",
            f"    kind: {kind}",
            "  }" + ("," if index < len(groups) - 1 else ""),
        ]
    lines.append("]")
    batching = triton.dynamic_batching
    if batching.enabled:
        lines.append("dynamic_batching {")
        if batching.preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: {_int_list(batching.preferred_batch_sizes)}")
        lines.append(f"  max_queue_delay_microseconds: {batching.max_queue_delay_microseconds}")
        lines.append("}")
    return "\n".join(lines) + "\n"

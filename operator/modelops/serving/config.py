"""Pure rendering of a Triton model configuration (config.pbtxt).

The types here are the serving side's own view of a model: the operator maps its custom
resources onto them. Construction validates every field and raises ServingConfigError with
the field's name, so bad input never reaches Triton as an unreadable config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BACKENDS = ("onnxruntime", "python", "pytorch")
INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU")

# Triton's data type names (model_config.proto DataType without the TYPE_ prefix).
TRITON_DATA_TYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "STRING",
)

# numpy/ONNX spellings that people write in manifests, mapped to Triton's names.
_DATA_TYPE_ALIASES = {
    "BOOL": "BOOL",
    "FLOAT16": "FP16",
    "HALF": "FP16",
    "FLOAT32": "FP32",
    "FLOAT": "FP32",
    "FLOAT64": "FP64",
    "DOUBLE": "FP64",
    "BFLOAT16": "BF16",
    "BYTES": "STRING",
}

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ServingConfigError(ValueError):
    """A serving setting is invalid; the message starts with the field's name."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field_name = field_name
        self.problem = problem


def triton_data_type(data_type: str) -> str:
    """Return Triton's name (FP32, INT64, ...) for a Triton, numpy or ONNX spelling."""
    name = data_type.strip().upper()
    name = name.removeprefix("TYPE_")
    name = _DATA_TYPE_ALIASES.get(name, name)
    if name not in TRITON_DATA_TYPES:
        raise ServingConfigError(
            "data_type",
            f"{data_type!r} is not a Triton data type; expected one of {', '.join(TRITON_DATA_TYPES)}",
        )
    return name


def validate_model_name(name: str) -> str:
    """Model names become a directory and a URL path segment, so they are kept plain."""
    if not _MODEL_NAME.match(name):
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


def validate_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ServingConfigError("backend", f"{backend!r} is not supported; expected one of {', '.join(BACKENDS)}")
    return backend


def default_model_filename(backend: str) -> str:
    """The file Triton loads from a version folder for this backend."""
    return {"onnxruntime": "model.onnx", "python": "model.py", "pytorch": "model.pt"}[validate_backend(backend)]


def artifact_filename(backend: str) -> str:
    """The file name the served artifact gets in a version folder.

    The python backend runs the same ONNX file as the onnxruntime backend, next to its model.py.
    """
    return {"onnxruntime": "model.onnx", "python": "model.onnx", "pytorch": "model.pt"}[validate_backend(backend)]


def instance_kind_for(gpus: int) -> str:
    """KIND_GPU when the serving pods request GPUs, else KIND_CPU."""
    return "KIND_GPU" if gpus > 0 else "KIND_CPU"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor. dims exclude the batch dimension when batching is on."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name or any(ch in self.name for ch in "\n\r\t\0"):
            raise ServingConfigError("name", f"tensor name {self.name!r} must be non-empty and printable")
        try:
            object.__setattr__(self, "data_type", triton_data_type(self.data_type))
        except ServingConfigError as err:
            raise ServingConfigError(f"{self.name}.data_type", err.problem) from None
        dims = tuple(self.dims)
        if not dims:
            raise ServingConfigError(f"{self.name}.dims", "at least one dimension is required")
        for dim in dims:
            if isinstance(dim, bool) or not isinstance(dim, int) or (dim < 1 and dim != -1):
                raise ServingConfigError(f"{self.name}.dims", f"{dim!r} must be a positive integer or -1")
        object.__setattr__(self, "dims", dims)


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's dynamic batcher: groups concurrent requests into one model execution."""

    enabled: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0

    def __post_init__(self) -> None:
        sizes = tuple(self.preferred_batch_sizes)
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ServingConfigError("dynamic_batching.preferred_batch_sizes", f"{size!r} must be a positive integer")
        delay = self.max_queue_delay_microseconds
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise ServingConfigError("dynamic_batching.max_queue_delay_microseconds", f"{delay!r} must be an integer >= 0")
        object.__setattr__(self, "preferred_batch_sizes", sizes)


@dataclass(frozen=True)
class InstanceGroup:
    """How many copies of the model run, and on which kind of device."""

    count: int = 1
    kind: str = "KIND_CPU"

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ServingConfigError("instance_group.count", f"{self.count!r} must be a positive integer")
        if self.kind not in INSTANCE_KINDS:
            raise ServingConfigError("instance_group.kind", f"{self.kind!r} must be one of {', '.join(INSTANCE_KINDS)}")


@dataclass(frozen=True)
class TritonModelConfig:
    """Everything config.pbtxt says about one served model version."""

    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: str = "onnxruntime"
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching = field(default_factory=DynamicBatching)
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        validate_version(self.version)
        validate_backend(self.backend)
        mbs = self.max_batch_size
        if isinstance(mbs, bool) or not isinstance(mbs, int) or mbs < 0:
            raise ServingConfigError("max_batch_size", f"{mbs!r} must be an integer >= 0")
        inputs, outputs = tuple(self.inputs), tuple(self.outputs)
        if not inputs:
            raise ServingConfigError("inputs", "at least one input tensor is required")
        if not outputs:
            raise ServingConfigError("outputs", "at least one output tensor is required")
        for field_name, tensors in (("inputs", inputs), ("outputs", outputs)):
            names = [t.name for t in tensors]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ServingConfigError(field_name, f"duplicate tensor names {duplicates}")
        batching = self.dynamic_batching
        if batching.enabled and mbs == 0:
            raise ServingConfigError("dynamic_batching.enabled", "dynamic batching needs max_batch_size > 0")
        too_big = [s for s in batching.preferred_batch_sizes if s > mbs]
        if batching.enabled and too_big:
            raise ServingConfigError(
                "dynamic_batching.preferred_batch_sizes", f"{too_big} exceed max_batch_size {mbs}"
            )
        groups = tuple(self.instance_groups)
        if not groups:
            raise ServingConfigError("instance_groups", "at least one instance group is required")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "instance_groups", groups)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _int_list(values: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _tensor_block(key: str, tensors: tuple[TensorSpec, ...]) -> list[str]:
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


def render_config_pbtxt(config: TritonModelConfig) -> str:
    """Render Triton's model configuration in protobuf text format."""
    lines = [f"name: {_quote(config.name)}"]
    if config.backend == "pytorch":
        # TorchScript is served by the libtorch backend, which Triton selects by platform.
        lines.append('platform: "pytorch_libtorch"')
    else:
        lines.append(f"backend: {_quote(config.backend)}")
    lines.append(f"max_batch_size: {config.max_batch_size}")
    # Serve exactly the version the operator resolved, even if other folders exist.
    lines += [
        "version_policy {",
        "  specific {",
        f"    versions: [{config.version}]",
        "  }",
        "}",
    ]
    lines += _tensor_block("input", config.inputs)
    lines += _tensor_block("output", config.outputs)
    lines.append("instance_group [")
    for index, group in enumerate(config.instance_groups):
        lines += [
            "  {",
            f"    count: {group.count}",
            f"    kind: {group.kind}",
            "  }" + ("," if index < len(config.instance_groups) - 1 else ""),
        ]
    lines.append("]")
    batching = config.dynamic_batching
    if batching.enabled:
        lines.append("dynamic_batching {")
        if batching.preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: {_int_list(batching.preferred_batch_sizes)}")
        lines.append(f"  max_queue_delay_microseconds: {batching.max_queue_delay_microseconds}")
        lines.append("}")
    return "\n".join(lines) + "\n"

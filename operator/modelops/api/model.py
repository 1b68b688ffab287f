"""The Model kind: the identity of a model, where its artifacts live, and version defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelops.api.types import (
    BUCKET_RULE,
    URI_MAX,
    ApiModel,
    Conditions,
    LocalObjectReference,
    S3Uri,
    Toleration,
    cel,
    nested,
    validations,
)

Quantization = Literal["none", "fp16", "bf16", "int8-weight-only", "int8-dynamic", "auto"]
# What `quantization: auto` optimises among the candidates that pass the accuracy gate.
Objective = Literal["size", "latency"]
PruningMethod = Literal["none", "unstructured", "structured"]
TargetFormat = Literal["onnx", "torchscript"]
Metric = Literal["top1-accuracy", "top1-agreement", "cosine-similarity", "max-abs-error"]
DataType = Literal[
    "BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16", "STRING"
]
VERSION_PHASES = ("Pending", "Verifying", "Compressing", "Evaluating", "Ready", "Rejected", "Failed")


class StorageSpec(ApiModel):
    """S3-compatible object storage that holds the model's artifacts."""

    endpoint: str | None = Field(
        None,
        max_length=URI_MAX,
        description="Endpoint URL of the S3-compatible service, for example https://minio.storage:9000. Leave empty for AWS S3.",
        json_schema_extra=validations(
            cel("self.matches('^https?://[^ /]+(/.*)?$')", "must be an http:// or https:// URL")
        ),
    )
    bucket: str = Field(
        max_length=63,
        pattern=BUCKET_RULE,
        description="Bucket where compressed artifacts are written (under modelops-cache/).",
    )
    region: str = Field("us-east-1", max_length=64, description="Region of the bucket.")
    credentials_secret: LocalObjectReference | None = Field(
        None,
        description="Secret with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Leave empty to use the pod's own identity.",
    )
    verify_tls: bool = Field(
        True, alias="verifyTLS", description="Verify the endpoint's TLS certificate. Turn off only for test setups."
    )


class TensorSpec(ApiModel):
    """One input or output tensor of the model."""

    name: str = Field(min_length=1, max_length=256, description="Tensor name, as in the artifact.")
    data_type: DataType = Field(description="Element type in Triton's naming, for example FP32.")
    dims: list[int] = Field(
        min_length=1,
        max_length=16,
        description="Shape without the batch dimension when maxBatchSize > 0; -1 marks a variable size.",
        json_schema_extra=validations(
            cel("self.all(d, d == -1 || d >= 1)", "every dimension must be -1 (variable) or 1 or greater")
        ),
    )


class Signature(ApiModel):
    """The tensor signature Triton needs to serve the model."""

    inputs: list[TensorSpec] = Field(min_length=1, max_length=64, description="Input tensors.")
    outputs: list[TensorSpec] = Field(min_length=1, max_length=64, description="Output tensors.")
    max_batch_size: int = Field(
        0,
        ge=0,
        le=4096,
        description="Largest batch Triton forms. Above 0, the first dimension of every tensor is the batch and dims leave it out.",
    )


class Pruning(ApiModel):
    """Weight pruning applied before quantization."""

    method: PruningMethod | None = Field(None, description="none, unstructured (single weights) or structured (whole channels).")
    amount: float | None = Field(None, ge=0.0, le=0.95, description="Fraction of weights to prune, 0 to 0.95.")


class Compression(ApiModel):
    """The compression recipe. Unset fields come from the Model's versionDefaults."""

    quantization: Quantization | None = Field(None, description="Quantization of the weights (and activations for int8-dynamic). auto tries int8-dynamic, int8-weight-only, int4-weight-only and fp16 against the accuracy gate and keeps the best by objective.")
    pruning: Pruning | None = Field(None, description="Weight pruning.")
    target_format: TargetFormat | None = Field(None, description="Format of the compressed artifact; ONNX serves on every Triton backend we support.")
    objective: Objective | None = Field(None, description="For quantization auto: size keeps the smallest candidate that passes the gate, latency the fastest (measured in onnxruntime on the Job's device). Default size.")


class Evaluation(ApiModel):
    """The accuracy gate: the compressed model is compared with its parent on a dataset."""

    dataset_uri: S3Uri = Field(description="S3 URI of an .npz file with one array per model input, named as the input (a single-input model may use the name `inputs`), and, for top1-accuracy, `labels`.")
    metric: Metric = Field(
        description="top1-accuracy (threshold: largest allowed drop in percentage points), top1-agreement and cosine-similarity (threshold: minimum), max-abs-error (threshold: maximum)."
    )
    threshold: float = Field(description="Pass mark for the metric; see metric for its meaning.")


class Scheduling(ApiModel):
    """Where pods run. Unset fields come from the defaults."""

    gpus: int | None = Field(None, ge=0, le=16, description="nvidia.com/gpu to request; 0 runs on the CPU.")
    node_selector: dict[str, str] | None = Field(None, description="Node labels the pods require.")
    tolerations: list[Toleration] | None = Field(
        None,
        description="Tolerations for node taints. With gpus > 0 the nvidia.com/gpu taint is tolerated automatically.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )


class PruningDefaults(Pruning):
    """Default weight pruning for the Model's versions."""

    method: PruningMethod = Field("none", description="none, unstructured (single weights) or structured (whole channels).")
    amount: float = Field(0.0, ge=0.0, le=0.95, description="Fraction of weights to prune, 0 to 0.95.")


class CompressionDefaults(Compression):
    """Default compression recipe for the Model's versions."""

    quantization: Quantization = Field("int8-weight-only", description="Quantization of the weights (and activations for int8-dynamic).")
    pruning: PruningDefaults = nested(PruningDefaults, "Weight pruning.")
    target_format: TargetFormat = Field("onnx", description="Format of the compressed artifact; ONNX serves on every Triton backend we support.")


class SchedulingDefaults(Scheduling):
    """Default scheduling of the compression Jobs."""

    gpus: int = Field(1, ge=0, le=16, description="nvidia.com/gpu to request; 0 runs on the CPU.")


class VersionDefaults(ApiModel):
    """Defaults for every ModelVersion of this Model; a version's own fields win."""

    compression: CompressionDefaults = nested(CompressionDefaults, "Default compression recipe.")
    evaluation: Evaluation | None = Field(None, description="Default accuracy gate; leave empty for none.")
    scheduling: SchedulingDefaults = nested(SchedulingDefaults, "Default scheduling of compression Jobs.")


class ModelSpec(ApiModel):
    """A model: where its artifacts live, its tensor signature and defaults for its versions."""

    description: str | None = Field(None, max_length=1024, description="What the model does, for people.")
    storage: StorageSpec = Field(description="Object storage that holds the artifacts.")
    signature: Signature = Field(description="Tensor signature for serving.")
    version_defaults: VersionDefaults = nested(VersionDefaults, "Defaults for the model's versions.")


class VersionCounts(ApiModel):
    """How many versions are in each phase."""

    total: int = Field(0, description="All versions.")
    pending: int = Field(0, description="Versions waiting for a prerequisite.")
    verifying: int = Field(0, description="Versions whose artifact is being checked.")
    compressing: int = Field(0, description="Versions being compressed.")
    evaluating: int = Field(0, description="Versions being evaluated.")
    ready: int = Field(0, description="Versions ready to serve.")
    rejected: int = Field(0, description="Versions rejected by the accuracy gate.")
    failed: int = Field(0, description="Versions that failed.")


class ModelStatus(ApiModel):
    """Observed state of a Model."""

    observed_generation: int | None = Field(None, description="The metadata.generation this status reflects.")
    latest_ready_version: int | None = Field(None, description="Highest version that is Ready.")
    versions: VersionCounts | None = Field(None, description="Versions by phase.")
    conditions: Conditions | None = Field(None, description="Ready: at least one version can be served and the credentials Secret exists.")

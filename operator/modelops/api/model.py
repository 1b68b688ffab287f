"""The Model kind: the identity of a model, where its artifacts live, and version defaults."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from modelops.api.trust import TrustPolicy
from modelops.api.types import (
    REGION_RULE,
    ApiModel,
    BucketName,
    Conditions,
    ConfigMapOrSecretKey,
    EndpointUrl,
    LabelValue,
    LocalObjectReference,
    S3Uri,
    Sha256,
    TensorName,
    Toleration,
    cel,
    nested,
    validations,
)


class Quantization(StrEnum):
    NONE = "none"
    FP16 = "fp16"
    FP16_COMPUTE = "fp16-compute"
    BF16 = "bf16"
    INT8_WEIGHT_ONLY = "int8-weight-only"
    INT8_DYNAMIC = "int8-dynamic"
    INT4_WEIGHT_ONLY = "int4-weight-only"
    # int4 everywhere except the layers most sensitive on the calibration set, kept at int8 until
    # the gate passes (docs/compression.md).
    INT4_MIXED = "int4-mixed"
    # Tries the candidates against the gate and keeps the best by objective (docs/compression.md).
    AUTO = "auto"


class Objective(StrEnum):
    """What `quantization: auto` optimises among the candidates that pass the accuracy gate."""

    SIZE = "size"
    LATENCY = "latency"


class Int4Method(StrEnum):
    """How int4 weights are rounded."""

    RTN = "rtn"  # round to nearest, block by block
    GPTQ = "gptq"  # rounds column by column, compensating each error with the calibration set's activations


# Block sizes of int4-weight-only that onnxruntime's MatMulNBits kernels take.
BlockSize = Literal[16, 32, 64, 128, 256]


class PruningMethod(StrEnum):
    NONE = "none"
    UNSTRUCTURED = "unstructured"
    STRUCTURED = "structured"


class TargetFormat(StrEnum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"


class Metric(StrEnum):
    TOP1_ACCURACY = "top1-accuracy"
    TOP1_AGREEMENT = "top1-agreement"
    COSINE_SIMILARITY = "cosine-similarity"
    MAX_ABS_ERROR = "max-abs-error"


class DataType(StrEnum):
    """Element types in Triton's naming (model_config.proto without TYPE_)."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BF16 = "BF16"
    STRING = "STRING"


class ModelReason(StrEnum):
    """Reasons of a Model's Ready condition."""

    VERSION_READY = "VersionReady"
    NO_READY_VERSION = "NoReadyVersion"
    CREDENTIALS_NOT_FOUND = "CredentialsNotFound"
    CA_BUNDLE_NOT_FOUND = "CABundleNotFound"
    BUCKET_NOT_FOUND = "BucketNotFound"
    ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"
    INSECURE_ENDPOINT = "InsecureEndpoint"


class TransportReason(StrEnum):
    """Reasons of a Model's StorageTransport condition: how its storage connection is protected."""

    TLS_VERIFIED = "TLSVerified"
    VERIFICATION_DISABLED = "TLSVerificationDisabled"
    PLAINTEXT = "PlaintextEndpoint"
    INSECURE_ENDPOINT = "InsecureEndpoint"
    TLS_VERIFICATION_FAILED = "TLSVerificationFailed"
    ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"


# Allowed thresholds per metric, inclusive; None is unbounded. top1-accuracy's threshold is
# the largest allowed drop in percentage points.
THRESHOLD_RANGES: dict[Metric, tuple[float, float | None]] = {
    Metric.TOP1_ACCURACY: (0.0, 100.0),
    Metric.TOP1_AGREEMENT: (0.0, 1.0),
    Metric.COSINE_SIMILARITY: (0.0, 1.0),
    Metric.MAX_ABS_ERROR: (0.0, None),
}
# A pruning amount is a fraction strictly between these when the method is not none.
PRUNING_AMOUNT_RANGE = (0.0, 1.0)
# Dimensions are at least 1; -1 marks a variable size.
VARIABLE_DIM = -1
DIM_MAX = 2**31 - 1
MAX_BATCH_SIZE_MAX = 1 << 16


def _range_text(low: float, high: float | None) -> str:
    return f"between {low:g} and {high:g}" if high is not None else f"{low:g} or greater"


def _threshold_rules() -> list[dict[str, str]]:
    rules = []
    for metric, (low, high) in THRESHOLD_RANGES.items():
        bound = f"self.threshold >= {low!r}" + (f" && self.threshold <= {high!r}" if high is not None else "")
        rules.append(
            cel(
                f"self.metric != '{metric}' || ({bound})",
                f"threshold for {metric} must be {_range_text(low, high)}",
                fieldPath=".threshold",
            )
        )
    return rules


def threshold_problem(metric: Metric, threshold: float) -> str | None:
    """What is wrong with a threshold for a metric, in THRESHOLD_RANGES' words; None if fine."""
    low, high = THRESHOLD_RANGES[metric]
    if not math.isfinite(threshold) or threshold < low or (high is not None and threshold > high):
        return f"threshold for {metric} must be {_range_text(low, high)}"
    return None


_LOW, _HIGH = PRUNING_AMOUNT_RANGE
_AMOUNT_TEXT = f"greater than {_LOW:g} and less than {_HIGH:g}"


def pruning_problem(method: PruningMethod | None, amount: float | None) -> str | None:
    """The pruning rule in Python: an amount in range exactly when a method prunes."""
    if method is None:  # the method, and so the meaning of amount, comes from the defaults
        return None if amount is None or _LOW < amount < _HIGH else f"amount must be {_AMOUNT_TEXT}"
    if method == PruningMethod.NONE:
        return None if amount in (None, 0.0) else "amount must be 0 or unset when method is none"
    if amount is None or not _LOW < amount < _HIGH:
        return f"amount must be {_AMOUNT_TEXT} when method is {method}"
    return None


def _pruning_rules() -> list[dict[str, str]]:
    """pruning_problem in CEL. Where the apiserver fills defaults, has() is always true."""
    amount = "(has(self.amount) ? self.amount : 0.0)"
    in_range = f"({amount} > {_LOW!r} && {amount} < {_HIGH!r})"
    return [
        cel(
            f"has(self.method) ? (self.method == '{PruningMethod.NONE}' || {in_range}) : (!has(self.amount) || {in_range})",
            f"amount must be {_AMOUNT_TEXT} when method is not none",
            fieldPath=".amount",
        ),
        cel(
            f"!has(self.method) || self.method != '{PruningMethod.NONE}' || {amount} == 0.0",
            "amount must be 0 or unset when method is none",
            fieldPath=".amount",
        ),
    ]


def _dim(value: int) -> int:
    if value != VARIABLE_DIM and not 1 <= value <= DIM_MAX:
        raise ValueError(f"every dimension must be {VARIABLE_DIM} (variable) or 1 to {DIM_MAX}")
    return value


Dim = Annotated[int, AfterValidator(_dim)]


# Where a pod finds the CA bundle, and the key it is read from by default (as in kube-root-ca.crt).
CA_BUNDLE_KEY = "ca.crt"


class CABundleRef(ConfigMapOrSecretKey):
    """A PEM bundle of the CAs that sign the storage endpoint's certificate, from a ConfigMap or a Secret."""

    config_map_ref: LocalObjectReference | None = Field(None, description="ConfigMap in the Model's namespace that holds the bundle.")
    secret_ref: LocalObjectReference | None = Field(None, description="Secret in the Model's namespace that holds the bundle.")
    key: str = Field(
        CA_BUNDLE_KEY, min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key of the PEM bundle in the object."
    )


def _storage_rules() -> list[dict[str, str]]:
    return [
        cel(
            "!has(self.endpoint) || !self.endpoint.startsWith('http://') || (has(self.insecure) && self.insecure)",
            "an http:// endpoint sends credentials and artifacts in plain text: use https://, or set insecure: true",
            fieldPath=".endpoint",
        ),
        cel(
            "!has(self.caBundle) || ((!has(self.verifyTLS) || self.verifyTLS) && "
            "(!has(self.endpoint) || !self.endpoint.startsWith('http://')))",
            "caBundle needs verifyTLS true and an https:// endpoint",
            fieldPath=".caBundle",
        ),
    ]


class StorageSpec(ApiModel):
    """S3-compatible object storage that holds the model's artifacts."""

    model_config = ApiModel.model_config | {"json_schema_extra": validations(*_storage_rules())}

    endpoint: EndpointUrl | None = Field(
        None,
        description="Endpoint URL of the S3-compatible service, for example https://minio.storage:9000. Leave empty for AWS S3.",
    )
    bucket: BucketName = Field(description="Bucket where compressed artifacts are written (under modelops-cache/).")
    region: str = Field("us-east-1", max_length=64, pattern=REGION_RULE, description="Region of the bucket.")
    credentials_secret: LocalObjectReference | None = Field(
        None,
        description="Secret with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Leave empty to use the pod's own identity.",
    )
    verify_tls: bool = Field(
        True,
        alias="verifyTLS",
        description="Verify the endpoint's TLS certificate. Turn off only for test setups: false is reported as a Warning Event and in the StorageTransport condition.",
    )
    ca_bundle: CABundleRef | None = Field(
        None,
        description="CA bundle that verifies the endpoint's certificate, for a private CA. The operator, the compression Job and the fetch container all use it. Leave empty to trust the system's CAs.",
    )
    insecure: bool = Field(
        False,
        description="Allow an http:// endpoint: credentials and artifacts then cross the network in plain text. Reported as a Warning Event and in the StorageTransport condition.",
    )

    def transport_problem(self) -> str | None:
        """Why the operator refuses this storage, or None. The apiserver refuses the same with CEL;
        this catches Models stored before the rule existed (see docs/install.md, upgrading)."""
        if self.endpoint and self.endpoint.startswith("http://") and not self.insecure:
            return (
                f"spec.storage.endpoint {self.endpoint} is http://: use https://, or set spec.storage.insecure: true "
                "to send credentials and artifacts in plain text"
            )
        return None

    def transport_warning(self) -> str | None:
        """What is unprotected about the connection to storage, or None when TLS is verified."""
        if self.endpoint and self.endpoint.startswith("http://"):
            return f"spec.storage.insecure is true: {self.endpoint} is plain http, credentials and artifacts are not encrypted"
        if not self.verify_tls:
            return f"spec.storage.verifyTLS is false: the certificate of {self.endpoint or 'AWS S3'} is not verified"
        return None


class TensorSpec(ApiModel):
    """One input or output tensor of the model."""

    name: TensorName = Field(description="Tensor name, as in the artifact.")
    data_type: DataType = Field(description="Element type in Triton's naming, for example FP32.")
    dims: list[Dim] = Field(
        min_length=1,
        max_length=16,
        description="Shape without the batch dimension when maxBatchSize > 0; -1 marks a variable size.",
        json_schema_extra=validations(
            cel(
                f"self.all(d, d == {VARIABLE_DIM} || (d >= 1 && d <= {DIM_MAX}))",
                f"every dimension must be {VARIABLE_DIM} (variable) or 1 to {DIM_MAX}",
            )
        ),
    )


class Signature(ApiModel):
    """The tensor signature Triton needs to serve the model."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            *(
                cel(
                    f"self.{side}.all(a, self.{side}.exists_one(b, b.name == a.name))",
                    f"tensor names must be unique within {side}",
                    fieldPath=f".{side}",
                )
                for side in ("inputs", "outputs")
            )
        )
    }

    inputs: list[TensorSpec] = Field(min_length=1, max_length=64, description="Input tensors.")
    outputs: list[TensorSpec] = Field(min_length=1, max_length=64, description="Output tensors.")
    max_batch_size: int = Field(
        0,
        ge=0,
        le=MAX_BATCH_SIZE_MAX,
        description="Largest batch Triton forms. Above 0, the first dimension of every tensor is the batch and dims leave it out.",
    )

    @field_validator("inputs", "outputs")
    @classmethod
    def _unique_names(cls, tensors: list[TensorSpec], info: ValidationInfo) -> list[TensorSpec]:
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ValueError(f"tensor names must be unique within {info.field_name}")
        return tensors


_AMOUNT_DESCRIPTION = (
    f"Fraction of weights to prune, {_AMOUNT_TEXT}; required when method is not none, 0 or unset when it is none."
)


class Pruning(ApiModel):
    """Weight pruning applied before quantization. A method that prunes needs its amount."""

    model_config = ApiModel.model_config | {"json_schema_extra": validations(*_pruning_rules())}

    method: PruningMethod | None = Field(None, description="none, unstructured (single weights) or structured (whole channels).")
    amount: float | None = Field(
        None, ge=_LOW, lt=_HIGH, allow_inf_nan=False, validate_default=True, description=_AMOUNT_DESCRIPTION
    )

    @field_validator("amount")
    @classmethod
    def _amount_fits_method(cls, amount: float | None, info: ValidationInfo) -> float | None:
        if "method" not in info.data:  # the method itself was invalid
            return amount
        problem = pruning_problem(info.data["method"], amount)
        if problem is not None:
            raise ValueError(problem)
        return amount


class Calibration(ApiModel):
    """The dataset data-aware methods learn from; never the evaluation dataset."""

    dataset_uri: S3Uri = Field(description="S3 URI of an .npz file shaped like the evaluation dataset (one array per model input); labels are not read.")
    sha256: Sha256 = Field(description="sha256 of the dataset; verified while streaming, and part of the cache key, so a cached result is never one calibrated on other data.")


class Compression(ApiModel):
    """The compression recipe. Unset fields come from the Model's versionDefaults."""

    quantization: Quantization | None = Field(None, description="Quantization: fp16 and bf16 store narrow weights and compute in float32 (CPU serving); fp16-compute computes in float16 with casts only at the inputs and outputs (CUDA serving); int8-weight-only and int4-weight-only store int8 per-channel or int4 block-wise weights, embedding tables included; int8-dynamic also quantizes activations at run time; int4-mixed is int4 with the layers most sensitive on the calibration set kept at int8 until the gate passes; auto tries int8-dynamic, int8-weight-only, int4-weight-only, int4-mixed (with a calibration dataset) and fp16 against the accuracy gate and keeps the best by objective.")
    block_size: BlockSize | None = Field(
        None, description="Weights per scale for int4-weight-only and int4-mixed (16 to 256, a power of two); default 128 (32 for int4-mixed). Ignored by the other quantizations."
    )
    method: Int4Method | None = Field(
        None, description="How int4 weights are rounded: rtn (round to nearest) or gptq (error compensation from the calibration dataset's activations, MatMul weights only). Default gptq with a calibration dataset, rtn without."
    )
    asymmetric: bool | None = Field(
        None, description="int4 blocks with a zero point (min to max) instead of symmetric around 0; MatMul weights only. Default false (true for int4-mixed)."
    )
    calibration: Calibration | None = Field(None, description="Calibration dataset for data-aware methods (gptq, int4-mixed); must not be the evaluation dataset.")
    pruning: Pruning | None = Field(None, description="Weight pruning.")
    target_format: TargetFormat | None = Field(None, description="Format of the compressed artifact; ONNX serves on every Triton backend we support.")
    objective: Objective | None = Field(None, description="For quantization auto: size keeps the smallest candidate that passes the gate, latency the fastest (measured in onnxruntime on the Job's device). Default size.")


class Evaluation(ApiModel):
    """The accuracy gate: the compressed model is compared with its parent on a dataset."""

    model_config = ApiModel.model_config | {"json_schema_extra": validations(*_threshold_rules())}

    dataset_uri: S3Uri = Field(description="S3 URI of an .npz file with one array per model input, named as the input (a single-input model may use the name `inputs`), and, for top1-accuracy, `labels`.")
    metric: Metric = Field(
        description="top1-accuracy (threshold: largest allowed drop in percentage points), top1-agreement and "
        "cosine-similarity (threshold: minimum), max-abs-error (threshold: maximum)."
    )
    threshold: float = Field(
        allow_inf_nan=False,
        description="Pass mark for the metric; see metric for its meaning. top1-accuracy: 0 to 100 points; "
        "top1-agreement and cosine-similarity: 0 to 1; max-abs-error: 0 or greater.",
    )

    @field_validator("threshold")
    @classmethod
    def _threshold_fits_metric(cls, threshold: float, info: ValidationInfo) -> float:
        if "metric" in info.data:
            problem = threshold_problem(info.data["metric"], threshold)
            if problem is not None:
                raise ValueError(problem)
        return threshold


class Scheduling(ApiModel):
    """Where pods run. Unset fields come from the defaults."""

    gpus: int | None = Field(None, ge=0, le=16, description="nvidia.com/gpu to request; 0 runs on the CPU.")
    node_selector: dict[str, LabelValue] | None = Field(None, max_length=32, description="Node labels the pods require.")
    tolerations: list[Toleration] | None = Field(
        None,
        description="Tolerations for node taints. With gpus > 0 the nvidia.com/gpu taint is tolerated automatically.",
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )


class PruningDefaults(Pruning):
    """Default weight pruning for the Model's versions."""

    model_config = ApiModel.model_config | {"json_schema_extra": validations(*_pruning_rules())}

    method: PruningMethod = Field(
        PruningMethod.NONE, description="none, unstructured (single weights) or structured (whole channels)."
    )
    amount: float = Field(0.0, ge=_LOW, lt=_HIGH, allow_inf_nan=False, validate_default=True, description=_AMOUNT_DESCRIPTION)


class CompressionDefaults(Compression):
    """Default compression recipe for the Model's versions."""

    quantization: Quantization = Field(Quantization.INT8_WEIGHT_ONLY, description="Quantization: fp16 and bf16 store narrow weights and compute in float32 (CPU serving); fp16-compute computes in float16 with casts only at the inputs and outputs (CUDA serving); int8-weight-only and int4-weight-only store int8 per-channel or int4 block-wise weights, embedding tables included; int8-dynamic also quantizes activations at run time; int4-mixed keeps the layers most sensitive on the calibration set at int8 until the gate passes.")
    pruning: PruningDefaults = nested(PruningDefaults, "Weight pruning.")
    target_format: TargetFormat = Field(
        TargetFormat.ONNX, description="Format of the compressed artifact; ONNX serves on every Triton backend we support."
    )


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
    trust: TrustPolicy = nested(TrustPolicy, "Signers trusted to sign the artifacts (docs/security.md).")


class VersionCounts(ApiModel):
    """How many versions are in each phase."""

    total: int = Field(0, description="All versions.")
    pending: int = Field(0, description="Versions waiting for a prerequisite.")
    verifying: int = Field(0, description="Versions whose artifact is being checked.")
    compressing: int = Field(0, description="Versions being compressed.")
    evaluating: int = Field(0, description="Versions whose cached compression is being evaluated on their own dataset.")
    ready: int = Field(0, description="Versions ready to serve.")
    rejected: int = Field(0, description="Versions rejected by the accuracy gate.")
    failed: int = Field(0, description="Versions that failed.")


class ModelStatus(ApiModel):
    """Observed state of a Model."""

    observed_generation: int | None = Field(None, description="The metadata.generation this status reflects.")
    latest_ready_version: int | None = Field(None, description="Highest version that is Ready.")
    versions: VersionCounts | None = Field(None, description="Versions by phase.")
    conditions: Conditions | None = Field(None, description="Ready: at least one version can be served and the credentials Secret (and CA bundle) exist. StorageTransport: True when storage is reached over TLS with the certificate verified.")

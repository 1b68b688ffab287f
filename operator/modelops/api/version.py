"""The ModelVersion kind: one immutable version of a Model and its compression result."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from enum import StrEnum

from pydantic import Field, ValidationInfo, field_validator, model_validator

from modelops.api.model import Compression, Evaluation, Scheduling
from modelops.api.trust import ArtifactSignature, ProvenanceStatus
from modelops.api.types import (
    ApiModel,
    Conditions,
    ObjectName,
    RelativePath,
    S3UriOrPrefix,
    Sha256,
    Timings,
    VersionNumber,
    cel,
    validations,
)


class ArtifactFormat(StrEnum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    EXPORTED_PROGRAM = "exported-program"
    # A folder served as uploaded (sharded safetensors and their config, for a backend that
    # reads a folder); nothing in it is compressed.
    DIRECTORY = "directory"


class Phase(StrEnum):
    """A ModelVersion's lifecycle phase. A Job that compresses also evaluates and reports
    Compressing; Evaluating is a Job that evaluates a cached compression on this version's
    own dataset, compressing nothing."""

    PENDING = "Pending"
    VERIFYING = "Verifying"
    COMPRESSING = "Compressing"
    EVALUATING = "Evaluating"
    READY = "Ready"
    REJECTED = "Rejected"
    FAILED = "Failed"


TERMINAL_PHASES: frozenset[Phase] = frozenset({Phase.READY, Phase.REJECTED, Phase.FAILED})


class VersionReason(StrEnum):
    """Reasons of a ModelVersion's conditions and events."""

    # Pending
    MODEL_NOT_FOUND = "ModelNotFound"
    DUPLICATE_VERSION = "DuplicateVersion"
    JOB_NAME_TAKEN = "JobNameTaken"
    # Verifying
    CREDENTIALS_NOT_FOUND = "CredentialsNotFound"
    CA_BUNDLE_NOT_FOUND = "CABundleNotFound"
    INSECURE_ENDPOINT = "InsecureEndpoint"
    TLS_VERIFICATION_FAILED = "TLSVerificationFailed"
    BUCKET_NOT_FOUND = "BucketNotFound"
    ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"
    ARTIFACT_NOT_FOUND = "ArtifactNotFound"
    ACCESS_DENIED = "AccessDenied"
    STORAGE_UNREACHABLE = "StorageUnreachable"
    STORAGE_ERROR = "StorageError"
    # Compressing
    JOB_CREATED = "JobCreated"
    JOB_PENDING = "JobPending"
    JOB_RUNNING = "JobRunning"
    JOB_RETRYING = "JobRetrying"
    # Ready
    COMPRESSED = "Compressed"
    COMPRESSED_FROM_CACHE = "CompressedFromCache"
    SERVED_AS_UPLOADED = "ServedAsUploaded"
    # Rejected
    ACCURACY_GATE_REJECTED = "AccuracyGateRejected"
    SIGNATURE_MISMATCH = "SignatureMismatch"
    # Failed
    INVALID_SPEC = "InvalidSpec"
    INVALID_RECIPE = "InvalidRecipe"
    INVALID_ARTIFACT_URI = "InvalidArtifactUri"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    BAD_ARTIFACT = "BadArtifact"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    INVALID_JOB_ARGUMENTS = "InvalidJobArguments"
    COMPRESSION_FAILED = "CompressionFailed"
    REPORT_MISSING = "ReportMissing"
    REPORT_INVALID = "ReportInvalid"
    # RolloutFailed, set by a ModelDeployment's verdict
    ROLLED_BACK = "RolledBack"
    RETRY_REQUESTED = "RetryRequested"


# Reasons an older operator wrote, read as the one name they mean now.
LEGACY_VERSION_REASONS: dict[str, VersionReason] = {"AccuracyGateFailed": VersionReason.ACCURACY_GATE_REJECTED}


class ReportOutcome(StrEnum):
    """The compression Job's verdict in its report."""

    PASSED = "Passed"
    REJECTED = "Rejected"
    FAILED = "Failed"


# A file set holds at most this many files (the CEL cost of the rules below grows with it).
MAX_FILES = 1024
DEFAULT_ENTRYPOINT = "model.onnx"
FILE_SET_FORMATS = (ArtifactFormat.ONNX, ArtifactFormat.DIRECTORY)


class ArtifactFile(ApiModel):
    """One file of a file-set artifact."""

    path: RelativePath = Field(description="Path of the file under the artifact's uri prefix, for example model.onnx or weights/part-0.bin; no empty, '.' or '..' segments, no leading '/'.")
    sha256: Sha256 = Field(description="sha256 of the file; verified while it streams, a mismatch fails the version and names the file.")


def file_set_digest(entrypoint: str | None, files: Sequence[tuple[str, str]]) -> str:
    """The one digest of a file set: sha256 of its entrypoint line and of `sha256sum`'s lines
    (`<sha256>  <path>`), sorted by path. It stands for the set wherever one sha256 is used: the
    compression cache key and the serving pod's annotation."""
    lines = [f"entrypoint {entrypoint or ''}\n"] + [f"{digest}  {path}\n" for path, digest in sorted(files)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def path_problems(paths: Sequence[str], field: str) -> str | None:
    """Duplicate paths, or a path that is also a folder of another, named by their field."""
    seen: dict[str, int] = {}
    for index, path in enumerate(paths):
        if path in seen:
            return f"{field}[{index}].path: {path!r} is listed twice (also at {field}[{seen[path]}])"
        seen[path] = index
    for index, path in enumerate(paths):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in seen:
                return f"{field}[{index}].path: {path!r} is inside {folder!r}, which is a file ({field}[{seen[folder]}])"
    return None


_ENTRYPOINT_RULE = (
    "!has(self.files) || self.format != 'onnx' || self.files.exists(f, f.path == "
    f"(has(self.entrypoint) ? self.entrypoint : '{DEFAULT_ENTRYPOINT}'))"
)


class Artifact(ApiModel):
    """The uploaded artifact of this version: one file (uri and sha256), or a file set (a uri
    prefix ending in '/' and files, each with its sha256), for example ONNX with external data."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel("has(self.files) != has(self.sha256)", "set sha256 for a single file, or files for a file set, not both"),
            cel("has(self.files) == self.uri.endsWith('/')", "uri must end with '/' (a prefix) exactly when files is set"),
            cel("!has(self.files) || self.format in ['onnx', 'directory']", "files is for format onnx (with external data) or directory"),
            cel("self.format != 'directory' || has(self.files)", "format directory needs files"),
            cel("!has(self.entrypoint) || has(self.files)", "entrypoint is for a file set: set files too"),
            cel(_ENTRYPOINT_RULE, f"files must list the entrypoint (default {DEFAULT_ENTRYPOINT})", fieldPath=".entrypoint"),
        )
    }

    uri: S3UriOrPrefix = Field(description="S3 URI of the artifact, for example s3://models/digits/1/model.onnx; for a file set, the prefix its paths are under, ending in '/' (s3://models/llm/1/).")
    format: ArtifactFormat = Field(description="onnx, torchscript, exported-program (torch.export), or directory: a file set served as uploaded, which no compression recipe may change.")
    sha256: Sha256 | None = Field(None, description="sha256 of a single-file artifact; verified while streaming, a mismatch fails the version. Unset for a file set.")
    files: list[ArtifactFile] | None = Field(
        None,
        min_length=1,
        max_length=MAX_FILES,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["path"]},
        description=f"The files of a file set, each with its sha256; paths unique, at most {MAX_FILES}.",
    )
    entrypoint: RelativePath | None = Field(None, validate_default=True, description=f"For an ONNX file set: the path of the graph file; the other files are its external data. Default {DEFAULT_ENTRYPOINT}.")
    signature: ArtifactSignature | None = Field(None, description="Signature bundle, verified against the Model's trust policy before anything runs.")

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, files: list[ArtifactFile] | None) -> list[ArtifactFile] | None:
        problem = None if files is None else path_problems([f.path for f in files], "files")
        if problem is not None:
            raise ValueError(problem)
        return files

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_is_listed(cls, entrypoint: str | None, info: ValidationInfo) -> str | None:
        files, fmt = info.data.get("files"), info.data.get("format")
        if files is not None and fmt == ArtifactFormat.ONNX and (entrypoint or DEFAULT_ENTRYPOINT) not in {f.path for f in files}:
            raise ValueError(f"files must list the entrypoint (default {DEFAULT_ENTRYPOINT})")
        return entrypoint

    @model_validator(mode="after")
    def _one_form(self) -> Artifact:
        if (self.files is None) == (self.sha256 is None):
            raise ValueError("set sha256 for a single file, or files for a file set, not both")
        if (self.files is not None) != self.uri.endswith("/"):
            raise ValueError("uri must end with '/' (a prefix) exactly when files is set")
        if self.files is None:
            if self.format == ArtifactFormat.DIRECTORY:
                raise ValueError("format directory needs files")
            if self.entrypoint is not None:
                raise ValueError("entrypoint is for a file set: set files too")
            return self
        if self.format not in FILE_SET_FORMATS:
            raise ValueError("files is for format onnx (with external data) or directory")
        return self

    @property
    def graph_path(self) -> str:
        return str(self.entrypoint or DEFAULT_ENTRYPOINT)

    @property
    def digest(self) -> str:
        """The artifact's sha256, or its file set's digest (file_set_digest)."""
        if self.files is None:
            assert self.sha256 is not None
            return str(self.sha256)
        return file_set_digest(self.graph_path if self.format == ArtifactFormat.ONNX else None, [(f.path, f.sha256) for f in self.files])

    def file_uri(self, path: str) -> str:
        return f"{self.uri}{path}"


SAME_DATASETS_MESSAGE = (
    "compression.calibration.datasetUri and evaluation.datasetUri name the same object: the gate's "
    "dataset must not be used to calibrate; give a separate calibration dataset"
)
SAME_DATASETS_RULE = (
    "!has(self.compression) || !has(self.compression.calibration) || !has(self.evaluation) "
    "|| self.compression.calibration.datasetUri != self.evaluation.datasetUri"
)


def same_datasets_problem(compression: Compression | None, evaluation: Evaluation | None) -> str | None:
    """SAME_DATASETS_RULE in Python, for a recipe and gate merged from a Model's defaults."""
    if compression is None or compression.calibration is None or evaluation is None:
        return None
    return SAME_DATASETS_MESSAGE if compression.calibration.dataset_uri == evaluation.dataset_uri else None


class ModelVersionSpec(ApiModel):
    """One immutable version of a Model. To change it, create a new version."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel("self == oldSelf", "spec is immutable: create a new ModelVersion with a new version number"),
            cel(SAME_DATASETS_RULE, SAME_DATASETS_MESSAGE),
        )
    }

    model: ObjectName = Field(description="Name of the Model in the same namespace.")
    version: VersionNumber = Field(description="Version number, 1 or greater, unique within the Model; Triton's version folder.")
    artifact: Artifact = Field(description="The uploaded artifact: one file (uri, sha256) or a file set (a uri prefix and files).")
    compression: Compression | None = Field(None, description="Compression recipe; unset fields come from the Model's versionDefaults.")
    evaluation: Evaluation | None = Field(None, description="Accuracy gate; when unset, the Model's default gate (if any) applies.")
    scheduling: Scheduling | None = Field(None, description="Scheduling of the compression Job; unset fields come from the Model's versionDefaults.")

    @model_validator(mode="after")
    def _calibration_is_not_evaluation(self) -> ModelVersionSpec:
        problem = same_datasets_problem(self.compression, self.evaluation)
        if problem is not None:
            raise ValueError(problem)
        return self


class StoredFile(ApiModel):
    """One file of a served file set."""

    path: str = Field(description="Path under the folder of the artifact's uri.")
    sha256: str = Field(description="sha256 of the file.")
    bytes: int = Field(description="Size in bytes.")


class CompressedArtifact(ApiModel):
    """The artifact that is served."""

    uri: str = Field(description="S3 URI of the compressed artifact; for a file set, that of its entrypoint (the ONNX graph), or the set's prefix for format directory.")
    sha256: str = Field(description="sha256 of the compressed artifact; for a file set, that of the uri's object, or the set's digest for format directory.")
    bytes: int = Field(description="Size in bytes; for a file set, of all its files.")
    format: str = Field(description="Format of the compressed artifact.")
    files: list[StoredFile] | None = Field(None, description="For a file set (ONNX with external data, or a directory): every file, paths relative to the folder of uri, each verified by its sha256 when it is fetched.")
    etag: str | None = Field(None, description="Storage ETag of the object as written; a cached artifact is reused only while its ETag, size and sha256 are unchanged.")


class DatasetReport(ApiModel):
    """The evaluation dataset object a measurement was taken on."""

    uri: str = Field(description="S3 URI of the dataset.")
    etag: str | None = Field(None, description="Storage ETag of the dataset object that was read.")
    sha256: str | None = Field(None, description="sha256 of the dataset bytes that were read.")
    samples: int | None = Field(None, description="Number of samples evaluated.")


class CalibrationReport(ApiModel):
    """The calibration dataset object data-aware methods read."""

    uri: str = Field(description="S3 URI of the calibration dataset.")
    sha256: str | None = Field(None, description="sha256 of the calibration bytes that were read.")
    samples: int | None = Field(None, description="Number of samples read.")


class LayerReport(ApiModel):
    """The precision chosen for one weight by int4-mixed."""

    name: str = Field(description="The weight (ONNX initializer) name.")
    precision: str = Field(description="int4 or int8.")
    bytes: int | None = Field(None, description="Bytes of the stored weight and its scales.")
    sensitivity: float | None = Field(None, description="Relative output error of the layer at int4 on the calibration set.")


class MetricReport(ApiModel):
    """The accuracy gate's measurement."""

    name: str = Field(description="Metric name.")
    threshold: float | None = Field(None, description="Pass mark that was applied.")
    parent: float | None = Field(None, description="Value for the uncompressed parent (for top1-accuracy).")
    compressed: float | None = Field(None, description="Value for the compressed model.")
    drop: float | None = Field(None, description="Drop in percentage points (top1-accuracy).")
    passed: bool | None = Field(None, description="Whether the gate passed.")
    dataset: DatasetReport | None = Field(None, description="The dataset object the values were measured on.")


class LatencyReport(ApiModel):
    """Where and how the latencies were measured."""

    runtime: str | None = Field(None, description="Runtime and execution provider, for example onnxruntime 1.20 (CPUExecutionProvider).")
    device: str | None = Field(None, description="cpu or cuda.")
    cpu: str | None = Field(None, description="The CPU model and the features that change int8 kernels (avx2, avx512, vnni).")
    batch: int | None = Field(None, description="Samples per timed call.")
    spread: float | None = Field(None, description="Largest (max - min) / median over the timed rounds of any measured model.")


class CandidateReport(ApiModel):
    """One recipe tried by quantization auto."""

    quantization: str = Field(description="The candidate's quantization.")
    verdict: str = Field(description="Passed, Rejected (by the gate), Unsupported (by this compressor or source) or Failed.")
    bytes: int | None = Field(None, description="Size of the candidate's artifact in bytes.")
    ratio: float | None = Field(None, description="Source bytes / candidate bytes.")
    latency_ms: float | None = Field(None, description="Median latency of the candidate in milliseconds.")
    metric: MetricReport | None = Field(None, description="The gate's measurement of the candidate.")
    message: str | None = Field(None, description="Why the candidate got its verdict.")


class DownloadReport(ApiModel):
    """How the compression Job's download of the source went."""

    bytes: int | None = Field(None, description="Bytes of the source (every file of a set).")
    fetched_bytes: int | None = Field(None, description="Bytes received; less than bytes when parts of an earlier attempt were resumed.")
    seconds: float | None = Field(None, description="Time the download took.")
    bytes_per_second: int | None = Field(None, description="fetchedBytes / seconds.")
    resumed_parts: int | None = Field(None, description="Parts taken from an earlier attempt's partial file instead of fetched again.")
    retries: int | None = Field(None, description="Part fetches that were repeated after a dropped connection, a short read or a stall.")
    stalls: int | None = Field(None, description="Parts closed by the stall detector (no byte for the stall timeout) and fetched again.")


class CompressionReport(ApiModel):
    """What compression did, as reported by the compression Job."""

    device: str | None = Field(None, description="cpu or cuda: where compression and evaluation ran.")
    bytes_before: int | None = Field(None, description="Size of the source artifact in bytes.")
    bytes_after: int | None = Field(None, description="Size of the compressed artifact in bytes.")
    ratio: float | None = Field(None, description="bytesBefore / bytesAfter.")
    latency_ms_before: float | None = Field(None, description="Inference latency of the source model in milliseconds.")
    latency_ms_after: float | None = Field(None, description="Inference latency of the compressed model in milliseconds.")
    metric: MetricReport | None = Field(None, description="Accuracy gate result, when a gate was set.")
    recipe_hash: str | None = Field(None, description="Hash of the normalised recipe.")
    compressor_version: str | None = Field(None, description="Version of the compressor that produced the artifact.")
    from_cache: bool = Field(False, description="True when an earlier identical compression was reused.")
    latency: LatencyReport | None = Field(None, description="The runtime, device and CPU of the latency figures.")
    objective: str | None = Field(None, description="For quantization auto: size or latency.")
    chosen_quantization: str | None = Field(None, description="For quantization auto: the candidate that is served.")
    candidates: list[CandidateReport] | None = Field(None, description="For quantization auto: every candidate tried, with its verdict.")
    calibration: CalibrationReport | None = Field(None, description="The calibration dataset data-aware methods read (its digest beside the evaluation dataset's in metric.dataset).")
    layers: list[LayerReport] | None = Field(None, description="For int4-mixed: each weight's chosen precision, size and sensitivity.")
    download: DownloadReport | None = Field(None, description="How the source was downloaded: its time, throughput, resumed parts and retries.")


class ModelVersionStatus(ApiModel):
    """Observed state of a ModelVersion."""

    observed_generation: int | None = Field(None, description="The metadata.generation this status reflects.")
    phase: Phase | None = Field(
        None, description="Pending, Verifying, Compressing (compression and evaluation), Ready, Rejected or Failed."
    )
    job_name: str | None = Field(None, description="Name of the compression Job.")
    artifact_bucket: str | None = Field(
        None,
        description="The bucket the artifact is read from (that of spec.artifact.uri). It may differ from the "
        "Model's spec.storage.bucket, which receives the compressed output.",
    )
    cache_key: str | None = Field(None, description="Content address of the compression output: sha256 of (source digest, recipe, compressor version).")
    compressed_artifact: CompressedArtifact | None = Field(None, description="The compressed artifact, once Ready.")
    report: CompressionReport | None = Field(None, description="The compression report.")
    provenance: ProvenanceStatus | None = Field(None, description="The verified signer of the artifact.")
    failed_by: list[str] | None = Field(
        None,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="ModelDeployments whose rollout of this version failed and was rolled back. Each verdict "
        "holds for that ModelDeployment only: Latest skips the version there until its modelops.dev/retry "
        "annotation changes, while other ModelDeployments may serve it.",
    )
    timings: Timings | None = Field(
        None,
        description="The steps to Ready, each with its start and end: verify (from creation until the source "
        "is verified and the Job starts or a cached compression is used), and the compression Job's download, "
        "compress and evaluate.",
    )
    conditions: Conditions | None = Field(
        None, description="Ready, Progressing while work is under way, and RolloutFailed while failedBy is not empty."
    )

"""One compression Job: fetch and verify, compress, evaluate, publish, and pick the exit code."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from modelops import cachestore, reuse
from modelops.api.model import Signature
from modelops.api.trust import ProvenanceReason
from modelops.api.types import Step
from modelops.api.version import DEFAULT_ENTRYPOINT, ArtifactFormat, DatasetReport, MetricReport, ReportOutcome, VersionReason
from modelops.cachekey import InvalidRecipe, compressed_prefix, compression_cache_key
from modelops.compress import report
from modelops.compress.recipe import Evaluation, Recipe, UnsupportedRecipe, parse_evaluation
from modelops.contract import exitcodes
from modelops.contract.formats import artifact_suffix
from modelops.contract.report import JobReason, JobReport, ReportReason
from modelops.storage import (
    AccessDenied,
    ChecksumMismatch,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    TLSVerificationFailed,
    TooLarge,
    TransferResult,
    parse_s3_uri,
    validate_sha256,
)
from modelops.transfer import TransferStats

if TYPE_CHECKING:
    from modelops.compress.pipeline import Dataset, Options

log = logging.getLogger("modelops.compress")

REPORT_FILE = reuse.REPORT_FILE


@dataclass(frozen=True)
class JobSpec:
    source_uri: str
    source_sha256: str
    source_format: str
    recipe: Any  # a Compression, or its JSON text or dict
    output_prefix: str
    evaluation: Any = None  # an Evaluation, or its JSON text or dict
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    input_shape: tuple[int, ...] | None = None
    threads: int | None = None
    signature: Signature | dict[str, Any] | None = None  # the Model's signature, checked against the artifact
    # Larger objects are refused after the HEAD, before a byte is downloaded.
    max_artifact_bytes: int | None = None
    max_dataset_bytes: int | None = None
    # A file set: source_uri is its prefix, source_sha256 its digest (file_set_digest), and
    # every file here is verified by its own sha256.
    source_files: list[dict[str, str]] | None = None
    source_entrypoint: str | None = None
    # The trusted signer whose signature on the source the operator verified: bytes that differ
    # from the signed digest are then a tampered artifact (Rejected), not a wrong spec.
    source_signer: str | None = None
    # The operator found the cached entry's signature broken: compress again, reuse nothing.
    recompress: bool = False


@dataclass(frozen=True)
class JobResult:
    exit_code: int
    report: dict[str, Any]


class Failure(Exception):
    """A failure with its exit code and the reason the operator shows."""

    def __init__(self, exit_code: int, reason: ReportReason, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.reason = reason

    @property
    def outcome(self) -> ReportOutcome:
        return ReportOutcome.REJECTED if self.exit_code == exitcodes.REJECTED else ReportOutcome.FAILED


def _classify(exc: BaseException) -> Failure:
    """Map an exception to (exit code, reason). Only storage outages and the unexpected are retried."""
    from modelops.compress.accuracy import DatasetError
    from modelops.compress.onnx_compress import UnsupportedModel
    from modelops.compress.onnx_stream import OnnxFormatError, OutputTooLarge
    from modelops.contract.interface import SignatureMismatch

    if isinstance(exc, Failure):
        return exc
    message = str(exc)
    if isinstance(exc, SignatureMismatch):
        return Failure(exitcodes.REJECTED, JobReason.SIGNATURE_MISMATCH, message)
    if isinstance(exc, UnsupportedRecipe):
        return Failure(exitcodes.USAGE, JobReason.UNSUPPORTED_RECIPE, message)
    if isinstance(exc, InvalidRecipe):
        return Failure(exitcodes.USAGE, JobReason.INVALID_RECIPE, message)
    if isinstance(exc, ChecksumMismatch):
        return Failure(exitcodes.BAD_ARTIFACT, JobReason.CHECKSUM_MISMATCH, message)
    if isinstance(exc, ObjectNotFound):
        return Failure(exitcodes.BAD_ARTIFACT, JobReason.ARTIFACT_NOT_FOUND, message)
    if isinstance(exc, AccessDenied):
        return Failure(exitcodes.BAD_ARTIFACT, JobReason.ACCESS_DENIED, message)
    if isinstance(exc, TLSVerificationFailed):
        return Failure(exitcodes.BAD_ARTIFACT, JobReason.TLS_VERIFICATION_FAILED, message)
    if isinstance(exc, TooLarge):
        return Failure(exitcodes.BAD_ARTIFACT, JobReason.TOO_LARGE, message)
    if isinstance(exc, StorageError):
        if exc.transient:
            return Failure(exitcodes.TRANSIENT, JobReason.STORAGE_UNREACHABLE, message)
        return Failure(exitcodes.BAD_ARTIFACT, JobReason.STORAGE_ERROR, message)
    if isinstance(exc, DatasetError):
        return Failure(exitcodes.BAD_ARTIFACT, JobReason.BAD_DATASET, message)
    if isinstance(exc, OnnxFormatError):
        return Failure(exitcodes.BAD_ARTIFACT, JobReason.UNREADABLE_ARTIFACT, message)
    if isinstance(exc, (UnsupportedModel, OutputTooLarge)):
        return Failure(exitcodes.BAD_ARTIFACT, JobReason.UNSUPPORTED_MODEL, message)
    if type(exc).__name__ == "TorchLoadError":
        return Failure(exitcodes.BAD_ARTIFACT, JobReason.UNREADABLE_ARTIFACT, message)
    if isinstance(exc, MemoryError):
        return Failure(exitcodes.TRANSIENT, JobReason.OUT_OF_MEMORY, "the compressor ran out of memory")
    return Failure(exitcodes.TRANSIENT, JobReason.INTERNAL_ERROR, f"{type(exc).__name__}: {message}")


def run(spec: JobSpec, store: ObjectStore, workdir: Path) -> JobResult:
    """Run the whole Job; never raises. The report is for the termination message and the logs."""
    try:
        return _run(spec, store, workdir)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an exit code and a report
        if isinstance(exc, KeyboardInterrupt):
            raise
        failure = _classify(exc)
        if failure.reason in (JobReason.INTERNAL_ERROR, JobReason.OUT_OF_MEMORY):
            log.exception("compression failed")
        try:
            recipe_hash = Recipe.of(spec.recipe).hash
        except InvalidRecipe:
            recipe_hash = None
        return JobResult(
            failure.exit_code,
            report.failure_report(failure.reason, str(failure), recipe_hash=recipe_hash, outcome=failure.outcome).record(),
        )


def _signature(spec: JobSpec) -> Signature | None:
    if spec.signature is None or isinstance(spec.signature, Signature):
        return spec.signature
    try:
        return Signature.model_validate(spec.signature)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise Failure(exitcodes.USAGE, JobReason.INVALID_ARGUMENTS, f"signature-json: {where}: {first['msg']}") from None


def _check_cached_interface(existing: dict[str, Any], signature: Signature | None) -> bool:
    """A cached result is served only when its recorded interface matches this Model's signature."""
    from modelops.contract.interface import Interface, check_signature

    if signature is None:
        return True
    recorded = existing.get("interface")
    if not recorded:
        return False  # an older entry that recorded no interface: compress again and record it
    check_signature(Interface.from_dict(recorded), signature, "the cached compressed artifact")
    return True


@dataclass(frozen=True)
class _Job:
    """One run's arguments, checked: the spec (its sha256 normalised), where it reads and writes,
    and the parsed recipe, evaluation and pipeline options."""

    spec: JobSpec
    store: ObjectStore
    workdir: Path
    recipe: Recipe
    evaluation: Evaluation | None
    options: Options
    prefix: str  # the cache entry's prefix, ending in /
    bucket: str

    @property
    def report_uri(self) -> str:
        return self.prefix + REPORT_FILE


@dataclass(frozen=True)
class _Inputs:
    """What the Job downloaded: the source, the evaluation dataset and the calibration dataset."""

    source_path: Path
    source: TransferResult
    dataset: Dataset | None
    dataset_read: Any  # the evaluation dataset's TransferResult
    calibration: Dataset | None
    calibration_report: dict[str, Any] | None


def _run(spec: JobSpec, store: ObjectStore, workdir: Path) -> JobResult:
    job = _checked(spec, store, workdir)
    # The same decision the operator took before creating this Job; it may differ now (a
    # restarted Job, a dataset replaced meanwhile), and this one is the one that counts.
    lookup = cachestore.look_up(store, job.prefix, job.spec.source_sha256, job.recipe.compression, job.evaluation)
    decision = lookup.decision
    if spec.recompress and decision.action in (reuse.Action.READY, reuse.Action.REJECT, reuse.Action.EVALUATE):
        decision = replace(decision, action=reuse.Action.COMPRESS, message="the cached compression's signature does not verify")
    log.info("cache decision: %s (%s): %s", decision.action, decision.reason, decision.message)
    if decision.action == reuse.Action.FAIL:
        raise Failure(exitcodes.BAD_ARTIFACT, decision.reason, decision.message)
    if decision.action in (reuse.Action.READY, reuse.Action.REJECT):
        existing = cachestore.reused_report(lookup, job.evaluation)
        # A cached result is served only when its recorded interface matches this Model's signature.
        if _check_cached_interface(existing, job.options.signature):
            return JobResult(_exit_code(existing["outcome"]), existing)
        log.info("the cached entry recorded no interface to check against the signature; compressing again")

    with job.options.clock.step(Step.DOWNLOAD):
        inputs = _download_inputs(job)
    if decision.action == reuse.Action.EVALUATE:
        assert lookup.report is not None
        evaluated = _evaluate_cached(job, inputs, lookup.report)
        if evaluated is not None:
            return evaluated
    return _compress(job, inputs)


def _checked(spec: JobSpec, store: ObjectStore, workdir: Path) -> _Job:
    """The arguments parsed and checked, each failure a usage failure that names its argument."""
    from modelops.compress.pipeline import Options

    recipe = Recipe.of(spec.recipe)
    evaluation = parse_evaluation(spec.evaluation) if spec.evaluation is not None else None
    signature = _signature(spec)
    source_sha256 = _field(lambda: validate_sha256(spec.source_sha256, "source-sha256"))
    _field(lambda: parse_s3_uri(spec.source_uri + ("_" if spec.source_files is not None else "")), "source-uri")
    if spec.source_files is not None:
        _field(lambda: _check_file_set(spec, source_sha256), "source-files-json")
    prefix = spec.output_prefix if spec.output_prefix.endswith("/") else spec.output_prefix + "/"
    bucket = _field(lambda: parse_s3_uri(prefix + REPORT_FILE), "output-prefix").bucket
    options = Options(spec.input_names, spec.output_names, spec.input_shape, spec.threads, signature)
    return _Job(replace(spec, source_sha256=source_sha256), store, workdir, recipe, evaluation, options, prefix, bucket)


def _download_inputs(job: _Job) -> _Inputs:
    """The source, verified by its sha256 (a mismatch under a verified signature is tampering),
    the evaluation dataset and the calibration dataset."""
    from modelops.compress.pipeline import Dataset

    spec, store, evaluation = job.spec, job.store, job.evaluation
    try:
        source_path, source = _download_source(store, spec, job.workdir)
    except ChecksumMismatch as exc:
        if spec.source_signer is None:
            raise
        raise Failure(
            exitcodes.REJECTED,
            ProvenanceReason.ARTIFACT_TAMPERED,
            f"file {_mismatched_file(spec, exc)}: the bytes read differ from the sha256 signed by {spec.source_signer} ({exc})",
        ) from None
    dataset = None
    dataset_read = None
    if evaluation is not None:
        dataset_path = job.workdir / "dataset" / "eval.npz"
        try:
            dataset_read = store.download(evaluation.dataset_uri, dataset_path, max_bytes=spec.max_dataset_bytes)
        except ObjectNotFound:
            raise Failure(
                exitcodes.BAD_ARTIFACT,
                reuse.Reason.DATASET_NOT_FOUND,
                f"evaluation.datasetUri: no object at {evaluation.dataset_uri}; upload the dataset or fix the URI",
            ) from None
        dataset = Dataset.from_npz(dataset_path)
    calibration, calibration_report = _calibration(store, job.recipe, evaluation, dataset_read, job.workdir, spec)
    return _Inputs(source_path, source, dataset, dataset_read, calibration, calibration_report)


def _compress(job: _Job, inputs: _Inputs) -> JobResult:
    """Compress and gate, upload the artifact, and publish its report (auto's pick also under its
    own recipe's key)."""
    from modelops.compress.pipeline import compress_artifact

    spec, store, evaluation, dataset, source, prefix = job.spec, job.store, job.evaluation, inputs.dataset, inputs.source, job.prefix
    result = compress_artifact(
        inputs.source_path, spec.source_format, job.recipe, job.workdir / "output", evaluation, dataset, job.options, inputs.calibration
    )
    if inputs.calibration_report is not None:
        inputs.calibration_report["samples"] = result.calibration_samples
    artifact_prefix = prefix
    if result.candidates is not None and result.outcome == "Passed":
        # auto's pick is also a complete entry under its own recipe's key, so an explicit request
        # for that recipe reuses it. An entry that is already complete there is left as it is.
        resolved_prefix = compressed_prefix(job.bucket, compression_cache_key(source.sha256, result.recipe.compression))
        if not store.exists(resolved_prefix + REPORT_FILE):
            artifact_prefix = resolved_prefix
    artifact = _upload_artifact(store, result.output_path, artifact_prefix, str(ArtifactFormat(result.output_format)))
    metric = None
    if evaluation is not None and dataset is not None:
        for entry_prefix in dict.fromkeys((artifact_prefix, prefix)):  # both entries know the measurement
            metric = _record_measurement(store, entry_prefix, evaluation, result, inputs.dataset_read, dataset.samples, artifact["sha256"])
    recorded = report.Recorded(
        source={"uri": spec.source_uri, "sha256": source.sha256, "bytes": source.size, "format": spec.source_format},
        artifact=artifact,
        evaluation=None if evaluation is None else evaluation.wire(),
        samples=None if dataset is None else dataset.samples,
        metric=metric,  # with the dataset object it was measured on
        calibration=inputs.calibration_report,
    )
    if artifact_prefix != prefix:
        resolved = replace(result, candidates=None, objective=None)
        notes = (f"chosen by quantization auto (objective {result.objective})",)
        _publish(store, artifact_prefix + REPORT_FILE, report.success_report(resolved, recorded, result.recipe, notes).record())
    full = report.success_report(result, recorded, job.recipe).record()
    if source.stats is not None:
        full["download"] = source.stats.wire()  # how the source arrived: time, throughput, retries
    full["timings"] = [t.wire() for t in job.options.clock.timings()]  # download, compress, evaluate
    _publish(store, job.report_uri, full)
    return JobResult(_exit_code(full["outcome"]), full)


def _check_file_set(spec: JobSpec, digest: str) -> None:
    """The file set as the apiserver checks it, and its digest as the operator computed it."""
    from modelops.api.version import Artifact

    artifact = Artifact.model_validate(
        {"uri": spec.source_uri, "format": spec.source_format, "files": spec.source_files, "entrypoint": spec.source_entrypoint}
    )
    if artifact.digest != digest:
        raise ValueError(f"the files' digest is {artifact.digest}, but --source-sha256 says {digest}")


def _mismatched_file(spec: JobSpec, exc: ChecksumMismatch) -> str:
    """The file a checksum mismatch is about: the single file's name, or the set's path."""
    if spec.source_files is None:
        return spec.source_uri.rsplit("/", 1)[-1]
    return next((item["path"] for item in spec.source_files if f"({item['path']})" in exc.uri), exc.uri)


def _download_source(store: ObjectStore, spec: JobSpec, workdir: Path) -> tuple[Path, TransferResult]:
    """The source, verified while it streams: one file, or every file of a set at its path (the
    ONNX graph's external data beside it), each by its own sha256; a mismatch names the file.
    The result's sha256 is the digest that keys the cache (the set's digest for a set)."""
    if spec.source_files is None:
        path = workdir / "source" / f"artifact{artifact_suffix(spec.source_format)}"
        return path, store.download(spec.source_uri, path, expected_sha256=spec.source_sha256, max_bytes=spec.max_artifact_bytes)
    folder = workdir / "source"
    total = 0
    stats = TransferStats()
    for index, item in enumerate(spec.source_files):
        budget = None if spec.max_artifact_bytes is None else spec.max_artifact_bytes - total
        try:
            result = store.download(spec.source_uri + item["path"], folder / item["path"], expected_sha256=item["sha256"], max_bytes=budget)
        except ChecksumMismatch as exc:
            raise ChecksumMismatch(f"spec.artifact.files[{index}] ({item['path']}) at {exc.uri}", exc.expected, exc.actual) from None
        except TooLarge:
            raise TooLarge(
                f"the file set under {spec.source_uri} is larger than the limit of {spec.max_artifact_bytes} bytes "
                f"(at spec.artifact.files[{index}], {item['path']})"
            ) from None
        total += result.size
        if result.stats is not None:
            stats.add(result.stats)
    entry = spec.source_entrypoint or DEFAULT_ENTRYPOINT
    return folder / entry, TransferResult(sha256=spec.source_sha256, size=total, stats=stats)


def _upload_artifact(store: ObjectStore, output: Path, prefix: str, fmt: str) -> dict[str, Any]:
    """Upload the compressed artifact. An ONNX graph with external data is a file set: its data
    file goes first and the graph last, and the record lists every file with its sha256."""
    from modelops.compress.onnx_stream import external_data_files

    data = external_data_files(output) if fmt == "onnx" else []
    files: list[dict[str, Any]] = []
    for path in data:
        done = store.upload_file(path, prefix + path.relative_to(output.parent).as_posix())
        files.append({"path": path.relative_to(output.parent).as_posix(), "sha256": done.sha256, "bytes": done.size})
    uploaded = store.upload_file(output, prefix + output.name)
    artifact: dict[str, Any] = {
        "uri": prefix + output.name,
        "sha256": uploaded.sha256,
        "bytes": uploaded.size + sum(f["bytes"] for f in files),
        "format": fmt,
        "etag": uploaded.etag,
    }
    if files:
        artifact["files"] = [{"path": output.name, "sha256": uploaded.sha256, "bytes": uploaded.size}, *files]
    return artifact


def _calibration(
    store: ObjectStore,
    recipe: Recipe,
    evaluation: Evaluation | None,
    dataset_read: Any,
    workdir: Path,
    spec: JobSpec,
) -> tuple[Any, dict[str, Any] | None]:
    """The calibration dataset the recipe names, verified by its sha256, and its report entry.

    Refused when it is the evaluation dataset: the same URI, or the same bytes under another."""
    from modelops.api.version import same_datasets_problem
    from modelops.compress.pipeline import Dataset

    named = recipe.calibration
    if named is None:
        return None, None
    problem = same_datasets_problem(recipe.compression, evaluation)
    if problem is None and dataset_read is not None and dataset_read.sha256 == named.sha256:
        problem = (
            "compression.calibration.sha256 is the sha256 of the evaluation.datasetUri object: the gate's "
            "dataset must not be used to calibrate; give a separate calibration dataset"
        )
    if problem is not None:
        raise Failure(exitcodes.USAGE, JobReason.INVALID_RECIPE, problem)
    path = workdir / "dataset" / "calibration.npz"
    try:
        store.download(named.dataset_uri, path, expected_sha256=named.sha256, max_bytes=spec.max_dataset_bytes)
    except ObjectNotFound:
        raise Failure(
            exitcodes.BAD_ARTIFACT,
            reuse.Reason.DATASET_NOT_FOUND,
            f"compression.calibration.datasetUri: no object at {named.dataset_uri}; upload the dataset or fix the URI",
        ) from None
    except ChecksumMismatch as exc:
        raise Failure(exitcodes.BAD_ARTIFACT, JobReason.CHECKSUM_MISMATCH, f"compression.calibration.sha256: {exc}") from None
    return Dataset.from_npz(path), {"uri": named.dataset_uri, "sha256": named.sha256}


def _publish(store: ObjectStore, uri: str, full: dict[str, Any]) -> None:
    # report.json goes last: its presence marks the prefix as a complete cache entry.
    store.upload_bytes(json.dumps(full, indent=2, sort_keys=True).encode(), uri, "application/json")


def _evaluate_cached(job: _Job, inputs: _Inputs, record: dict[str, Any]) -> JobResult | None:
    """The gate on the cached artifact that `record` names, verified by its recorded sha256
    while it streams, and the report it makes; None when it does not verify, so that the caller
    compresses again."""
    from modelops.compress.pipeline import evaluate_compressed

    evaluation, dataset = job.evaluation, inputs.dataset
    assert evaluation is not None and dataset is not None
    artifact = record["artifact"]
    path = job.workdir / "cached" / Path(artifact["uri"]).name
    folder = artifact["uri"][: artifact["uri"].rindex("/") + 1]
    files = artifact.get("files") or [{"path": path.name, "sha256": artifact["sha256"]}]
    try:
        for item in files:
            job.store.download(folder + item["path"], path.parent / item["path"], expected_sha256=item["sha256"])
    except (ChecksumMismatch, ObjectNotFound) as exc:
        log.warning("the cached artifact cannot be reused, compressing again: %s", exc)
        return None
    evaluated = evaluate_compressed(inputs.source_path, job.spec.source_format, path, job.recipe, evaluation, dataset, job.options)
    full = JobReport.model_validate({
        **{k: v for k, v in record.items() if k not in ("metric", "evaluation")},
        "outcome": evaluated.outcome,
        "reason": reuse.Reason.EVALUATED_FROM_CACHE if evaluated.outcome == ReportOutcome.PASSED else VersionReason.ACCURACY_GATE_REJECTED,
        "message": evaluated.message,
        "latencyMsBefore": evaluated.latency_ms_before,
        "latencyMsAfter": evaluated.latency_ms_after,
        "metric": _record_measurement(
            job.store, job.prefix, evaluation, evaluated, inputs.dataset_read, dataset.samples, artifact["sha256"]
        ),
        "evaluation": {**evaluation.wire(), "samples": dataset.samples},
        "fromCache": True,
        "notes": evaluated.notes,
        "timings": [t.wire() for t in job.options.clock.timings()],
    }).record()
    return JobResult(_exit_code(full["outcome"]), full)


def _record_measurement(
    store: ObjectStore,
    prefix: str,
    evaluation: Evaluation,
    result: Any,
    dataset_read: Any,
    samples: int,
    artifact_sha256: str,
) -> dict[str, Any] | None:
    """The measurement with the dataset object it was taken on, stored for later versions."""
    if result.metric is None:
        return None
    metric = MetricReport.model_validate(
        {
            **result.metric.to_dict(),
            "dataset": DatasetReport(
                uri=evaluation.dataset_uri, etag=dataset_read.etag or None, sha256=dataset_read.sha256, samples=samples
            ).wire(),
        }
    )
    if dataset_read.etag:
        cachestore.write_measurement(store, prefix, evaluation, artifact_sha256, metric)
    return metric.wire()


def _field(check: Any, name: str | None = None) -> Any:
    """Run a validation; a ValueError becomes a usage failure that names the argument."""
    try:
        return check()
    except ValueError as exc:
        text = str(exc)
        raise Failure(exitcodes.USAGE, JobReason.INVALID_ARGUMENTS, text if name is None else f"{name}: {text}") from exc


def _exit_code(outcome: str) -> int:
    return exitcodes.SUCCESS if outcome == "Passed" else exitcodes.REJECTED

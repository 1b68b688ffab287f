"""Decisions about one ModelVersion: prerequisites, effective recipe, and its state from the
compression Job. The handler runs the I/O between these steps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelops.api.model import Compression, Evaluation, ModelSpec, Pruning, Signature
from modelops.api.trust import ProvenanceStatus
from modelops.api.types import Condition, ConditionType, Step, StepTiming, Toleration
from modelops.api.version import (
    ArtifactFormat,
    CompressedArtifact,
    CompressionReport,
    ModelVersionSpec,
    ModelVersionStatus,
    Phase,
    ReportOutcome,
    StoredFile,
    VersionReason,
)
from modelops.cachekey import InvalidRecipe, compressed_prefix, compression_cache_key, normalize_recipe
from modelops.contract import exitcodes
from modelops.contract.interface import Interface, signature_problems
from modelops.contract.report import ReportReason, reported_reason
from modelops.core import timeline
from modelops.core.conditions import FALSE, TRUE, Cond, merge_conditions
from modelops.core.objects import VersionView
from modelops.core.resolve import owner_of_number
from modelops.reuse import Reason

COMPRESSOR_CONTAINER = "compress"
# Termination messages are capped at 4096 bytes; excerpts in conditions stay short.
_EXCERPT = 400



@dataclass(frozen=True)
class Scheduling:
    """Where the compression Job runs, after defaults are applied."""

    gpus: int
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()


def effective_recipe(spec: ModelVersionSpec, model: ModelSpec) -> Compression:
    """The version's recipe with the Model's defaults filled in, normalised for the cache key.

    A pruning amount comes from the version, else from the Model's defaults where they set
    one; a pruning method with no amount anywhere is an InvalidRecipe, not silently none."""
    defaults = model.version_defaults.compression
    own = spec.compression or Compression()
    own_pruning = own.pruning or Pruning()
    default_amount = defaults.pruning.amount if "amount" in defaults.pruning.model_fields_set else None
    recipe = Compression(
        quantization=own.quantization or defaults.quantization,
        pruning=Pruning.model_construct(
            method=own_pruning.method or defaults.pruning.method,
            amount=own_pruning.amount if own_pruning.amount is not None else default_amount,
        ),
        target_format=own.target_format or defaults.target_format,
        block_size=own.block_size or defaults.block_size,
        objective=own.objective or defaults.objective,
        method=own.method or defaults.method,
        asymmetric=own.asymmetric if own.asymmetric is not None else defaults.asymmetric,
        calibration=own.calibration or defaults.calibration,
    )
    try:
        return normalize_recipe(recipe)
    except InvalidRecipe as err:
        raise InvalidRecipe(f"compression.{err}") from None


def effective_evaluation(spec: ModelVersionSpec, model: ModelSpec) -> Evaluation | None:
    return spec.evaluation or model.version_defaults.evaluation


def effective_scheduling(spec: ModelVersionSpec, model: ModelSpec) -> Scheduling:
    defaults = model.version_defaults.scheduling
    own = spec.scheduling
    gpus = own.gpus if own and own.gpus is not None else defaults.gpus
    node_selector = own.node_selector if own and own.node_selector is not None else defaults.node_selector
    tolerations = own.tolerations if own and own.tolerations is not None else defaults.tolerations
    return Scheduling(gpus=gpus, node_selector=dict(node_selector or {}), tolerations=tuple(tolerations or ()))


def cache_key(spec: ModelVersionSpec, model: ModelSpec) -> str:
    if spec.artifact.format == ArtifactFormat.DIRECTORY:
        return spec.artifact.digest  # served as uploaded: no recipe is part of it
    return compression_cache_key(spec.artifact.digest, effective_recipe(spec, model))


def artifact_objects(spec: ModelVersionSpec) -> list[tuple[str, str]]:
    """(field, URI) of every object of the artifact: the one file, or each file of a set."""
    artifact = spec.artifact
    if artifact.files is None:
        return [("spec.artifact.uri", artifact.uri)]
    return [(f"spec.artifact.files[{i}] ({f.path})", artifact.file_uri(f.path)) for i, f in enumerate(artifact.files)]


# The file list reaches the Job and the fetch container as one argument, and Linux refuses
# an argument above 128 KiB (MAX_ARG_STRLEN) at exec; stay below it with room to spare.
MAX_FILE_LIST_BYTES = 120_000


def file_list_bytes(spec: ModelVersionSpec) -> int:
    files = spec.artifact.files or []
    return len(json.dumps([f.wire() for f in files], sort_keys=True, separators=(",", ":")))


def artifact_problem(spec: ModelVersionSpec) -> VersionState | None:
    """Failed for a file list too long to pass to a container, and for a directory artifact with
    a recipe or a gate: nothing in it is compressed or run by the compressor, so neither could
    mean anything. The Model's versionDefaults do not apply to a directory."""
    size = file_list_bytes(spec)
    if size > MAX_FILE_LIST_BYTES:
        return waiting(
            Phase.FAILED, VersionReason.INVALID_SPEC,
            f"spec.artifact.files: the list is {size} bytes as JSON, more than the {MAX_FILE_LIST_BYTES} that fit "
            "one container argument; use shorter paths or fewer, larger files",
        )
    if spec.artifact.format != ArtifactFormat.DIRECTORY:
        return None
    if spec.compression is not None:
        return waiting(
            Phase.FAILED, VersionReason.INVALID_RECIPE,
            "spec.compression: an artifact of format directory is served as uploaded and cannot be compressed; "
            "remove spec.compression, or upload ONNX (format onnx) to compress it",
        )
    if spec.evaluation is not None:
        return waiting(
            Phase.FAILED, VersionReason.INVALID_SPEC,
            "spec.evaluation: an artifact of format directory is served as uploaded; the accuracy gate compares "
            "a compressed ONNX model with its parent and cannot run on it; remove spec.evaluation",
        )
    return None


def served_as_uploaded(spec: ModelVersionSpec, sizes: list[int]) -> VersionState:
    """Ready, serving the uploaded directory itself, once every file exists."""
    artifact = spec.artifact
    assert artifact.files is not None
    files = [StoredFile(path=f.path, sha256=f.sha256, bytes=size) for f, size in zip(artifact.files, sizes, strict=True)]
    served = CompressedArtifact(
        uri=artifact.uri, sha256=artifact.digest, bytes=sum(sizes), format=str(ArtifactFormat.DIRECTORY), files=files
    )
    return VersionState(
        Phase.READY, VersionReason.SERVED_AS_UPLOADED,
        f"{len(files)} files ({sum(sizes)} bytes) served as uploaded; each is verified by its sha256 when it is fetched",
        cache_key=artifact.digest, compressed=served,
    )


def output_prefix(spec: ModelVersionSpec, model: ModelSpec) -> str:
    return compressed_prefix(model.storage.bucket, cache_key(spec, model))


@dataclass(frozen=True)
class VersionState:
    """What a ModelVersion's status should say, minus bookkeeping."""

    phase: str
    reason: ReportReason
    message: str
    job_name: str | None = None
    cache_key: str | None = None
    compressed: CompressedArtifact | None = None
    report: CompressionReport | None = None
    provenance: ProvenanceStatus | None = None
    # Seconds until the operator should look again without being told (storage checks).
    retry_after: float | None = None
    # The compression Job's steps (download, compress, evaluate), from its report.
    job_timings: tuple[StepTiming, ...] = ()

    @property
    def progressing(self) -> bool:
        return self.phase in (Phase.PENDING, Phase.VERIFYING, Phase.COMPRESSING, Phase.EVALUATING)


def waiting(phase: str, reason: ReportReason, message: str, retry_after: float | None = None, **extra: Any) -> VersionState:
    return VersionState(phase=phase, reason=reason, message=message, retry_after=retry_after, **extra)


def check_prerequisites(
    view: VersionView, model_exists: bool, siblings: list[VersionView]
) -> VersionState | None:
    """Pending with a reason while the Model is missing or another version owns the number."""
    if not model_exists:
        return waiting(
            Phase.PENDING,
            VersionReason.MODEL_NOT_FOUND,
            f"Model {view.model} does not exist in this namespace; create it or fix spec.model",
        )
    owner = owner_of_number([*siblings, view], view.version)
    if owner is not None and owner.name != view.name:
        return waiting(
            Phase.PENDING,
            VersionReason.DUPLICATE_VERSION,
            f"version {view.version} of Model {view.model} is already claimed by ModelVersion {owner.name}; "
            "delete one of them or use another version number",
        )
    return None


def parse_report(text: str | None) -> dict[str, Any] | None:
    """The compressor's compact JSON report, or None when the text is not one."""
    if not text:
        return None
    try:
        report = json.loads(text)
    except ValueError:
        return None
    if not isinstance(report, dict) or report.get("outcome") not in tuple(ReportOutcome):
        return None
    return report


@dataclass(frozen=True)
class JobResult:
    """The compression Job as the operator sees it. While it runs, `report` and `exit_code`
    describe its last failed attempt, if any."""

    state: str  # "running", "succeeded" or "failed"
    report: dict[str, Any] | None = None
    exit_code: int | None = None
    detail: str = ""
    failed_attempts: int = 0
    # A pod of the running Job awaits the scheduler's first decision. That decision changes
    # the pod, not the Job, so no Job event will say that the pod cannot be placed.
    awaiting_scheduler: bool = False


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _terminations(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Terminated states of the compressor container, oldest first."""
    found = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != COMPRESSOR_CONTAINER:
                continue
            terminated = (status.get("state") or {}).get("terminated")
            if terminated:
                found.append(terminated)
    return sorted(found, key=lambda t: t.get("finishedAt") or "")


def _unschedulable(pods: list[dict[str, Any]]) -> str:
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return cond.get("message") or cond.get("reason") or "pod not scheduled"
    return ""


def _awaiting_scheduler(pods: list[dict[str, Any]]) -> bool:
    return any(
        (pod.get("status") or {}).get("phase", "Pending") == Phase.PENDING
        and not any(c.get("type") == "PodScheduled" for c in (pod.get("status") or {}).get("conditions") or [])
        for pod in pods
    )


def job_result(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobResult:
    """Running, succeeded or failed, with the report from the last termination message."""
    complete = _job_condition(job, "Complete")
    failed = _job_condition(job, "Failed")
    terminations = _terminations(pods)
    failures = [t for t in terminations if t.get("exitCode") != 0]
    # Failed pods may already be gone; the Job's own count survives them.
    failed_count = max(len(failures), int((job.get("status") or {}).get("failed") or 0))
    if complete:
        succeeded = [t for t in terminations if t.get("exitCode") == 0]
        message = succeeded[-1].get("message") if succeeded else None
        return JobResult("succeeded", parse_report(message), 0, failed_attempts=failed_count)
    if failed:
        if terminations:
            last = terminations[-1]
            message = last.get("message") or ""
            return JobResult(
                "failed", parse_report(message), last.get("exitCode"), message.strip()[-_EXCERPT:], failed_count
            )
        return JobResult("failed", None, None, f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip())
    last_failure = failures[-1] if failures else {}
    return JobResult(
        "running",
        parse_report(last_failure.get("message")),
        last_failure.get("exitCode"),
        _unschedulable(pods),
        failed_count,
        awaiting_scheduler=_awaiting_scheduler(pods),
    )


_EXIT_REASONS: dict[int | None, tuple[str, VersionReason, str]] = {
    exitcodes.BAD_ARTIFACT: (Phase.FAILED, VersionReason.BAD_ARTIFACT, "the artifact could not be verified or read"),
    exitcodes.REJECTED: (Phase.REJECTED, VersionReason.ACCURACY_GATE_REJECTED, "the compressed model failed the accuracy gate"),
    exitcodes.TRANSIENT: (Phase.FAILED, VersionReason.RETRIES_EXHAUSTED, "compression kept failing on transient errors (storage?)"),
    exitcodes.USAGE: (Phase.FAILED, VersionReason.INVALID_JOB_ARGUMENTS, "the compressor rejected its arguments; check operator and compressor versions"),
}


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _last_failure(result: JobResult) -> str:
    if result.report is not None:
        text = f"{result.report.get('reason') or 'Failed'}: {result.report.get('message') or ''}".strip()
    elif result.exit_code is not None:
        text = f"exit code {result.exit_code}"
    else:
        text = "unknown (the failed pod is gone)"
    return text[:_EXCERPT]


def _running(result: JobResult, job_name: str, key: str | None, recheck_seconds: float | None) -> VersionState:
    """A running Job: waiting for a node, retrying, or running."""
    recheck = recheck_seconds if result.awaiting_scheduler else None
    if result.detail:
        return waiting(
            Phase.COMPRESSING, VersionReason.JOB_PENDING, f"compression Job {job_name} is waiting for a node: {result.detail}",
            recheck, job_name=job_name, cache_key=key,
        )
    if result.failed_attempts:
        return waiting(
            Phase.COMPRESSING,
            VersionReason.JOB_RETRYING,
            f"compression Job {job_name} is retrying after {_attempts(result.failed_attempts)} failed; "
            f"last failure: {_last_failure(result)}",
            recheck,
            job_name=job_name,
            cache_key=key,
        )
    return waiting(Phase.COMPRESSING, VersionReason.JOB_RUNNING, f"compression Job {job_name} is running", recheck, job_name=job_name, cache_key=key)


def state_from_job(
    result: JobResult,
    job_name: str,
    key: str | None,
    recheck_seconds: float | None = None,
    evaluating: bool = False,
) -> VersionState:
    """The version's state from its compression Job. `recheck_seconds` is how soon to look
    again while a pod awaits the scheduler, whose verdict no Job event reports. A Job that
    evaluates a cached compression (`evaluating`) shows as Evaluating while it runs."""
    if result.state == "running":
        if evaluating:
            running = _running(result, job_name, key, recheck_seconds)
            return replace(running, phase=Phase.EVALUATING, message=running.message.replace("compression Job", "evaluation Job", 1))
        return _running(result, job_name, key, recheck_seconds)
    if result.report is not None:
        state = state_from_report(result.report, job_name=job_name, key=key, from_cache=False)
        if result.state == "failed" and result.exit_code == exitcodes.TRANSIENT and result.failed_attempts:
            # The Job's backoffLimit is spent: say so, the report alone reads like one failure.
            return replace(state, message=f"{state.message} (Job {job_name} gave up after {_attempts(result.failed_attempts)})")
        return state
    if result.state == "succeeded":
        return waiting(
            Phase.FAILED,
            VersionReason.REPORT_MISSING,
            f"compression Job {job_name} succeeded but left no readable report; recreate the ModelVersion to retry",
            job_name=job_name,
            cache_key=key,
        )
    phase, reason, summary = _EXIT_REASONS.get(
        result.exit_code, (Phase.FAILED, VersionReason.COMPRESSION_FAILED, f"the compressor exited with code {result.exit_code}")
    )
    detail = f": {result.detail}" if result.detail else ""
    return waiting(phase, reason, f"{summary} (Job {job_name}){detail}", job_name=job_name, cache_key=key)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _summary(report: CompressionReport) -> str:
    parts = []
    if report.ratio:
        parts.append(f"{report.ratio:.2f}x smaller ({_size(report.bytes_before)} to {_size(report.bytes_after)})")
    if report.device:
        parts.append(f"on {report.device}")
    text = "compressed " + " ".join(parts) if parts else "compressed"
    if report.chosen_quantization:
        text += f" with {report.chosen_quantization} (chosen by quantization auto)"
    metric = report.metric
    if metric is not None and metric.compressed is not None:
        text += f"; {metric.name} {metric.compressed:g}"
        if metric.drop is not None:
            text += f" (drop {metric.drop:g} points"
            text += f", allowed {metric.threshold:g})" if metric.threshold is not None else ")"
        elif metric.threshold is not None:
            text += f" (threshold {metric.threshold:g})"
    return text


def job_timings(report: dict[str, Any]) -> tuple[StepTiming, ...]:
    """The steps a Job's report timed; a report of another shape (an older Job's) has none."""
    try:
        return tuple(StepTiming.model_validate(t) for t in report.get("timings") or ())
    except (ValidationError, TypeError):
        return ()


def state_from_report(report: dict[str, Any], job_name: str | None, key: str | None, from_cache: bool) -> VersionState:
    """Ready, Rejected or Failed, from the compressor's report (or the cache's, `from_cache`).
    A cached report's timings are another version's: only a Job's own are kept."""
    state = _state_from_report(report, job_name, key, from_cache)
    return state if from_cache else replace(state, job_timings=job_timings(report))


def _state_from_report(report: dict[str, Any], job_name: str | None, key: str | None, from_cache: bool) -> VersionState:
    outcome = report.get("outcome")
    evaluated_cached = report.get("reason") == Reason.EVALUATED_FROM_CACHE
    try:
        details = CompressionReport.model_validate({**report, "fromCache": from_cache or evaluated_cached})
    except ValidationError:
        details = CompressionReport(from_cache=from_cache)
    if outcome == "Passed":
        try:
            artifact = CompressedArtifact.model_validate(report.get("artifact") or {})
        except ValidationError:
            return waiting(
                Phase.FAILED, VersionReason.REPORT_INVALID, "the compression report names no complete compressed artifact",
                job_name=job_name, cache_key=key, report=details,
            )
        reason: ReportReason
        if from_cache:
            reason, note = Reason.COMPRESSED_FROM_CACHE, f" ({report.get('message') or 'reused an identical earlier compression'})"
        elif evaluated_cached:
            reason, note = Reason.EVALUATED_FROM_CACHE, " (evaluated an identical earlier compression on this version's dataset)"
        else:
            reason, note = VersionReason.COMPRESSED, ""
        return VersionState(Phase.READY, reason, _summary(details) + note, job_name, key, artifact, details)
    phase = Phase.REJECTED if outcome == ReportOutcome.REJECTED else Phase.FAILED
    named = report.get("reason")
    reported = reported_reason(named)
    outcome_reason: ReportReason = reported or (
        VersionReason.ACCURACY_GATE_REJECTED if phase == Phase.REJECTED else VersionReason.COMPRESSION_FAILED
    )
    message = report.get("message") or _summary(details)
    if named and reported is None:  # a reason this operator does not know (a newer Job's): keep its name
        message = f"{named}: {message}"
    return VersionState(phase, outcome_reason, message, job_name, key, None, details)


def interface_matches(recorded: Any, signature: Signature) -> bool:
    """Whether a cached report's recorded interface (its `interface`) fits the Model's signature.
    An entry that recorded none does not: the Job compresses again and records it."""
    try:
        return not signature_problems(Interface.from_dict(recorded), signature)
    except (KeyError, TypeError, AttributeError):
        return False  # an entry that recorded no interface: the Job compresses again and records it


_BEFORE_VERIFIED = (None, Phase.PENDING, Phase.VERIFYING)


def version_timings(old: dict[str, Any], state: VersionState, created: str | None, now: datetime) -> list[StepTiming] | None:
    """The steps timed so far: the earlier ones kept, verify once the source is verified (the
    version leaves Pending and Verifying for a Job, a cached compression or their verdict), and the
    Job's steps once its report is read."""
    timings = {t.step: t for t in (StepTiming.model_validate(x) for x in old.get("timings") or [])}
    verified = state.phase in (Phase.COMPRESSING, Phase.EVALUATING, Phase.READY) or (
        state.phase in (Phase.REJECTED, Phase.FAILED) and (state.job_name is not None or state.report is not None))
    if verified and Step.VERIFY not in timings and old.get("phase") in _BEFORE_VERIFIED:
        verify = timeline.step(Step.VERIFY, timeline.parse_time(created), now)
        if verify is not None:
            timings[Step.VERIFY] = verify
    timings.update({t.step: t for t in state.job_timings})
    return sorted(timings.values(), key=lambda t: list(Step).index(t.step)) or None


def version_status(
    old: dict[str, Any] | None, state: VersionState, generation: int | None, now: datetime,
    artifact_bucket: str | None = None, created: str | None = None,
) -> dict[str, Any]:
    """The full status to store for `state`, keeping unchanged transition times."""
    old = old or {}
    ready = Cond(ConditionType.READY, TRUE if state.phase == Phase.READY else FALSE, state.reason, state.message)
    progressing = Cond(
        ConditionType.PROGRESSING,
        TRUE if state.progressing else FALSE,
        state.reason if state.progressing else state.phase,
        state.message if state.progressing else f"{state.phase}: nothing more to do for this version",
    )
    conditions = merge_conditions(old.get("conditions"), [ready, progressing], generation, now) + [
        # Derived from the ModelDeployments' failedVersions, with failedBy (handlers/versions.py).
        c for c in old.get("conditions") or [] if c.get("type") == ConditionType.ROLLOUT_FAILED
    ]
    status = ModelVersionStatus(
        observed_generation=generation,
        phase=state.phase,
        job_name=state.job_name or old.get("jobName"),
        artifact_bucket=artifact_bucket,
        cache_key=state.cache_key or old.get("cacheKey"),
        compressed_artifact=state.compressed,
        report=state.report,
        # Verified once, before the Job or the cache is used; later states keep it.
        provenance=state.provenance or old.get("provenance"),
        timings=version_timings(old, state, created, now),
        conditions=[Condition.model_validate(c) for c in conditions],
    )
    return status.wire()

"""Reconcile one ModelVersion: check what the schema cannot, then create and follow its Job.
This is the one writer of ModelVersions: their status, failedBy and RolloutFailed included
(derived from the failedVersions of the Model's ModelDeployments in the cache), and their
ownerReferences (the version adopts itself to its Model)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from modelops import cachestore, reuse
from modelops import kube as k8s
from modelops.api.model import Compression, ModelSpec
from modelops.api.trust import ProvenanceReason, ProvenanceStatus
from modelops.api.version import (
    TERMINAL_PHASES,
    ArtifactFormat,
    ModelVersionSpec,
    Phase,
    VersionReason,
    same_datasets_problem,
)
from modelops.cachekey import InvalidRecipe
from modelops.core import naming, render
from modelops.core.objects import OwnerRef, VersionView, owned_by
from modelops.core.rollout import failed_by, failed_by_status
from modelops.core.versions import (
    VersionState,
    artifact_objects,
    artifact_problem,
    cache_key,
    check_prerequisites,
    effective_evaluation,
    effective_recipe,
    effective_scheduling,
    interface_matches,
    job_result,
    output_prefix,
    served_as_uploaded,
    state_from_job,
    state_from_report,
    version_status,
    waiting,
)
from modelops.handlers.context import Context, CredentialsProblem, EndpointProblem
from modelops.handlers.provenance import cached_signature_verifies, check_source, sign_output
from modelops.handlers.queue import Key
from modelops.handlers.reads import StorageReads
from modelops.storage import (
    AccessDenied,
    InvalidRequest,
    ObjectNotFound,
    StorageError,
    StorageUnreachable,
    TLSVerificationFailed,
    parse_s3_uri,
)

_WARNING_PHASES = {Phase.REJECTED, Phase.FAILED}
# Cache decisions that end the version without a Job, and why a cached entry is compressed again.
_REUSED = (reuse.Action.READY, reuse.Action.REJECT)
_BROKEN = "the cached compression's signature does not verify"


def reconcile_version(ctx: Context, key: Key) -> float | None:
    body = ctx.reads.get(k8s.MODELVERSIONS, key.namespace, key.name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        ctx.metrics.versions.set(key.namespace, key.name, None)
        return None
    body = ctx.adopt(k8s.MODELVERSIONS, body)
    status = body.get("status") or {}
    names = failed_by_of(ctx, body)
    if status.get("phase") in TERMINAL_PHASES:
        marks = failed_by_status(status, names, ctx.clock())
        if marks is not None:
            ctx.write_status(k8s.MODELVERSIONS, body, {**status, **marks})
        ctx.metrics.versions.set(key.namespace, key.name, status["phase"])
        return None
    state = _decide(ctx, body)
    generation = body["metadata"].get("generation")
    new_status = version_status(status, state, generation, ctx.clock(), artifact_bucket=_artifact_bucket(body),
                                created=body["metadata"].get("creationTimestamp"))
    marks = failed_by_status({**new_status, "failedBy": status.get("failedBy")}, names, ctx.clock())
    if marks is not None:
        new_status.update(marks)
    elif names:
        new_status["failedBy"] = list(names)
    if ctx.write_status(k8s.MODELVERSIONS, body, new_status) and status.get("phase") != state.phase:
        event_type = "Warning" if state.phase in _WARNING_PHASES else "Normal"
        ctx.kube.emit_event(body, event_type, state.reason, f"{state.phase}: {state.message}")
        ctx.metrics.phase_changes.labels(state.phase, state.reason).inc()
    ctx.metrics.versions.set(key.namespace, key.name, state.phase, fresh=not status.get("phase"))
    return state.retry_after


def failed_by_of(ctx: Context, body: dict[str, Any]) -> tuple[str, ...]:
    """The ModelDeployments of this version's Model that hold its number in failedVersions."""
    meta = body["metadata"]
    model = (body.get("spec") or {}).get("model", "")
    deployments = [
        (d["metadata"]["name"], (d.get("status") or {}).get("failedVersions") or ())
        for d in ctx.reads.deployments_of(meta["namespace"], model) if not d["metadata"].get("deletionTimestamp")
    ]
    try:
        view = VersionView.from_body(body)
    except (TypeError, ValueError):
        return ()  # a spec the schema let through but that names no number: _decide says so
    return failed_by(view, (VersionView.from_body(b) for b in ctx.reads.versions_of(meta["namespace"], model)), deployments)


def _artifact_bucket(body: dict[str, Any]) -> str | None:
    try:
        return parse_s3_uri(str(((body.get("spec") or {}).get("artifact") or {}).get("uri", ""))).bucket
    except StorageError:
        return None  # a URI the schema let through but that is not s3://bucket/key: _decide says so


def _decide(ctx: Context, body: dict[str, Any]) -> VersionState:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = ModelVersionSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        return waiting(Phase.FAILED, VersionReason.INVALID_SPEC, f"spec does not match the API: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}")
    model_body = ctx.reads.get(k8s.MODELS, namespace, spec.model)
    siblings = [VersionView.from_body(b) for b in ctx.reads.versions_of(namespace, spec.model) if b["metadata"]["name"] != name]
    blocked = check_prerequisites(VersionView.from_body(body), model_body is not None, siblings)
    if blocked is not None:
        return blocked
    assert model_body is not None  # check_prerequisites stops at a missing Model
    model = ModelSpec.model_validate(model_body["spec"])
    refused = artifact_problem(spec)
    if refused is not None:
        return refused
    try:
        key = cache_key(spec, model)
    except InvalidRecipe as err:
        return waiting(Phase.FAILED, VersionReason.INVALID_RECIPE, str(err))
    # The apiserver refuses this within one ModelVersion; a gate or calibration from the Model's
    # versionDefaults only meets the version's here.
    # Before normalising: a recipe that ignores calibration drops it, but the rule holds anyway.
    calibration = (spec.compression.calibration if spec.compression else None) or model.version_defaults.compression.calibration
    same = same_datasets_problem(Compression(calibration=calibration), effective_evaluation(spec, model))
    if same is not None:
        return waiting(Phase.FAILED, VersionReason.INVALID_SPEC, f"{same} (with the Model's versionDefaults)")
    job_name = naming.job_name(name)
    job = ctx.reads.get(k8s.JOBS, namespace, job_name)
    # A Job that evaluates a cached compression shows as Evaluating while it runs; the phase
    # it was created with is the record of that.
    evaluating = (body.get("status") or {}).get("phase") == Phase.EVALUATING
    signed: ProvenanceStatus | None = None
    if job is None:
        started = _start(ctx, body, spec, model, key, job_name)
        if isinstance(started, VersionState):
            return _sign(ctx, body, spec, model, started)
        job, evaluating, signed = started
    if not owned_by(job, meta["uid"]):
        return waiting(
            Phase.PENDING, VersionReason.JOB_NAME_TAKEN,
            f"a Job named {job_name} exists but does not belong to this ModelVersion; delete it",
            retry_after=ctx.settings.retry_seconds,
        )
    pods = ctx.reads.pods_of_job(namespace, job["metadata"]["uid"])
    result = job_result(job, pods)
    if result.state == "succeeded" and result.report is None:
        result = replace(result, report=_stored_report(ctx, namespace, spec, model))
    state = state_from_job(result, job_name, key, recheck_seconds=ctx.settings.retry_seconds, evaluating=evaluating)
    return _sign(ctx, body, spec, model, replace(state, provenance=signed) if signed is not None else state)


def _sign(ctx: Context, body: dict[str, Any], spec: ModelVersionSpec, model: ModelSpec, state: VersionState) -> VersionState:
    """A Ready state once the operator signed what it is about to serve (when it has a key)."""
    if state.phase != Phase.READY or not ctx.settings.signing_key_secret:
        return state
    old = (body.get("status") or {}).get("provenance")
    try:
        store = ctx.store_for(body["metadata"]["namespace"], model.storage)
    except CredentialsProblem as err:
        retry = ctx.settings.retry_seconds
        return waiting(Phase.COMPRESSING, ProvenanceReason.SIGNING_FAILED, f"{err}; checked again every {retry:g}s", retry,
                       job_name=state.job_name, cache_key=state.cache_key)
    return sign_output(ctx, store, spec, model, state, ProvenanceStatus.model_validate(old) if old else None)


def storage_problem(err: StorageError, field: str, uri: str, retry: float) -> VersionState:
    """A storage answer about `field` (its URI `uri`) as a state: Verifying and retried only when
    the storage could not answer (5xx, throttling, connection); every answer it gave is final."""
    if isinstance(err, StorageUnreachable):
        # The request that failed may be a bucket HEAD made first: say what it was checking.
        what = "" if uri in str(err) else f" (checking {field} {uri})"
        return waiting(Phase.VERIFYING, VersionReason.STORAGE_UNREACHABLE, f"{err}{what}; retrying every {retry:g}s", retry)
    if isinstance(err, TLSVerificationFailed):
        # Not retried on a timer: the same certificate and CAs give the same answer. A change
        # of the Model (its caBundle, endpoint or verifyTLS) wakes the version again.
        return waiting(Phase.VERIFYING, VersionReason.TLS_VERIFICATION_FAILED, f"{err}; fix the Model to retry")
    if isinstance(err, AccessDenied):
        return waiting(
            Phase.FAILED, reuse.Reason.ACCESS_DENIED,
            f"{field}: the Model's credentials may not read {uri}; fix the Secret or the bucket policy, "
            "then recreate the ModelVersion",
        )
    if isinstance(err, InvalidRequest):
        return waiting(
            Phase.FAILED, reuse.Reason.INVALID_ARTIFACT_URI,
            f"{field}: storage refused {uri!r} as a request ({err}); fix the URI in a new ModelVersion",
        )
    return waiting(Phase.FAILED, VersionReason.STORAGE_ERROR, f"{field}: {err}")


def bucket_missing(store: StorageReads, bucket: str) -> bool:
    """Whether HEAD bucket says the bucket does not exist. Credentials that may read objects but
    not HEAD the bucket (no s3:ListBucket) are no verdict: the object reads decide then."""
    try:
        return not store.bucket_exists_recent(bucket)
    except AccessDenied:
        return False


def _artifact_missing(store: StorageReads, uri: str, retry: float, field: str = "spec.artifact.uri") -> VersionState:
    """Verifying, naming what is missing: the artifact's bucket itself, or only its key (and,
    in a file set, which file)."""
    bucket = parse_s3_uri(uri).bucket
    try:
        missing = bucket_missing(store, bucket)
    except StorageError as err:
        return storage_problem(err, "spec.artifact.uri", uri, retry)
    if missing:
        message = (f"bucket {bucket} of spec.artifact.uri ({uri}) does not exist; fix the URI in a new "
                   f"ModelVersion or create the bucket (checked again every {retry:g}s)")
        return waiting(Phase.VERIFYING, VersionReason.BUCKET_NOT_FOUND, message, retry)
    which = "" if field == "spec.artifact.uri" else f" ({field})"
    message = f"no object at {uri}{which}; upload it (checked again every {retry:g}s)"
    return waiting(Phase.VERIFYING, VersionReason.ARTIFACT_NOT_FOUND, message, retry)


def _check_objects(
    ctx: Context, namespace: str, spec: ModelVersionSpec, model: ModelSpec
) -> VersionState | tuple[StorageReads, list[int]]:
    """The Model's storage and the version's objects, before anything else: an endpoint it may
    reach, its credentials, its bucket and every file of the artifact (HEAD). Returns the store
    and the files' sizes, or the state that says what is missing."""
    retry = ctx.settings.retry_seconds
    insecure = model.storage.transport_problem()
    if insecure is not None:  # a Model stored before the apiserver refused http:// without insecure
        return waiting(Phase.VERIFYING, VersionReason.INSECURE_ENDPOINT, insecure)
    # The object a storage error is about: the artifact, or in a set the file being checked.
    field, uri = "spec.artifact.uri", spec.artifact.uri
    sizes: list[int] = []
    try:
        store = ctx.store_for(namespace, model.storage)
        # The Job writes its output to the Model's bucket: a wrong one is named before any Job.
        if bucket_missing(store, model.storage.bucket):
            message = (f"bucket {model.storage.bucket} named in spec.storage.bucket of Model {spec.model} does not "
                       f"exist; create it or fix the Model (checked again every {retry:g}s)")
            return waiting(Phase.VERIFYING, VersionReason.BUCKET_NOT_FOUND, message, retry)
        for field, uri in artifact_objects(spec):  # noqa: B007 - the except clauses name the file that failed
            sizes.append(store.head_recent(uri).size)
    except EndpointProblem as err:  # a change of the Model wakes the version: no timer
        return waiting(Phase.VERIFYING, VersionReason.ENDPOINT_NOT_ALLOWED, f"{err}; no request was sent")
    except CredentialsProblem as err:
        return waiting(Phase.VERIFYING, VersionReason(err.reason), f"{err}; create it in namespace {namespace}", retry)
    except ObjectNotFound:
        return _artifact_missing(store, uri, retry, field)
    except StorageError as err:
        return storage_problem(err, field, uri, retry)
    return store, sizes


def _start(
    ctx: Context, body: dict[str, Any], spec: ModelVersionSpec, model: ModelSpec, key: str, job_name: str
) -> VersionState | tuple[dict[str, Any], bool, ProvenanceStatus | None]:
    """Verify the artifact and its signature, decide on the cache, or create the Job (evaluating only?, source signer)."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    retry = ctx.settings.retry_seconds
    checked = _check_objects(ctx, namespace, spec, model)
    if isinstance(checked, VersionState):
        return checked
    store, sizes = checked
    # Before the cache or a Job: an unsigned or untrusted artifact is never compressed, reused
    # or served as uploaded.
    signed = _source_provenance(ctx, store, namespace, spec, model)
    if isinstance(signed, VersionState):
        return signed
    if spec.artifact.format == ArtifactFormat.DIRECTORY:
        return replace(served_as_uploaded(spec, sizes), provenance=signed)

    evaluation = effective_evaluation(spec, model)
    recipe = effective_recipe(spec, model)
    prefix = output_prefix(spec, model)
    try:
        lookup = cachestore.look_up(store, prefix, spec.artifact.digest, recipe, evaluation)
    except StorageError as err:
        # Storage errors name the URI they were about: the dataset, or the cache entry.
        on_dataset = evaluation is not None and evaluation.dataset_uri in str(err)
        field, uri = ("evaluation.datasetUri", evaluation.dataset_uri) if on_dataset and evaluation else ("cache entry", prefix)
        return storage_problem(err, field, uri, retry)
    decision = lookup.decision
    if decision.action == reuse.Action.FAIL:
        return waiting(Phase.FAILED, decision.reason, decision.message, cache_key=key)
    recompress = _cache_signature_broken(ctx, store, lookup, prefix)
    if isinstance(recompress, VersionState):
        return recompress
    cached = cachestore.reused_report(lookup, evaluation) if not recompress and decision.action in _REUSED else None
    # A cached result counts only when its recorded interface fits this Model's signature;
    # otherwise the Job checks the artifact itself.
    if cached is not None and (decision.action == reuse.Action.REJECT or interface_matches(cached.get("interface"), model.signature)):
        ctx.metrics.cache_hits.inc()
        return replace(state_from_report(cached, job_name=None, key=key, from_cache=True), provenance=signed)

    job = render.render_job(render.JobInputs(
        name=job_name,
        namespace=namespace,
        owner=OwnerRef.of(body),
        model=spec.model,
        version_name=meta["name"],
        version=spec.version,
        artifact=spec.artifact.wire(),
        recipe=recipe.wire(),
        evaluation=evaluation.wire() if evaluation is not None else None,
        output_prefix=prefix,
        storage=model.storage,
        signature=model.signature,
        scheduling=effective_scheduling(spec, model),
        settings=ctx.settings,
        source_signer=signed.signer if signed is not None else None,
        recompress=recompress,
    ))
    created_job, created = ctx.kube.create(k8s.JOBS, job)
    ctx.reads.wrote(k8s.JOBS, created_job)
    evaluating = decision.action == reuse.Action.EVALUATE and not recompress
    if created:
        ctx.metrics.jobs_created.inc()
        what = "evaluation" if evaluating else "compression"
        ctx.kube.emit_event(body, "Normal", "JobCreated", f"created {what} Job {job_name}: {_BROKEN if recompress else decision.message}")
    return created_job, evaluating, signed


def _source_provenance(
    ctx: Context, store: StorageReads, namespace: str, spec: ModelVersionSpec, model: ModelSpec
) -> VersionState | ProvenanceStatus | None:
    """Who signed the source (None: unsigned and allowed), or the state that stops the version."""
    try:
        verified = check_source(ctx, store, namespace, spec, model)
    except StorageError as err:
        assert spec.artifact.signature is not None
        return storage_problem(err, "spec.artifact.signature.uri", spec.artifact.signature.uri, ctx.settings.retry_seconds)
    if isinstance(verified, VersionState):
        return verified
    return ProvenanceStatus(signer=verified.signer) if verified is not None else None


def _cache_signature_broken(ctx: Context, store: StorageReads, lookup: cachestore.Lookup, prefix: str) -> VersionState | bool:
    """Whether the cached entry must be compressed again: a cached compression counts only while
    the operator's signature of it verifies (when the operator signs at all)."""
    if not ctx.settings.signing_key_secret or lookup.report is None:
        return False
    if lookup.decision.action not in (reuse.Action.READY, reuse.Action.EVALUATE):
        return False
    try:
        return not cached_signature_verifies(ctx, store, lookup.report)
    except StorageError as err:
        return storage_problem(err, "cache entry", prefix, ctx.settings.retry_seconds)


def _stored_report(ctx: Context, namespace: str, spec: ModelVersionSpec, model: ModelSpec) -> dict[str, Any] | None:
    """What the Job left in storage, for when its termination message is unusable: judged by the
    same reuse decision as a cache hit, so an evaluation-only Job's verdict counts only through
    the measurement it recorded for this version's gate, never through the compression record's."""
    try:
        store = ctx.store_for(namespace, model.storage)
        evaluation = effective_evaluation(spec, model)
        lookup = cachestore.look_up(store, output_prefix(spec, model), spec.artifact.digest, effective_recipe(spec, model), evaluation)
    except (CredentialsProblem, StorageError):
        return None
    if lookup.decision.action not in (reuse.Action.READY, reuse.Action.REJECT):
        return None
    return cachestore.reused_report(lookup, evaluation)

"""Reconcile one ModelVersion: check what the schema cannot, then create and follow its Job."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from modelops import kube as k8s
from modelops.api.model import ModelSpec
from modelops.api.version import TERMINAL_PHASES, ModelVersionSpec
from modelops.cachekey import InvalidRecipe
from modelops.core import naming, render
from modelops.core.objects import OwnerRef, VersionView, owned_by
from modelops.core.versions import (
    VersionState,
    cache_key,
    cached_report_usable,
    check_prerequisites,
    effective_evaluation,
    effective_recipe,
    effective_scheduling,
    job_result,
    output_prefix,
    parse_report,
    report_uri,
    state_from_job,
    state_from_report,
    version_status,
    waiting,
)
from modelops.handlers.context import Context, CredentialsProblem
from modelops.handlers.queue import Key
from modelops.storage import AccessDenied, ObjectNotFound, ObjectStore, StorageError, StorageUnreachable

_WARNING_PHASES = {"Rejected", "Failed"}


def reconcile_version(ctx: Context, key: Key) -> float | None:
    body = ctx.kube.get(k8s.MODELVERSIONS, key.namespace, key.name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        ctx.metrics.versions.set(key.namespace, key.name, None)
        return None
    status = body.get("status") or {}
    if status.get("phase") in TERMINAL_PHASES:
        ctx.metrics.versions.set(key.namespace, key.name, status["phase"])
        return None
    state = _decide(ctx, body)
    generation = body["metadata"].get("generation")
    new_status = version_status(status, state, generation, ctx.clock())
    if ctx.write_status(k8s.MODELVERSIONS, body, new_status) and status.get("phase") != state.phase:
        event_type = "Warning" if state.phase in _WARNING_PHASES else "Normal"
        ctx.kube.emit_event(body, event_type, state.reason, f"{state.phase}: {state.message}")
    ctx.metrics.versions.set(key.namespace, key.name, state.phase)
    return state.retry_after


def _decide(ctx: Context, body: dict[str, Any]) -> VersionState:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = ModelVersionSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        return waiting("Failed", "InvalidSpec", f"spec does not match the API: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}")
    model_body = ctx.kube.get(k8s.MODELS, namespace, spec.model)
    siblings = [
        VersionView.from_body(b)
        for b in ctx.kube.list(k8s.MODELVERSIONS, namespace, field_selector=f"spec.model={spec.model}")
        if b["metadata"]["name"] != name
    ]
    blocked = check_prerequisites(VersionView.from_body(body), model_body is not None, siblings)
    if blocked is not None:
        return blocked
    model = ModelSpec.model_validate(model_body["spec"])
    try:
        key = cache_key(spec, model)
    except InvalidRecipe as err:
        return waiting("Failed", "InvalidRecipe", str(err))
    job_name = naming.job_name(name)
    job = ctx.kube.get(k8s.JOBS, namespace, job_name)
    if job is None:
        started = _start(ctx, body, spec, model, key, job_name)
        if isinstance(started, VersionState):
            return started
        job = started
    if not owned_by(job, meta["uid"]):
        return waiting(
            "Pending", "JobNameTaken",
            f"a Job named {job_name} exists but does not belong to this ModelVersion; delete it",
            retry_after=ctx.settings.retry_seconds,
        )
    pods = ctx.kube.list(
        k8s.PODS, namespace, label_selector=f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"
    )
    result = job_result(job, pods)
    if result.state == "succeeded" and result.report is None:
        result = replace(result, report=_stored_report(ctx, namespace, model, output_prefix(spec, model)))
    return state_from_job(result, job_name, key, recheck_seconds=ctx.settings.retry_seconds)


def _start(
    ctx: Context, body: dict[str, Any], spec: ModelVersionSpec, model: ModelSpec, key: str, job_name: str
) -> VersionState | dict[str, Any]:
    """Verify the artifact, reuse a cached compression, or create the Job."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    retry = ctx.settings.retry_seconds
    try:
        store = ctx.store_for(namespace, model.storage)
        store.head(spec.artifact.uri)
    except CredentialsProblem as err:
        return waiting("Verifying", "CredentialsNotFound", f"{err}; create it in namespace {namespace}", retry)
    except ObjectNotFound:
        return waiting("Verifying", "ArtifactNotFound", f"no object at {spec.artifact.uri}; upload it (checked again every {retry:g}s)", retry)
    except AccessDenied:
        return waiting("Verifying", "AccessDenied", f"the Model's credentials may not read {spec.artifact.uri}; fix the Secret or the bucket policy", retry)
    except StorageUnreachable as err:
        return waiting("Verifying", "StorageUnreachable", f"{err}; retrying every {retry:g}s", retry)
    except StorageError as err:
        return waiting("Verifying", "StorageError", f"{err}; retrying every {retry:g}s", retry)

    evaluation = effective_evaluation(spec, model)
    prefix = output_prefix(spec, model)
    cached = _read_report(store, report_uri(prefix))
    if cached_report_usable(cached, evaluation, model.signature):
        ctx.metrics.cache_hits.inc()
        return state_from_report(cached, job_name=None, key=key, from_cache=True)

    job = render.render_job(
        name=job_name,
        namespace=namespace,
        owner=OwnerRef.of(body),
        model=spec.model,
        version_name=meta["name"],
        version=spec.version,
        artifact=spec.artifact.wire(),
        recipe=effective_recipe(spec, model),
        evaluation=evaluation,
        output_prefix=prefix,
        storage=model.storage,
        signature=model.signature,
        scheduling=effective_scheduling(spec, model),
        settings=ctx.settings,
    )
    created_job, created = ctx.kube.create(k8s.JOBS, job)
    if created:
        ctx.metrics.jobs_created.inc()
        ctx.kube.emit_event(body, "Normal", "JobCreated", f"created compression Job {job_name}")
    return created_job


def _read_report(store: ObjectStore, uri: str) -> dict[str, Any] | None:
    try:
        return parse_report(store.read_bytes(uri).decode("utf-8", "replace"))
    except StorageError:
        return None


def _stored_report(ctx: Context, namespace: str, model: ModelSpec, prefix: str) -> dict[str, Any] | None:
    """The report the Job left in storage, for when its termination message is unusable."""
    try:
        return _read_report(ctx.store_for(namespace, model.storage), report_uri(prefix))
    except CredentialsProblem:
        return None

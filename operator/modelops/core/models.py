"""A Model's status, aggregated from its versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from modelops.api.model import ModelReason, ModelStatus, StorageSpec, TransportReason, VersionCounts
from modelops.api.types import Condition, ConditionType
from modelops.api.version import Phase
from modelops.core.conditions import FALSE, TRUE, Cond, merge_conditions
from modelops.core.objects import VersionView
from modelops.core.resolve import effective_versions


def version_counts(versions: list[VersionView]) -> dict[str, int]:
    counts = {phase.lower(): 0 for phase in Phase}
    for view in versions:
        if not view.deleting:
            counts[(view.phase or Phase.PENDING).lower()] += 1
    return {"total": sum(counts.values()), **counts}


def latest_ready(versions: list[VersionView]) -> int | None:
    ready = [n for n, v in effective_versions(versions).items() if v.ready]
    return max(ready) if ready else None


def transport_condition(storage: StorageSpec) -> Cond:
    """StorageTransport: True only when the connection to storage is TLS with the certificate verified."""
    refused = storage.transport_problem()
    if refused is not None:
        return Cond(ConditionType.STORAGE_TRANSPORT, FALSE, TransportReason.INSECURE_ENDPOINT, refused)
    warning = storage.transport_warning()
    if warning is not None:
        plaintext = bool(storage.endpoint and storage.endpoint.startswith("http://"))
        reason = TransportReason.PLAINTEXT if plaintext else TransportReason.VERIFICATION_DISABLED
        return Cond(ConditionType.STORAGE_TRANSPORT, FALSE, reason, warning)
    by = "the CA bundle in spec.storage.caBundle" if storage.ca_bundle else "the system's CAs"
    return Cond(ConditionType.STORAGE_TRANSPORT, TRUE, TransportReason.TLS_VERIFIED, f"TLS, certificate verified with {by}")


def model_status(
    old: dict[str, Any] | None,
    name: str,
    versions: list[VersionView],
    credentials_problem: str | None,
    generation: int | None,
    now: datetime,
    *,
    problem_reason: str = ModelReason.CREDENTIALS_NOT_FOUND,
    transport: Cond | None = None,
) -> dict[str, Any]:
    """Counts by phase, the latest Ready version, Ready (something can be served) and, when
    given, StorageTransport."""
    old = old or {}
    latest = latest_ready(versions)
    if credentials_problem:
        ready = Cond(ConditionType.READY, FALSE, problem_reason, credentials_problem)
    elif latest is None:
        ready = Cond(ConditionType.READY, FALSE, ModelReason.NO_READY_VERSION, f"no version of Model {name} is Ready yet")
    else:
        ready = Cond(ConditionType.READY, TRUE, ModelReason.VERSION_READY, f"version {latest} is Ready")
    conditions = merge_conditions(old.get("conditions"), [ready] if transport is None else [ready, transport], generation, now)
    status = ModelStatus(
        observed_generation=generation,
        latest_ready_version=latest,
        versions=VersionCounts.model_validate(version_counts(versions)),
        conditions=[Condition.model_validate(c) for c in conditions],
    )
    return status.wire()

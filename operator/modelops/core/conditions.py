"""Conditions in the Kubernetes convention, merged so that lastTransitionTime only moves when
the status does. That keeps a reconcile with nothing new from writing anything."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelops.api.types import ConditionStatus, ConditionType

TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE


@dataclass(frozen=True)
class Cond:
    """A condition as a decision produces it, before it meets the stored ones."""

    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str = ""


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes it."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    existing: list[dict[str, Any]] | None,
    wanted: list[Cond],
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The new condition list: wanted conditions in order, keeping a transition time whose
    status did not change. Conditions of types not wanted are dropped."""
    by_type = {c.get("type"): c for c in existing or []}
    merged = []
    for cond in wanted:
        old = by_type.get(cond.type)
        if old is not None and old.get("status") == cond.status and old.get("lastTransitionTime"):
            since = old["lastTransitionTime"]
        else:
            since = timestamp(now)
        entry: dict[str, Any] = {
            "type": str(cond.type),
            "status": str(cond.status),
            "reason": str(cond.reason),
            "message": cond.message,
            "lastTransitionTime": since,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        merged.append(entry)
    return merged


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None

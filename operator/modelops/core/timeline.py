"""Time to ready, step by step, from the timestamps Kubernetes and the compression Job keep.

Pure: it reads Pod bodies as the API returns them, and the Job's report, and returns the steps
of api/types.Step with their start, end and length. A rollout's steps come from its first ready
pod of the new version: the pod's creation, its PodScheduled condition, the fetch container's
start and end, and the Ready condition. Kubernetes keeps these to the second.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from modelops.api.types import Step, StepTiming
from modelops.core import naming
from modelops.core.conditions import timestamp


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time as Kubernetes writes it (seconds, or with a fraction), or None."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def step(name: Step, started: datetime | None, finished: datetime | None) -> StepTiming | None:
    """The step between two moments, or None when either is unknown or they are out of order."""
    if started is None or finished is None or finished < started:
        return None
    return StepTiming(step=name, started_at=timestamp(started), finished_at=timestamp(finished),
                      seconds=round((finished - started).total_seconds(), 3))


def _condition_time(pod: dict[str, Any], kind: str) -> datetime | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return parse_time(condition.get("lastTransitionTime"))
    return None


def _terminated(statuses: Iterable[dict[str, Any]], exit_code: int = 0) -> tuple[datetime | None, datetime | None]:
    """The start and end of the last init container that ended with `exit_code`: the fetch."""
    found: tuple[datetime | None, datetime | None] = (None, None)
    for status in statuses:
        ended = (status.get("state") or {}).get("terminated") or {}
        if ended.get("exitCode") == exit_code:
            found = (parse_time(ended.get("startedAt")), parse_time(ended.get("finishedAt")))
    return found


def pod_steps(pod: dict[str, Any]) -> list[StepTiming]:
    """schedule, fetch and load of one ready pod (the steps it has timestamps for)."""
    status = pod.get("status") or {}
    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    scheduled = _condition_time(pod, "PodScheduled")
    fetch_started, fetch_finished = _terminated(status.get("initContainerStatuses") or [])
    ready = _condition_time(pod, "Ready")
    # The server starts when the last init container ends; without one, when the pod was scheduled.
    loading_from = fetch_finished or scheduled
    steps = [step(Step.SCHEDULE, created, scheduled), step(Step.FETCH, fetch_started, fetch_finished),
             step(Step.LOAD, loading_from, ready)]
    return [s for s in steps if s is not None]


def first_ready_pod(pods: Iterable[dict[str, Any]], version: int) -> dict[str, Any] | None:
    """The pod of `version` that became ready first."""
    mine = [(ready, pod) for pod in pods
            if ((pod.get("metadata") or {}).get("labels") or {}).get(naming.LABEL_VERSION) == str(version)
            and (ready := _condition_time(pod, "Ready")) is not None]
    return min(mine, key=lambda pair: pair[0])[1] if mine else None


def rollout_steps(pods: Iterable[dict[str, Any]], version: int, started_at: str, finished_at: str) -> list[StepTiming]:
    """A finished rollout's steps: its first ready pod's schedule, fetch and load, and ready
    (the rollout's start to its end)."""
    pod = first_ready_pod(pods, version)
    steps = pod_steps(pod) if pod is not None else []
    whole = step(Step.READY, parse_time(started_at), parse_time(finished_at))
    return [*steps, *([whole] if whole is not None else [])]

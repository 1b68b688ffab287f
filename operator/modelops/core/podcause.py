"""Why a Triton rollout failed, in the pods' own words, and the field a user changes to fix it.

Pure: it reads Pod bodies (as the API returns them) and returns one line for a condition.
"""

from __future__ import annotations

from typing import Any

from modelops.contract.exitcodes import BAD_ARTIFACT
from modelops.core import naming

MAX_DETAIL = 300  # characters of a container's message kept: a log tail can be long
# The fetch's termination message is one line that starts with its reason: keep its head.
MAX_REFUSAL = 600

# Words of Triton's own load errors, and the field that fixes each.
_TRITON_HINTS = (
    ("backend", "spec.triton.backend (or an image that has that backend, spec.triton.image)"),
    ("out of memory", "spec.resources"),
)
_IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else "…" + text[-MAX_DETAIL:]


def _terminated(status: dict[str, Any]) -> dict[str, Any]:
    state = status.get("state") or {}
    return state.get("terminated") or (status.get("lastState") or {}).get("terminated") or {}


def _container_cause(status: dict[str, Any], init: bool) -> str | None:
    name = status.get("name", "?")
    waiting = (status.get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason", "")
    if reason in _IMAGE_REASONS:
        detail = f": {_short(waiting['message'])}" if waiting.get("message") else ""
        return f"container {name} cannot pull its image ({reason}{detail}); change spec.triton.image"
    ended = _terminated(status)
    crashing = reason == "CrashLoopBackOff" or (ended and ended.get("exitCode", 0) != 0)
    if not crashing:
        return None
    what = reason or ended.get("reason") or "Error"
    code = f", exit code {ended['exitCode']}" if "exitCode" in ended else ""
    text = ended.get("message") or ""
    detail = f": {_short(text)}" if text else ""
    restarts = status.get("restartCount") or 0
    again = f", restarted {restarts} times" if restarts else ""
    if ended.get("reason") == "OOMKilled":
        field = "spec.resources"
    elif init:
        field = "the version's artifact and the Model's spec.storage (the fetch container downloads and verifies it)"
    else:
        lowered = text.lower()
        field = next((f for word, f in _TRITON_HINTS if word in lowered), "spec.triton (image, backend, resources)")
    return f"container {name} {what}{code}{again}{detail}; check {field}"


def _unscheduled(pod: dict[str, Any]) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            message = _short(cond.get("message") or cond.get("reason") or "not scheduled")
            return f"pod {pod['metadata']['name']} cannot be scheduled ({message}); check spec.scheduling and spec.resources"
    return None


def _pods_of(pods: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
    mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(naming.LABEL_VERSION) == str(version)]
    return sorted(mine, key=lambda p: p["metadata"]["name"])


def refused_fetch(pod: dict[str, Any]) -> str | None:
    """The termination message of the pod's fetch container when it refused the artifact
    (exit code 10: a digest or signature that does not verify, or a missing object; no
    restart mends it), else None."""
    for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if status.get("name") != naming.FETCH_CONTAINER:
            continue
        ended = _terminated(status)
        if ended.get("exitCode") == BAD_ARTIFACT:
            text = " ".join((ended.get("message") or "no termination message").split())
            return text if len(text) <= MAX_REFUSAL else text[:MAX_REFUSAL] + "…"
    return None


def fetch_refusal(pods: list[dict[str, Any]], version: int) -> str | None:
    """The first refusal of `version`'s artifact by a fetch container among its pods, naming
    the pod and in the fetch's own words (its reason and the file), or None."""
    for pod in _pods_of(pods, version):
        message = refused_fetch(pod)
        if message is not None:
            return f"the fetch container of pod {pod['metadata']['name']} refused the artifact of version {version}: {message}"
    return None


def failure_cause(pods: list[dict[str, Any]], version: int) -> str | None:
    """The first cause found among the pods of `version`, init containers first (a failed
    fetch keeps Triton from starting), or None when the pods show none."""
    for pod in _pods_of(pods, version):
        status = pod.get("status") or {}
        for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
            for container in status.get(key) or []:
                cause = _container_cause(container, init)
                if cause is not None:
                    return cause
        unscheduled = _unscheduled(pod)
        if unscheduled is not None:
            return unscheduled
    return None

"""Which artifact each serving pod on the agent's node wants, read from the pod itself.

The agent lists its node's serving pods and, for each one that is not done, writes the spool
request `pod-<uid>.json` (the artifact its fetch container names) and pins it for the claim
`<namespace>.<uid>`, so that eviction never takes an artifact a live pod uses. A pod that is
gone or finished loses both. Nothing here does I/O: the agent passes the pods in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelops.core.naming import COMPONENT_SERVER, FETCH_CONTAINER, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY
from modelops.nodecache.layout import POD_REQUEST_PREFIX, FillRequest

SERVING_PODS = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT_SERVER}"
_UID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_POD_CLAIM = re.compile(rf"^[a-z0-9][a-z0-9-]*\.{_UID}$")


@dataclass(frozen=True)
class PodArtifact:
    name: str  # the spool request's name
    claim: str  # the pin's claim
    request: FillRequest


def is_pod_claim(claim: str) -> bool:
    return bool(_POD_CLAIM.match(claim))


def pod_artifact(pod: Mapping[str, Any]) -> PodArtifact | None:
    """The artifact a live serving pod's fetch container names; None for a finished or
    terminating pod, one that does not use the node cache, or one without a fetch container
    that parses."""
    from modelops.fetch import NODE_CACHE_ENV, UsageError, cache_request, parse_artifact_args

    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    fetch = next((c for c in spec.get("initContainers") or [] if c.get("name") == FETCH_CONTAINER), None)
    if fetch is None or not meta.get("uid"):
        return None
    env = {e.get("name"): e.get("value") for e in fetch.get("env") or []}
    if not env.get(NODE_CACHE_ENV):
        return None  # a pod that does not mount the cache would never read what the agent fills
    try:
        uri, sha256, files = parse_artifact_args(fetch.get("args") or [])
    except UsageError:
        return None
    endpoint = env.get("MODELOPS_S3_ENDPOINT")
    uid = str(meta["uid"])
    return PodArtifact(f"{POD_REQUEST_PREFIX}{uid}", f"{meta['namespace']}.{uid}", cache_request(uri, sha256, files, endpoint))


def pod_artifacts(pods: Iterable[Mapping[str, Any]]) -> dict[str, PodArtifact]:
    found = (pod_artifact(pod) for pod in pods)
    return {artifact.name: artifact for artifact in found if artifact is not None}

"""What an upgrade of the operator keeps running.

The Triton pods' fetch init container runs the operator's own image, so a new operator (a new
image tag) renders a new pod template for every ModelDeployment, and applying it would restart
every Triton pod. The fetcher runs only when a pod starts, so while the image is the only
change the running template keeps its image: a new operator reaches the Triton pods with their
next rollout (a new version, a spec change, a retry), never by itself.
"""

from __future__ import annotations

import copy
from typing import Any

from modelops.core import naming
from modelops.core.drift import differences


def _fetch_container(deployment: dict[str, Any] | None) -> dict[str, Any] | None:
    pod = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    return next((c for c in pod.get("initContainers") or [] if c.get("name") == naming.FETCH_CONTAINER), None)


def keep_running_fetcher(desired: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    """`desired` with the live fetch image when nothing else of the pod template differs;
    otherwise `desired` as rendered (the pods roll anyway, so they get the new fetcher)."""
    want, running = _fetch_container(desired), _fetch_container(live)
    if want is None or running is None or not running.get("image") or running.get("image") == want.get("image"):
        return desired
    kept = copy.deepcopy(desired)
    fetch = _fetch_container(kept)
    assert fetch is not None  # a copy of `desired`, which has one
    fetch["image"] = running["image"]
    assert live is not None  # it has a fetch container
    if differences(kept["spec"]["template"], live["spec"]["template"]):
        return desired
    return kept

"""Where Gateway API is installed (spec.rollout.canary.httpRoute): an HTTPRoute that splits a
canary's traffic by exact weights, and the two Services it points at. Pure.

During a canary step the route sends the step's weight to `<name>-canary` (the canary pods)
and the rest to `<name>-stable` (the pods of the stable version, which the stable Deployment
runs until the canary is promoted). Otherwise it sends everything to the ModelDeployment's own
Service, which selects every Triton pod.
"""

from __future__ import annotations

from typing import Any

from modelops.api.deployment import HTTPRouteRef
from modelops.core import naming
from modelops.core.objects import OwnerRef
from modelops.core.render import render_service
from modelops.serving.triton import TRITON

STABLE_SUFFIX = "-stable"


def stable_service_name(name: str) -> str:
    return name + STABLE_SUFFIX


def render_split_services(*, name: str, namespace: str, owner: OwnerRef, model: str, stable_version: int) -> list[dict[str, Any]]:
    """`<name>-stable` (the stable version's pods) and `<name>-canary` (the canary pods)."""
    stable = render_service(name=name, namespace=namespace, owner=owner, model_name=model)
    stable["metadata"]["name"] = stable_service_name(name)
    stable["spec"]["selector"] = {**naming.server_selector(name), naming.LABEL_VERSION: str(stable_version)}
    canary = render_service(name=name, namespace=namespace, owner=owner, model_name=model)
    canary["metadata"]["name"] = naming.canary_name(name)
    canary["spec"]["selector"] = naming.canary_selector(name)
    return [stable, canary]


def render_httproute(
    *, name: str, namespace: str, owner: OwnerRef, model: str, parent: HTTPRouteRef, weights: tuple[int, int] | None
) -> dict[str, Any]:
    """The route; `weights` is (stable, canary) percent during a canary step, else None."""
    parent_ref: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": parent.parent}
    if parent.namespace:
        parent_ref["namespace"] = parent.namespace
    if parent.section_name:
        parent_ref["sectionName"] = parent.section_name
    if weights is None:
        backends = [{"name": name, "port": TRITON.http_port, "weight": 100}]
    else:
        stable, canary = weights
        backends = [
            {"name": stable_service_name(name), "port": TRITON.http_port, "weight": stable},
            {"name": naming.canary_name(name), "port": TRITON.http_port, "weight": canary},
        ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace, "labels": naming.server_labels(name, model),
                     "ownerReferences": [owner.reference()]},
        "spec": {
            "parentRefs": [parent_ref],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                "backendRefs": [{"group": "", "kind": "Service", **b} for b in backends],
            }],
        },
    }

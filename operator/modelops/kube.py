"""The one adapter to the Kubernetes API.

Objects travel as plain JSON dicts. Errors follow one policy, decided here and nowhere else:

- 404 Not Found: the object is absent. Reads return None, writes return None.
- 409 on create (AlreadyExists): someone (an earlier run of ours) created it; the existing
  object is read and returned, so a restart never duplicates a child.
- 409 on update (Conflict): raised as Conflict; the reconcile is retried at once with fresh reads.
- 429, 5xx and connection errors: raised as Throttled with the server's Retry-After; the work
  queue retries after that delay.
- 422/400: raised as Invalid (a bug in what we sent); 401/403: Forbidden (RBAC).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from modelops.api.types import GROUP, VERSION

FIELD_MANAGER = "modelops"
# (connect, read) seconds. Reads of a few thousand objects finish well within this.
REQUEST_TIMEOUT = (5, 60)
DEFAULT_RETRY_AFTER = 1.0


class KubeError(Exception):
    """A Kubernetes API call failed."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Conflict(KubeError):
    """The object changed since it was read; read again and retry."""


class Throttled(KubeError):
    """The API server is overloaded or unreachable; retry after `retry_after` seconds."""

    def __init__(self, message: str, status: int = 0, retry_after: float = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class Invalid(KubeError):
    """The API server refused the object as invalid."""


class Forbidden(KubeError):
    """The operator's service account may not do this."""


@dataclass(frozen=True)
class Resource:
    """A collection in the API: /api/v1/... or /apis/<group>/<version>/..."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        """The collection or object; an empty namespace means every namespace (a list), or a
        cluster-scoped kind such as PersistentVolume."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{root}/namespaces/{quote(namespace, safe='')}/{self.plural}" if namespace else f"{root}/{self.plural}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
        if subresource:
            path += f"/{subresource}"
        return path


MODELS = Resource(GROUP, VERSION, "models", "Model")
MODELVERSIONS = Resource(GROUP, VERSION, "modelversions", "ModelVersion")
MODELDEPLOYMENTS = Resource(GROUP, VERSION, "modeldeployments", "ModelDeployment")
JOBS = Resource("batch", "v1", "jobs", "Job")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
SERVICES = Resource("", "v1", "services", "Service")
PODS = Resource("", "v1", "pods", "Pod")
SECRETS = Resource("", "v1", "secrets", "Secret")
PERSISTENTVOLUMES = Resource("", "v1", "persistentvolumes", "PersistentVolume")
PERSISTENTVOLUMECLAIMS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
EVENTS = Resource("", "v1", "events", "Event")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
HPAS = Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
SCALEDOBJECTS = Resource("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject")
HTTPROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")

RequestObserver = Callable[[str, str, int], None]


def _retry_after(headers: Any) -> float:
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError, AttributeError):
        return DEFAULT_RETRY_AFTER


class Kube:
    """JSON in, JSON out, over the kubernetes client's authenticated connection pool."""

    def __init__(self, api_client: Any, observe: RequestObserver | None = None, instance: str | None = None) -> None:
        self._api = api_client
        self._observe = observe or (lambda verb, resource, code: None)
        self._instance = instance or socket.gethostname()

    @classmethod
    def from_environment(
        cls, observe: RequestObserver | None = None, user_agent: str | None = None, connections: int = 8
    ) -> Kube:
        """In a pod: the service account. Elsewhere: $KUBECONFIG or ~/.kube/config.

        The user agent names this replica, so the audit log tells replicas apart; `connections`
        is how many requests may be in flight at once (one per reconcile worker)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = connections
        api_client = client.ApiClient(configuration)
        if user_agent:
            api_client.user_agent = user_agent
        return cls(api_client, observe)

    @property
    def server(self) -> str:
        """The API server's URL as this client reaches it."""
        return str(self._api.configuration.host)

    # -- transport ---------------------------------------------------------------------

    def _request(
        self,
        verb: str,
        resource: Resource,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any] | None, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, post = self._api.param_serialize(
            method=verb, resource_path=path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(method, url, headers, body, post, _request_timeout=REQUEST_TIMEOUT)
            raw = response.read()
        except Exception as err:  # urllib3 and client errors: the server could not be reached
            status = getattr(err, "status", 0) or 0
            self._observe(verb, resource.plural, status)
            raise Throttled(f"{verb} {path}: API server unreachable: {type(err).__name__}", status) from None
        self._observe(verb, resource.plural, response.status)
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        return response.status, payload, response.headers

    def _check(self, verb: str, path: str, status: int, payload: dict[str, Any] | None, headers: Any) -> None:
        if 200 <= status < 300:
            return
        message = f"{verb} {path}: {status} {(payload or {}).get('message', '')}".strip()
        if status == 409:
            raise Conflict(message, status)
        if status == 429 or status >= 500:
            raise Throttled(message, status, _retry_after(headers))
        if status in (401, 403):
            raise Forbidden(message, status)
        if status in (400, 422):
            raise Invalid(message, status)
        raise KubeError(message, status)

    # -- reads -------------------------------------------------------------------------

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        path = resource.path(namespace, name)
        status, payload, headers = self._request("GET", resource, path)
        if status == 404:
            return None
        self._check("GET", path, status, payload, headers)
        return payload

    def list(
        self,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        path = resource.path(namespace)
        query = [(k, v) for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v]
        status, payload, headers = self._request("GET", resource, path, query=query)
        self._check("LIST", path, status, payload, headers)
        items = (payload or {}).get("items") or []
        for item in items:  # list items come without apiVersion/kind
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        return items

    # -- writes ------------------------------------------------------------------------

    def create(self, resource: Resource, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the object, or return the one that already exists. Returns (object, created)."""
        namespace, name = body["metadata"]["namespace"], body["metadata"].get("name")
        path = resource.path(namespace)
        status, payload, headers = self._request("POST", resource, path, body=body)
        if status == 409 and name:
            existing = self.get(resource, namespace, name)
            if existing is not None:
                return existing, False
        self._check("POST", path, status, payload, headers)
        return payload or {}, True

    def apply(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of the whole object, owned by the operator's field manager."""
        meta = body["metadata"]
        path = resource.path(meta.get("namespace", ""), meta["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        status, payload, headers = self._request(
            "PATCH", resource, path, query=query, body=body, content_type="application/apply-patch+yaml"
        )
        self._check("APPLY", path, status, payload, headers)
        return payload or {}

    def patch(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any], subresource: str | None = None) -> dict[str, Any] | None:
        """JSON merge patch; None when the object is gone."""
        path = resource.path(namespace, name, subresource)
        status, payload, headers = self._request(
            "PATCH", resource, path, body=patch, content_type="application/merge-patch+json"
        )
        if status == 404:
            return None
        self._check("PATCH", path, status, payload, headers)
        return payload

    def json_patch(self, resource: Resource, namespace: str, name: str, ops: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        """RFC 6902 JSON patch, for removals that apply cannot express; None when the object is
        gone. A failed `test` op comes back as a bare 422 (Invalid): the reconcile is retried
        with backoff, from fresh reads."""
        path = resource.path(namespace, name)
        query = [("fieldManager", FIELD_MANAGER)]
        status, payload, headers = self._request(
            "PATCH", resource, path, query=query, body=list(ops), content_type="application/json-patch+json"
        )
        if status == 404:
            return None
        self._check("PATCH", path, status, payload, headers)
        return payload

    def patch_status(self, resource: Resource, namespace: str, name: str, status_patch: dict[str, Any]) -> dict[str, Any] | None:
        return self.patch(resource, namespace, name, {"status": status_patch}, subresource="status")

    # -- leases (leader election) --------------------------------------------------------

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(LEASES, namespace, name)

    def create_lease(self, body: dict[str, Any]) -> bool:
        """Create the Lease; False when another candidate created it first."""
        path = LEASES.path(body["metadata"]["namespace"])
        status, payload, headers = self._request("POST", LEASES, path, body=body)
        if status == 409:
            return False
        self._check("POST", path, status, payload, headers)
        return True

    def replace_lease(self, body: dict[str, Any]) -> bool:
        """Replace the Lease at the resourceVersion we read; False when it changed since."""
        meta = body["metadata"]
        path = LEASES.path(meta["namespace"], meta["name"])
        status, payload, headers = self._request("PUT", LEASES, path, body=body)
        if status == 409:
            return False
        self._check("PUT", path, status, payload, headers)
        return True

    def emit_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record a Kubernetes Event about `involved`. Losing an event is not worth a retry."""
        meta = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": f"{GROUP}/operator",
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.create(EVENTS, event)
        except KubeError:
            pass

    def close(self) -> None:
        self._api.close()

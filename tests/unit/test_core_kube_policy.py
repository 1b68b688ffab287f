"""One error policy for the Kubernetes API: 404 is absence, 409 on create adopts, 429 waits."""

from __future__ import annotations

import json

import pytest

from modelops import kube as k8s

pytestmark = pytest.mark.unit

JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ns"}}


class Response:
    def __init__(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
        self.status, self._body, self.headers = status, body, headers or {}

    def read(self) -> bytes:
        return json.dumps(self._body).encode() if self._body is not None else b""


class FakeApiClient:
    """Answers (method, path) with scripted responses and records what was asked."""

    def __init__(self, *responses: Response) -> None:
        self.responses = list(responses)
        self.calls: list[tuple[str, str, str | None]] = []

    def param_serialize(self, method, resource_path, query_params, header_params, body, auth_settings):
        query = "&".join(f"{k}={v}" for k, v in query_params)
        return method, resource_path + (f"?{query}" if query else ""), header_params, body, None

    def call_api(self, method, url, headers, body, post, _request_timeout=None):
        self.calls.append((method, url, headers.get("Content-Type")))
        return self.responses.pop(0)


def test_get_of_a_missing_object_is_none() -> None:
    kube = k8s.Kube(FakeApiClient(Response(404, {"message": "not found"})))
    assert kube.get(k8s.JOBS, "ns", "j") is None


def test_create_that_already_exists_returns_the_existing_object() -> None:
    api = FakeApiClient(Response(409, {"reason": "AlreadyExists"}), Response(200, {**JOB, "metadata": {**JOB["metadata"], "uid": "u1"}}))
    existing, created = k8s.Kube(api).create(k8s.JOBS, JOB)
    assert created is False and existing["metadata"]["uid"] == "u1"
    assert [c[0] for c in api.calls] == ["POST", "GET"]
    assert api.calls[0][1] == "/apis/batch/v1/namespaces/ns/jobs"


def test_conflicting_update_raises_conflict() -> None:
    kube = k8s.Kube(FakeApiClient(Response(409, {"message": "the object has been modified"})))
    with pytest.raises(k8s.Conflict):
        kube.patch(k8s.MODELVERSIONS, "ns", "v", {"metadata": {}})


@pytest.mark.parametrize(("status", "headers", "retry_after"), [(429, {"Retry-After": "7"}, 7.0), (503, {}, 1.0), (500, {"Retry-After": "x"}, 1.0)])
def test_throttling_and_server_errors_carry_retry_after(status, headers, retry_after) -> None:
    kube = k8s.Kube(FakeApiClient(Response(status, {"message": "slow down"}, headers)))
    with pytest.raises(k8s.Throttled) as err:
        kube.list(k8s.MODELVERSIONS, "ns", field_selector="spec.model=m")
    assert err.value.retry_after == retry_after


@pytest.mark.parametrize(("status", "error"), [(422, k8s.Invalid), (400, k8s.Invalid), (403, k8s.Forbidden), (401, k8s.Forbidden)])
def test_other_errors_are_typed(status, error) -> None:
    with pytest.raises(error, match="PATCH"):
        k8s.Kube(FakeApiClient(Response(status, {"message": "no"}))).patch(k8s.MODELS, "ns", "m", {})


def test_unreachable_server_is_transient() -> None:
    class Down(FakeApiClient):
        def call_api(self, *args, **kwargs):
            raise ConnectionRefusedError("refused")

    with pytest.raises(k8s.Throttled, match="unreachable"):
        k8s.Kube(Down()).get(k8s.MODELS, "ns", "m")


def test_patches_use_the_right_content_types_and_paths() -> None:
    api = FakeApiClient(Response(200, {}), Response(200, {}), Response(404, None))
    kube = k8s.Kube(api)
    kube.apply(k8s.DEPLOYMENTS, {"metadata": {"name": "d", "namespace": "ns"}})
    kube.patch_status(k8s.MODELDEPLOYMENTS, "ns", "d", {"servedVersion": 2})
    assert kube.patch(k8s.SERVICES, "ns", "gone", {}) is None
    assert api.calls[0] == ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d?fieldManager=modelops&force=true", "application/apply-patch+yaml")
    assert api.calls[1] == ("PATCH", "/apis/modelops.dev/v1alpha1/namespaces/ns/modeldeployments/d/status", "application/merge-patch+json")
    assert api.calls[2][1] == "/api/v1/namespaces/ns/services/gone"


def test_list_items_get_their_kind_and_requests_are_observed() -> None:
    seen = []
    api = FakeApiClient(Response(200, {"items": [{"metadata": {"name": "a"}}]}))
    items = k8s.Kube(api, observe=lambda verb, resource, code: seen.append((verb, resource, code))).list(k8s.PODS, "ns", label_selector="x=y")
    assert items[0]["kind"] == "Pod" and items[0]["apiVersion"] == "v1"
    assert seen == [("GET", "pods", 200)]
    assert api.calls[0][1] == "/api/v1/namespaces/ns/pods?labelSelector=x=y"


def test_json_patch_sends_the_operations_as_a_list() -> None:
    api = FakeApiClient(Response(200, JOB), Response(404, {"message": "gone"}))
    kube = k8s.Kube(api)
    ops = ({"op": "test", "path": "/spec/x/0/name", "value": "a"}, {"op": "remove", "path": "/spec/x/0"})
    assert kube.json_patch(k8s.DEPLOYMENTS, "ns", "d", ops) == JOB
    method, url, content_type = api.calls[0]
    assert (method, content_type) == ("PATCH", "application/json-patch+json")
    assert url == "/apis/apps/v1/namespaces/ns/deployments/d?fieldManager=modelops"
    assert kube.json_patch(k8s.DEPLOYMENTS, "ns", "d", ops) is None  # the object is gone


def test_a_json_patch_whose_test_failed_is_invalid() -> None:
    # The API server answers a failed `test` op with a bare 422.
    kube = k8s.Kube(FakeApiClient(Response(422, {"reason": "Invalid", "message": "the server rejected our request"})))
    with pytest.raises(k8s.Invalid):
        kube.json_patch(k8s.DEPLOYMENTS, "ns", "d", [{"op": "test", "path": "/a", "value": 1}])

"""kubeconform's schemas, made from OpenAPI and our CRDs: file names, strictness, OpenAPI notions."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.testbed import schemas

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("kind", "api_version", "name"), [
    ("Deployment", "apps/v1", "deployment-apps-v1.json"),
    ("ClusterRole", "rbac.authorization.k8s.io/v1", "clusterrole-rbac-v1.json"),
    ("Service", "v1", "service-v1.json"),
    ("ModelVersion", "modelops.dev/v1alpha1", "modelversion-modelops-v1alpha1.json"),
])
def test_file_names_follow_kubeconforms_template(kind: str, api_version: str, name: str) -> None:
    assert schemas.file_name(kind, api_version) == name


def test_strict_schemas_refuse_unknown_fields_and_spell_out_openapi_notions() -> None:
    schema = schemas._strict({
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}},
            "maybe": {"type": "string", "nullable": True},
            "list": {"type": "array", "items": {"type": "object", "properties": {"b": {"type": "integer"}}}},
            # Property names that are also schema keywords (as in JSONSchemaProps) stay property names.
            "nullable": {"type": "boolean"},
            "x-kubernetes-int-or-string": {"type": "boolean"},
        },
    })
    assert schema["additionalProperties"] is False
    assert schema["properties"]["port"] == schemas.INT_OR_STRING
    assert "additionalProperties" not in schema["properties"]["free"]
    assert schema["properties"]["maybe"]["type"] == ["string", "null"]
    assert schema["properties"]["list"]["items"]["additionalProperties"] is False
    assert schema["properties"]["nullable"] == {"type": "boolean"}
    assert schema["properties"]["x-kubernetes-int-or-string"] == {"type": "boolean"}


def test_kubernetes_schemas_stand_alone_with_the_definitions_they_reach() -> None:
    openapi = {"definitions": {
        "io.k8s.api.core.v1.Service": {
            "type": "object", "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": "Service"}],
            "properties": {"spec": {"$ref": "#/definitions/io.k8s.api.core.v1.ServiceSpec"}}},
        "io.k8s.api.core.v1.ServiceSpec": {
            "type": "object", "properties": {"port": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.util.intstr.IntOrString"}}},
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": "string", "format": "int-or-string"},
        "io.k8s.api.apps.v1.Unrelated": {"type": "object"},
    }}
    out = schemas.kubernetes_schemas(openapi)
    assert list(out) == ["service-v1.json"]
    service = out["service-v1.json"]
    assert service["$ref"] == "#/definitions/io.k8s.api.core.v1.Service"
    assert set(service["definitions"]) == {"io.k8s.api.core.v1.Service", "io.k8s.api.core.v1.ServiceSpec",
                                           "io.k8s.apimachinery.pkg.util.intstr.IntOrString"}
    assert service["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] == schemas.INT_OR_STRING


def test_each_crd_version_gets_a_schema() -> None:
    out = schemas.crd_schemas(sorted((ROOT / "crds").glob("*.yaml")))
    assert set(out) == {"model-modelops-v1alpha1.json", "modelversion-modelops-v1alpha1.json",
                        "modeldeployment-modelops-v1alpha1.json"}
    spec = out["modeldeployment-modelops-v1alpha1.json"]["properties"]["spec"]
    assert spec["additionalProperties"] is False and spec["properties"]["replicas"]["type"] == "integer"

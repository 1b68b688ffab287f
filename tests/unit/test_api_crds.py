"""Properties of the generated CRDs: structural, described, defaulted, validated."""

from __future__ import annotations

from typing import Any

import pytest

from modelops.api.crds import KINDS, SchemaError, crd, structural_schema
from modelops.api.types import BUCKET_NAME, ENDPOINT_URL, RELATIVE_PATH, S3_URI, S3_URI_OR_PREFIX, SHA256, TENSOR_NAME, ApiModel

pytestmark = pytest.mark.unit

CRDS = {kind.kind: crd(kind) for kind in KINDS}


def schema_of(kind: str) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def rules(node: dict[str, Any]) -> list[str]:
    return [v["rule"] for v in node.get("x-kubernetes-validations", [])]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural_and_every_field_is_described(kind: str) -> None:
    for path, node in walk(schema_of(kind)):
        assert "$ref" not in node and "allOf" not in node, path
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{kind}{path} has no type"
        if path.count(".") >= 2 and not path.endswith(("[]", "}")):
            assert node.get("description"), f"{kind}{path} has no description"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{kind}{path}: anyOf outside int-or-string"


@pytest.mark.parametrize(
    ("kind", "short", "columns"),
    [
        ("Model", "mdl", {"Latest", "Versions", "Ready", "Age"}),
        ("ModelVersion", "mv", {"Model", "Version", "Phase", "Ready", "Age"}),
        ("ModelDeployment", "mdep", {"Model", "Policy", "Desired", "Served", "Ready", "Age"}),
    ],
)
def test_names_columns_category_and_status_subresource(kind: str, short: str, columns: set[str]) -> None:
    spec = CRDS[kind]["spec"]
    assert spec["group"] == "modelops.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == [short]
    assert spec["names"]["categories"] == ["modelops"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert columns <= {c["name"] for c in version["additionalPrinterColumns"]}


def test_model_version_spec_is_immutable() -> None:
    assert "self == oldSelf" in rules(schema_of("ModelVersion")["properties"]["spec"])


def test_pinned_requires_version_and_latest_forbids_it() -> None:
    spec = schema_of("ModelDeployment")["properties"]["spec"]
    validations = {v["rule"]: v for v in spec["x-kubernetes-validations"]}
    pinned = validations["self.versionPolicy != 'Pinned' || has(self.version)"]
    latest = validations["self.versionPolicy != 'Latest' || !has(self.version)"]
    assert pinned["fieldPath"] == latest["fieldPath"] == ".version"
    assert pinned["reason"] == "FieldValueRequired" and latest["reason"] == "FieldValueForbidden"
    assert spec["properties"]["versionPolicy"]["default"] == "Latest"


@pytest.mark.parametrize(
    ("kind", "path"),
    [("ModelVersion", ("spec", "version")), ("ModelDeployment", ("spec", "version"))],
)
def test_versions_are_at_least_one(kind: str, path: tuple[str, ...]) -> None:
    node = schema_of(kind)
    for key in path:
        node = node["properties"][key]
    assert rules(node) == ["self >= 1"]


def test_digest_and_uri_rules_sit_on_their_fields() -> None:
    spec = schema_of("ModelVersion")["properties"]["spec"]["properties"]
    artifact = spec["artifact"]["properties"]
    assert rules(artifact["sha256"]) == [SHA256.cel]
    assert rules(artifact["uri"]) == [S3_URI_OR_PREFIX.cel]
    assert rules(artifact["files"]["items"]["properties"]["path"]) == [RELATIVE_PATH.cel]
    assert rules(artifact["entrypoint"]) == [RELATIVE_PATH.cel]
    assert artifact["files"]["x-kubernetes-list-map-keys"] == ["path"]  # the apiserver refuses duplicates
    assert artifact["files"]["maxItems"] == 1024
    assert rules(spec["evaluation"]["properties"]["datasetUri"]) == [S3_URI.cel]
    for field in (artifact["sha256"], artifact["uri"]):
        assert field["maxLength"] > 0  # bounded strings keep the CEL cost estimate low
    model = schema_of("Model")["properties"]["spec"]["properties"]
    assert rules(model["storage"]["properties"]["bucket"]) == [BUCKET_NAME.cel]
    assert rules(model["storage"]["properties"]["endpoint"]) == [ENDPOINT_URL.cel]
    tensor = model["signature"]["properties"]["inputs"]["items"]["properties"]["name"]
    assert rules(tensor) == [TENSOR_NAME.cel]


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("s3://models/digits/1/model.onnx", True),
        ("s3://my.bucket-1/k", True),
        ("s3://models/.hidden/k", True),
        ("s3://models/", False),
        ("s3://Models/key", False),
        ("s3:/models/key", False),
        ("https://models/key", False),
        ("s3://models/a key", False),
        ("s3://m/key", False),
        ("s3://bucket/../../etc/passwd", False),
        ("s3://models/a/../b", False),
        ("s3://models/a/./b", False),
        ("s3://models/a/..", False),
        ("s3://models//k", False),
        ("s3://models/k/", False),
        ("s3://models/a\nb", False),
        ("s3://models/a\x00b", False),
        ("s3://models/a\x7fb", False),
        ("s3://my..bucket/k", False),
        ("s3://192.168.0.1/k", False),
        ("s3://-models/k", False),
    ],
)
def test_s3_uri_rule(value: str, valid: bool) -> None:
    assert S3_URI.holds(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("models", True), ("a.b-c", True), ("abc", True), ("ab", False), ("a" * 64, False), ("a" * 63, True),
     ("Models", False), ("a..b", False), ("-ab", False), ("ab-", False), ("10.0.0.1", False), ("a_b", False)],
)
def test_bucket_rule(value: str, valid: bool) -> None:
    assert BUCKET_NAME.holds(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("http://minio:9000", True), ("https://s3.eu-west-1.amazonaws.com", True), ("http://127.0.0.1:9000/", True),
     ("http://[::1]:9000", True), ("https://minio.storage:9000/s3", True), ("minio:9000", False),
     ("ftp://minio", False), ("http://user:secret@minio", False), ("http://minio:99999", False),
     ("http://minio/?x=1", False), ("http://minio/#f", False), ("http://mi nio", False), ("http://", False),
     ("http://minio\n", False)],
)
def test_endpoint_rule(value: str, valid: bool) -> None:
    assert ENDPOINT_URL.holds(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("input_ids", True), ("attention_mask", True), ("logits", True), ("input.1", True), ("onnx::Gemm_0", True),
     ("INPUT__0", True), ("encoder/layer.0/out", True), ('in"put', False), ("in'put", False), ("../x", False),
     ("a..b", False), ("/abs", False), ("a b", False), ("a\tb", False), ("", False), (".x", False), ("x.", False)],
)
def test_tensor_name_rule(value: str, valid: bool) -> None:
    assert TENSOR_NAME.holds(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("a" * 64, True), ("0123456789abcdef" * 4, True), ("A" * 64, False), ("a" * 63, False), ("g" * 64, False)],
)
def test_sha256_rule(value: str, valid: bool) -> None:
    assert SHA256.holds(value) is valid


@pytest.mark.parametrize(
    ("kind", "path", "default"),
    [
        ("ModelDeployment", ("spec", "replicas"), 1),
        ("ModelDeployment", ("spec", "rollout", "maxSurge"), 1),
        ("ModelDeployment", ("spec", "rollout", "maxUnavailable"), 0),
        ("ModelDeployment", ("spec", "rollout", "progressDeadlineSeconds"), 600),
        ("ModelDeployment", ("spec", "rollout", "autoRollback"), True),
        ("ModelDeployment", ("spec", "triton", "backend"), "onnxruntime"),
        ("Model", ("spec", "storage", "region"), "us-east-1"),
        ("Model", ("spec", "storage", "verifyTLS"), True),
        ("Model", ("spec", "versionDefaults", "compression", "quantization"), "int8-weight-only"),
        ("Model", ("spec", "versionDefaults", "scheduling", "gpus"), 1),
    ],
)
def test_defaults(kind: str, path: tuple[str, ...], default: Any) -> None:
    node = schema_of(kind)
    for key in path:
        node = node["properties"][key]
    assert node["default"] == default


def test_nested_objects_default_to_empty_so_their_defaults_apply() -> None:
    spec = schema_of("ModelDeployment")["properties"]["spec"]["properties"]
    assert spec["rollout"]["default"] == {} and spec["triton"]["default"] == {}


def test_enums_list_the_allowed_values() -> None:
    spec = schema_of("ModelVersion")["properties"]["spec"]["properties"]
    assert spec["artifact"]["properties"]["format"]["enum"] == ["onnx", "torchscript", "exported-program", "directory"]
    assert "int8-dynamic" in spec["compression"]["properties"]["quantization"]["enum"]
    status = schema_of("ModelVersion")["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == ["Pending", "Verifying", "Compressing", "Evaluating", "Ready", "Rejected", "Failed"]


def test_conditions_are_a_map_keyed_by_type() -> None:
    for kind in CRDS:
        conditions = schema_of(kind)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_a_field_without_description_is_refused() -> None:
    class Undocumented(ApiModel):
        """A model with a bare field."""

        size: int = 1

    with pytest.raises(SchemaError, match="Undocumented.size"):
        structural_schema(Undocumented)

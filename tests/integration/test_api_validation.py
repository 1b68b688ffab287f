"""The API server rejects bad manifests with the field named (schema and CEL), and kubectl
knows the kinds: short names, the modelops category, printer columns, explain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.api_cases import APISERVER_ONLY, DEPLOYMENT, INVALID, MODEL, VALID_EDITS, VERSION, edited
from tests.integration.conftest import ROOT, apply_docs, get_json, kubectl

pytestmark = pytest.mark.integration

@pytest.mark.parametrize(
    ("case", "manifest", "field", "message"), INVALID + APISERVER_ONLY, ids=[c[0] for c in INVALID + APISERVER_ONLY]
)
def test_invalid_manifest_is_rejected_with_the_field_named(testbed, crds, namespace, case, manifest, field, message) -> None:
    # JSON, so that control characters reach the apiserver as they are.
    result = kubectl(testbed, "create", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert field in result.stderr and message in result.stderr, result.stderr
    kind = manifest["kind"].lower()
    assert kubectl(testbed, "get", kind, "-n", namespace, "-o", "name").stdout.strip() == ""


def test_valid_manifests_and_the_samples_are_accepted(testbed, crds, namespace) -> None:
    result = kubectl(testbed, "apply", "--dry-run=server", "-n", namespace, "-f", str(ROOT / "config" / "samples"))
    assert result.stdout.count("(server dry run)") == len(list((ROOT / "config" / "samples").glob("*.yaml")))
    pinned = edited(edited(edited(DEPLOYMENT, "metadata.name", "pinned"), "spec.versionPolicy", "Pinned"), "spec.version", 1)
    apply_docs(testbed, namespace, [MODEL, VERSION, DEPLOYMENT, pinned])
    assert len(kubectl(testbed, "get", "modelops", "-n", namespace, "-o", "name").stdout.split()) == 4


@pytest.mark.parametrize(("case", "manifest"), VALID_EDITS, ids=[c[0] for c in VALID_EDITS])
def test_valid_edits_are_accepted(testbed, crds, namespace, case, manifest) -> None:
    result = kubectl(testbed, "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode == 0, f"{case}: {result.stderr}"


def test_defaults_are_filled_by_the_api_server(testbed, crds, namespace) -> None:
    apply_docs(testbed, namespace, [MODEL, DEPLOYMENT])
    spec = get_json(testbed, namespace, "modeldeployment", "digits")["spec"]
    assert spec["versionPolicy"] == "Latest" and spec["replicas"] == 1 and spec["suspended"] is False
    assert spec["rollout"] == {"strategy": "RollingUpdate", "maxSurge": 1, "maxUnavailable": 0,
                               "progressDeadlineSeconds": 600, "autoRollback": True}
    model = get_json(testbed, namespace, "model", "digits")["spec"]
    assert model["storage"]["region"] == "us-east-1" and model["storage"]["verifyTLS"] is True
    assert model["versionDefaults"]["compression"]["quantization"] == "int8-weight-only"
    assert model["versionDefaults"]["scheduling"]["gpus"] == 1


def test_model_version_spec_is_immutable(testbed, crds, namespace) -> None:
    apply_docs(testbed, namespace, [MODEL, VERSION])
    result = kubectl(testbed, "patch", "modelversion", "digits-v1", "-n", namespace, "--type=merge",
                     "-p", '{"spec": {"version": 2}}', check=False)
    assert result.returncode != 0 and "spec is immutable" in result.stderr
    # Metadata stays editable: labels are not part of the version.
    kubectl(testbed, "label", "modelversion", "digits-v1", "-n", namespace, "team=vision")


def test_short_names_category_and_columns(testbed, crds, namespace) -> None:
    apply_docs(testbed, namespace, [MODEL, VERSION, DEPLOYMENT])
    listed = kubectl(testbed, "get", "modelops", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(listed) == sorted([
        "model.modelops.dev/digits", "modelversion.modelops.dev/digits-v1", "modeldeployment.modelops.dev/digits",
    ])
    for short in ("mdl", "mv", "mdep"):
        assert kubectl(testbed, "get", short, "-n", namespace, "-o", "name").stdout.strip()
    header = kubectl(testbed, "get", "mv", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "VERSION", "PHASE", "READY", "FAILED-BY", "AGE"]


def test_explain_teaches_the_api(testbed, crds) -> None:
    text = kubectl(testbed, "explain", "modelversion.spec.artifact.sha256").stdout
    assert "verified while streaming" in text
    text = kubectl(testbed, "explain", "modeldeployment.spec.versionPolicy").stdout
    assert "Latest" in text and "Pinned" in text


def test_status_subresource_is_separate(testbed, crds, namespace) -> None:
    apply_docs(testbed, namespace, [MODEL])
    with_status = edited(MODEL, "status", {"latestReadyVersion": 9})
    apply_docs(testbed, namespace, [with_status])
    assert "status" not in get_json(testbed, namespace, "model", "digits") or \
        get_json(testbed, namespace, "model", "digits")["status"].get("latestReadyVersion") != 9


def test_crds_in_the_repository_are_the_ones_served(testbed, crds) -> None:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        committed = yaml.safe_load(path.read_text())
        served = get_json(testbed, "default", "crd", committed["metadata"]["name"])
        assert served["spec"]["versions"][0]["schema"] == committed["spec"]["versions"][0]["schema"], path.name
        assert Path(path).name.startswith("modelops.dev_")

"""The CRDs stay compatible with the last release (LAST_RELEASE): fields may be added within an
API version, never removed, renamed or retyped."""

from __future__ import annotations

import copy

import pytest

from tests import crdcompat

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def released() -> dict:
    return crdcompat.released_crds(crdcompat.last_release())


def deployments(crds: dict) -> dict:
    return crds["modelops.dev_modeldeployments.yaml"]


def props(crd: dict, *path: str) -> dict:
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["properties"][name]
    return node["properties"]


def test_the_crds_are_compatible_with_the_last_release(released) -> None:
    assert released, f"no CRDs at {crdcompat.last_release()}"
    assert crdcompat.compare(released, crdcompat.current_crds()) == []


def test_an_added_field_is_compatible(released) -> None:
    crd = copy.deepcopy(deployments(released))
    props(crd, "status")["somethingNew"] = {"type": "integer"}
    assert crdcompat.incompatibilities(deployments(released), crd) == []


def test_a_removed_field_is_caught(released) -> None:
    crd = copy.deepcopy(deployments(released))
    del props(crd, "status")["servedVersion"]
    assert crdcompat.incompatibilities(deployments(released), crd) == [
        "modeldeployments.modelops.dev v1alpha1: field .status.servedVersion was removed or renamed"]


def test_a_renamed_nested_field_is_caught(released) -> None:
    crd = copy.deepcopy(deployments(released))
    rollout = props(crd, "spec", "rollout")
    rollout["deadlineSeconds"] = rollout.pop("progressDeadlineSeconds")
    assert crdcompat.incompatibilities(deployments(released), crd) == [
        "modeldeployments.modelops.dev v1alpha1: field .spec.rollout.progressDeadlineSeconds was removed or renamed"]


def test_a_retyped_field_is_caught(released) -> None:
    crd = copy.deepcopy(deployments(released))
    props(crd, "spec")["replicas"] = {"type": "string"}
    assert crdcompat.incompatibilities(deployments(released), crd) == [
        "modeldeployments.modelops.dev v1alpha1: field .spec.replicas changed type from integer to string"]


def test_a_dropped_version_and_a_removed_crd_are_caught(released) -> None:
    crd = copy.deepcopy(deployments(released))
    crd["spec"]["versions"][0]["served"] = False
    assert crdcompat.incompatibilities(deployments(released), crd) == [
        "modeldeployments.modelops.dev v1alpha1: the version is no longer served"]
    assert crdcompat.incompatibilities(deployments(released), None) == ["modeldeployments.modelops.dev: the CRD was removed"]

"""An upgrade of the operator (a new image, so a new fetch image in the Triton pod template)
restarts no Triton pod: the running template keeps its fetch image while nothing else changes;
any other change rolls the pods, and they get the new fetcher."""

from __future__ import annotations

import copy

import pytest

from modelops.api import ModelDeploymentSpec
from modelops.core import naming
from modelops.core.drift import differences
from modelops.core.objects import VersionView
from modelops.core.render import DeploymentInputs, render_deployment
from modelops.core.upgrade import keep_running_fetcher
from modelops.settings import Settings
from tests.unit.test_core_render import MD_OWNER, model_spec

pytestmark = pytest.mark.unit

OLD = Settings.from_env({"MODELOPS_OPERATOR_IMAGE": "ghcr.io/modelops/modelops-operator:0.1.0"})
NEW = Settings.from_env({"MODELOPS_OPERATOR_IMAGE": "ghcr.io/modelops/modelops-operator:0.2.0"})


def version(number: int) -> VersionView:
    return VersionView.from_body({
        "metadata": {"name": f"digits-v{number}", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"model": "digits", "version": number},
        "status": {"phase": "Ready", "compressedArtifact": {"uri": f"s3://models/c/{number}/model.onnx",
                                                            "sha256": f"{number:02d}" * 32, "format": "onnx"}},
    })


def deployment(settings: Settings, number: int = 1, retry: str | None = None, **spec: object) -> dict:
    return render_deployment(DeploymentInputs(
        name="digits", namespace="ns", owner=MD_OWNER,
        spec=ModelDeploymentSpec.model_validate({"model": "digits", "replicas": 2, **spec}), model_name="digits",
        model=model_spec(), version=version(number), settings=settings, retry=retry,
    ))


def fetch_image(rendered: dict) -> str:
    (fetch,) = [c for c in rendered["spec"]["template"]["spec"]["initContainers"] if c["name"] == naming.FETCH_CONTAINER]
    return fetch["image"]


def test_a_new_operator_image_alone_keeps_the_running_template() -> None:
    live = deployment(OLD)
    kept = keep_running_fetcher(deployment(NEW), live)
    assert fetch_image(kept) == fetch_image(live) == OLD.operator_image
    assert differences(kept["spec"]["template"], live["spec"]["template"]) == []


def test_the_rest_of_the_render_is_still_applied() -> None:
    # Replicas are outside the pod template: they change, the fetcher stays.
    kept = keep_running_fetcher(deployment(NEW, replicas=3), deployment(OLD))
    assert kept["spec"]["replicas"] == 3 and fetch_image(kept) == OLD.operator_image


@pytest.mark.parametrize("change", [
    {"number": 2},  # a new version
    {"retry": "1"},  # a retry
    {"triton": {"backend": "python"}},  # a spec change that reaches the pods
])
def test_a_change_that_rolls_the_pods_gives_them_the_new_fetcher(change: dict) -> None:
    desired = deployment(NEW, **change)
    assert keep_running_fetcher(desired, deployment(OLD)) is desired
    assert fetch_image(desired) == NEW.operator_image


def test_a_hand_edit_is_not_kept_with_the_old_image() -> None:
    live = deployment(OLD)
    live["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "EXTRA", "value": "1"})
    desired = deployment(NEW)
    assert keep_running_fetcher(desired, live) is desired


@pytest.mark.parametrize("live", [None, {}, {"spec": {"template": {"spec": {"initContainers": []}}}}])
def test_nothing_running_renders_as_is(live: dict | None) -> None:
    desired = deployment(NEW)
    assert keep_running_fetcher(desired, live) is desired


def test_the_same_image_is_left_alone_and_nothing_is_mutated() -> None:
    desired, live = deployment(NEW), deployment(OLD)
    before = copy.deepcopy(desired)
    keep_running_fetcher(desired, live)
    assert desired == before
    same = deployment(OLD)
    assert keep_running_fetcher(same, live) is same

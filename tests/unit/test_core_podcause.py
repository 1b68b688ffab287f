"""The pods' own cause of a failed rollout, and the field it names: one golden line per case."""

from __future__ import annotations

import pytest

from modelops.core.podcause import failure_cause

pytestmark = pytest.mark.unit


def pod(name: str = "digits-abc", version: int = 1, init=(), containers=(), conditions=()) -> dict:
    return {
        "metadata": {"name": name, "labels": {"modelops.dev/version": str(version)}},
        "status": {"initContainerStatuses": list(init), "containerStatuses": list(containers), "conditions": list(conditions)},
    }


BACKEND_ERROR = "E1207 failed to load 'digits': unable to find backend library for backend 'onnxruntime'"


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        (
            [pod(containers=[{"name": "triton", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                              "lastState": {"terminated": {"exitCode": 1, "message": BACKEND_ERROR}}}])],
            f"container triton CrashLoopBackOff, exit code 1, restarted 3 times: {BACKEND_ERROR}; check "
            "spec.triton.backend (or an image that has that backend, spec.triton.image)",
        ),
        (
            [pod(containers=[{"name": "triton", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])],
            "container triton OOMKilled, exit code 137; check spec.resources",
        ),
        (
            [pod(init=[{"name": "fetch", "state": {"terminated": {"exitCode": 2, "message": "sha256 mismatch"}}}],
                 containers=[{"name": "triton", "state": {"waiting": {"reason": "PodInitializing"}}}])],
            "container fetch Error, exit code 2: sha256 mismatch; check the version's artifact and the Model's "
            "spec.storage (the fetch container downloads and verifies it)",
        ),
        (
            [pod(containers=[{"name": "triton", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}])],
            "container triton cannot pull its image (ImagePullBackOff: no such image); change spec.triton.image",
        ),
        (
            [pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                              "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}])],
            "pod digits-abc cannot be scheduled (0/2 nodes are available: 2 Insufficient nvidia.com/gpu.); check "
            "spec.scheduling and spec.resources",
        ),
    ],
    ids=["triton-backend", "oom", "fetch", "image", "unschedulable"],
)
def test_the_cause_names_the_pods_reason_and_the_field(pods, expected) -> None:
    assert failure_cause(pods, 1) == expected


def test_pods_of_another_version_and_healthy_pods_give_no_cause() -> None:
    crashing = pod(version=2, containers=[{"name": "triton", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}])
    running = pod(containers=[{"name": "triton", "state": {"running": {}}}])
    assert failure_cause([crashing, running], 1) is None


def test_a_long_log_tail_keeps_its_end() -> None:
    tail = "x" * 1000 + " the last line"
    cause = failure_cause([pod(containers=[{"name": "triton", "state": {"terminated": {"exitCode": 1, "message": tail}}}])], 1)
    assert cause is not None and cause.endswith("the last line; check spec.triton (image, backend, resources)")
    assert len(cause) < 400


def test_a_fetch_that_refused_its_artifact_is_named_with_its_pod_and_version() -> None:
    from modelops.core.podcause import fetch_refusal, refused_fetch

    message = "ChecksumMismatch: s3://m/cache/model.onnx: expected sha256 aa, got bb"
    refused = pod(name="digits-2", version=2, init=[{"name": "fetch", "restartCount": 1,
                                                     "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                                     "lastState": {"terminated": {"exitCode": 10, "message": message}}}])
    transient = pod(name="digits-3", version=2, init=[{"name": "fetch", "state": {"terminated": {"exitCode": 12, "message": "x"}}}])
    assert refused_fetch(refused) == message and refused_fetch(transient) is None
    assert fetch_refusal([transient, refused], 2) == f"the fetch container of pod digits-2 refused the artifact of version 2: {message}"
    assert fetch_refusal([refused], 1) is None

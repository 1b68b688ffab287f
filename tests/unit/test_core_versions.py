"""ModelVersion decisions: defaults, prerequisites, the Job's outcome and the status."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from modelops.api import ModelSpec, ModelVersionSpec
from modelops.api.version import VersionReason
from modelops.cachekey import compressed_prefix, compression_cache_key
from modelops.contract.report import JobReason
from modelops.core.objects import VersionView
from modelops.core.versions import (
    JobResult,
    check_prerequisites,
    effective_evaluation,
    effective_recipe,
    effective_scheduling,
    job_result,
    output_prefix,
    parse_report,
    state_from_job,
    state_from_report,
    version_status,
)

pytestmark = pytest.mark.unit

SHA = "ab" * 32
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
GATE = {"datasetUri": "s3://models/digits/eval.npz", "metric": "top1-accuracy", "threshold": 0.5}


def model(**defaults) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "storage": {"bucket": "models"},
            "signature": {"inputs": [{"name": "x", "dataType": "FP32", "dims": [64]}],
                          "outputs": [{"name": "y", "dataType": "FP32", "dims": [10]}]},
            "versionDefaults": defaults,
        }
    )


def version(**extra) -> ModelVersionSpec:
    return ModelVersionSpec.model_validate(
        {"model": "digits", "version": 1, "artifact": {"uri": "s3://models/d/1.onnx", "format": "onnx", "sha256": SHA}, **extra}
    )


@pytest.mark.parametrize(
    ("own", "defaults", "expected"),
    [
        ({}, {}, {"quantization": "int8-weight-only", "pruning": {"method": "none", "amount": 0.0}, "targetFormat": "onnx"}),
        ({"compression": {"quantization": "fp16"}}, {}, {"quantization": "fp16", "pruning": {"method": "none", "amount": 0.0}, "targetFormat": "onnx"}),
        (
            {"compression": {"pruning": {"amount": 0.3}}},
            {"compression": {"pruning": {"method": "unstructured", "amount": 0.1}}},
            {"quantization": "int8-weight-only", "pruning": {"method": "unstructured", "amount": 0.3}, "targetFormat": "onnx"},
        ),
        (
            {"compression": {"targetFormat": "torchscript"}},
            {"compression": {"quantization": "none"}},
            {"quantization": "none", "pruning": {"method": "none", "amount": 0.0}, "targetFormat": "torchscript"},
        ),
    ],
)
def test_recipe_fields_come_from_the_version_then_the_model(own, defaults, expected) -> None:
    assert effective_recipe(version(**own), model(**defaults)).wire() == expected


def test_a_pruning_method_without_an_amount_is_refused_at_the_door() -> None:
    from pydantic import ValidationError

    # The same rule as the CRD's: the version is never accepted, so it never silently prunes nothing.
    with pytest.raises(ValidationError, match="compression.pruning.amount"):
        version(compression={"pruning": {"method": "unstructured"}})


def test_evaluation_and_scheduling_fall_back_to_model_defaults() -> None:
    m = model(evaluation=GATE, scheduling={"gpus": 2, "nodeSelector": {"pool": "gpu"}})
    assert effective_evaluation(version(), m).wire() == GATE
    own_gate = {**GATE, "threshold": 1.0}
    assert effective_evaluation(version(evaluation=own_gate), m).wire() == own_gate
    assert effective_evaluation(version(), model()) is None
    sched = effective_scheduling(version(scheduling={"gpus": 0}), m)
    assert sched.gpus == 0 and sched.node_selector == {"pool": "gpu"}
    assert effective_scheduling(version(), model()).gpus == 1


def test_output_prefix_is_the_content_address() -> None:
    m = model()
    key = compression_cache_key(SHA, effective_recipe(version(), m))
    assert output_prefix(version(), m) == compressed_prefix("models", key)
    assert output_prefix(version(compression={"quantization": "fp16"}), m) != output_prefix(version(), m)


def view(name: str, number: int, created: str, phase: str | None = None) -> VersionView:
    return VersionView(name=name, model="digits", version=number, phase=phase, created=created)


@pytest.mark.parametrize(
    ("me", "model_exists", "siblings", "reason"),
    [
        (view("v1", 1, "2025-01-02"), False, [], "ModelNotFound"),
        (view("v1", 1, "2025-01-02"), True, [], None),
        (view("v1", 1, "2025-01-02"), True, [view("v2", 2, "2025-01-01")], None),
        (view("late", 1, "2025-01-02"), True, [view("early", 1, "2025-01-01")], "DuplicateVersion"),
        (view("early", 1, "2025-01-01"), True, [view("late", 1, "2025-01-02")], None),
    ],
)
def test_prerequisites(me, model_exists, siblings, reason) -> None:
    state = check_prerequisites(me, model_exists, siblings)
    assert (state.reason if state else None) == reason
    if state:
        assert state.phase == "Pending"


def report(outcome: str = "Passed", **extra) -> dict:
    base = {
        "outcome": outcome, "reason": "Compressed" if outcome == "Passed" else "AccuracyGateRejected", "message": "m",
        "device": "cpu", "artifact": {"uri": "s3://models/modelops-cache/k/model.onnx", "sha256": "cd" * 32, "bytes": 100, "format": "onnx"},
        "bytesBefore": 400, "bytesAfter": 100, "ratio": 4.0, "latencyMsBefore": 2.0, "latencyMsAfter": 1.0,
        "metric": {"name": "top1-accuracy", "threshold": 0.5, "parent": 97.0, "compressed": 96.8, "drop": 0.2, "passed": True},
        "recipeHash": "r", "compressorVersion": "1.0.0", "libraries": {"torch": "2"},
    }
    return {**base, **extra}


def pod(exit_code: int, message: str = "", finished: str = "2025-01-01T00:00:00Z", name: str = "compress") -> dict:
    return {"status": {"containerStatuses": [{"name": name, "state": {"terminated": {"exitCode": exit_code, "message": message, "finishedAt": finished}}}]}}


def job(condition: str | None) -> dict:
    conditions = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}] if condition else []
    return {"status": {"conditions": conditions}}


@pytest.mark.parametrize(
    ("job_body", "pods", "state", "exit_code", "has_report"),
    [
        (job(None), [], "running", None, False),
        (job("Complete"), [pod(0, json.dumps(report()))], "succeeded", 0, True),
        (job("Complete"), [pod(0, "not json")], "succeeded", 0, False),
        (job("Failed"), [pod(11, json.dumps(report("Rejected")))], "failed", 11, True),
        (job("Failed"), [pod(12, "boom", "2025-01-01T00:00:01Z"), pod(10, "bad", "2025-01-01T00:00:09Z")], "failed", 10, False),
        (job("Failed"), [], "failed", None, False),
        (job("Failed"), [pod(1, "x", name="sidecar")], "failed", None, False),
    ],
)
def test_job_result(job_body, pods, state, exit_code, has_report) -> None:
    result = job_result(job_body, pods)
    assert result.state == state and result.exit_code == exit_code
    assert (result.report is not None) == has_report


def test_a_retrying_job_says_how_many_attempts_failed_and_why() -> None:
    transient = report("Failed", reason="StorageUnreachable", message="cannot reach http://minio:9000")
    result = job_result({"status": {"failed": 2}}, [pod(12, json.dumps(transient))])
    assert (result.state, result.failed_attempts, result.exit_code) == ("running", 2, 12)
    state = state_from_job(result, "v1-compress", "k")
    assert (state.phase, state.reason) == ("Compressing", "JobRetrying")
    assert "2 attempts failed" in state.message and "StorageUnreachable" in state.message


def test_a_job_that_gave_up_counts_attempts_from_the_job_when_pods_are_gone() -> None:
    body = {"status": {"failed": 3, "conditions": job("Failed")["status"]["conditions"]}}
    transient = report("Failed", reason="StorageUnreachable", message="cannot reach http://minio:9000")
    result = job_result(body, [pod(12, json.dumps(transient))])
    assert (result.state, result.failed_attempts) == ("failed", 3)
    assert "gave up after 3 attempts" in state_from_job(result, "v1-compress", "k").message


@pytest.mark.parametrize(
    ("pods", "recheck"),
    [
        ([{"status": {"phase": "Pending"}}], 5.0),  # not yet seen by the scheduler
        ([{"status": {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]}}], None),
    ],
)
def test_a_pod_awaiting_the_scheduler_is_looked_at_again(pods, recheck) -> None:
    state = state_from_job(job_result(job(None), pods), "v1-compress", "k", recheck_seconds=5.0)
    assert state.retry_after == recheck


@pytest.mark.parametrize("result", [JobResult("running"), JobResult("running", failed_attempts=1)])
def test_a_job_that_evaluates_a_cached_compression_shows_as_evaluating(result) -> None:
    state = state_from_job(result, "v1-compress", "k", evaluating=True)
    assert state.phase == "Evaluating" and state.progressing and "evaluation Job v1-compress" in state.message
    done = state_from_job(JobResult("succeeded", report(reason="CachedCompressionEvaluated"), 0), "v1-compress", "k", evaluating=True)
    assert (done.phase, done.reason) == ("Ready", "CachedCompressionEvaluated")


def test_pending_pod_explains_why() -> None:
    unscheduled = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "message": "0/2 nodes have nvidia.com/gpu"}]}}
    state = state_from_job(job_result(job(None), [unscheduled]), "v1-compress", "k")
    assert state.phase == "Compressing" and state.reason == "JobPending" and "nvidia.com/gpu" in state.message


@pytest.mark.parametrize(
    ("result", "phase", "reason"),
    [
        (JobResult("running"), "Compressing", "JobRunning"),
        (JobResult("succeeded", report(), 0), "Ready", "Compressed"),
        (JobResult("succeeded", None, 0), "Failed", "ReportMissing"),
        (JobResult("failed", report("Rejected"), 11), "Rejected", "AccuracyGateRejected"),
        (JobResult("failed", report("Failed", reason="ChecksumMismatch"), 10), "Failed", "ChecksumMismatch"),
        (JobResult("failed", None, 10, "sha256 mismatch"), "Failed", "BadArtifact"),
        (JobResult("failed", None, 11), "Rejected", "AccuracyGateRejected"),
        (JobResult("failed", None, 12), "Failed", "RetriesExhausted"),
        (JobResult("failed", None, 2), "Failed", "InvalidJobArguments"),
        (JobResult("failed", None, 137, "OOMKilled"), "Failed", "CompressionFailed"),
        (JobResult("failed", None, None, "DeadlineExceeded: x"), "Failed", "CompressionFailed"),
    ],
)
def test_state_from_job(result, phase, reason) -> None:
    state = state_from_job(result, "v1-compress", "key")
    assert (state.phase, state.reason) == (phase, reason)
    assert state.job_name == "v1-compress" and state.message


def test_ready_state_carries_artifact_and_report() -> None:
    state = state_from_report(report(), job_name=None, key="k", from_cache=True)
    assert state.phase == "Ready" and state.reason == "CompressedFromCache"
    assert state.compressed.wire() == {"uri": "s3://models/modelops-cache/k/model.onnx", "sha256": "cd" * 32, "bytes": 100, "format": "onnx"}
    wire = state.report.wire()
    assert wire["ratio"] == 4.0 and wire["fromCache"] is True
    assert wire["metric"]["drop"] == 0.2
    assert "libraries" not in wire and "outcome" not in wire
    assert "4.00x" in state.message and "drop 0.2 points, allowed 0.5" in state.message


def test_passed_report_without_artifact_is_a_failure() -> None:
    state = state_from_report(report(artifact={"uri": "s3://b/k"}), job_name="j", key="k", from_cache=False)
    assert (state.phase, state.reason) == ("Failed", "ReportInvalid")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [(json.dumps(report()), True), ("", False), ("{}", False), ("[1]", False), ('{"outcome": "Maybe"}', False), ("Traceback...", False)],
)
def test_parse_report(text, parsed) -> None:
    assert (parse_report(text) is not None) == parsed


def test_a_job_that_evaluated_a_cached_compression_says_so() -> None:
    state = state_from_report(report(reason="CachedCompressionEvaluated"), job_name="j", key="k", from_cache=False)
    assert (state.phase, state.reason) == ("Ready", "CachedCompressionEvaluated")
    assert state.report.from_cache is True and "evaluated an identical earlier compression" in state.message


def test_status_is_built_by_the_api_model_and_validates() -> None:
    from modelops.api import ModelVersionStatus

    status = version_status(None, state_from_job(JobResult("succeeded", report(), 0), "j", "k"), 1, NOW)
    assert ModelVersionStatus.model_validate(status).wire() == status
    assert status["report"]["metric"]["passed"] is True


def test_status_is_stable_for_the_same_state() -> None:
    state = state_from_job(JobResult("running"), "v1-compress", "k")
    first = version_status(None, state, 1, NOW)
    again = version_status(first, state, 1, NOW.replace(hour=13))
    assert again == first
    assert first["phase"] == "Compressing" and first["jobName"] == "v1-compress" and first["cacheKey"] == "k"
    ready, progressing = first["conditions"]
    assert (ready["type"], ready["status"]) == ("Ready", "False")
    assert (progressing["type"], progressing["status"], progressing["reason"]) == ("Progressing", "True", "JobRunning")


def test_ready_status_flips_conditions() -> None:
    running = version_status(None, state_from_job(JobResult("running"), "j", "k"), 1, NOW)
    done = version_status(running, state_from_job(JobResult("succeeded", report(), 0), "j", "k"), 1, NOW.replace(hour=13))
    ready, progressing = done["conditions"]
    assert ready["status"] == "True" and ready["lastTransitionTime"] == "2025-03-01T13:00:00Z"
    assert progressing["status"] == "False"
    assert done["compressedArtifact"]["sha256"] == "cd" * 32


def test_the_rollout_failed_condition_written_by_a_deployment_survives_version_status_updates() -> None:
    ready = version_status(None, state_from_job(JobResult("succeeded", report(), 0), "j", "k"), 1, NOW)
    mark = {"type": "RolloutFailed", "status": "True", "reason": "RolledBack", "message": "on digits-latest",
            "lastTransitionTime": "2025-01-01T00:00:00Z"}
    marked = {**ready, "conditions": [*ready["conditions"], mark]}
    again = version_status(marked, state_from_job(JobResult("succeeded", report(), 0), "j", "k"), 1, NOW)
    assert mark in again["conditions"]
    assert [c["type"] for c in again["conditions"]] == ["Ready", "Progressing", "RolloutFailed"]


def test_a_rejection_named_by_an_older_release_reads_as_the_one_gate_reason() -> None:
    state = state_from_report(report("Rejected", reason="AccuracyGateFailed"), job_name="j", key="k", from_cache=False)
    assert (state.phase, state.reason) == ("Rejected", "AccuracyGateRejected")


def test_a_reported_reason_reads_as_its_enum_and_an_unknown_one_keeps_its_name_in_the_message() -> None:
    known = state_from_report(report("Failed", reason="OutOfMemory", message="m"), job_name="j", key="k", from_cache=False)
    assert known.reason is JobReason.OUT_OF_MEMORY and known.message == "m"
    unknown = state_from_report(report("Failed", reason="DiskFull", message="no space"), job_name="j", key="k", from_cache=False)
    assert unknown.reason is VersionReason.COMPRESSION_FAILED
    assert unknown.message == "DiskFull: no space"

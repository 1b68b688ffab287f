"""Time to ready, step by step: a rollout's steps from its first ready pod, a version's verify
from its creation, and the Job's steps from its report."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelops.api.types import Step, StepTiming
from modelops.api.version import Phase, VersionReason
from modelops.core import timeline
from modelops.core.versions import VersionState, state_from_report, version_status

pytestmark = pytest.mark.unit


def pod(version: int, created: str, scheduled: str | None, fetch: tuple[str, str] | None, ready: str | None) -> dict:
    conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}] if scheduled else []
    if ready:
        conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": ready})
    inits = [{"name": "fetch", "state": {"terminated": {"exitCode": 0, "startedAt": fetch[0], "finishedAt": fetch[1]}}}] if fetch else []
    return {"metadata": {"name": f"p-{version}-{created}", "creationTimestamp": created, "labels": {"modelops.dev/version": str(version)}},
            "status": {"conditions": conditions, "initContainerStatuses": inits}}


def by_step(steps) -> dict[str, tuple[str, str, float]]:
    return {s.step.value: (s.started_at, s.finished_at, s.seconds) for s in steps}


def test_a_rollout_is_timed_from_its_first_ready_pod_of_the_new_version() -> None:
    pods = [
        pod(1, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", ("2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"), "2026-01-01T00:00:09Z"),
        pod(2, "2026-01-01T00:10:00Z", "2026-01-01T00:10:01Z", ("2026-01-01T00:10:02Z", "2026-01-01T00:10:32Z"), "2026-01-01T00:10:40Z"),
        pod(2, "2026-01-01T00:10:05Z", "2026-01-01T00:10:06Z", ("2026-01-01T00:10:07Z", "2026-01-01T00:10:09Z"), "2026-01-01T00:10:30Z"),
        pod(2, "2026-01-01T00:10:05Z", "2026-01-01T00:10:06Z", None, None),  # not ready: never the one timed
    ]
    steps = by_step(timeline.rollout_steps(pods, 2, "2026-01-01T00:09:59Z", "2026-01-01T00:10:41Z"))
    # The third pod was ready first (00:10:30): its steps are the rollout's.
    assert steps == {
        "schedule": ("2026-01-01T00:10:05Z", "2026-01-01T00:10:06Z", 1.0),
        "fetch": ("2026-01-01T00:10:07Z", "2026-01-01T00:10:09Z", 2.0),
        "load": ("2026-01-01T00:10:09Z", "2026-01-01T00:10:30Z", 21.0),
        "ready": ("2026-01-01T00:09:59Z", "2026-01-01T00:10:41Z", 42.0),
    }


def test_a_rollout_without_a_ready_pod_or_a_fetch_keeps_the_steps_it_can_time() -> None:
    assert by_step(timeline.rollout_steps([], 3, "2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z")) == {
        "ready": ("2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z", 5.0)}
    no_fetch = pod(3, "2026-01-01T00:00:00Z", "2026-01-01T00:00:02Z", None, "2026-01-01T00:00:04Z")
    assert set(by_step(timeline.pod_steps(no_fetch))) == {"schedule", "load"}
    assert by_step(timeline.pod_steps(no_fetch))["load"][2] == 2.0
    # Out of order or unreadable times make no step.
    assert timeline.step(Step.LOAD, timeline.parse_time("2026-01-01T00:00:05Z"), timeline.parse_time("2026-01-01T00:00:01Z")) is None
    assert timeline.parse_time("yesterday") is None


NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
CREATED = "2026-01-01T00:00:00Z"


def test_verify_is_timed_from_creation_until_the_job_starts_and_kept_after() -> None:
    verifying = version_status(None, VersionState(Phase.VERIFYING, VersionReason.CREDENTIALS_NOT_FOUND, "checking"), 1, NOW, created=CREATED)
    assert verifying.get("timings") is None
    compressing = version_status(verifying, VersionState(Phase.COMPRESSING, VersionReason.JOB_CREATED, "job", job_name="j"), 1,
                                 NOW, created=CREATED)
    assert by_step(StepTiming.model_validate(t) for t in compressing["timings"]) == {"verify": (CREATED, "2026-01-01T00:01:00Z", 60.0)}
    later = version_status(compressing, VersionState(Phase.COMPRESSING, VersionReason.JOB_CREATED, "job", job_name="j"), 1,
                           NOW.replace(minute=5), created=CREATED)
    assert later["timings"] == compressing["timings"], "verify is timed once"


def test_a_source_refused_before_any_job_has_no_verify_step() -> None:
    rejected = version_status(None, VersionState(Phase.REJECTED, VersionReason.SIGNATURE_MISMATCH, "bad"), 1, NOW, created=CREATED)
    assert rejected.get("timings") is None


JOB_TIMINGS = [{"step": "download", "startedAt": "2026-01-01T00:01:01Z", "finishedAt": "2026-01-01T00:01:03Z", "seconds": 2.25},
               {"step": "compress", "startedAt": "2026-01-01T00:01:04Z", "finishedAt": "2026-01-01T00:01:10Z", "seconds": 6.0},
               {"step": "evaluate", "startedAt": "2026-01-01T00:01:10Z", "finishedAt": "2026-01-01T00:01:12Z", "seconds": 1.5}]
PASSED = {"outcome": "Passed", "reason": "Compressed", "message": "m",
          "artifact": {"uri": "s3://models/modelops-cache/k/model.onnx", "sha256": "cd" * 32, "bytes": 100, "format": "onnx"},
          "timings": JOB_TIMINGS}


def test_the_jobs_steps_join_verify_in_order_and_a_cached_reports_do_not() -> None:
    compressing = version_status(None, VersionState(Phase.COMPRESSING, VersionReason.JOB_CREATED, "job", job_name="j"), 1, NOW,
                                 created=CREATED)
    ready = version_status(compressing, state_from_report(PASSED, "j", "k", from_cache=False), 1, NOW.replace(minute=2), created=CREATED)
    assert [t["step"] for t in ready["timings"]] == ["verify", "download", "compress", "evaluate"]
    assert ready["timings"][1]["seconds"] == 2.25
    assert "timings" not in (ready.get("report") or {}), "the status holds the Job's steps once, not again in its report"
    cached = version_status(None, state_from_report(PASSED, None, "k", from_cache=True), 1, NOW, created=CREATED)
    assert [t["step"] for t in cached["timings"]] == ["verify"], "another version's Job times nothing of this one"
    older_job = version_status(compressing, state_from_report({**PASSED, "timings": "?"}, "j", "k", from_cache=False), 1, NOW,
                               created=CREATED)
    assert [t["step"] for t in older_job["timings"]] == ["verify"]

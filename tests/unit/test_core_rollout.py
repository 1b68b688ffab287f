"""Rollout planning: roll forward, pin, roll back, and the status that results."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from modelops.api import ModelDeploymentSpec
from modelops.api.deployment import ModelDeploymentStatus
from modelops.core import naming
from modelops.core.conditions import find
from modelops.core.objects import ServerState, VersionView
from modelops.core.rollout import (
    RolloutInputs,
    failed_by,
    failed_by_status,
    plan_rollout,
)

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ENDPOINTS = {"http": "http://digits.ns.svc:8000", "grpc": "digits.ns.svc:8001"}


def v(number: int, phase: str = "Ready") -> VersionView:
    ready = phase == "Ready"
    return VersionView(f"digits-v{number}", "digits", number, phase, created=f"2025-01-0{number}T00:00:00Z",
                       compressed_uri=f"s3://m/{number}" if ready else None, compressed_sha256=f"{number:064x}" if ready else None)


def spec(**extra) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": "digits", **extra})


def done(version: int, replicas: int = 1) -> ServerState:
    return ServerState(version, replicas, updated=replicas, ready=replicas, available=replicas, total=replicas)


def rolling(version: int, replicas: int = 1, exceeded: bool = False) -> ServerState:
    # New pods not available yet; the old ones still serve.
    return ServerState(version, replicas, updated=replicas, ready=replicas, available=replicas - 1 if replicas else 0,
                       total=replicas * 2, deadline_exceeded=exceeded)


def plan(md=None, old=None, versions=(), server=None, model_exists=True, now=T0, **kw):
    """The plan, with its status as the handler stores it (the wire form of the status model)."""
    p = plan_rollout(RolloutInputs(spec=md or spec(), generation=1, old=ModelDeploymentStatus.model_validate(old or {}),
                                   versions=list(versions), server=server, model_exists=model_exists, endpoints=ENDPOINTS,
                                   now=now, **kw))
    assert isinstance(p.status, ModelDeploymentStatus)
    return replace(p, status=p.status.wire())


def cond(status: dict, type_: str) -> tuple[str, str]:
    c = find(status["conditions"], type_)
    return c["status"], c["reason"]


def converge(md, versions, steps=1):
    """Create, then let the Deployment finish: the status a converged object has."""
    first = plan(md, None, versions, None)
    return plan(md, first.status, versions, done(first.target.version, md.replicas), now=T0 + timedelta(seconds=30))


def test_first_rollout_creates_the_server() -> None:
    p = plan(versions=[v(1), v(2, "Compressing")])
    assert p.target.version == 1 and p.started == 1
    s = p.status
    assert s["desiredVersion"] == 1 and "servedVersion" not in s
    assert s["rollouts"] == [{"version": 1, "startedAt": "2025-03-01T12:00:00Z", "outcome": "Progressing"}]
    assert cond(s, "Ready") == ("False", "RolloutInProgress")
    assert cond(s, "Progressing") == ("True", "RolloutInProgress")
    assert s["endpoints"] == ENDPOINTS
    assert [e.reason for e in p.events] == ["RolloutStarted"]


def test_completed_rollout_is_served_and_ready() -> None:
    p = converge(spec(), [v(1)])
    s = p.status
    assert s["servedVersion"] == 1 and s["desiredVersion"] == 1 and s["readyReplicas"] == 1
    assert s["rollouts"][-1]["outcome"] == "Succeeded" and s["rollouts"][-1]["finishedAt"] == "2025-03-01T12:00:30Z"
    assert cond(s, "Ready") == ("True", "Serving")
    assert cond(s, "Progressing") == ("False", "RolloutComplete")
    assert cond(s, "Degraded") == ("False", "AsExpected")
    assert p.succeeded == (1, 30.0)


def test_a_succeeded_rollout_records_its_first_ready_pods_steps() -> None:
    first = plan(spec(), None, [v(1)], None)
    pod = {"metadata": {"creationTimestamp": "2025-03-01T12:00:01Z", "labels": {"modelops.dev/version": "1"}},
           "status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-03-01T12:00:02Z"},
                                     {"type": "Ready", "status": "True", "lastTransitionTime": "2025-03-01T12:00:25Z"}],
                      "initContainerStatuses": [{"name": "fetch", "state": {"terminated": {
                          "exitCode": 0, "startedAt": "2025-03-01T12:00:03Z", "finishedAt": "2025-03-01T12:00:13Z"}}}]}}
    p = plan(spec(), first.status, [v(1)], done(1, 1), now=T0 + timedelta(seconds=30), pods=(pod,))
    assert {t["step"]: t["seconds"] for t in p.status["rollouts"][-1]["timings"]} == {
        "schedule": 1.0, "fetch": 10.0, "load": 12.0, "ready": 30.0}
    assert "timings" not in first.status["rollouts"][-1], "a rollout under way has no steps yet"


def test_a_converged_object_plans_no_change() -> None:
    converged = converge(spec(), [v(1)]).status
    again = plan(spec(), converged, [v(1)], done(1), now=T0 + timedelta(hours=5))
    assert again.status == converged
    assert again.events == () and again.started is None and again.succeeded is None
    assert again.target.version == 1


def test_latest_rolls_forward_when_a_new_version_is_ready() -> None:
    converged = converge(spec(), [v(1)]).status
    p = plan(spec(), converged, [v(1), v(2)], done(1))
    assert p.target.version == 2 and p.started == 2
    assert p.status["rollouts"][-1] == {"version": 2, "fromVersion": 1, "startedAt": "2025-03-01T12:00:00Z", "outcome": "Progressing"}
    assert p.status["desiredVersion"] == 2 and p.status["servedVersion"] == 1
    finished = plan(spec(), p.status, [v(1), v(2)], done(2))
    assert finished.status["servedVersion"] == 2 and finished.status["previousVersion"] == 1
    assert cond(finished.status, "Ready") == ("True", "Serving")


def test_pinned_does_not_move() -> None:
    pinned = spec(versionPolicy="Pinned", version=1)
    converged = converge(pinned, [v(1)]).status
    p = plan(pinned, converged, [v(1), v(2), v(3)], done(1))
    assert p.target.version == 1 and p.started is None
    assert p.status == converged


def test_pinned_to_a_version_that_is_not_ready_keeps_serving_and_says_why() -> None:
    converged = converge(spec(versionPolicy="Pinned", version=1), [v(1)]).status
    repinned = spec(versionPolicy="Pinned", version=2)
    p = plan(repinned, converged, [v(1), v(2, "Compressing")], done(1))
    assert p.target.version == 1
    assert p.status["desiredVersion"] == 2 and p.status["servedVersion"] == 1
    assert cond(p.status, "Ready") == ("False", "PinnedVersionNotReady")
    assert cond(p.status, "Degraded") == ("True", "PinnedVersionNotReady")
    assert "still serving version 1" in find(p.status["conditions"], "Ready")["message"]


def test_pinned_to_a_version_that_is_not_ready_and_nothing_served() -> None:
    p = plan(spec(versionPolicy="Pinned", version=2), None, [v(2, "Compressing")])
    assert p.target is None
    assert cond(p.status, "Ready") == ("False", "PinnedVersionNotReady")
    assert "endpoints" not in p.status


@pytest.mark.parametrize(
    ("versions", "model_exists", "reason"),
    [([], True, "NoReadyVersion"), ([v(1, "Compressing")], True, "NoReadyVersion"), ([v(1)], False, "ModelNotFound")],
)
def test_nothing_to_serve(versions, model_exists, reason) -> None:
    p = plan(versions=versions, model_exists=model_exists)
    assert p.target is None and p.status["conditions"][0]["reason"] == reason
    assert cond(p.status, "Ready") == ("False", reason)
    assert "desiredVersion" not in p.status


def test_failed_rollout_is_rolled_back_and_latest_skips_it() -> None:
    converged = converge(spec(), [v(1)]).status
    started = plan(spec(), converged, [v(1), v(2)], done(1))
    p = plan(spec(), started.status, [v(1), v(2)], rolling(2, exceeded=True), now=T0 + timedelta(minutes=11))
    assert p.rolled_back == 2 and p.target.version == 1
    s = p.status
    assert s["failedVersions"] == [2] and s["desiredVersion"] == 1
    assert s["rollouts"][-1]["outcome"] == "RolledBack"
    assert cond(s, "Degraded") == ("True", "RolledBack")
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "RolledBack")]
    # The next reconcile sees the old template again and does not mark anything else.
    after = plan(spec(), s, [v(1), v(2)], done(1), now=T0 + timedelta(minutes=12))
    assert after.rolled_back is None and after.status["failedVersions"] == [2]
    assert cond(after.status, "Ready") == ("True", "Serving")
    # A newer version still rolls forward past the failed one.
    forward = plan(spec(), after.status, [v(1), v(2), v(3)], done(1))
    assert forward.target.version == 3


@pytest.mark.parametrize(
    ("old_retry", "annotation", "cleared"),
    [
        (None, None, False),  # no annotation: the mark stays
        (None, "1", True),  # first retry request
        ("1", "1", False),  # already acted on: a resync does not clear a later failure
        ("1", "2", True),  # a new value is a new request
    ],
)
def test_the_retry_annotation_clears_failed_versions_once_per_value(old_retry, annotation, cleared) -> None:
    old = {**converge(spec(), [v(1)]).status, "failedVersions": [2]}
    if old_retry is not None:
        old["lastRetry"] = old_retry
    p = plan(spec(), old, [v(1), v(2)], done(1), retry=annotation)
    assert p.status.get("failedVersions") == (None if cleared else [2])
    assert p.target.version == (2 if cleared else 1)
    assert p.status.get("lastRetry") == (annotation or old_retry)
    assert ("RetryRequested" in [e.reason for e in p.events]) == cleared


def test_failed_pinned_rollout_returns_to_the_last_good_version() -> None:
    converged = converge(spec(versionPolicy="Pinned", version=1), [v(1)]).status
    pin2 = spec(versionPolicy="Pinned", version=2)
    started = plan(pin2, converged, [v(1), v(2)], done(1))
    assert started.target.version == 2
    p = plan(pin2, started.status, [v(1), v(2)], rolling(2, exceeded=True))
    assert p.target.version == 1 and p.status["desiredVersion"] == 2
    assert cond(p.status, "Ready") == ("False", "PinnedVersionRolloutFailed")


def test_without_auto_rollback_the_deadline_is_reported() -> None:
    md = spec(rollout={"autoRollback": False})
    converged = converge(md, [v(1)]).status
    started = plan(md, converged, [v(1), v(2)], done(1))
    p = plan(md, started.status, [v(1), v(2)], rolling(2, exceeded=True))
    assert p.rolled_back is None and p.target.version == 2
    assert cond(p.status, "Progressing") == ("False", "ProgressDeadlineExceeded")


def test_a_newer_version_supersedes_a_rollout_in_progress() -> None:
    converged = converge(spec(), [v(1)]).status
    started = plan(spec(), converged, [v(1), v(2)], done(1))
    p = plan(spec(), started.status, [v(1), v(2), v(3)], rolling(2))
    outcomes = [(r["version"], r["outcome"]) for r in p.status["rollouts"]]
    assert outcomes[-2:] == [(2, "Superseded"), (3, "Progressing")]
    assert p.target.version == 3


def test_history_is_trimmed() -> None:
    status, versions = None, []
    for number in range(1, 8):
        versions.append(v(number))
        status = plan(spec(), status, versions, done(number - 1) if number > 1 else None).status
        status = plan(spec(), status, versions, done(number)).status
    assert [r["version"] for r in status["rollouts"]] == [3, 4, 5, 6, 7]
    trimmed = plan(spec(), None, [v(1)], None, history=1)
    assert len(trimmed.status["rollouts"]) == 1


def test_render_problems_block_new_rollouts() -> None:
    converged = converge(spec(), [v(1)]).status
    p = plan(spec(), converged, [v(1), v(2)], done(1), blocked=("InvalidServingConfig", "dynamic_batching.enabled: needs max_batch_size > 0"))
    assert p.target is None
    assert cond(p.status, "Ready") == ("False", "InvalidServingConfig")
    assert cond(p.status, "Degraded") == ("True", "InvalidServingConfig")


def test_scaled_to_zero_is_ready() -> None:
    md = spec(replicas=0)
    p = plan(md, converge(md, [v(1)]).status, [v(1)], done(1, replicas=0))
    assert cond(p.status, "Ready") == ("True", "Serving")


def test_server_state_from_a_deployment() -> None:
    body = {
        "metadata": {"generation": 4},
        "spec": {"replicas": 2, "template": {"metadata": {"annotations": {naming.ANNOTATION_VERSION: "3"}}}},
        "status": {"observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                   "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]},
    }
    state = ServerState.from_deployment(body)
    assert state.version == 3 and state.complete and not state.deadline_exceeded
    stale = {**body, "status": {**body["status"], "observedGeneration": 3}}
    assert not ServerState.from_deployment(stale).complete
    failed = {**body, "status": {**body["status"], "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}}
    assert ServerState.from_deployment(failed).deadline_exceeded
    # Right after a new template is applied, the condition still speaks of the old one.
    applied = {**failed, "metadata": {"generation": 5}}
    assert not ServerState.from_deployment(applied).deadline_exceeded
    assert ServerState.from_deployment({"metadata": {}, "spec": {}}).version is None


@pytest.mark.parametrize(
    ("deployments", "expected"),
    [
        ([], ()),  # no deployment: no mark
        ([("a", (2,))], ("a",)),  # a rollback marks
        ([("a", ()), ("b", (2,))], ("b",)),  # a retry on a clears a's mark only
        ([("b", (2, 3)), ("a", (2,))], ("a", "b")),  # every deployment that failed it, sorted
        ([("a", (1, 3))], ()),  # other numbers are not this version's
    ],
)
def test_failed_by_is_the_deployments_that_hold_its_number(deployments, expected) -> None:
    assert failed_by(v(2), [v(1), v(2)], deployments) == expected


def test_a_duplicate_or_deleting_version_is_never_marked() -> None:
    duplicate = VersionView("digits-v2-again", "digits", 2, "Ready", created="2025-02-01T00:00:00Z")
    assert failed_by(duplicate, [v(2), duplicate], [("a", (2,))]) == ()
    assert failed_by(v(2), [v(2), duplicate], [("a", (2,))]) == ("a",)
    # When the owner starts deleting, the duplicate owns the number and its marks.
    assert failed_by(duplicate, [replace(v(2), deleting=True), duplicate], [("a", (2,))]) == ("a",)
    assert failed_by(replace(v(2), deleting=True), [v(2)], [("a", (2,))]) == ()


READY = {"type": "Ready", "status": "True", "reason": "Compressed", "message": "m", "lastTransitionTime": "2025-01-01T00:00:00Z"}


def test_the_first_mark_sets_failed_by_and_rolled_back() -> None:
    new = failed_by_status({"phase": "Ready", "conditions": [READY]}, {"a"}, T0)
    assert new is not None and new["failedBy"] == ["a"]
    assert new["conditions"][0] == READY, "other conditions are untouched"
    mark = find(new["conditions"], "RolloutFailed")
    assert (mark["status"], mark["reason"]) == ("True", "RolledBack") and "ModelDeployment a" in mark["message"]


def test_a_second_deployment_joins_the_list_and_keeps_the_transition_time() -> None:
    first = failed_by_status({"conditions": [READY]}, {"b"}, T0)
    later = T0 + timedelta(minutes=5)
    second = failed_by_status(first, {"a", "b"}, later)
    assert second is not None and second["failedBy"] == ["a", "b"]
    mark = find(second["conditions"], "RolloutFailed")
    assert mark["lastTransitionTime"] == "2025-03-01T12:00:00Z" and "a, b" in mark["message"]
    # One retry removes one name; the other deployment's verdict stays.
    after_retry = failed_by_status(second, {"b"}, later)
    assert after_retry is not None and after_retry["failedBy"] == ["b"]
    assert find(after_retry["conditions"], "RolloutFailed")["status"] == "True"


def test_the_last_name_removed_turns_rolled_back_false() -> None:
    marked_status = failed_by_status({"conditions": [READY]}, {"a"}, T0)
    cleared = failed_by_status(marked_status, (), T0)
    assert cleared is not None and cleared["failedBy"] is None  # a merge patch removes the field
    mark = find(cleared["conditions"], "RolloutFailed")
    assert (mark["status"], mark["reason"]) == ("False", "NoFailedRollout")


@pytest.mark.parametrize(("stored", "derived"), [((), ()), (("a",), ("a",)), (("a", "b"), ("b", "a"))])
def test_a_derivation_that_changes_nothing_writes_nothing(stored, derived) -> None:
    assert failed_by_status({"failedBy": list(stored) or None, "conditions": [READY]}, derived, T0) is None


def test_a_mark_the_old_operator_left_for_a_deployment_that_is_gone_is_derived_away() -> None:
    stale = {"failedBy": ["gone"], "conditions": [READY, {"type": "RolloutFailed", "status": "True", "reason": "RolledBack",
                                                          "message": "m", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}
    cleared = failed_by_status(stale, failed_by(v(2), [v(2)], [("a", (3,))]), T0)
    assert cleared is not None and cleared["failedBy"] is None
    assert find(cleared["conditions"], "RolloutFailed")["status"] == "False"


def test_a_pod_lost_after_the_rollout_is_degraded_not_a_rollout() -> None:
    md = spec(replicas=2)
    converged = converge(md, [v(1)]).status
    crashed = ServerState(1, 2, updated=2, ready=1, available=1, total=2)
    s = plan(md, converged, [v(1)], crashed, now=T0 + timedelta(minutes=5)).status
    assert s["servedVersion"] == 1
    assert cond(s, "Progressing") == ("False", "RolloutComplete")
    assert cond(s, "Degraded") == ("True", "ReplicasUnavailable")
    assert "1 of 2 replicas of version 1" in find(s["conditions"], "Degraded")["message"]
    assert cond(s, "Ready") == ("True", "Serving")  # one replica still serves
    assert s["rollouts"] == converged["rollouts"]

    none_left = ServerState(1, 2, updated=2, ready=0, available=0, total=2)
    s = plan(md, converged, [v(1)], none_left, now=T0 + timedelta(minutes=6)).status
    assert cond(s, "Ready") == ("False", "Unavailable")
    assert cond(s, "Degraded") == ("True", "ReplicasUnavailable")

    healed = plan(md, s, [v(1)], done(1, replicas=2), now=T0 + timedelta(minutes=7)).status
    assert cond(healed, "Ready") == ("True", "Serving") and cond(healed, "Degraded") == ("False", "AsExpected")


# -- suspend ---------------------------------------------------------------------------------


def test_suspended_scales_to_zero_and_says_so() -> None:
    from modelops.core.render import managed_replicas

    md = spec(replicas=3, suspended=True)
    assert managed_replicas(md) == 0
    p = plan(md, old={"servedVersion": 1, "desiredVersion": 1}, versions=[v(1)], server=done(1, 3))
    assert p.target.version == 1
    for kind in ("Ready", "Progressing", "Degraded"):
        assert find(p.status["conditions"], kind)["reason"] == "Suspended"
    assert "suspended: 0 replicas of version 1 (3 pod(s) still stopping)" in find(p.status["conditions"], "Ready")["message"]
    assert managed_replicas(spec(replicas=3)) == 3


def test_a_new_version_waits_for_the_resume() -> None:
    md = spec(replicas=3, suspended=True)
    old = {"servedVersion": 1, "desiredVersion": 1, "rollouts": [{"version": 1, "startedAt": "2025-03-01T11:00:00Z", "outcome": "Succeeded"}]}
    p = plan(md, old=old, versions=[v(1), v(2)], server=done(1, 0))
    assert p.target.version == 1 and p.started is None
    assert p.status["desiredVersion"] == 2 and p.status["servedVersion"] == 1
    assert "version 2 rolls out on resume" in find(p.status["conditions"], "Ready")["message"]
    # A Deployment at 0 pods is "complete", but that serves nothing: the served version stays.
    p = plan(md, old=old, versions=[v(1), v(2)], server=done(2, 0))
    assert p.status["servedVersion"] == 1
    resumed = plan(spec(replicas=3), old=p.status, versions=[v(1), v(2)], server=done(1, 3))
    assert resumed.target.version == 2 and resumed.started == 2


# -- retry after a fix: a new attempt is judged on its own ------------------------------------

FAILED_CAUSE = "container triton CrashLoopBackOff, exit code 1: unable to find backend library for backend 'onnxruntime'; check spec.triton.backend"


def first_rollout_failed(md: ModelDeploymentSpec) -> dict:
    """Nothing was served, and the first rollout of version 1 missed its deadline."""
    started = plan(md, None, [v(1)])
    failed = plan(md, started.status, [v(1)], rolling(1, exceeded=True), now=T0 + timedelta(minutes=2),
                  cause=FAILED_CAUSE)
    assert failed.rolled_back == 1 and failed.target is None
    return failed.status


@pytest.mark.parametrize("md", [spec(), spec(versionPolicy="Pinned", version=1)], ids=["Latest", "Pinned"])
def test_a_first_rollout_that_failed_says_nothing_was_rolled_back_and_names_the_cause(md) -> None:
    started = plan(md, None, [v(1)])
    p = plan(md, started.status, [v(1)], rolling(1, exceeded=True), now=T0 + timedelta(minutes=2), cause=FAILED_CAUSE)
    [event] = p.events
    assert (event.type, event.reason) == ("Warning", "RolledBack")
    assert event.message == (
        f"version 1 did not become available within 600s: {FAILED_CAUSE}; nothing was ever served, so there is "
        "nothing to roll back to and its pods are kept. Fix the spec (any change tries the version again), or set "
        "the modelops.dev/retry annotation to a new value"
    )
    assert "rolling back" not in event.message
    degraded = find(p.status["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack")
    assert degraded["message"] == (
        f"the rollout of version 1 failed ({FAILED_CAUSE}); nothing was ever served, so nothing was rolled back. "
        "Fix the spec (any change tries the version again), or set the modelops.dev/retry annotation to a new value"
    )
    assert p.status["rollouts"][-1]["message"] == FAILED_CAUSE


def test_a_rollback_to_a_served_version_names_it_and_the_retry() -> None:
    converged = converge(spec(), [v(1)]).status
    started = plan(spec(), converged, [v(1), v(2)], done(1))
    p = plan(spec(), started.status, [v(1), v(2)], rolling(2, exceeded=True), cause="pod x cannot be scheduled")
    [event] = p.events
    assert event.message == (
        "version 2 did not become available within 600s: pod x cannot be scheduled; rolling back to version 1. "
        "Set the modelops.dev/retry annotation to a new value to roll it out again after a fix"
    )


@pytest.mark.parametrize("md", [spec(), spec(versionPolicy="Pinned", version=1)], ids=["Latest", "Pinned"])
def test_retry_after_a_fix_renders_again_and_is_not_judged_by_the_old_attempt(md) -> None:
    failed = first_rollout_failed(md)
    # The retry annotation is set while the old pods still show the exceeded deadline: the
    # live template lacks the new retry value, so it is not current.
    old_pods = replace(rolling(1, exceeded=True), current=False)
    retried = plan(md, failed, [v(1)], old_pods, retry="1", now=T0 + timedelta(minutes=3))
    assert retried.rolled_back is None
    assert retried.target is not None and retried.target.version == 1 and retried.started == 1
    assert "failedVersions" not in retried.status
    assert [r["outcome"] for r in retried.status["rollouts"]] == ["RolledBack", "Progressing"]
    assert cond(retried.status, "Progressing") == ("True", "RolloutInProgress")
    # The new template is applied; the Deployment controller has not observed it yet.
    pending = plan(md, retried.status, [v(1)], rolling(1), retry="1", now=T0 + timedelta(minutes=4))
    assert pending.rolled_back is None and pending.target.version == 1
    served = plan(md, pending.status, [v(1)], done(1), retry="1", now=T0 + timedelta(minutes=5))
    assert served.status["servedVersion"] == 1
    assert cond(served.status, "Ready") == ("True", "Serving")
    assert cond(served.status, "Degraded") == ("False", "AsExpected")


def test_a_second_failure_after_retry_is_judged_on_its_own() -> None:
    failed = first_rollout_failed(spec())
    retried = plan(spec(), failed, [v(1)], replace(rolling(1, exceeded=True), current=False), retry="1",
                   now=T0 + timedelta(minutes=3))
    # The new attempt misses its own deadline too.
    again = plan(spec(), retried.status, [v(1)], rolling(1, exceeded=True), retry="1", now=T0 + timedelta(minutes=15),
                 cause="container triton Error, exit code 1; check spec.triton (image, backend, resources)")
    assert again.rolled_back == 1 and again.status["failedVersions"] == [1]
    assert [r["outcome"] for r in again.status["rollouts"]] == ["RolledBack", "RolledBack"]
    # A resync with the same annotation does not clear it.
    resync = plan(spec(), again.status, [v(1)], rolling(1, exceeded=True), retry="1", now=T0 + timedelta(minutes=16))
    assert resync.status["failedVersions"] == [1] and resync.target is None and resync.events == ()


def test_a_spec_change_tries_a_failed_version_again_when_nothing_is_served() -> None:
    failed = first_rollout_failed(spec())
    # Unchanged: the failed version stays failed and its pods stay as they are.
    same = plan(spec(), failed, [v(1)], rolling(1, exceeded=True), now=T0 + timedelta(minutes=3))
    assert same.target is None and same.events == ()
    # The user fixed spec.triton.backend: the live template is older than the spec.
    fixed = plan(spec(), failed, [v(1)], replace(rolling(1, exceeded=True), current=False), now=T0 + timedelta(minutes=3))
    assert fixed.target is not None and fixed.target.version == 1 and fixed.started == 1
    assert [e.reason for e in fixed.events] == ["RetryRequested", "RolloutStarted"]
    assert "failedVersions" not in fixed.status


def test_a_spec_change_keeps_a_failed_version_skipped_while_another_is_served() -> None:
    converged = converge(spec(), [v(1)]).status
    started = plan(spec(), converged, [v(1), v(2)], done(1))
    rolled = plan(spec(), started.status, [v(1), v(2)], rolling(2, exceeded=True))
    changed = plan(spec(), rolled.status, [v(1), v(2)], replace(done(1), current=False))
    assert changed.target.version == 1 and changed.status["failedVersions"] == [2]


# -- scaling: pods that start are not pods that were lost -----------------------------------------


def scaling_to(replicas: int, total: int, available: int, observed: bool = True) -> ServerState:
    """The Triton Deployment of version 1 asked for `replicas` pods, with every pod on the current template."""
    return ServerState(1, replicas, updated=total, ready=available, available=available, total=total,
                       generation=2, observed_generation=2 if observed else 1)


def assert_serving_while_scaling(s: dict) -> None:
    assert cond(s, "Ready") == ("True", "Serving")
    assert cond(s, "Degraded") == ("False", "AsExpected")


def test_a_scale_up_is_progressing_never_degraded_and_stays_ready() -> None:
    one = converge(spec(replicas=1), [v(1)]).status
    assert one["availableReplicasHighWater"] == 1
    md = spec(replicas=3)
    # Each step the handler may see: the live Deployment before the apply, the apply not yet
    # observed by its controller, new pods created, one of them available, all available.
    steps = [done(1, 1), scaling_to(3, 1, 1, observed=False), scaling_to(3, 1, 1), scaling_to(3, 3, 1), scaling_to(3, 3, 2)]
    s = one
    for i, server in enumerate(steps):
        s = plan(md, s, [v(1)], server, now=T0 + timedelta(minutes=1, seconds=i)).status
        assert_serving_while_scaling(s)
        assert find(s["conditions"], "Progressing")["status"] == "True"
    assert cond(s, "Progressing") == ("True", "Scaling")
    assert "to 3 replicas: 3 pods, 2 available" in find(s["conditions"], "Progressing")["message"]
    assert s["availableReplicasHighWater"] == 2
    s = plan(md, s, [v(1)], done(1, 3), now=T0 + timedelta(minutes=2)).status
    assert_serving_while_scaling(s)
    assert cond(s, "Progressing") == ("False", "RolloutComplete")
    assert s["availableReplicasHighWater"] == 3 and s["rollouts"] == one["rollouts"]


def test_a_scale_down_is_clean_and_lowers_the_high_water_mark() -> None:
    three = converge(spec(replicas=3), [v(1)]).status
    md = spec(replicas=1)
    s = plan(md, three, [v(1)], done(1, 3), now=T0 + timedelta(minutes=1)).status
    assert_serving_while_scaling(s)
    assert cond(s, "Progressing") == ("True", "Scaling") and s["availableReplicasHighWater"] == 1
    s = plan(md, s, [v(1)], done(1, 1), now=T0 + timedelta(minutes=2)).status
    assert_serving_while_scaling(s)
    assert cond(s, "Progressing") == ("False", "RolloutComplete")
    # Up again: the pods that start are not counted as lost ones from before the scale-down.
    s = plan(spec(replicas=3), s, [v(1)], scaling_to(3, 3, 1), now=T0 + timedelta(minutes=3)).status
    assert_serving_while_scaling(s)


def test_a_pod_lost_while_scaling_up_is_degraded() -> None:
    md = spec(replicas=3)
    s = plan(md, converge(spec(replicas=1), [v(1)]).status, [v(1)], scaling_to(3, 3, 1), now=T0 + timedelta(minutes=1)).status
    assert_serving_while_scaling(s)
    # The one pod that served crashed; the two new ones are not ready yet.
    s = plan(md, s, [v(1)], scaling_to(3, 3, 0), now=T0 + timedelta(minutes=2)).status
    assert cond(s, "Degraded") == ("True", "ReplicasUnavailable")
    assert "1 of 3 replicas of version 1 were available and are lost" in find(s["conditions"], "Degraded")["message"]


def test_a_spec_change_of_the_served_version_is_a_rollout_that_keeps_serving() -> None:
    md = spec(replicas=2)
    s = converge(md, [v(1)]).status
    changing = ServerState(1, 2, updated=1, ready=2, available=2, total=3, generation=2, observed_generation=2)
    s = plan(md, s, [v(1)], changing, now=T0 + timedelta(minutes=1)).status
    assert cond(s, "Progressing") == ("True", "RolloutInProgress")
    assert cond(s, "Ready") == ("True", "Serving") and cond(s, "Degraded") == ("False", "AsExpected")
    assert s.get("availableReplicasHighWater") is None
    # The last new pod still starts once the old ones are gone: not a lost pod.
    s = plan(md, s, [v(1)], ServerState(1, 2, updated=2, ready=1, available=1, total=2, generation=2, observed_generation=2),
             now=T0 + timedelta(minutes=2)).status
    assert cond(s, "Progressing") == ("True", "Scaling") and cond(s, "Degraded") == ("False", "AsExpected")


def test_an_external_autoscaler_owns_the_count_the_live_deployment_asks_for() -> None:
    md = spec(replicas=1, autoscaling={"provider": "hpa", "minReplicas": 1, "maxReplicas": 4,
                                       "metric": "inferences-per-second", "target": 10})
    s = converge(md, [v(1)]).status
    s = plan(md, s, [v(1)], scaling_to(4, 4, 1), now=T0 + timedelta(minutes=1)).status
    assert_serving_while_scaling(s)
    assert "to 4 replicas" in find(s["conditions"], "Progressing")["message"]


REFUSED = "spec.autoscaling.prometheusAddress: 169.254.169.254:9090 is a link-local address"


def test_a_refused_autoscaler_address_is_degraded_while_it_serves_and_warns_once() -> None:
    converged = converge(spec(), [v(1)]).status
    first = plan(spec(), converged, [v(1)], done(1), scaler_refused=REFUSED)
    assert cond(first.status, "Ready") == ("True", "Serving")
    assert cond(first.status, "Degraded") == ("True", "EndpointNotAllowed")
    assert find(first.status["conditions"], "Degraded")["message"].startswith(REFUSED)
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "EndpointNotAllowed")]
    again = plan(spec(), first.status, [v(1)], done(1), scaler_refused=REFUSED)
    assert again.events == () and cond(again.status, "Degraded") == ("True", "EndpointNotAllowed")
    fixed = plan(spec(), again.status, [v(1)], done(1))
    assert cond(fixed.status, "Degraded") == ("False", "AsExpected")


def test_a_rollback_says_so_over_a_refused_autoscaler_address() -> None:
    converged = converge(spec(), [v(1)]).status
    started = plan(spec(), converged, [v(1), v(2)], done(1), scaler_refused=REFUSED)
    p = plan(spec(), started.status, [v(1), v(2)], rolling(2, exceeded=True), now=T0 + timedelta(minutes=11),
             scaler_refused=REFUSED)
    assert p.rolled_back == 2 and cond(p.status, "Degraded") == ("True", "RolledBack")


def test_a_refused_autoscaler_address_is_degraded_before_anything_is_served() -> None:
    p = plan(spec(), None, [v(1, "Compressing")], None, scaler_refused=REFUSED)
    assert cond(p.status, "Degraded") == ("True", "EndpointNotAllowed")


FETCH_REFUSED = ("the fetch container of pod digits-7f-x refused the artifact of version 2: UntrustedSigner: "
                 "s3://m/2/model.onnx.sig: signed by key sha256:ab, which no trusted signer verifies (trusted: operator)")


def test_a_refused_fetch_is_degraded_at_once_naming_the_version_while_the_old_pods_serve() -> None:
    converged = converge(spec(), [v(1)]).status
    started = plan(spec(), converged, [v(1), v(2)], done(1))
    first = plan(spec(), started.status, [v(1), v(2)], rolling(2), refused=FETCH_REFUSED)
    degraded = find(first.status["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ArtifactRefused")
    assert degraded["message"].startswith(FETCH_REFUSED + "; the pods of version 1 keep serving")
    assert "rolled back at its deadline (600s)" in degraded["message"]
    assert first.status["servedVersion"] == 1
    assert [(e.type, e.reason, e.message) for e in first.events] == [("Warning", "ArtifactRefused", FETCH_REFUSED)]
    again = plan(spec(), first.status, [v(1), v(2)], rolling(2), refused=FETCH_REFUSED)
    assert again.events == () and cond(again.status, "Degraded") == ("True", "ArtifactRefused")
    # At the deadline the rollback says what happened, over the refusal.
    back = plan(spec(), again.status, [v(1), v(2)], rolling(2, exceeded=True), now=T0 + timedelta(minutes=11),
                refused=FETCH_REFUSED, cause=FETCH_REFUSED)
    assert back.rolled_back == 2 and cond(back.status, "Degraded") == ("True", "RolledBack")
    assert FETCH_REFUSED in find(back.status["conditions"], "Degraded")["message"]

"""Rollout planning for a ModelDeployment: which version to render, whether a rollout failed
and must be reverted, and the status that results. Plan first; the handler applies it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelops.api.deployment import CanaryPhase, ModelDeploymentSpec, ModelDeploymentStatus, RolloutOutcome, RolloutRecord, RolloutStrategy
from modelops.api.deployment import DeploymentReason as Reason
from modelops.api.types import Condition, ConditionType
from modelops.core import timeline
from modelops.core.canary import CanaryInputs, CanaryPlan, plan_canary
from modelops.core.conditions import FALSE, TRUE, Cond, merge_conditions, timestamp
from modelops.core.objects import Event, ServerState, VersionView
from modelops.core.render import managed_replicas
from modelops.core.resolve import Resolution, effective_versions, resolve_version

NORMAL, WARNING = "Normal", "Warning"
# Reasons of a ModelVersion's RolloutFailed condition, which sums up status.failedBy.
REASON_ROLLED_BACK = "RolledBack"
REASON_NO_FAILED_ROLLOUT = "NoFailedRollout"


@dataclass(frozen=True)
class RolloutPlan:
    target: VersionView | None  # the version to render; None leaves the Deployment alone
    resolution: Resolution
    status: ModelDeploymentStatus
    events: tuple[Event, ...] = ()
    started: int | None = None  # version whose rollout starts now
    succeeded: tuple[int, float] | None = None  # version and seconds it took
    rolled_back: int | None = None
    canary: CanaryPlan | None = None  # the canary Deployment to keep, under strategy Canary
    requeue: float | None = None  # look again after this many seconds (a canary's analysis interval)


RETRY_HINT = "Set the modelops.dev/retry annotation to a new value to roll it out again after a fix"
FIX_HINT = "Fix the spec (any change tries the version again), or set the modelops.dev/retry annotation to a new value"


def rollback_message(version: int, served: int | None, spec: ModelDeploymentSpec, cause: str | None) -> str:
    """The Warning event of a rollout past its deadline: the pods' cause, and what happens now."""
    why = f": {cause}" if cause else ""
    missed = f"version {version} did not become available within {spec.rollout.progress_deadline_seconds}s{why}"
    if served is not None:
        return f"{missed}; rolling back to version {served}. {RETRY_HINT}"
    return f"{missed}; nothing was ever served, so there is nothing to roll back to and its pods are kept. {FIX_HINT}"


def _seconds_between(start: str, now: datetime) -> float:
    began = timeline.parse_time(start)
    return max(0.0, (now - began.replace(tzinfo=now.tzinfo)).total_seconds()) if began is not None else 0.0


@dataclass(frozen=True)
class RolloutInputs:
    """What one plan reads.

    `blocked` (reason, message) stops any new rollout, for problems found while rendering.
    `retry` is the modelops.dev/retry annotation: a value not acted on yet clears the failed versions.
    `cause` is the pods' own reason for a rollout past its deadline (core/podcause.py), kept in
    the rollout's record. While spec.suspended, the pods go to 0 and no new version rolls out
    until it is false again. `scaler_refused` says why the autoscaler may not be set up (a KEDA
    Prometheus address the operator may not point it at): Degraded, while the pods serve.
    `refused` is a fetch container's refusal of the rendered version's artifact (its digest,
    its signature, or a missing object: core/podcause.fetch_refusal): Degraded at once, while
    the pods of the served version keep serving and the deadline's rollback is awaited.
    """

    spec: ModelDeploymentSpec
    generation: int | None
    old: ModelDeploymentStatus
    versions: list[VersionView]
    server: ServerState | None
    model_exists: bool
    endpoints: dict[str, str]
    now: datetime
    history: int = 5
    blocked: tuple[str, str] | None = None
    retry: str | None = None
    canary: CanaryInputs = CanaryInputs()
    cause: str | None = None
    scaler_refused: str | None = None
    refused: str | None = None
    pods: tuple[dict[str, Any], ...] = ()  # the Triton pods, while a rollout is in progress: its steps' times


@dataclass
class _Draft:
    """The plan under way: each phase reads the inputs and moves this on."""

    failed: set[int]
    last_retry: str | None
    records: list[RolloutRecord]
    served: int | None
    previous: int | None
    owners: dict[int, VersionView]
    now_text: str
    events: list[Event] = field(default_factory=list)
    rolled_back: int | None = None
    resolution: Resolution = Resolution(None, Reason.NOTHING_SERVED, "not resolved yet")  # set by _choose
    target: VersionView | None = None  # the version on its way (for records and conditions)
    stable_target: VersionView | None = None  # what the stable Deployment renders
    serving_view: VersionView | None = None
    canary: CanaryPlan | None = None
    succeeded: tuple[int, float] | None = None
    started: int | None = None
    in_flight: bool = False

    @classmethod
    def start(cls, given: RolloutInputs) -> _Draft:
        old = given.old
        return cls(
            failed=set(old.failed_versions or []), last_retry=old.last_retry, records=list(old.rollouts or []),
            served=old.served_version, previous=old.previous_version, owners=effective_versions(given.versions),
            now_text=timestamp(given.now),
        )

    def finish_progressing(self, version: int, outcome: RolloutOutcome, message: str | None = None) -> None:
        """The record of `version`'s rollout in progress, if any, ends with `outcome`."""
        update: dict[str, Any] = {"outcome": outcome, "finished_at": self.now_text}
        if message is not None:
            update["message"] = message
        self.records = [r.model_copy(update=update) if r.version == version and r.outcome == RolloutOutcome.PROGRESSING else r
                        for r in self.records]

    def good(self, candidate: int | None) -> VersionView | None:
        """The Ready version with that number, unless it failed here."""
        view = self.owners.get(candidate) if candidate is not None else None
        return view if view is not None and view.ready and candidate not in self.failed else None


def _retry(given: RolloutInputs, draft: _Draft) -> None:
    """A modelops.dev/retry value not acted on yet clears the failed versions."""
    if given.retry is None or given.retry == draft.last_retry:
        return
    if draft.failed:
        draft.events.append(Event(NORMAL, Reason.RETRY_REQUESTED,
                                  f"cleared the failed versions {sorted(draft.failed)}; they may be rolled out again"))
    draft.failed = set()
    draft.last_retry = given.retry


def _retry_after_a_fix(given: RolloutInputs, draft: _Draft) -> None:
    """Nothing is served and the failed version's pods run an older spec: the user changed the
    spec (a fix), so the version is tried again with it. With something served, a failed
    version waits for modelops.dev/retry, and the served one takes the new spec."""
    server = given.server
    if draft.served is None and server is not None and server.version in draft.failed and not server.current:
        assert server.version is not None
        draft.failed.discard(server.version)
        draft.events.append(Event(NORMAL, Reason.RETRY_REQUESTED,
                                  f"the spec changed since version {server.version} failed to roll out; trying it again"))


def _roll_back(given: RolloutInputs, draft: _Draft) -> None:
    """A rollout that missed its deadline is reverted, and its version is skipped from now on."""
    server = given.server
    if (server is None or server.version is None or not server.deadline_exceeded or not server.current
            or server.version == draft.served or server.version in draft.failed or not given.spec.rollout.auto_rollback):
        return
    draft.rolled_back = server.version
    draft.failed.add(server.version)
    draft.finish_progressing(server.version, RolloutOutcome.ROLLED_BACK, given.cause)
    draft.events.append(Event(WARNING, Reason.ROLLED_BACK, rollback_message(server.version, draft.served, given.spec, given.cause)))


def _choose(given: RolloutInputs, draft: _Draft) -> None:
    """The version to roll out: the policy's, else the last good one kept serving."""
    spec = given.spec
    if given.model_exists:
        draft.resolution = resolve_version(spec.version_policy, spec.version, spec.model, given.versions, draft.failed)
    else:
        draft.resolution = Resolution(None, Reason.MODEL_NOT_FOUND,
                                      f"Model {spec.model} does not exist in this namespace; create it or fix spec.model")
    draft.target = None
    if given.blocked is None and draft.resolution.version is not None:
        draft.target = draft.resolution.version
    elif given.blocked is None:
        candidates = (draft.served, given.server.version if given.server else None)
        draft.target = next((view for view in map(draft.good, candidates) if view is not None), None)
    draft.stable_target = draft.target


def _serving(given: RolloutInputs, draft: _Draft) -> None:
    draft.serving_view = draft.good(draft.served)


def _hold_while_suspended(given: RolloutInputs, draft: _Draft) -> None:
    """The pod template stays as it is (the live one, else the served one): a new version rolls
    out on resume, where a rollout can be watched and rolled back."""
    if not given.spec.suspended:
        return
    for kept in (given.server.version if given.server else None, draft.served):
        view = draft.good(kept)
        if view is not None:
            draft.stable_target = view
            return


def _canary(given: RolloutInputs, draft: _Draft) -> None:
    spec = given.spec
    if spec.rollout.strategy != RolloutStrategy.CANARY:
        return
    held = given.old.canary
    if spec.suspended:
        # The canary's pods stop too; it starts its step again on resume.
        draft.canary = CanaryPlan(status=held.model_copy(update={"canary_replicas": 0}) if held else None,
                                  hold=False, canary_version=held.version if held else None, canary_replicas=0)
        return
    if given.blocked is not None:
        return
    plan = plan_canary(
        canary_spec=spec.rollout.canary_or_default(),
        replicas=spec.replicas,
        stable_version=draft.served if draft.serving_view is not None else None,
        candidate=draft.target.version if draft.target is not None else None,
        old=held,
        live=given.canary,
        now=given.now,
    )
    draft.canary = plan
    draft.events.extend(plan.events)
    if plan.abort is not None:
        draft.failed.add(plan.abort)
        draft.finish_progressing(plan.abort, RolloutOutcome.ABORTED)
        _choose(given, draft)
    if plan.hold and draft.serving_view is not None:
        draft.stable_target = draft.serving_view


def _now_served(given: RolloutInputs, draft: _Draft) -> None:
    """A complete rollout of a good version makes it the served one."""
    server = given.server
    if given.spec.suspended or server is None or not server.complete or server.version is None or server.version in draft.failed:
        return
    if draft.served is not None and server.version != draft.served:
        draft.previous = draft.served
    draft.served = server.version


def _record_success(given: RolloutInputs, draft: _Draft) -> None:
    records, served = draft.records, draft.served
    if served is None or not records or records[-1].version != served or records[-1].outcome != RolloutOutcome.PROGRESSING:
        return
    steps = timeline.rollout_steps(given.pods, served, records[-1].started_at, draft.now_text)
    records[-1] = records[-1].model_copy(update={"outcome": RolloutOutcome.SUCCEEDED, "finished_at": draft.now_text,
                                                 "timings": steps or None})
    draft.succeeded = (served, _seconds_between(records[-1].started_at, given.now))
    draft.events.append(Event(NORMAL, Reason.ROLLOUT_SUCCEEDED, f"serving version {served}"))


def _record_start(given: RolloutInputs, draft: _Draft) -> None:
    target, records = draft.target, draft.records
    draft.in_flight = target is not None and target.version != draft.served and not given.spec.suspended
    if target is not None and draft.in_flight and not (
        records and records[-1].version == target.version and records[-1].outcome == RolloutOutcome.PROGRESSING
    ):
        if records and records[-1].outcome == RolloutOutcome.PROGRESSING:
            records[-1] = records[-1].model_copy(update={"outcome": RolloutOutcome.SUPERSEDED, "finished_at": draft.now_text})
        records.append(RolloutRecord.model_validate(
            {"version": target.version, "fromVersion": draft.served, "startedAt": draft.now_text, "outcome": "Progressing"}
        ))
        draft.started = target.version
        source = f" (from version {draft.served})" if draft.served is not None else ""
        draft.events.append(Event(NORMAL, Reason.ROLLOUT_STARTED, f"rolling out version {target.version}{source}"))
    draft.records = records[-given.history:]


def _scaler_refused(why: str) -> Cond:
    return Cond(ConditionType.DEGRADED, TRUE, Reason.ENDPOINT_NOT_ALLOWED,
                f"{why}; no ScaledObject is created, so the replicas stay where they are")


def _warn_once(given: RolloutInputs, draft: _Draft, reason: str, message: str | None) -> None:
    """One Warning event when Degraded first takes `reason`, not one per reconcile."""
    was = next((c for c in given.old.conditions or [] if c.type == ConditionType.DEGRADED), None)
    if message is not None and (was is None or was.reason != reason):
        draft.events.append(Event(WARNING, reason, message))


def _warn_scaler_refused(given: RolloutInputs, draft: _Draft) -> None:
    _warn_once(given, draft, Reason.ENDPOINT_NOT_ALLOWED, given.scaler_refused)


def _artifact_refused(given: RolloutInputs, draft: _Draft) -> Cond:
    assert given.refused is not None
    version = given.server.version if given.server is not None else None
    keep = f"; the pods of version {draft.served} keep serving" if draft.served is not None and draft.served != version else ""
    after = (f" and the rollout is rolled back at its deadline ({given.spec.rollout.progress_deadline_seconds}s)"
             if given.spec.rollout.auto_rollback else "")
    return Cond(ConditionType.DEGRADED, TRUE, Reason.ARTIFACT_REFUSED,
                f"{given.refused}{keep}{after}. A restart cannot mend it: publish a version whose artifact verifies")


def _warn_artifact_refused(given: RolloutInputs, draft: _Draft) -> None:
    _warn_once(given, draft, Reason.ARTIFACT_REFUSED, given.refused)


# The planner, as a list of phases (cluster-api's reconcilers run theirs in order).
PHASES: tuple[Callable[[RolloutInputs, _Draft], None], ...] = (
    _retry, _retry_after_a_fix, _roll_back, _choose, _serving, _hold_while_suspended, _canary, _now_served,
    _record_success, _record_start, _warn_scaler_refused, _warn_artifact_refused,
)


def plan_rollout(given: RolloutInputs) -> RolloutPlan:
    """Decide the served version and status of one ModelDeployment."""
    draft = _Draft.start(given)
    for phase in PHASES:
        phase(given, draft)
    return RolloutPlan(
        target=draft.stable_target,
        resolution=draft.resolution,
        status=_status(given, draft),
        events=tuple(draft.events),
        started=draft.started,
        succeeded=draft.succeeded,
        rolled_back=draft.rolled_back,
        canary=draft.canary,
        requeue=draft.canary.requeue if draft.canary is not None else None,
    )


def _desired(given: RolloutInputs, draft: _Draft) -> int | None:
    if draft.resolution.version is not None:
        return draft.resolution.version.version
    return given.spec.version if given.spec.version_policy == "Pinned" else None


def _status(given: RolloutInputs, draft: _Draft) -> ModelDeploymentStatus:
    server, canary = given.server, draft.canary
    old_conditions = [c.wire() for c in given.old.conditions or []]
    return ModelDeploymentStatus.model_validate({
        "observedGeneration": given.generation,
        "desiredVersion": _desired(given, draft),
        "servedVersion": draft.served,
        "previousVersion": draft.previous,
        "failedVersions": sorted(draft.failed) or None,
        "lastRetry": draft.last_retry,
        "replicas": server.total if server else 0,
        "readyReplicas": server.ready if server else 0,
        "availableReplicasHighWater": _high_water(given, draft),
        "endpoints": given.endpoints if (draft.target is not None or server is not None) else None,
        "rollouts": draft.records or None,
        "canary": canary.status.wire() if canary is not None and canary.status is not None else None,
        "conditions": merge_conditions(old_conditions, _conditions(given, draft), given.generation, given.now),
    })


def _conditions(given: RolloutInputs, draft: _Draft) -> list[Cond]:
    """Ready, Progressing and Degraded: the first of these that speaks decides."""
    for phase in (_blocked_conditions, _nothing_served_conditions, _suspended_conditions):
        found = phase(given, draft)
        if found is not None:
            return found
    return _serving_conditions(given, draft)


def _blocked_conditions(given: RolloutInputs, draft: _Draft) -> list[Cond] | None:
    if given.blocked is None:
        return None
    reason, message = given.blocked
    return [
        Cond(ConditionType.READY, FALSE, reason, message),
        Cond(ConditionType.PROGRESSING, FALSE, reason, message),
        Cond(ConditionType.DEGRADED, TRUE, reason, message),
    ]


def _nothing_served_conditions(given: RolloutInputs, draft: _Draft) -> list[Cond] | None:
    if draft.target is not None or draft.served is not None:
        return None
    resolution, records = draft.resolution, draft.records
    degraded = Cond(ConditionType.DEGRADED, FALSE, Reason.NOTHING_SERVED, "no version is served yet")
    if records and records[-1].outcome == RolloutOutcome.ROLLED_BACK:
        degraded = _failed_rollout(records[-1], draft.served)
    elif given.scaler_refused is not None:
        degraded = _scaler_refused(given.scaler_refused)
    return [
        Cond(ConditionType.READY, FALSE, resolution.reason, resolution.message),
        Cond(ConditionType.PROGRESSING, FALSE, resolution.reason, resolution.message),
        degraded,
    ]


def _suspended_conditions(given: RolloutInputs, draft: _Draft) -> list[Cond] | None:
    if not given.spec.suspended:
        return None
    served, server, desired = draft.served, given.server, _desired(given, draft)
    version = served if served is not None else (draft.target.version if draft.target else None)
    waiting = f"; version {desired} rolls out on resume" if desired is not None and desired != served else ""
    going = f" ({server.total} pod(s) still stopping)" if server is not None and server.total else ""
    message = f"suspended: 0 replicas of version {version}{going}{waiting}; set spec.suspended to false to serve again"
    return [
        Cond(ConditionType.READY, FALSE, Reason.SUSPENDED, message),
        Cond(ConditionType.PROGRESSING, FALSE, Reason.SUSPENDED, message),
        Cond(ConditionType.DEGRADED, FALSE, Reason.SUSPENDED, message),
    ]


def asked_replicas(spec: ModelDeploymentSpec, server: ServerState | None) -> int:
    """The Triton pods asked for: the operator's count, or the live one where an external
    autoscaler owns it."""
    managed = managed_replicas(spec)
    if managed is not None:
        return managed
    return server.replicas if server is not None else spec.replicas


def available_high_water(old: int | None, spec: ModelDeploymentSpec, server: ServerState | None, in_flight: bool) -> int | None:
    """status.availableReplicasHighWater: the most pods of the current template that were
    available at once, at most the pods asked for (a scale-down lowers it). None while a
    rollout changes the template, so that a new template starts from its own pods. Available
    pods below it were lost; pods asked for above it are still starting (a scale-up)."""
    if in_flight or server is None or spec.suspended or not server.template_rolled_out:
        return None
    return min(asked_replicas(spec, server), max(old or 0, server.available))


def _high_water(given: RolloutInputs, draft: _Draft) -> int | None:
    return available_high_water(given.old.available_replicas_high_water, given.spec, given.server, draft.in_flight)


def _rolling(given: RolloutInputs, draft: _Draft) -> bool:
    """A template change is a rollout. A pod count change is a scale: it still serves, so Ready
    stays True and only pods that were available and are lost (a crash, a lost node) make it
    Degraded; pods that a scale-up adds are starting, not lost."""
    return draft.in_flight or given.server is None or _high_water(given, draft) is None


def _lost(given: RolloutInputs, draft: _Draft) -> int:
    """Pods of the current template that were available and are not now."""
    high_water, server = _high_water(given, draft), given.server
    if _rolling(given, draft) or server is None or high_water is None:
        return 0
    return max(0, high_water - server.available)


def _progressing(given: RolloutInputs, draft: _Draft) -> Cond:
    spec, server = given.spec, given.server
    replicas = asked_replicas(spec, server)
    if _rolling(given, draft):
        counts = f"{server.updated}/{replicas} updated, {server.available} available" if server else "creating the Deployment"
        version = draft.target.version if draft.target else draft.served
        progressing = Cond(ConditionType.PROGRESSING, TRUE, Reason.ROLLOUT_IN_PROGRESS, f"rolling out version {version}: {counts}")
        if server is not None and server.deadline_exceeded and not spec.rollout.auto_rollback:
            progressing = Cond(
                ConditionType.PROGRESSING, FALSE, Reason.PROGRESS_DEADLINE_EXCEEDED,
                f"version {version} did not become available within {spec.rollout.progress_deadline_seconds}s "
                "and autoRollback is off; fix the version or pin another one",
            )
    elif server is not None and not _lost(given, draft) and (
            server.replicas != replicas or server.total != replicas or server.available < replicas):
        progressing = Cond(ConditionType.PROGRESSING, TRUE, Reason.SCALING,
                           f"scaling version {draft.served} to {replicas} replicas: {server.total} pods, {server.available} available")
    else:
        progressing = Cond(ConditionType.PROGRESSING, FALSE, Reason.ROLLOUT_COMPLETE, f"version {draft.served} is rolled out")
    canary = draft.canary
    canary_status = canary.status if canary is not None else None
    if canary is not None and canary.hold and canary_status is not None and canary_status.phase == CanaryPhase.PROGRESSING:
        progressing = Cond(ConditionType.PROGRESSING, TRUE,
                           Reason.METRICS_UNAVAILABLE if canary.metrics_unavailable else Reason.CANARY_PROGRESSING,
                           f"canary of version {canary_status.version}: {canary_status.message}")
    return progressing


def _ready(given: RolloutInputs, draft: _Draft, progressing: Cond) -> Cond:
    served, resolution, replicas = draft.served, draft.resolution, asked_replicas(given.spec, given.server)
    ready_pods = given.server.ready if given.server else 0
    rolling = _rolling(given, draft)
    # Serving the desired version: pods that change without a new version (a scale, a spec
    # change of the served version) do not stop it.
    if not draft.in_flight and served == _desired(given, draft) and (replicas == 0 or ready_pods >= 1):
        return Cond(ConditionType.READY, TRUE, Reason.SERVING, f"serving version {served} on {ready_pods}/{replicas} ready replicas")
    if resolution.version is None:
        still = f"; still serving version {served}" if served is not None else ""
        return Cond(ConditionType.READY, FALSE, resolution.reason, resolution.message + still)
    if rolling:
        return Cond(ConditionType.READY, FALSE, progressing.reason, progressing.message)
    return Cond(ConditionType.READY, FALSE, Reason.UNAVAILABLE, f"no ready replica of version {served}")


def _degraded(given: RolloutInputs, draft: _Draft) -> Cond:
    served, records, resolution = draft.served, draft.records, draft.resolution
    replicas, rolling, lost = asked_replicas(given.spec, given.server), _rolling(given, draft), _lost(given, draft)
    canary_status = draft.canary.status if draft.canary is not None else None
    if records and records[-1].outcome == RolloutOutcome.ABORTED and canary_status is not None \
            and canary_status.phase == CanaryPhase.ABORTED:
        return Cond(ConditionType.DEGRADED, TRUE, Reason.CANARY_ABORTED, canary_status.message or "the canary was aborted")
    if records and records[-1].outcome == RolloutOutcome.ROLLED_BACK:
        return _failed_rollout(records[-1], served)
    if given.refused is not None:
        return _artifact_refused(given, draft)
    if not rolling and _desired(given, draft) != served and served is not None:
        return Cond(ConditionType.DEGRADED, TRUE, resolution.reason, f"{resolution.message}; serving version {served} instead")
    if lost:
        return Cond(
            ConditionType.DEGRADED, TRUE, Reason.REPLICAS_UNAVAILABLE,
            f"{lost} of {replicas} replicas of version {served} were available and are lost (crashed, restarting or evicted)",
        )
    if given.scaler_refused is not None:
        return _scaler_refused(given.scaler_refused)
    return Cond(ConditionType.DEGRADED, FALSE, Reason.AS_EXPECTED, "serving as the policy asks" if not rolling else "rollout under way")


def _serving_conditions(given: RolloutInputs, draft: _Draft) -> list[Cond]:
    progressing = _progressing(given, draft)
    return [_ready(given, draft, progressing), progressing, _degraded(given, draft)]


def _failed_rollout(record: RolloutRecord, served: int | None) -> Cond:
    why = f" ({record.message})" if record.message else ""
    if served is not None:
        message = f"the rollout of version {record.version} failed{why} and was rolled back; serving version {served}. {RETRY_HINT}"
    else:
        message = f"the rollout of version {record.version} failed{why}; nothing was ever served, so nothing was rolled back. {FIX_HINT}"
    return Cond(ConditionType.DEGRADED, TRUE, Reason.ROLLED_BACK, message)


# -- verdicts: which deployments failed a version ---------------------------------------------
#
# Each ModelDeployment records its own verdicts in its status.failedVersions; a ModelVersion's
# failedBy and RolloutFailed are derived from those by the version's own reconcile, the one
# writer of ModelVersion status.


def failed_by(view: VersionView, versions: Iterable[VersionView], deployments: Iterable[tuple[str, Collection[int]]]) -> tuple[str, ...]:
    """The ModelDeployments whose rollout of this version failed: those that hold its number in
    their failedVersions, as (name, failedVersions) pairs. Only the ModelVersion that owns the
    number carries marks; a duplicate or a deleting one carries none."""
    if view.deleting:
        return ()
    owner = effective_versions([*versions, view]).get(view.version)
    if owner is None or owner.name != view.name:
        return ()
    return tuple(sorted({name for name, failed in deployments if view.version in failed}))


def failed_by_status(old_status: dict[str, Any] | None, names: Collection[str], now: datetime) -> dict[str, Any] | None:
    """The part of a ModelVersion's status that says which deployments failed it: failedBy, and
    the RolloutFailed condition that sums it up. None when the stored status already says so (a
    version that never failed anywhere has no RolloutFailed condition at all)."""
    old = old_status or {}
    before = set(old.get("failedBy") or [])
    after = set(names)
    if after == before:
        return None
    conditions = [c for c in old.get("conditions") or [] if c.get("type") != ConditionType.ROLLOUT_FAILED]
    existing = [c for c in old.get("conditions") or [] if c.get("type") == ConditionType.ROLLOUT_FAILED]
    if after:
        listed = ", ".join(sorted(after))
        wanted = Cond(
            ConditionType.ROLLOUT_FAILED, TRUE, REASON_ROLLED_BACK,
            f"the rollout of this version was rolled back on ModelDeployment {listed}; Latest skips it there "
            "until the modelops.dev/retry annotation of that ModelDeployment changes",
        )
    else:
        wanted = Cond(ConditionType.ROLLOUT_FAILED, FALSE, REASON_NO_FAILED_ROLLOUT, "no ModelDeployment has a failed rollout of this version")
    merged = Condition.model_validate(merge_conditions(existing, [wanted], None, now)[0])
    return {"failedBy": sorted(after) or None, "conditions": [*conditions, merged.wire()]}

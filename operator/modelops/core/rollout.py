"""Rollout planning for a ModelDeployment: which version to render, whether a rollout failed
and must be reverted, and the status that results. Plan first; the handler applies it."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelops.api.deployment import CanaryPhase, CanaryStatus, ModelDeploymentSpec, ModelDeploymentStatus, RolloutOutcome, RolloutRecord, RolloutStrategy
from modelops.api.deployment import DeploymentReason as Reason
from modelops.api.types import Condition, ConditionType
from modelops.core import naming
from modelops.core.canary import CanaryPlan, CanaryServer, PodMetrics, plan_canary
from modelops.core.conditions import FALSE, TRUE, Cond, merge_conditions, timestamp
from modelops.core.objects import VersionView
from modelops.core.render import managed_replicas
from modelops.core.resolve import Resolution, effective_versions, resolve_version

NORMAL, WARNING = "Normal", "Warning"
# Reasons of a ModelVersion's RolloutFailed condition, which sums up status.failedBy.
REASON_ROLLED_BACK = "RolledBack"
REASON_NO_FAILED_ROLLOUT = "NoFailedRollout"


@dataclass(frozen=True)
class ServerState:
    """The live Triton Deployment, reduced to what rollout decisions need."""

    version: int | None
    replicas: int
    updated: int = 0
    ready: int = 0
    available: int = 0
    total: int = 0
    generation: int = 1
    observed_generation: int = 1
    deadline_exceeded: bool = False
    # The live pod template is what the current spec (and retry) renders. A deadline that an
    # older template exceeded never judges the new attempt: it is rendered again instead.
    current: bool = True

    @classmethod
    def from_deployment(cls, body: dict[str, Any]) -> ServerState:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
        raw_version = annotations.get(naming.ANNOTATION_VERSION)
        generation = int(body.get("metadata", {}).get("generation", 1))
        observed = int(status.get("observedGeneration", 0))
        # The condition speaks of the template the controller last observed: after a new
        # template is applied it is stale until observedGeneration catches up.
        exceeded = observed >= generation and any(
            c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason") == "ProgressDeadlineExceeded"
            for c in status.get("conditions") or []
        )
        return cls(
            version=int(raw_version) if raw_version and raw_version.isdigit() else None,
            replicas=int(spec.get("replicas", 1)),
            updated=int(status.get("updatedReplicas", 0)),
            ready=int(status.get("readyReplicas", 0)),
            available=int(status.get("availableReplicas", 0)),
            total=int(status.get("replicas", 0)),
            generation=generation,
            observed_generation=observed,
            deadline_exceeded=exceeded,
        )

    @property
    def rolled_out(self) -> bool:
        """Every pod runs the current template and no old pod is left (available or not)."""
        return (
            self.observed_generation >= self.generation
            and self.updated == self.replicas
            and self.total == self.replicas
        )

    @property
    def template_rolled_out(self) -> bool:
        """The controller observed the spec and no pod of an older template is left: the pod
        count may still change (a scale), but the template does not."""
        return self.observed_generation >= self.generation and self.updated == self.total

    @property
    def complete(self) -> bool:
        """Rolled out, and every pod is available."""
        return self.rolled_out and self.available == self.replicas


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


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
    try:
        began = datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=now.tzinfo)
    except ValueError:
        return 0.0
    return max(0.0, (now - began).total_seconds())


def plan_rollout(
    *,
    spec: ModelDeploymentSpec,
    generation: int | None,
    old_status: dict[str, Any] | None,
    versions: list[VersionView],
    server: ServerState | None,
    model_exists: bool,
    endpoints: dict[str, str],
    now: datetime,
    history: int = 5,
    blocked: tuple[str, str] | None = None,
    retry: str | None = None,
    canary_server: CanaryServer | None = None,
    canary_metrics: tuple[dict[str, PodMetrics], dict[str, PodMetrics]] | None = None,
    canary_metrics_error: str | None = None,
    cause: str | None = None,
) -> RolloutPlan:
    """Decide the served version and status of one ModelDeployment.

    `blocked` (reason, message) stops any new rollout, for problems found while rendering.
    `retry` is the modelops.dev/retry annotation: a value not acted on yet clears the failed versions.
    `canary_server` and `canary_metrics` are the live canary Deployment and Triton's counters
    of the (canary, stable) pods, for strategy Canary (see core/canary.py); `canary_metrics_error`
    says why the counters are None when they could not be read. `cause` is the pods' own reason
    for a rollout past its deadline (core/podcause.py), kept in the rollout's record.
    While spec.suspended, the pods go to 0 and no new version rolls out until it is false again.
    """
    old = old_status or {}
    failed = set(old.get("failedVersions") or [])
    last_retry = old.get("lastRetry")
    events: list[Event] = []
    if retry is not None and retry != last_retry:
        if failed:
            events.append(Event(NORMAL, Reason.RETRY_REQUESTED,
                                f"cleared the failed versions {sorted(failed)}; they may be rolled out again"))
        failed = set()
        last_retry = retry
    records = [RolloutRecord.model_validate(r) for r in old.get("rollouts") or []]
    served: int | None = old.get("servedVersion")
    previous: int | None = old.get("previousVersion")
    now_text = timestamp(now)

    # Nothing is served and the failed version's pods run an older spec: the user changed the
    # spec (a fix), so the version is tried again with it. With something served, a failed
    # version waits for modelops.dev/retry, and the served one takes the new spec.
    if served is None and server is not None and server.version is not None and server.version in failed and not server.current:
        failed.discard(server.version)
        events.append(Event(NORMAL, Reason.RETRY_REQUESTED,
                            f"the spec changed since version {server.version} failed to roll out; trying it again"))

    # A rollout that missed its deadline is reverted, and its version is skipped from now on.
    rolled_back = None
    if (
        server is not None
        and server.version is not None
        and server.deadline_exceeded
        and server.current
        and server.version != served
        and server.version not in failed
        and spec.rollout.auto_rollback
    ):
        rolled_back = server.version
        failed.add(rolled_back)
        records = [
            r.model_copy(update={"outcome": RolloutOutcome.ROLLED_BACK, "finished_at": now_text, "message": cause})
            if r.version == rolled_back and r.outcome == RolloutOutcome.PROGRESSING else r
            for r in records
        ]
        events.append(Event(WARNING, Reason.ROLLED_BACK, rollback_message(rolled_back, served, spec, cause)))

    owners = effective_versions(versions)

    def choose() -> tuple[Resolution, VersionView | None]:
        if model_exists:
            found = resolve_version(spec.version_policy, spec.version, spec.model, versions, failed)
        else:
            found = Resolution(None, Reason.MODEL_NOT_FOUND, f"Model {spec.model} does not exist in this namespace; create it or fix spec.model")
        if blocked is not None:
            return found, None
        if found.version is not None:
            return found, found.version
        # Nothing new to serve: keep serving the last good version.
        for candidate in (served, server.version if server else None):
            view = owners.get(candidate) if candidate is not None else None
            if view is not None and view.ready and candidate not in failed:
                return found, view
        return found, None

    resolution, target = choose()
    serving_view = owners.get(served) if served is not None else None
    serving_view = serving_view if serving_view is not None and serving_view.ready and served not in failed else None
    # What the stable Deployment renders: the target, unless a suspension or a canary holds it
    # at the served version. `target` stays the version on its way (for records and conditions).
    stable_target = target
    if spec.suspended:
        # The pod template stays as it is (the live one, else the served one): a new version
        # rolls out on resume, where a rollout can be watched and rolled back.
        for kept in (server.version if server else None, served):
            view = owners.get(kept) if kept is not None else None
            if view is not None and view.ready and kept not in failed:
                stable_target = view
                break

    canary_plan = None
    if spec.rollout.strategy == RolloutStrategy.CANARY and spec.suspended:
        # The canary's pods stop too; it starts its step again on resume.
        held = old.get("canary")
        canary_plan = CanaryPlan(status=CanaryStatus.model_validate({**held, "canaryReplicas": 0}) if held else None,
                                 hold=False, canary_version=held.get("version") if held else None, canary_replicas=0)
    elif spec.rollout.strategy == RolloutStrategy.CANARY and blocked is None:
        canary_plan = plan_canary(
            canary_spec=spec.rollout.canary_or_default(),
            replicas=spec.replicas,
            stable_version=served if serving_view is not None and not spec.suspended else None,
            candidate=target.version if target is not None else None,
            old=old.get("canary"),
            server=canary_server,
            metrics=canary_metrics,
            now=now,
            metrics_error=canary_metrics_error,
        )
        events.extend(Event(e.type, e.reason, e.message) for e in canary_plan.events)
        if canary_plan.abort is not None:
            aborted = canary_plan.abort
            failed.add(aborted)
            records = [
                r.model_copy(update={"outcome": RolloutOutcome.ABORTED, "finished_at": now_text})
                if r.version == aborted and r.outcome == RolloutOutcome.PROGRESSING else r
                for r in records
            ]
            resolution, target = choose()
            stable_target = target
        if canary_plan.hold and serving_view is not None:
            stable_target = serving_view

    if (
        not spec.suspended
        and server is not None and server.complete and server.version is not None and server.version not in failed
    ):
        if served is not None and server.version != served:
            previous = served
        served = server.version

    succeeded = None
    if served is not None and records and records[-1].version == served and records[-1].outcome == RolloutOutcome.PROGRESSING:
        records[-1] = records[-1].model_copy(update={"outcome": RolloutOutcome.SUCCEEDED, "finished_at": now_text})
        succeeded = (served, _seconds_between(records[-1].started_at, now))
        events.append(Event(NORMAL, Reason.ROLLOUT_SUCCEEDED, f"serving version {served}"))

    started = None
    in_flight = target is not None and target.version != served and not spec.suspended
    if in_flight and target is not None and not (
        records and records[-1].version == target.version and records[-1].outcome == RolloutOutcome.PROGRESSING
    ):
        if records and records[-1].outcome == RolloutOutcome.PROGRESSING:
            records[-1] = records[-1].model_copy(update={"outcome": RolloutOutcome.SUPERSEDED, "finished_at": now_text})
        records.append(RolloutRecord.model_validate(
            {"version": target.version, "fromVersion": served, "startedAt": now_text, "outcome": "Progressing"}
        ))
        started = target.version
        source = f" (from version {served})" if served is not None else ""
        events.append(Event(NORMAL, Reason.ROLLOUT_STARTED, f"rolling out version {target.version}{source}"))
    records = records[-history:]

    if resolution.version is not None:
        desired: int | None = resolution.version.version
    else:
        desired = spec.version if spec.version_policy == "Pinned" else None

    high_water = available_high_water(old.get("availableReplicasHighWater"), spec, server, in_flight)
    conditions = _conditions(spec, resolution, target, served, desired, server, in_flight, records, blocked, canary_plan, high_water)
    status = ModelDeploymentStatus.model_validate({
        "observedGeneration": generation,
        "desiredVersion": desired,
        "servedVersion": served,
        "previousVersion": previous,
        "failedVersions": sorted(failed) or None,
        "lastRetry": last_retry,
        "replicas": server.total if server else 0,
        "readyReplicas": server.ready if server else 0,
        "availableReplicasHighWater": high_water,
        "endpoints": endpoints if (target is not None or server is not None) else None,
        "rollouts": records or None,
        "canary": canary_plan.status.wire() if canary_plan is not None and canary_plan.status is not None else None,
        "conditions": merge_conditions(old.get("conditions"), conditions, generation, now),
    })
    return RolloutPlan(
        target=stable_target,
        resolution=resolution,
        status=status,
        events=tuple(events),
        started=started,
        succeeded=succeeded,
        rolled_back=rolled_back,
        canary=canary_plan,
        requeue=canary_plan.requeue if canary_plan is not None else None,
    )


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


def _conditions(
    spec: ModelDeploymentSpec,
    resolution: Resolution,
    target: VersionView | None,
    served: int | None,
    desired: int | None,
    server: ServerState | None,
    in_flight: bool,
    records: list[RolloutRecord],
    blocked: tuple[str, str] | None,
    canary: CanaryPlan | None = None,
    high_water: int | None = None,
) -> list[Cond]:
    if blocked is not None:
        reason, message = blocked
        return [
            Cond(ConditionType.READY, FALSE, reason, message),
            Cond(ConditionType.PROGRESSING, FALSE, reason, message),
            Cond(ConditionType.DEGRADED, TRUE, reason, message),
        ]
    if target is None and served is None:
        degraded = Cond(ConditionType.DEGRADED, FALSE, Reason.NOTHING_SERVED, "no version is served yet")
        if records and records[-1].outcome == RolloutOutcome.ROLLED_BACK:
            degraded = _failed_rollout(records[-1], served)
        return [
            Cond(ConditionType.READY, FALSE, resolution.reason, resolution.message),
            Cond(ConditionType.PROGRESSING, FALSE, resolution.reason, resolution.message),
            degraded,
        ]
    if spec.suspended:
        version = served if served is not None else (target.version if target else None)
        waiting = f"; version {desired} rolls out on resume" if desired is not None and desired != served else ""
        going = f" ({server.total} pod(s) still stopping)" if server is not None and server.total else ""
        message = f"suspended: 0 replicas of version {version}{going}{waiting}; set spec.suspended to false to serve again"
        return [
            Cond(ConditionType.READY, FALSE, Reason.SUSPENDED, message),
            Cond(ConditionType.PROGRESSING, FALSE, Reason.SUSPENDED, message),
            Cond(ConditionType.DEGRADED, FALSE, Reason.SUSPENDED, message),
        ]
    replicas = asked_replicas(spec, server)
    ready_pods = server.ready if server else 0
    # A template change is a rollout. A pod count change is a scale: it still serves, so Ready
    # stays True and only pods that were available and are lost (a crash, a lost node) make it
    # Degraded; pods that a scale-up adds are starting, not lost.
    rolling = in_flight or server is None or high_water is None
    lost = 0 if rolling or server is None or high_water is None else max(0, high_water - server.available)
    if rolling:
        counts = f"{server.updated}/{replicas} updated, {server.available} available" if server else "creating the Deployment"
        version = target.version if target else served
        progressing = Cond(ConditionType.PROGRESSING, TRUE, Reason.ROLLOUT_IN_PROGRESS, f"rolling out version {version}: {counts}")
        if server is not None and server.deadline_exceeded and not spec.rollout.auto_rollback:
            progressing = Cond(
                ConditionType.PROGRESSING, FALSE, Reason.PROGRESS_DEADLINE_EXCEEDED,
                f"version {version} did not become available within {spec.rollout.progress_deadline_seconds}s "
                "and autoRollback is off; fix the version or pin another one",
            )
    elif server is not None and not lost and (server.replicas != replicas or server.total != replicas or server.available < replicas):
        progressing = Cond(ConditionType.PROGRESSING, TRUE, Reason.SCALING,
                           f"scaling version {served} to {replicas} replicas: {server.total} pods, {server.available} available")
    else:
        progressing = Cond(ConditionType.PROGRESSING, FALSE, Reason.ROLLOUT_COMPLETE, f"version {served} is rolled out")
    canary_status = canary.status if canary is not None else None
    if canary is not None and canary.hold and canary_status is not None and canary_status.phase == CanaryPhase.PROGRESSING:
        progressing = Cond(ConditionType.PROGRESSING, TRUE,
                           Reason.METRICS_UNAVAILABLE if canary.metrics_unavailable else Reason.CANARY_PROGRESSING,
                           f"canary of version {canary_status.version}: {canary_status.message}")

    # Serving the desired version: pods that change without a new version (a scale, a spec
    # change of the served version) do not stop it.
    if not in_flight and served == desired and (replicas == 0 or ready_pods >= 1):
        ready = Cond(ConditionType.READY, TRUE, Reason.SERVING, f"serving version {served} on {ready_pods}/{replicas} ready replicas")
    elif resolution.version is None:
        still = f"; still serving version {served}" if served is not None else ""
        ready = Cond(ConditionType.READY, FALSE, resolution.reason, resolution.message + still)
    elif rolling:
        ready = Cond(ConditionType.READY, FALSE, progressing.reason, progressing.message)
    else:
        ready = Cond(ConditionType.READY, FALSE, Reason.UNAVAILABLE, f"no ready replica of version {served}")

    if records and records[-1].outcome == RolloutOutcome.ABORTED and canary_status is not None \
            and canary_status.phase == CanaryPhase.ABORTED:
        degraded = Cond(ConditionType.DEGRADED, TRUE, Reason.CANARY_ABORTED, canary_status.message or "the canary was aborted")
    elif records and records[-1].outcome == RolloutOutcome.ROLLED_BACK:
        degraded = _failed_rollout(records[-1], served)
    elif not rolling and desired != served and served is not None:
        degraded = Cond(ConditionType.DEGRADED, TRUE, resolution.reason, f"{resolution.message}; serving version {served} instead")
    elif lost:
        degraded = Cond(
            ConditionType.DEGRADED, TRUE, Reason.REPLICAS_UNAVAILABLE,
            f"{lost} of {replicas} replicas of version {served} were available and are lost (crashed, restarting or evicted)",
        )
    else:
        degraded = Cond(ConditionType.DEGRADED, FALSE, Reason.AS_EXPECTED, "serving as the policy asks" if not rolling else "rollout under way")
    return [ready, progressing, degraded]


def _failed_rollout(record: RolloutRecord, served: int | None) -> Cond:
    why = f" ({record.message})" if record.message else ""
    if served is not None:
        message = f"the rollout of version {record.version} failed{why} and was rolled back; serving version {served}. {RETRY_HINT}"
    else:
        message = f"the rollout of version {record.version} failed{why}; nothing was ever served, so nothing was rolled back. {FIX_HINT}"
    return Cond(ConditionType.DEGRADED, TRUE, Reason.ROLLED_BACK, message)


# -- verdicts: which deployments failed a version ---------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A change to one ModelVersion's status.failedBy: names to add and names to remove."""

    version_name: str
    add: frozenset[str] = frozenset()
    remove: frozenset[str] = frozenset()


def verdicts_of(deployment: str, failed_versions: Collection[int], versions: Iterable[VersionView]) -> list[Verdict]:
    """The changes that make the ModelVersions agree with one deployment's failedVersions: its
    name on exactly the versions it failed. Empty when they agree, so a resync writes nothing."""
    views = [v for v in versions if not v.deleting]
    owners = {v.name for v in effective_versions(views).values()}
    changes = []
    for view in sorted(views, key=lambda v: (v.version, v.name)):
        wanted = view.name in owners and view.version in failed_versions
        marked = deployment in view.failed_by
        if wanted and not marked:
            changes.append(Verdict(view.name, add=frozenset({deployment})))
        elif marked and not wanted:
            changes.append(Verdict(view.name, remove=frozenset({deployment})))
    return changes


def stale_verdicts(versions: Iterable[VersionView], deployments: Collection[str]) -> list[Verdict]:
    """Marks left by ModelDeployments that no longer exist."""
    changes = []
    for view in versions:
        gone = frozenset(view.failed_by) - frozenset(deployments)
        if gone and not view.deleting:
            changes.append(Verdict(view.name, remove=gone))
    return changes


def failed_by_status(old_status: dict[str, Any] | None, verdict: Verdict, now: datetime) -> dict[str, Any] | None:
    """The part of a ModelVersion's status that a verdict changes: failedBy, and the
    RolloutFailed condition that sums it up. None when the verdict changes nothing."""
    old = old_status or {}
    before = set(old.get("failedBy") or [])
    after = (before | verdict.add) - verdict.remove
    if after == before:
        return None
    conditions = [c for c in old.get("conditions") or [] if c.get("type") != ConditionType.ROLLOUT_FAILED]
    existing = [c for c in old.get("conditions") or [] if c.get("type") == ConditionType.ROLLOUT_FAILED]
    if after:
        names = ", ".join(sorted(after))
        wanted = Cond(
            ConditionType.ROLLOUT_FAILED, TRUE, REASON_ROLLED_BACK,
            f"the rollout of this version was rolled back on ModelDeployment {names}; Latest skips it there "
            "until the modelops.dev/retry annotation of that ModelDeployment changes",
        )
    else:
        wanted = Cond(ConditionType.ROLLOUT_FAILED, FALSE, REASON_NO_FAILED_ROLLOUT, "no ModelDeployment has a failed rollout of this version")
    merged = Condition.model_validate(merge_conditions(existing, [wanted], None, now)[0])
    return {"failedBy": sorted(after) or None, "conditions": [*conditions, merged.wire()]}

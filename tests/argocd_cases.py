"""Cases for the chart's Argo CD health checks: objects whose statuses the operator's own code
wrote (version_status, model_status, plan_rollout with its canary and the autoscaler's
decide), each with the health Argo CD must show and a part of its message.

tests/unit/test_chart_argocd_health.py runs them in Lua 5.1 (lupa) in milliseconds, and
tests/integration/test_argocd_lua_vm.py in Argo CD's own Lua VM (a Go test importing
github.com/argoproj/argo-cd/v3/util/lua, e2e/testbed/go/argocd-lua).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from modelops.api import ModelDeploymentSpec
from modelops.api.deployment import AutoscalingSpec
from modelops.api.version import Phase
from modelops.core.autoscale import decide
from modelops.core.models import model_status
from modelops.core.objects import ServerState, VersionView
from modelops.core.versions import VersionState, version_status
from modelops.handlers.context import BucketProblem, CABundleProblem, CredentialsProblem
from tests.unit.test_core_canary import canary_spec, pods, ready, rollout
from tests.unit.test_core_rollout import T0, converge, done, plan, rolling, scaling_to, spec, v

API_VERSION = "modelops.dev/v1alpha1"
NOW = datetime(2025, 3, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    name: str
    object: dict[str, Any]
    status: str  # Healthy, Progressing, Degraded or Suspended
    message: str  # a part of the message

    def wire(self) -> dict[str, Any]:
        return {"name": self.name, "object": self.object, "status": self.status, "messageContains": self.message}


def _obj(kind: str, status: dict[str, Any] | None, generation: int = 1, spec_: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind,
                            "metadata": {"name": "digits", "namespace": "ns", "generation": generation}}
    if spec_ is not None:
        body["spec"] = spec_
    if status is not None:
        body["status"] = status
    return body


# -- ModelVersion ---------------------------------------------------------------------------------


def _version(state: VersionState, generation: int = 1, observed: int | None = 1) -> dict[str, Any]:
    return _obj("ModelVersion", version_status(None, state, observed, NOW), generation)


def version_cases() -> list[Case]:
    ready_state = VersionState(Phase.READY, "Compressed", "compressed 4.0x")
    return [
        Case("version: no status yet", _obj("ModelVersion", None), "Progressing", "observe generation 1"),
        Case("version: pending", _version(VersionState(Phase.PENDING, "ModelNotFound", "Model digits does not exist")),
             "Progressing", "Pending: Model digits does not exist"),
        Case("version: verifying", _version(VersionState(Phase.VERIFYING, "ArtifactNotFound", "no object at s3://m/digits/2")),
             "Progressing", "Verifying: no object at"),
        Case("version: compressing", _version(VersionState(Phase.COMPRESSING, "JobRunning", "Job digits-v2-compress is running")),
             "Progressing", "Compressing: Job digits-v2-compress"),
        Case("version: evaluating", _version(VersionState(Phase.EVALUATING, "JobRunning", "evaluation Job is running")),
             "Progressing", "Evaluating: evaluation Job"),
        Case("version: ready", _version(ready_state), "Healthy", "Ready: compressed 4.0x"),
        Case("version: ready from the cache", _version(VersionState(Phase.READY, "CompressedFromCache", "reused")),
             "Healthy", "Ready: reused"),
        Case("version: rejected by the gate",
             _version(VersionState(Phase.REJECTED, "AccuracyGateFailed", "top-1 accuracy dropped 3.1 points")),
             "Degraded", "Rejected: top-1 accuracy dropped"),
        Case("version: failed", _version(VersionState(Phase.FAILED, "ChecksumMismatch", "expected sha256 ab, got cd")),
             "Degraded", "Failed: expected sha256"),
        Case("version: failed, empty message", _version(VersionState(Phase.FAILED, "ChecksumMismatch", "")),
             "Degraded", "Failed: ChecksumMismatch"),
        Case("version: ready, observedGeneration behind", _version(ready_state, generation=2), "Progressing", "observe generation 2"),
        Case("version: rejected, observedGeneration behind",
             _version(VersionState(Phase.REJECTED, "AccuracyGateFailed", "dropped"), generation=3, observed=2),
             "Progressing", "observe generation 3"),
        Case("version: observedGeneration missing", _version(ready_state, observed=None), "Progressing", "observe generation 1"),
    ]


# -- Model ------------------------------------------------------------------------------------------


def _model(versions: list[VersionView], problem: CredentialsProblem | None = None, generation: int = 1,
           observed: int | None = 1) -> dict[str, Any]:
    status = model_status(None, "digits", versions, str(problem) if problem else None, observed, NOW,
                          problem_reason=problem.reason if problem else CredentialsProblem.reason)
    return _obj("Model", status, generation)


def _model_empty_message(reason: str) -> dict[str, Any]:
    body = _model([v(1)] if reason == "VersionReady" else [])
    for c in body["status"]["conditions"]:
        if c["type"] == "Ready":
            c["reason"], c["message"] = reason, ""
    return body


def model_cases() -> list[Case]:
    missing = [
        ("credentials Secret missing", CredentialsProblem("Secret digits-storage does not exist")),
        ("credentials key missing", CredentialsProblem("Secret digits-storage lacks the key(s) AWS_SECRET_ACCESS_KEY")),
        ("CA bundle ConfigMap missing", CABundleProblem("ConfigMap digits-ca named in spec.storage.caBundle.configMapRef does not exist")),
        ("CA bundle key missing", CABundleProblem("Secret digits-ca has no PEM certificate under the key ca.crt")),
        ("bucket missing", BucketProblem("bucket models does not exist at https://minio:9000 (spec.storage.bucket)")),
    ]
    return [
        Case("model: no status yet", _obj("Model", None), "Progressing", "observe generation 1"),
        Case("model: a version is ready", _model([v(1), v(2, "Compressing")]), "Healthy", "1"),
        Case("model: no ready version yet", _model([v(1, "Compressing")]), "Progressing", "no version of Model digits is Ready"),
        Case("model: no version at all", _model([]), "Progressing", "no version of Model digits is Ready"),
        *[Case(f"model: {name}", _model([], problem), "Degraded", str(problem)) for name, problem in missing],
        Case("model: a version is ready, the Secret went missing", _model([v(1)], missing[0][1]), "Degraded", "does not exist"),
        Case("model: CA bundle missing, empty message", _model_empty_message("CABundleNotFound"), "Degraded", "CABundleNotFound"),
        Case("model: credentials missing, empty message", _model_empty_message("CredentialsNotFound"),
             "Degraded", "CredentialsNotFound"),
        Case("model: ready, empty message", _model_empty_message("VersionReady"), "Healthy", "VersionReady"),
        Case("model: no ready version, empty message", _model_empty_message("NoReadyVersion"), "Progressing", "NoReadyVersion"),
        Case("model: observedGeneration behind", _model([v(1)], generation=2), "Progressing", "observe generation 2"),
        Case("model: observedGeneration missing", _model([v(1)], observed=None), "Progressing", "observe generation 1"),
    ]


# -- ModelDeployment --------------------------------------------------------------------------------


def _md(md: ModelDeploymentSpec, status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    return _obj("ModelDeployment", status, generation, md.wire())


def _rollout_cases() -> list[Case]:
    latest = spec(replicas=2)
    first = plan(latest, None, [v(1)], None)
    served = converge(latest, [v(1)]).status
    forward = plan(latest, served, [v(1), v(2)], done(1, 2), now=T0 + timedelta(minutes=1))
    halfway = plan(latest, forward.status, [v(1), v(2)], rolling(2, 2), now=T0 + timedelta(minutes=2))
    finished = plan(latest, halfway.status, [v(1), v(2)], done(2, 2), now=T0 + timedelta(minutes=3))
    late = T0 + timedelta(minutes=20)
    rolled_back = plan(latest, halfway.status, [v(1), v(2)], rolling(2, 2, exceeded=True), now=late)
    no_rollback = spec(replicas=2, rollout={"autoRollback": False})
    stuck = plan(no_rollback, plan(no_rollback, served, [v(1), v(2)], done(1, 2)).status, [v(1), v(2)],
                 rolling(2, 2, exceeded=True), now=late)
    pinned = spec(replicas=2, versionPolicy="Pinned", version=2)
    return [
        Case("deployment: no status yet", _obj("ModelDeployment", None, spec_=latest.wire()), "Progressing", "observe generation 1"),
        Case("deployment: first rollout", _md(latest, first.status), "Progressing", "version 1"),
        Case("deployment: first rollout done", _md(latest, served), "Healthy", "version 1"),
        Case("deployment: rolling forward to version 2", _md(latest, forward.status), "Progressing", "version 2"),
        Case("deployment: version 2 half rolled out", _md(latest, halfway.status), "Progressing", "version 2"),
        Case("deployment: version 2 rolled out", _md(latest, finished.status), "Healthy", "version 2"),
        Case("deployment: rolled back past the deadline", _md(latest, rolled_back.status), "Degraded", "version 2"),
        Case("deployment: past the deadline, autoRollback off", _md(no_rollback, stuck.status), "Degraded", "version 2"),
        Case("deployment: pinned to a version not ready", _md(pinned, plan(pinned, served, [v(1), v(2, "Compressing")], done(1, 2)).status),
             "Degraded", "version 2"),
        Case("deployment: no ready version", _md(latest, plan(latest, None, [v(1, "Compressing")]).status), "Progressing", "Ready"),
        # Like a ModelVersion whose Model is missing (Pending): the Model may come with the same sync.
        Case("deployment: Model missing", _md(latest, plan(latest, None, [v(1)], model_exists=False).status),
             "Progressing", "Model digits does not exist"),
        Case("deployment: invalid serving config",
             _md(latest, plan(latest, served, [v(1), v(2)], done(1, 2), blocked=("InvalidServingConfig", "spec.triton: bad")).status),
             "Degraded", "spec.triton"),
        Case("deployment: observedGeneration behind", _md(latest, served, generation=2), "Progressing", "observe generation 2"),
        Case("deployment: observedGeneration missing",
             _md(latest, {k: val for k, val in served.items() if k != "observedGeneration"}), "Progressing", "observe generation 1"),
    ]


def _canary_cases() -> list[Case]:
    md = canary_spec()
    served = {"servedVersion": 1, "desiredVersion": 1, "observedGeneration": 1,
              "rollouts": [{"version": 1, "startedAt": "2025-03-01T11:00:00Z", "outcome": "Succeeded"}]}
    start = rollout(served, done(1, 9))
    waiting = rollout(start.status, done(1, 9), ServerState(2, 1, available=0, updated=1), now=T0 + timedelta(seconds=2))
    counting = rollout(waiting.status, done(1, 9), ready(2, 1), pods((5, 0), (40, 0)), now=T0 + timedelta(seconds=5))
    passed = rollout(counting.status, done(1, 9), ready(2, 1), pods((300, 1), (3000, 0)), now=T0 + timedelta(seconds=40))
    second = rollout(passed.status, done(1, 9), ready(2, 9), pods((300, 1), (3000, 0)), now=T0 + timedelta(seconds=45))
    promoted = rollout(second.status, done(1, 9), ready(2, 9), pods((900, 1), (3600, 0)), now=T0 + timedelta(seconds=80))
    stable_rolling = rollout(promoted.status, ServerState(2, 9, updated=4, ready=9, available=9, total=13), ready(2, 9),
                             now=T0 + timedelta(seconds=90))
    finished = rollout(stable_rolling.status, done(2, 9), ready(2, 9), now=T0 + timedelta(seconds=120))
    cleaned = rollout(finished.status, done(2, 9), ready(2, 0), now=T0 + timedelta(seconds=125))
    aborted = rollout(counting.status, done(1, 9), ready(2, 1), pods((100, 100), (900, 0)), now=T0 + timedelta(seconds=10))
    unreadable = rollout(counting.status, done(1, 9), ready(2, 1), None, now=T0 + timedelta(seconds=10), error="connection refused")
    return [
        Case("canary: started", _md(md, start.status), "Progressing", "canary"),
        Case("canary: waiting for its pods", _md(md, waiting.status), "Progressing", "canary"),
        Case("canary: step 1 counting requests", _md(md, counting.status), "Progressing", "canary"),
        Case("canary: step 1 passed, step 2 starts", _md(md, passed.status), "Progressing", "canary"),
        Case("canary: step 2", _md(md, second.status), "Progressing", "canary"),
        Case("canary: promoted", _md(md, promoted.status), "Progressing", "version 2"),
        Case("canary: promoted, stable pods rolling", _md(md, stable_rolling.status), "Progressing", "version 2"),
        Case("canary: promoted and served", _md(md, finished.status), "Healthy", "version 2"),
        Case("canary: promoted, canary pods gone", _md(md, cleaned.status), "Healthy", "version 2"),
        Case("canary: aborted", _md(md, aborted.status), "Degraded", "aborted"),
        Case("canary: metrics unreadable", _md(md, unreadable.status), "Progressing", "connection refused"),
    ]


def _suspend_cases() -> list[Case]:
    md, off = spec(replicas=3, suspended=True), spec(replicas=3)
    served = converge(off, [v(1)]).status
    stopping = plan(md, served, [v(1)], ServerState(1, 0, updated=3, ready=3, available=3, total=3))
    stopped = plan(md, stopping.status, [v(1)], ServerState(1, 0, updated=0, ready=0, available=0, total=0))
    resuming = plan(off, stopped.status, [v(1)], ServerState(1, 3, updated=0, ready=0, available=0, total=0))
    resumed = plan(off, resuming.status, [v(1)], done(1, 3), now=T0 + timedelta(minutes=1))
    canary = rollout({**served, "canary": {"version": 2, "stableVersion": 1, "phase": "Progressing", "step": 0, "steps": 2,
                                           "weight": 10, "canaryReplicas": 1, "stableReplicas": 9, "effectiveWeight": 10.0}},
                     ServerState(1, 0, updated=0, ready=0, available=0, total=0), ready(2, 0), md=canary_spec(suspended=True))
    return [
        Case("suspend: pods still stopping", _md(md, stopping.status), "Progressing", "still stopping"),
        Case("suspend: every pod stopped", _md(md, stopped.status), "Suspended", "suspended"),
        Case("suspend: asked, not seen by the operator yet", _md(md, served, generation=2), "Progressing", "observe generation 2"),
        Case("suspend: resuming", _md(off, resuming.status), "Progressing", "version 1"),
        Case("suspend: resumed", _md(off, resumed.status), "Healthy", "version 1"),
        Case("suspend: a canary deployment suspended", _md(canary_spec(suspended=True), canary.status), "Suspended", "suspended"),
    ]


def _scaling_cases() -> list[Case]:
    cases, status = [], converge(spec(replicas=1), [v(1)]).status
    steps = [("scale-up asked", scaling_to(3, 1, 1, observed=False)), ("scale-up, new pods starting", scaling_to(3, 3, 1)),
             ("scale-up, one new pod ready", scaling_to(3, 3, 2)), ("scale-up done", done(1, 3))]
    for i, (name, server) in enumerate(steps):
        status = plan(spec(replicas=3), status, [v(1)], server, now=T0 + timedelta(minutes=1, seconds=i)).status
        cases.append(Case(f"scaling: {name}", _md(spec(replicas=3), status), "Healthy" if name == "scale-up done" else "Progressing",
                          "version 1"))
    lost = plan(spec(replicas=3), status, [v(1)], scaling_to(3, 3, 2), now=T0 + timedelta(minutes=3)).status
    cases.append(Case("scaling: an available pod lost", _md(spec(replicas=3), lost), "Degraded", "were available and are lost"))
    down = plan(spec(replicas=1), status, [v(1)], ServerState(1, 1, updated=3, ready=3, available=3, total=3),
                now=T0 + timedelta(minutes=4)).status
    cases.append(Case("scaling: scale-down, pods stopping", _md(spec(replicas=1), down), "Progressing", "version 1"))
    down = plan(spec(replicas=1), down, [v(1)], done(1, 1), now=T0 + timedelta(minutes=5)).status
    cases.append(Case("scaling: scale-down done", _md(spec(replicas=1), down), "Healthy", "version 1"))
    return cases


def _autoscaling_cases() -> list[Case]:
    """The operator's autoscaler (decide) writes status.autoscaling; plan_rollout the rest."""
    auto = {"minReplicas": 1, "maxReplicas": 4, "metric": "inferences-per-second", "target": 100}
    md = spec(autoscaling=auto)
    scaler = AutoscalingSpec.model_validate(auto)
    status = converge(md, [v(1)]).status
    cases, scaled = [], None
    timeline = [("load rises: up to 3", 1, 250, scaling_to(3, 3, 1), "Progressing"),
                ("up to 3 done", 3, 100, done(1, 3), "Healthy"),
                ("load falls: down to 1", 3, 10, ServerState(1, 1, updated=3, ready=3, available=3, total=3), "Progressing"),
                ("down to 1 done", 1, 10, done(1, 1), "Healthy")]
    for i, (name, current, value, server, health) in enumerate(timeline):
        now = T0 + timedelta(minutes=1 + 5 * i)
        decision = decide(scaler, current, value, scaled, now)
        scaled = decision.status.wire()
        # As the handler plans: with the replicas the autoscaler decided (handlers/scaling.py).
        status = {**plan(spec(autoscaling=auto, replicas=decision.replicas), status, [v(1)], server, now=now).status,
                  "autoscaling": scaled}
        cases.append(Case(f"autoscaling: {name}", _md(md, status), health, "version 1"))
    return cases


def deployment_cases() -> list[Case]:
    return [*_rollout_cases(), *_canary_cases(), *_suspend_cases(), *_scaling_cases(), *_autoscaling_cases()]


def cases() -> list[Case]:
    found = [*version_cases(), *model_cases(), *deployment_cases()]
    assert len({c.name for c in found}) == len(found), "case names are unique"
    return found

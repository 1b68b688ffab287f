"""The Argo CD health checks the chart ships, run by a real Lua interpreter on statuses
shaped as the operator writes them.

Argo CD runs these scripts in gopher-lua (Lua 5.1) with `obj` set to the object, and takes
the returned table's `status` and `message`. Here each script runs the same way in Lua 5.1,
embedded through lupa.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelops.api.version import Phase
from modelops.core.models import model_status
from modelops.core.versions import VersionState, version_status
from modelops.handlers.context import CABundleProblem, CredentialsProblem

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, tzinfo=UTC)

CHECKS = Path(__file__).resolve().parents[2] / "charts" / "modelops" / "argocd" / "modelops.dev"


def lua_literal(value: Any) -> str:
    """A Python value as a Lua expression; None-valued keys are left out, as in Argo CD."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        items = (f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) from the kind's health.lua, run as Argo CD runs it: in Lua 5.1, with
    `obj` set to the object, taking the table the script returns."""
    import lupa.lua51

    runtime = lupa.lua51.LuaRuntime()
    runtime.execute(f"obj = {lua_literal(obj)}")
    hs = runtime.execute((CHECKS / kind / "health.lua").read_text())
    return hs["status"], hs["message"] or ""


def cond(kind: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def deployment(generation: int = 2, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "digits-latest", "generation": generation}, "status": status or None}


SERVING = [
    cond("Ready", "True", "Serving", "serving version 3 on 2/2 ready replicas"),
    cond("Progressing", "False", "RolloutComplete", "version 3 is rolled out"),
    cond("Degraded", "False", "AsExpected", "serving as the policy asks"),
]
ROLLING = [
    cond("Ready", "False", "RolloutInProgress", "rolling out version 4: 1/2 updated, 2 available"),
    cond("Progressing", "True", "RolloutInProgress", "rolling out version 4: 1/2 updated, 2 available"),
    cond("Degraded", "False", "AsExpected", "rollout under way"),
]

DEPLOYMENT_CASES = {
    "no status yet": (deployment(), "Progressing", "generation 2"),
    "converged": (
        deployment(observedGeneration=2, desiredVersion=3, servedVersion=3, conditions=SERVING),
        "Healthy", "serving version 3 on 2/2 ready replicas"),
    "status of an older generation": (
        deployment(observedGeneration=1, desiredVersion=3, servedVersion=3, conditions=SERVING),
        "Progressing", "observe generation 2"),
    "observedGeneration missing": (
        deployment(desiredVersion=3, servedVersion=3, conditions=SERVING), "Progressing", "generation 2"),
    "rolling out a new version": (
        deployment(observedGeneration=2, desiredVersion=4, servedVersion=3, conditions=ROLLING),
        "Progressing", "rolling out version 4"),
    "rolling out a new pod template of the same version": (
        deployment(observedGeneration=2, desiredVersion=3, servedVersion=3, conditions=[
            cond("Ready", "True", "Serving", "serving version 3 on 2/2 ready replicas"),
            cond("Progressing", "True", "RolloutInProgress", "rolling out version 3: 1/2 updated, 2 available"),
            cond("Degraded", "False", "AsExpected", "rollout under way"),
        ]),
        "Progressing", "rolling out version 3"),
    "rolled back": (
        deployment(observedGeneration=2, desiredVersion=3, servedVersion=3, conditions=[
            SERVING[0], SERVING[1],
            cond("Degraded", "True", "RolledBack", "the rollout of version 4 failed and was rolled back; serving version 3"),
        ]),
        "Degraded", "rollout of version 4 failed"),
    "pinned version not ready": (
        deployment(observedGeneration=2, desiredVersion=5, servedVersion=3, conditions=[
            cond("Ready", "False", "PinnedVersionNotReady", "version 5 is not Ready; still serving version 3"),
            SERVING[1],
            cond("Degraded", "True", "PinnedVersionNotReady", "version 5 is not Ready; serving version 3 instead"),
        ]),
        "Degraded", "version 5 is not Ready"),
    "deadline exceeded with autoRollback off": (
        deployment(observedGeneration=2, desiredVersion=4, servedVersion=3, conditions=[
            ROLLING[0],
            cond("Progressing", "False", "ProgressDeadlineExceeded", "version 4 did not become available within 600s"),
            ROLLING[2],
        ]),
        "Degraded", "did not become available"),
    "invalid serving config": (
        deployment(observedGeneration=2, conditions=[
            cond("Ready", "False", "InvalidServingConfig", "spec.triton.backend python needs ..."),
            cond("Progressing", "False", "InvalidServingConfig", "spec.triton.backend python needs ..."),
            cond("Degraded", "True", "InvalidServingConfig", "spec.triton.backend python needs ..."),
        ]),
        "Degraded", "spec.triton.backend"),
    "no version to serve yet": (
        deployment(observedGeneration=2, conditions=[
            cond("Ready", "False", "NoReadyVersion", "no version of Model digits is Ready yet"),
            cond("Progressing", "False", "NoReadyVersion", "no version of Model digits is Ready yet"),
            cond("Degraded", "False", "NothingServed", "no version is served yet"),
        ]),
        "Progressing", "no version of Model digits is Ready yet"),
    "served equals desired but no replica is ready": (
        deployment(observedGeneration=2, desiredVersion=3, servedVersion=3, conditions=[
            cond("Ready", "False", "Unavailable", "no ready replica of version 3"),
            SERVING[1], SERVING[2],
        ]),
        "Progressing", "no ready replica of version 3"),
    "suspended": (
        {**deployment(observedGeneration=2, desiredVersion=3, servedVersion=3, replicas=0, conditions=[
            cond("Ready", "False", "Suspended", "suspended: 0 replicas of version 3; set spec.suspended to false to serve again"),
            cond("Progressing", "False", "Suspended", "suspended"), cond("Degraded", "False", "Suspended", "suspended"),
        ]), "spec": {"suspended": True}},
        "Suspended", "suspended: 0 replicas of version 3"),
    "suspending while pods still stop": (
        {**deployment(observedGeneration=2, desiredVersion=3, servedVersion=3, replicas=2, conditions=[
            cond("Ready", "False", "Suspended", "suspended: 0 replicas of version 3 (2 pod(s) still stopping)"),
        ]), "spec": {"suspended": True}},
        "Progressing", "still stopping"),
    "suspended asked, operator not there yet": (
        {**deployment(observedGeneration=2, desiredVersion=3, servedVersion=3, replicas=2, conditions=SERVING),
         "spec": {"suspended": True}},
        "Progressing", "serving version 3"),
    "resumed": (
        {**deployment(observedGeneration=2, desiredVersion=3, servedVersion=3, replicas=2, conditions=SERVING),
         "spec": {"suspended": False}},
        "Healthy", "serving version 3"),
    "canary in progress": (
        deployment(observedGeneration=2, desiredVersion=4, servedVersion=3, conditions=[
            cond("Ready", "False", "CanaryProgressing", "canary of version 4: step 1/2 at 10 %: within the limits"),
            cond("Progressing", "True", "CanaryProgressing", "canary of version 4: step 1/2 at 10 %: within the limits"),
            cond("Degraded", "False", "AsExpected", "rollout under way"),
        ]),
        "Progressing", "canary of version 4: step 1/2"),
    "canary aborted": (
        deployment(observedGeneration=2, desiredVersion=3, servedVersion=3, conditions=[
            SERVING[0], SERVING[1],
            cond("Degraded", "True", "CanaryAborted", "canary of version 4 aborted at step 1/2 at 10 %: error ratio 0.500"),
        ]),
        "Degraded", "canary of version 4 aborted"),
    "served equals desired but Ready is missing": (
        deployment(observedGeneration=2, desiredVersion=3, servedVersion=3, conditions=[SERVING[1], SERVING[2]]),
        "Progressing", "Waiting for version 3"),
    "a condition without message or reason": (
        deployment(observedGeneration=2, desiredVersion=4, servedVersion=3, conditions=[
            cond("Ready", "False", "", ""), SERVING[1], SERVING[2],
        ]),
        "Progressing", "Waiting for version 4"),
}


@pytest.mark.parametrize("case", DEPLOYMENT_CASES)
def test_model_deployment_health(case: str) -> None:
    obj, expected_status, expected_message = DEPLOYMENT_CASES[case]
    status, message = health("ModelDeployment", obj)
    assert (status, expected_message in message) == (expected_status, True), message


def version(phase: str | None, reason: str = "", message: str = "") -> dict[str, Any]:
    status = None if phase is None else {
        "observedGeneration": 1, "phase": phase,
        "conditions": [cond("Ready", "True" if phase == "Ready" else "False", reason, message)],
    }
    return {"metadata": {"name": "digits-v2", "generation": 1}, "status": status}


VERSION_CASES = {
    "no status yet": (version(None), "Progressing", "Waiting for the operator"),
    "pending": (version("Pending", "ModelNotFound", "Model digits does not exist"), "Progressing", "Pending: Model digits"),
    "verifying": (version("Verifying", "ArtifactNotFound", "no object at s3://models/digits/2/model.onnx"),
                  "Progressing", "Verifying: no object at"),
    "compressing": (version("Compressing", "JobRunning", "Job digits-v2-compress is running"), "Progressing", "Compressing"),
    "evaluating": (version("Evaluating", "JobRunning", "evaluation Job digits-v2-compress is running"), "Progressing", "Evaluating"),
    "ready": (version("Ready", "Compressed", "compressed 4.0x"), "Healthy", "Ready: compressed 4.0x"),
    "ready from the cache": (version("Ready", "CompressedFromCache", "reused"), "Healthy", "Ready: reused"),
    "rejected by the gate": (version("Rejected", "AccuracyGateRejected", "top-1 accuracy dropped 3.1 points"),
                             "Degraded", "Rejected: top-1 accuracy dropped"),
    "failed": (version("Failed", "ChecksumMismatch", "expected sha256 ab…, got cd…"), "Degraded", "Failed: expected sha256"),
    "failed without a message": (version("Failed", "ChecksumMismatch", ""), "Degraded", "Failed: ChecksumMismatch"),
}


def written_version(generation: int, observed: int | None, state: VersionState) -> dict[str, Any]:
    """A ModelVersion whose status is the one the operator writes for `state` at generation `observed`."""
    return {"metadata": {"name": "digits-v2", "generation": generation}, "status": version_status(None, state, observed, NOW)}


WRITTEN_VERSION_CASES = {
    "ready": (written_version(1, 1, VersionState(Phase.READY, "Compressed", "compressed 4.0x")), "Healthy", "Ready: compressed 4.0x"),
    "ready, status of an older generation": (
        written_version(2, 1, VersionState(Phase.READY, "Compressed", "compressed 4.0x")), "Progressing", "observe generation 2"),
    "rejected, status of an older generation": (
        written_version(3, 2, VersionState(Phase.REJECTED, "AccuracyGateRejected", "top-1 accuracy dropped 3.1 points")),
        "Progressing", "observe generation 3"),
    "observedGeneration missing": (
        written_version(1, None, VersionState(Phase.READY, "Compressed", "compressed 4.0x")), "Progressing", "generation 1"),
    "failed without a message": (
        written_version(1, 1, VersionState(Phase.FAILED, "ChecksumMismatch", "")), "Degraded", "Failed: ChecksumMismatch"),
}


@pytest.mark.parametrize("case", VERSION_CASES)
def test_model_version_health(case: str) -> None:
    obj, expected_status, expected_message = VERSION_CASES[case]
    status, message = health("ModelVersion", obj)
    assert (status, expected_message in message) == (expected_status, True), message


@pytest.mark.parametrize("case", WRITTEN_VERSION_CASES)
def test_model_version_health_of_the_operators_status(case: str) -> None:
    obj, expected_status, expected_message = WRITTEN_VERSION_CASES[case]
    status, message = health("ModelVersion", obj)
    assert (status, expected_message in message) == (expected_status, True), message


def model(generation: int, observed: int | None, ready: dict[str, str] | None) -> dict[str, Any]:
    status = None if observed is None else {"observedGeneration": observed, "conditions": [ready] if ready else []}
    return {"metadata": {"name": "digits", "generation": generation}, "status": status}


MODEL_CASES = {
    "no status yet": (model(1, None, None), "Progressing", "generation 1"),
    "status of an older generation": (model(2, 1, cond("Ready", "True", "VersionReady", "version 3 is Ready")),
                                      "Progressing", "generation 2"),
    "a version is ready": (model(1, 1, cond("Ready", "True", "VersionReady", "version 3 is Ready")),
                           "Healthy", "version 3 is Ready"),
    "no ready version yet": (model(1, 1, cond("Ready", "False", "NoReadyVersion", "no version of Model digits is Ready yet")),
                             "Progressing", "no version of Model digits"),
    "credentials missing": (model(1, 1, cond("Ready", "False", "CredentialsNotFound", "Secret digits-storage does not exist")),
                            "Degraded", "Secret digits-storage"),
    "no Ready condition yet": (model(1, 1, None), "Progressing", "Waiting for the operator"),
    "ready without a message": (model(1, 1, cond("Ready", "True", "VersionReady", "")), "Healthy", "VersionReady"),
    "credentials missing, no message": (model(1, 1, cond("Ready", "False", "CredentialsNotFound", "")),
                                        "Degraded", "CredentialsNotFound"),
    "no ready version, no message": (model(1, 1, cond("Ready", "False", "NoReadyVersion", "")),
                                     "Progressing", "NoReadyVersion"),
}


def written_model(problem: CredentialsProblem | None, generation: int = 1) -> dict[str, Any]:
    """A Model with no Ready version whose status is the one the operator writes when reading its
    storage objects raised `problem` (or nothing)."""
    status = model_status(None, "digits", [], str(problem) if problem else None, generation, NOW,
                          problem_reason=problem.reason if problem else CredentialsProblem.reason)
    return {"metadata": {"name": "digits", "generation": generation}, "status": status}


WRITTEN_MODEL_CASES = {
    "credentials Secret missing": (written_model(CredentialsProblem("Secret digits-storage does not exist")),
                                   "Degraded", "Secret digits-storage does not exist"),
    "credentials key missing": (written_model(CredentialsProblem("Secret digits-storage lacks the key(s) AWS_SECRET_ACCESS_KEY")),
                                "Degraded", "lacks the key(s)"),
    "CA bundle ConfigMap missing": (
        written_model(CABundleProblem("ConfigMap digits-ca named in spec.storage.caBundle.configMapRef does not exist")),
        "Degraded", "ConfigMap digits-ca named in spec.storage.caBundle.configMapRef does not exist"),
    "CA bundle key missing": (
        written_model(CABundleProblem("Secret digits-ca has no PEM certificate under the key ca.crt (spec.storage.caBundle.key)")),
        "Degraded", "no PEM certificate"),
    "no ready version yet": (written_model(None), "Progressing", "no version of Model digits is Ready yet"),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_model_health(case: str) -> None:
    obj, expected_status, expected_message = MODEL_CASES[case]
    status, message = health("Model", obj)
    assert (status, expected_message in message) == (expected_status, True), message


@pytest.mark.parametrize("case", WRITTEN_MODEL_CASES)
def test_model_health_of_the_operators_status(case: str) -> None:
    obj, expected_status, expected_message = WRITTEN_MODEL_CASES[case]
    status, message = health("Model", obj)
    assert (status, expected_message in message) == (expected_status, True), message


@pytest.mark.parametrize("problem", [CredentialsProblem, *CredentialsProblem.__subclasses__()], ids=lambda c: c.__name__)
def test_every_missing_object_the_user_must_create_is_degraded(problem: type[CredentialsProblem]) -> None:
    """Each reason the operator gives for a missing credentials Secret, CA bundle or bucket
    (objects only the user can create) makes the Model Degraded, not Progressing forever."""
    status, message = health("Model", written_model(problem("the object does not exist")))
    assert (status, message) == ("Degraded", "the object does not exist")


def test_every_kind_of_the_api_has_a_health_check() -> None:
    assert sorted(p.parent.name for p in CHECKS.glob("*/health.lua")) == ["Model", "ModelDeployment", "ModelVersion"]


def test_model_deployment_health_of_the_operators_status_while_scaling() -> None:
    """A scale-up and a scale-down are Progressing, never Degraded, then Healthy; a pod that was
    available and is lost is Degraded. The statuses are the operator's own (plan_rollout)."""
    from datetime import timedelta

    from tests.unit.test_core_rollout import T0, converge, done, plan, scaling_to, spec, v

    def of(status: dict[str, Any], replicas: int) -> tuple[str, str]:
        return health("ModelDeployment", {"metadata": {"generation": 1}, "spec": {"model": "digits", "replicas": replicas},
                                          "status": status})

    s = converge(spec(replicas=1), [v(1)]).status
    assert of(s, 1)[0] == "Healthy"
    for i, server in enumerate([done(1, 1), scaling_to(3, 1, 1), scaling_to(3, 3, 1), scaling_to(3, 3, 2)]):
        s = plan(spec(replicas=3), s, [v(1)], server, now=T0 + timedelta(minutes=1, seconds=i)).status
        assert of(s, 3)[0] == "Progressing", s["conditions"]
    assert of(s, 3)[1].startswith("scaling version 1 to 3 replicas")
    s = plan(spec(replicas=3), s, [v(1)], done(1, 3), now=T0 + timedelta(minutes=2)).status
    assert of(s, 3)[0] == "Healthy"
    lost = plan(spec(replicas=3), s, [v(1)], scaling_to(3, 3, 2), now=T0 + timedelta(minutes=3)).status
    assert of(lost, 3) == ("Degraded", "1 of 3 replicas of version 1 were available and are lost (crashed, restarting or evicted)")
    for i, server in enumerate([done(1, 3), done(1, 1)]):
        s = plan(spec(replicas=1), s, [v(1)], server, now=T0 + timedelta(minutes=4, seconds=i)).status
        assert of(s, 1)[0] == ("Progressing", "Healthy")[i]


def test_the_shared_cases_cover_every_path() -> None:
    from tests.argocd_cases import cases

    found = cases()
    assert len(found) >= 50
    assert {c.status for c in found} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    assert {c.object["kind"] for c in found} == {"Model", "ModelVersion", "ModelDeployment"}


def _shared_cases() -> list[Any]:
    from tests.argocd_cases import cases

    return cases()


@pytest.mark.parametrize("case", _shared_cases(), ids=lambda c: c.name)
def test_health_of_the_operators_statuses_on_every_path(case: Any) -> None:
    """The cases that the Go test runs in Argo CD's own Lua VM (tests/argocd_cases.py), here in
    Lua 5.1 through lupa, so that make test checks them in milliseconds too."""
    status, message = health(case.object["kind"], case.object)
    assert (status, case.message in message) == (case.status, True), message

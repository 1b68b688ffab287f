"""The test bed node agent's kubelet decisions: restart back-off, restartPolicy, the container
state it reports and the pod's phase."""

from __future__ import annotations

import pytest

from e2e.nodeagent.lifecycle import (
    Backoff,
    ContainerView,
    back_off_state,
    pod_phase,
    reported_state,
    restarts,
    terminated_state,
)

pytestmark = pytest.mark.unit


def schedule(backoff: Backoff, runs: list[float]) -> list[float]:
    """The delays before each restart, for runs of the given lengths."""
    delays: list[float] = []
    previous = None
    for ran_for in runs:
        previous = backoff.next_delay(previous, ran_for)
        delays.append(previous)
    return delays


def test_the_default_back_off_is_the_kubelets_ten_seconds_doubling_to_five_minutes() -> None:
    assert schedule(Backoff(), [1.0] * 8) == [10, 20, 40, 80, 160, 300, 300, 300]


def test_a_small_back_off_doubles_to_its_cap() -> None:
    assert schedule(Backoff(initial=0.5, cap=3, reset_after=60), [0.1] * 5) == [0.5, 1, 2, 3, 3]


def test_a_long_healthy_run_starts_the_back_off_again() -> None:
    backoff = Backoff(initial=1, cap=8, reset_after=30)
    # Three quick crashes, a run of exactly reset_after, then quick crashes again.
    assert schedule(backoff, [1, 1, 1, 30, 1, 1]) == [1, 2, 4, 1, 2, 4]
    # A run just short of it keeps doubling.
    assert schedule(backoff, [1, 1, 29.9]) == [1, 2, 4]


@pytest.mark.parametrize(("initial", "cap", "reset_after"), [(0, 10, 60), (20, 10, 60), (1, 10, 0)])
def test_a_back_off_that_cannot_work_is_refused_naming_the_number(initial: float, cap: float, reset_after: float) -> None:
    with pytest.raises(ValueError, match="back-off"):
        Backoff(initial, cap, reset_after)


@pytest.mark.parametrize(("policy", "code", "init", "expected"), [
    ("Always", 0, False, True), ("Always", 1, False, True),
    ("OnFailure", 0, False, False), ("OnFailure", 2, False, True),
    ("Never", 0, False, False), ("Never", 1, False, False),
    # Init containers: a success is done whatever the policy; a failure reruns unless Never.
    ("Always", 0, True, False), ("Always", 1, True, True), ("OnFailure", 1, True, True), ("Never", 1, True, False),
])
def test_restart_policy(policy: str, code: int, init: bool, expected: bool) -> None:
    assert restarts(policy, code, init=init) is expected


def test_a_signal_is_reported_as_128_plus_its_number() -> None:
    state = terminated_state(-9, "t0", "t1", "modelops://42")
    assert state == {"exitCode": 137, "signal": 9, "reason": "Error", "startedAt": "t0", "finishedAt": "t1",
                     "containerID": "modelops://42"}
    assert terminated_state(0, "t0", "t1", "modelops://42", "done")["reason"] == "Completed"
    assert terminated_state(0, "t0", "t1", "modelops://42", "done")["message"] == "done"
    assert "message" not in terminated_state(3, "t0", "t1", "modelops://42")


RUNNING = {"running": {"startedAt": "t0"}}


def test_a_live_process_is_reported_running() -> None:
    assert reported_state(RUNNING, alive=True, returncode=None, finished_at="t1", container_id="modelops://7") == RUNNING


def test_a_process_that_exited_since_the_last_step_is_reported_terminated_with_its_code() -> None:
    state = reported_state(RUNNING, alive=False, returncode=1, finished_at="t1", container_id="modelops://7")
    assert state == {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": "t0", "finishedAt": "t1",
                                    "containerID": "modelops://7"}}


def test_a_running_state_with_no_process_is_never_reported_running() -> None:
    state = reported_state(RUNNING, alive=False, returncode=None, finished_at="t1", container_id="")
    assert "running" not in state
    assert state["terminated"]["exitCode"] == 137 and "unknown" in state["terminated"]["message"]


def test_waiting_and_terminated_states_are_reported_as_recorded() -> None:
    waiting = back_off_state("operator", "mo-1", 20)
    assert waiting == {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": "back-off 20s restarting failed container=operator pod=mo-1"}}
    assert reported_state(waiting, alive=False, returncode=None, finished_at="t1", container_id="") == waiting


def view(running: bool = False, done: bool = False, exit_code: int | None = None, restarts: int = 0) -> ContainerView:
    return ContainerView(running=running, done=done, exit_code=exit_code, restart_count=restarts)


@pytest.mark.parametrize(("policy", "init_done", "init", "containers", "phase"), [
    ("Always", True, [], [view()], "Pending"),  # not started yet
    ("Always", True, [], [view(running=True)], "Running"),
    # Backing off after a crash (CrashLoopBackOff) is still Running, as on a kubelet.
    ("Always", True, [], [view(exit_code=1, restarts=3)], "Running"),
    ("Never", True, [], [view(done=True, exit_code=0)], "Succeeded"),
    ("Never", True, [], [view(done=True, exit_code=0), view(done=True, exit_code=2)], "Failed"),
    ("OnFailure", True, [], [view(done=True, exit_code=0), view(running=True)], "Running"),
    ("Always", False, [view(running=True)], [view()], "Pending"),
    ("Never", False, [view(done=True, exit_code=1)], [view()], "Failed"),
    ("OnFailure", False, [view(exit_code=1, restarts=1)], [view()], "Pending"),
])
def test_pod_phase(policy: str, init_done: bool, init: list[ContainerView], containers: list[ContainerView],
                   phase: str) -> None:
    assert pod_phase(policy, init_done, init, containers) == phase

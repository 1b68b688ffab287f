"""What a kubelet decides about a pod's containers, as pure functions: when to restart a
container that exited, how long to back off first, what its status says and the pod's phase.

The PodWorker (pod.py) does the I/O (processes, the apiserver) and asks these.
"""

from __future__ import annotations

from dataclasses import dataclass

# Container state reasons, as the kubelet writes them.
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
RUN_CONTAINER_ERROR = "RunContainerError"
COMPLETED = "Completed"
ERROR = "Error"

ALWAYS, ON_FAILURE, NEVER = "Always", "OnFailure", "Never"


@dataclass(frozen=True)
class Backoff:
    """The kubelet's restart back-off: `initial` seconds before the first restart, doubling
    for each restart after, at most `cap`; a container that ran `reset_after` seconds or
    longer before it exited starts again from `initial`."""

    initial: float = 10.0
    cap: float = 300.0
    reset_after: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError(f"back-off: need 0 < initial ({self.initial}) <= cap ({self.cap})")
        if self.reset_after <= 0:
            raise ValueError(f"back-off: reset_after must be positive, not {self.reset_after}")

    def next_delay(self, previous: float | None, ran_for: float) -> float:
        """The delay before the next restart, after one of `previous` seconds (None: no
        restart yet) and a run of `ran_for` seconds."""
        if previous is None or ran_for >= self.reset_after:
            return self.initial
        return min(previous * 2, self.cap)


def restarts(policy: str, exit_code: int, init: bool = False) -> bool:
    """Whether a container that exited with `exit_code` runs again under the pod's restartPolicy.
    An init container that succeeded is done; one that failed reruns unless the policy is Never."""
    if init:
        return exit_code != 0 and policy != NEVER
    return policy == ALWAYS or (policy == ON_FAILURE and exit_code != 0)


def exit_status(returncode: int) -> tuple[int, int | None]:
    """A Popen return code as the kubelet reports it: (exitCode, signal). A process killed by
    signal N exits with 128 + N, as a shell reports it."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def terminated_state(returncode: int, started_at: str, finished_at: str, container_id: str,
                     message: str = "") -> dict:
    code, sig = exit_status(returncode)
    terminated: dict = {
        "exitCode": code,
        "reason": COMPLETED if code == 0 else ERROR,
        "startedAt": started_at,
        "finishedAt": finished_at,
        "containerID": container_id,
    }
    if sig is not None:
        terminated["signal"] = sig
    if message:
        terminated["message"] = message
    return terminated


def back_off_state(container: str, pod: str, delay: float) -> dict:
    return {"waiting": {
        "reason": CRASH_LOOP_BACK_OFF,
        "message": f"back-off {delay:.0f}s restarting failed container={container} pod={pod}",
    }}


def reported_state(state: dict, alive: bool, returncode: int | None, finished_at: str, container_id: str) -> dict:
    """The state to report for a container whose recorded state is `state`, given what its
    process is now: a container is never reported running without a live process. One that
    exited since it was last looked at is reported terminated with its exit status (with
    `returncode` None when that is unknown: exit code 137, reason Error, as the kubelet
    reports a container it lost)."""
    if "running" not in state or alive:
        return state
    started = state["running"].get("startedAt", finished_at)
    if returncode is None:
        terminated = terminated_state(137, started, finished_at, container_id,
                                      "the container's process is gone; its exit status is unknown")
        return {"terminated": terminated}
    return {"terminated": terminated_state(returncode, started, finished_at, container_id)}


@dataclass(frozen=True)
class ContainerView:
    """What the phase depends on for one container."""

    running: bool  # a live process
    done: bool  # terminated and will not run again
    exit_code: int | None  # of its last run, if it ran
    restart_count: int = 0


def pod_phase(policy: str, init_done: bool, init: list[ContainerView], containers: list[ContainerView]) -> str:
    """The pod's phase, as the kubelet derives it from its containers."""
    failed_init = any(c.done and c.exit_code not in (0, None) for c in init)
    if failed_init and policy == NEVER:
        return "Failed"
    if not init_done:
        return "Pending"
    if containers and all(c.done for c in containers):
        return "Succeeded" if all(c.exit_code == 0 for c in containers) else "Failed"
    if any(c.running or c.restart_count for c in containers):
        return "Running"
    return "Pending"

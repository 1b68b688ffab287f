"""Scaling a served deployment on real Triton pods: the conditions are watched the whole time
(every status the API server stores), so a Degraded or not-Ready moment cannot slip between
samples. A scale-up is Progressing (Scaling), never Degraded, and Ready stays True; a scale-down
is clean; a pod that was available and is lost is ReplicasUnavailable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import OperatorProcess, Storage, apply_docs, eventually, kubectl
from tests.integration.test_faults import condition, deployment_status, ready_pods, served_digits

pytestmark = pytest.mark.integration


class ConditionWatch:
    """`kubectl get --watch` of the ModelDeployment: its conditions at every stored status."""

    def __init__(self, testbed: Any, namespace: str) -> None:
        self.process = subprocess.Popen(
            [testbed.kubectl_path, f"--kubeconfig={testbed.kubeconfig}", "get", "modeldeployment", "digits",
             "-n", namespace, "--watch", "-o=json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )
        self.seen: list[dict[str, tuple[str, str]]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        eventually(lambda: self.snapshot(), 30, "the watch to list the ModelDeployment")

    def _read(self) -> None:
        assert self.process.stdout is not None
        decoder, text = json.JSONDecoder(), ""
        for line in self.process.stdout:  # one pretty-printed object after another
            text += line
            try:
                body, end = decoder.raw_decode(text.lstrip())
            except json.JSONDecodeError:
                continue
            text = text.lstrip()[end:]
            status = body.get("status") or {}
            if status.get("observedGeneration") != body["metadata"]["generation"]:
                continue  # a spec change the operator has not seen yet: no status speaks for it
            by_type = {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}
            with self.lock:
                self.seen.append(by_type)

    def snapshot(self) -> list[dict[str, tuple[str, str]]]:
        with self.lock:
            return list(self.seen)

    def close(self) -> list[dict[str, tuple[str, str]]]:
        self.process.kill()
        self.process.wait(timeout=10)
        return self.snapshot()


def scale(testbed: Any, namespace: str, replicas: int) -> None:
    kubectl(testbed, "patch", "-n", namespace, "modeldeployment/digits", "--type=merge", "-p",
            json.dumps({"spec": {"replicas": replicas}}))


def settled(testbed: Any, namespace: str, replicas: int) -> bool:
    status = deployment_status(testbed, namespace)
    return (status.get("readyReplicas") == replicas and status.get("replicas") == replicas
            and status.get("availableReplicasHighWater") == replicas
            and condition(testbed, namespace, "Progressing").get("reason") == "RolloutComplete")


def watched_scale(testbed: Any, namespace: str, replicas: int) -> list[dict[str, tuple[str, str]]]:
    watch = ConditionWatch(testbed, namespace)
    try:
        scale(testbed, namespace, replicas)
        eventually(lambda: settled(testbed, namespace, replicas), 300, f"{replicas} ready replicas",
                   detail=lambda: f"status: {deployment_status(testbed, namespace)}")
    finally:
        seen = watch.close()
    return seen


def test_scaling_a_ready_deployment_is_never_degraded_and_a_lost_pod_is(
    testbed: Any, namespace: str, storage: Storage, digits: Any, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    apply_docs(testbed, namespace, served_digits(storage, digits))
    eventually(lambda: settled(testbed, namespace, 1), 300, "version 1 served on one ready replica")

    up = watched_scale(testbed, namespace, 3)
    assert [s for s in up if s.get("Degraded", ("False",))[0] != "False"] == []
    assert [s for s in up if s.get("Ready") != ("True", "Serving")] == []
    assert ("True", "Scaling") in [s.get("Progressing") for s in up], up  # the watch saw the pods start

    # A pod that served is killed: that is a lost pod, not a scale.
    pod = ready_pods(testbed, namespace)[0]
    (triton,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == "triton"]
    os.killpg(int(triton["containerID"].removeprefix("modelops://")), signal.SIGKILL)
    eventually(lambda: condition(testbed, namespace, "Degraded").get("reason") == "ReplicasUnavailable", 60,
               "Degraded ReplicasUnavailable after a Triton process was killed",
               detail=lambda: f"Degraded is {condition(testbed, namespace, 'Degraded')}")
    assert condition(testbed, namespace, "Ready")["status"] == "True"  # two pods still serve
    eventually(lambda: settled(testbed, namespace, 3) and condition(testbed, namespace, "Degraded").get("status") == "False",
               300, "the deployment to heal once Triton restarted")

    down = watched_scale(testbed, namespace, 1)
    assert [s for s in down if s.get("Degraded", ("False",))[0] != "False"] == []
    assert [s for s in down if s.get("Ready") != ("True", "Serving")] == []

"""The local test bed behaves like a real cluster: scheduling, probes, Jobs, GPUs, Triton, tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from e2e.support import restricted
from e2e.testbed import cluster

pytestmark = pytest.mark.integration

PROJECT_IMAGE = "ghcr.io/modelops/modelops-operator:0.1.0"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"


def apply(testbed, namespace: str, *docs: dict) -> None:
    testbed.apply(namespace, list(docs))


def test_deployment_replicas_become_ready_and_answer_on_their_pod_ips(testbed, namespace):
    apply(testbed, namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": restricted({"containers": [{
                    "name": "web", "image": PROJECT_IMAGE,
                    # Each replica serves its own hostname, so the test can tell them apart.
                    "command": ["sh", "-c", "mkdir -p /srv && hostname > /srv/index.html && "
                                            "exec python -m http.server 8080 --directory /srv"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                    "volumeMounts": [{"name": "srv", "mountPath": "/srv"}],
                }], "volumes": [{"name": "srv", "emptyDir": {}}]}),
            },
        },
    })
    testbed.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=120s")
    pods = testbed.get(namespace, "pods", "-l", "app=web")["items"]
    assert len(pods) == 2
    ips = {pod["status"]["podIP"] for pod in pods}
    assert len(ips) == 2, "each pod has an IP of its own"
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True" and pod["status"]["phase"] == "Running"
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/", timeout=5) as response:
            assert response.read().decode().strip() == pod["metadata"]["name"]


def test_failed_job_reports_exit_code_and_termination_message(testbed, namespace):
    message = "sha256 mismatch: expected 00ff, got 1234"
    apply(testbed, namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "exit3"},
        "spec": {"backoffLimit": 0, "template": {"spec": restricted({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": PROJECT_IMAGE,
                "command": ["python", "-c",
                            f"open('/dev/termination-log', 'w').write({message!r}); raise SystemExit(3)"],
            }],
        })}},
    })
    testbed.kubectl("wait", "--for=condition=Failed", "job/exit3", "-n", namespace, "--timeout=120s")
    job = testbed.get(namespace, "job", "exit3")
    assert job["status"]["failed"] == 1
    pod = testbed.get(namespace, "pods", "-l", "job-name=exit3")["items"][0]
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["message"] == message



def plain_pod(name: str, script: str, restart: str, grace: int = 30) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": restricted({
        "restartPolicy": restart, "terminationGracePeriodSeconds": grace,
        "containers": [{"name": "main", "image": PROJECT_IMAGE, "command": ["sh", "-c", script]}],
    })}


def test_a_crashing_container_is_restarted_with_a_doubling_back_off(testbed, namespace):
    apply(testbed, namespace, plain_pod("crashes", "echo once; exit 3", "Always"))
    testbed.kubectl("wait", "--for=jsonpath={.status.containerStatuses[0].restartCount}=2", "pod/crashes",
                    "-n", namespace, "--timeout=120s")
    # It exited again at once, and now waits out the second back-off: twice the first (10 s).
    testbed.kubectl("wait", "--for=jsonpath={.status.containerStatuses[0].state.waiting.reason}=CrashLoopBackOff",
                    "pod/crashes", "-n", namespace, "--timeout=60s")
    (status,) = testbed.get(namespace, "pod", "crashes")["status"]["containerStatuses"]
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert status["ready"] is False and not status["started"]
    assert status["state"]["waiting"]["message"].startswith(
        "back-off 20s" if status["restartCount"] == 2 else "back-off 40s"), status
    pod = testbed.get(namespace, "pod", "crashes")
    assert pod["status"]["phase"] == "Running"  # as a kubelet reports a pod in CrashLoopBackOff


@pytest.mark.parametrize(("restart", "code", "phase"), [("OnFailure", 0, "Succeeded"), ("Never", 4, "Failed")])
def test_restart_policy_leaves_a_container_that_exited_when_it_says_so(testbed, namespace, restart, code, phase):
    apply(testbed, namespace, plain_pod("exits", f"exit {code}", restart))
    testbed.kubectl("wait", f"--for=jsonpath={{.status.phase}}={phase}", "pod/exits", "-n", namespace, "--timeout=120s")
    (status,) = testbed.get(namespace, "pod", "exits")["status"]["containerStatuses"]
    assert status["restartCount"] == 0
    assert status["state"]["terminated"]["exitCode"] == code
    assert status["lastState"] == {}


def test_deletion_kills_a_container_that_ignores_sigterm_at_the_grace_period_and_removes_the_pod(testbed, namespace):
    # Ignores SIGTERM; `sleep`'s exit on it is the loop's cue to start another.
    apply(testbed, namespace, plain_pod("stubborn", "trap '' TERM; echo up; while :; do sleep 1; done", "Always", grace=2))
    testbed.kubectl("wait", "--for=condition=Ready", "pod/stubborn", "-n", namespace, "--timeout=120s")
    (status,) = testbed.get(namespace, "pod", "stubborn")["status"]["containerStatuses"]
    pid = int(status["containerID"].removeprefix("modelops://"))
    assert Path(f"/proc/{pid}").exists()
    # `kubectl delete` waits until the pod object is gone: the node agent finishes the deletion
    # itself once SIGKILL at the end of the 2 s grace period has ended the container.
    testbed.kubectl("delete", "pod", "stubborn", "-n", namespace, "--timeout=60s")
    assert "NotFound" in testbed.kubectl("get", "pod", "stubborn", "-n", namespace, check=False)
    assert not Path(f"/proc/{pid}").exists(), f"pid {pid} outlived its pod"
    events = testbed.kubectl("get", "events", "-n", namespace, "--field-selector=involvedObject.name=stubborn",
                             "-o", "jsonpath={.items[*].reason}").split()
    assert "Killing" in events

def gpu_pod(name: str, tolerate: bool) -> dict:
    spec = {
        "restartPolicy": "Never",
        "containers": [{
            "name": "main", "image": PROJECT_IMAGE, "command": ["python", "-c", "print('on a GPU node')"],
            "resources": {"limits": {"nvidia.com/gpu": 1}},
        }],
    }
    if tolerate:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": restricted(spec)}


def test_gpu_pod_lands_on_the_gpu_node_only_with_the_toleration(testbed, namespace):
    apply(testbed, namespace, gpu_pod("tolerates", True), gpu_pod("intolerant", False))
    testbed.kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/tolerates", "-n", namespace,
                    "--timeout=120s")
    assert testbed.get(namespace, "pod", "tolerates")["spec"]["nodeName"] == "testbed-gpu"
    testbed.kubectl("wait", "--for=jsonpath={.status.conditions[?(@.type=='PodScheduled')].reason}=Unschedulable",
                    "pod/intolerant", "-n", namespace, "--timeout=60s")
    pod = testbed.get(namespace, "pod", "intolerant")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert "untolerated taint" in scheduled["message"]


def test_unrunnable_image_is_reported_on_the_pod(testbed, namespace):
    apply(testbed, namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nginx"},
                               "spec": restricted({"containers": [{"name": "web", "image": "docker.io/library/nginx:1.27"}]})})
    testbed.kubectl("wait", "--for=jsonpath={.status.containerStatuses[0].state.waiting.reason}=ErrImagePull",
                    "pod/nginx", "-n", namespace, "--timeout=60s")
    waiting = testbed.get(namespace, "pod", "nginx")["status"]["containerStatuses"][0]["state"]["waiting"]
    assert "nginx:1.27" in waiting["message"] and "cannot run" in waiting["message"]


ADD_ONE_MODEL = textwrap.dedent('''
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", (x + 1.0).astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
''')

ADD_ONE_CONFIG = textwrap.dedent('''
    name: "add_one"
    backend: "python"
    max_batch_size: 8
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    instance_group [ { count: 1 kind: KIND_CPU } ]
''')


def test_triton_pod_serves_a_python_backend_model_from_a_configmap(testbed, namespace):
    apply(testbed, namespace, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "add-one"},
        "data": {"config.pbtxt": ADD_ONE_CONFIG, "model.py": ADD_ONE_MODEL},
    }, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "triton"},
        "spec": restricted({
            "containers": [{
                "name": "triton", "image": TRITON_IMAGE,
                "command": ["tritonserver", "--model-repository=/models", "--strict-readiness=true"],
                "ports": [{"name": "http", "containerPort": 8000}, {"name": "grpc", "containerPort": 8001},
                          {"name": "metrics", "containerPort": 8002}],
                "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1},
                "volumeMounts": [{"name": "models", "mountPath": "/models"}],
            }],
            "volumes": [{"name": "models", "configMap": {"name": "add-one", "items": [
                {"key": "config.pbtxt", "path": "add_one/config.pbtxt"},
                {"key": "model.py", "path": "add_one/1/model.py"},
            ]}}],
        }),
    })
    testbed.kubectl("wait", "--for=condition=Ready", "pod/triton", "-n", namespace, "--timeout=180s")
    pod_ip = testbed.get(namespace, "pod", "triton")["status"]["podIP"]

    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"{pod_ip}:8000")
    assert client.is_model_ready("add_one")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    request = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    result = client.infer("add_one", [request]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(result, x + 1.0)


def test_kubectl_and_helm_work_against_the_test_bed(testbed, namespace, tmp_path):
    nodes = json.loads(testbed.kubectl("get", "nodes", "-o", "json"))["items"]
    ready = {n["metadata"]["name"]: next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready")
             for n in nodes}
    assert ready == {"testbed-cpu": "True", "testbed-gpu": "True"}
    # Nodes stay Ready only while their leases are renewed (every 10 s; 40 s of silence marks them NotReady).
    for lease in json.loads(testbed.kubectl("get", "leases", "-n", "kube-node-lease", "-o", "json"))["items"]:
        renewed = datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
        assert (datetime.now(UTC) - renewed).total_seconds() < 30, lease["metadata"]["name"]
    wide = testbed.kubectl("get", "nodes", "-o", "wide")
    assert "v1.34.4" in wide and wide.count(" Ready ") == 2

    chart = tmp_path / "hello"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: hello\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    result = testbed.helm("install", "hi", str(chart), "-n", namespace, "--set", "greeting=bonjour", "--wait")
    assert result.returncode == 0, result.stderr
    cm = testbed.get(namespace, "configmap", "hi-greeting")
    assert cm["data"]["greeting"] == "bonjour"
    assert "hi" in testbed.helm("list", "-n", namespace, "-q").stdout.split()


def spare_layout() -> cluster.Layout:
    """A test-bed index nobody on this machine uses (no bridge, no recorded state): bringing up
    a used one would take over its ports and tear down its network."""
    for index in range(11, 0, -1):  # 10.(244 + index) stays a valid address
        layout = cluster.Layout.for_index(index)
        if not Path("/sys/class/net", layout.bridge).exists() and not (layout.state_dir / "state.json").exists():
            return layout
    pytest.fail("every test-bed index is in use")


def test_cluster_down_stops_every_process_it_started(testbed, tmp_path):
    """A second, independent test bed (a spare index) is brought up and torn down with the make targets' script."""
    layout = spare_layout()
    env = {**os.environ, "MODELOPS_TESTBED_INDEX": str(layout.index), "MODELOPS_TESTBED_DIR": str(tmp_path / "bed")}
    binaries = str(Path(testbed.kubectl_path).parent)
    script = [sys.executable, "-m", "e2e.testbed.cluster"]
    try:
        up = subprocess.run([*script, "up", "--binaries", binaries, "--python", sys.executable],
                            env=env, capture_output=True, text=True, timeout=300, cwd=testbed.project_root)
        assert up.returncode == 0, up.stderr
        pids, pod_pids = _start_and_record(testbed, up.stdout, tmp_path)
    finally:
        down = subprocess.run([*script, "down"], env=env, capture_output=True, text=True, timeout=120,
                              cwd=testbed.project_root)
    assert down.returncode == 0, down.stderr
    # Every component and pod process was started as the leader of its own session, so
    # `pgrep -s PID` finds it and anything it spawned. A zombie has exited already (it only
    # waits for this machine's PID 1 to reap it), so it does not count as running.
    for pid in pids + pod_pids:
        found = subprocess.run(["pgrep", "-s", str(pid)], capture_output=True, text=True).stdout.split()
        running = [p for p in found if _process_state(int(p)) not in ("Z", None)]
        assert not running, f"session {pid} still has running processes after cluster down: {running}"
    bridge = subprocess.run(["ip", "link", "show", layout.bridge], capture_output=True)
    assert bridge.returncode != 0, "the second test bed's bridge was removed"


def _start_and_record(testbed, up_stdout: str, tmp_path: Path) -> tuple[list[int], list[int]]:
    """The PIDs the second test bed recorded, after it also runs one pod."""
    state = json.loads((tmp_path / "bed" / "state.json").read_text())
    pids = list(state["pids"].values())
    assert len(pids) == 7, state["pids"]
    kubeconfig = up_stdout.strip().splitlines()[-1]
    kubectl = [testbed.kubectl_path, f"--kubeconfig={kubeconfig}"]
    subprocess.run([*kubectl, "run", "sleeper", f"--image={PROJECT_IMAGE}", "--command", "--",
                    "python", "-c", "import time; time.sleep(3600)"], check=True, capture_output=True)
    subprocess.run([*kubectl, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s"],
                   check=True, capture_output=True)
    pod_pids = [int(p.read_text()) for p in (tmp_path / "bed" / "nodes").glob("*/pods/*/*.pid")]
    assert len(pod_pids) == 1
    return pids, pod_pids


def _process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return None


def _other_checkout(tmp_path: Path) -> Path:
    """A second checkout of the test bed's script (as `make demo` in another worktree runs it)."""
    other = tmp_path / "other-checkout"
    (other / "e2e" / "testbed").mkdir(parents=True)
    (other / "e2e" / "__init__.py").write_text("")
    (other / "e2e" / "testbed" / "__init__.py").write_text("")
    for module in Path(cluster.__file__).parent.glob("*.py"):
        (other / "e2e" / "testbed" / module.name).write_bytes(module.read_bytes())
    return other


def _cluster_up(testbed, cwd: Path, index: int, state_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELOPS_TESTBED_INDEX": str(index), "MODELOPS_TESTBED_DIR": str(state_dir),
           "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-m", "e2e.testbed.cluster", "up", "--binaries",
                           str(Path(testbed.kubectl_path).parent), "--python", sys.executable],
                          env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def _still_the_same_test_bed(testbed, state_before: dict, namespace: str) -> None:
    state_dir = Path(testbed.state_dir)
    assert json.loads((state_dir / "state.json").read_text())["pids"] == state_before["pids"]
    # The kubeconfig's CA still verifies the API server, and the namespace in use is still there.
    assert testbed.kubectl("get", "namespace", namespace, "-o", "jsonpath={.metadata.name}") == namespace


def test_another_checkout_is_refused_the_index_of_a_running_test_bed(testbed, namespace, tmp_path):
    """`make test` from another checkout beside a running `make demo` test bed: refused, with
    the variable that picks another index, and the running test bed untouched."""
    state_dir = Path(testbed.state_dir)
    before = json.loads((state_dir / "state.json").read_text())
    result = _cluster_up(testbed, _other_checkout(tmp_path), before["index"], state_dir)
    assert result.returncode == 3, result.stderr
    assert "MODELOPS_TESTBED_INDEX" in result.stderr and str(testbed.project_root) in result.stderr
    assert "running for another checkout" in result.stderr
    _still_the_same_test_bed(testbed, before, namespace)


def test_a_second_state_directory_is_refused_the_index_of_a_running_test_bed(testbed, namespace, tmp_path):
    """The same index with another MODELOPS_TESTBED_DIR would take over the bridge and ports."""
    before = json.loads((Path(testbed.state_dir) / "state.json").read_text())
    result = _cluster_up(testbed, Path(testbed.project_root), before["index"], tmp_path / "elsewhere")
    assert result.returncode == 3, result.stderr
    assert "MODELOPS_TESTBED_INDEX" in result.stderr and "records no test bed" in result.stderr
    assert not (tmp_path / "elsewhere" / "state.json").exists()
    _still_the_same_test_bed(testbed, before, namespace)

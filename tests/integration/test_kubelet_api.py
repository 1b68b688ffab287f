"""The test bed answers what users type first: kubectl logs (-f, --previous, --tail), exec and port-forward.

Each goes through the real kubectl and the real apiserver, which reaches the node agent's
kubelet API by the node's InternalIP and port (status.daemonEndpoints) over TLS.
"""

from __future__ import annotations

import hashlib
import select
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from e2e.support import eventually, restricted
from e2e.testbed import cluster
from e2e.tritonlocal import free_ports

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/modelops/modelops-operator:0.1.0"


def pod(name: str, script: str, restart: str = "Never", **extra) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": restricted({
            "restartPolicy": restart, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "command": ["sh", "-c", script],
                            "volumeMounts": [{"name": "work", "mountPath": "/work"}], **extra}],
            "volumes": [{"name": "work", "emptyDir": {}}],
        }),
    }


def commands_with(marker: str) -> list[str]:
    """Command lines of the processes on this machine (the test bed's pods run here) that name `marker`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text and "sleep" in text:
            found.append(text)
    return found


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """One line of a running kubectl's stdout, or fail after `timeout` seconds."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"kubectl printed nothing in {timeout:.0f}s"
    return process.stdout.readline()


def test_nodes_publish_their_kubelet_endpoint_and_refuse_clients_without_a_cluster_certificate(testbed):
    layout = cluster.Layout.from_env()
    nodes = {n["metadata"]["name"]: n for n in testbed.get("default", "nodes")["items"]}
    for spec in layout.nodes:
        status = nodes[spec.name]["status"]
        assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == spec.kubelet_port
        internal = [a["address"] for a in status["addresses"] if a["type"] == "InternalIP"]
        assert internal == [layout.bridge_ip]
        # The serving certificate is the cluster CA's, for the InternalIP; a client with a
        # certificate from that CA gets an answer, a client without one is turned away.
        pki = Path(testbed.state_dir) / "pki"
        assert healthz(layout.bridge_ip, spec.kubelet_port, pki, client="admin").startswith("HTTP/1.1 200")
        try:
            answer = healthz(layout.bridge_ip, spec.kubelet_port, pki, client=None)
        except (ssl.SSLError, ConnectionError):
            answer = ""
        assert answer == "", f"the kubelet API answered a client without a certificate: {answer!r}"


def healthz(host: str, port: int, pki: Path, client: str | None) -> str:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client:
        context.load_cert_chain(str(pki / f"{client}.crt"), str(pki / f"{client}.key"))
    with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        return tls.recv(100).decode()


def test_kubectl_logs_of_a_job_with_tail_and_limit(testbed, namespace):
    spec = pod("x", "for i in 1 2 3 4; do echo line-$i; done; echo oops >&2")["spec"]
    spec["initContainers"] = [{"name": "prepare", "image": IMAGE, "command": ["sh", "-c", "echo prepared"]}]
    testbed.apply(namespace, [{
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "digits-v1-compress"},
        "spec": {"backoffLimit": 0, "template": {"spec": restricted(spec)}},
    }])
    testbed.kubectl("wait", "--for=condition=Complete", "job/digits-v1-compress", "-n", namespace, "--timeout=90s")
    # As the README's troubleshooting section says to look at a compression Job.
    assert testbed.kubectl("logs", "job/digits-v1-compress", "-n", namespace) == "line-1\nline-2\nline-3\nline-4\noops\n"
    assert testbed.kubectl("logs", "job/digits-v1-compress", "-n", namespace, "--tail=2") == "line-4\noops\n"
    assert testbed.kubectl("logs", "job/digits-v1-compress", "-n", namespace, "--limit-bytes=6") == "line-1"
    # An init container's output, as for the Triton pods' model fetcher (`-c fetch`).
    assert testbed.kubectl("logs", "job/digits-v1-compress", "-n", namespace, "-c", "prepare") == "prepared\n"
    missing = testbed.run_kubectl("logs", "job/digits-v1-compress", "-n", namespace, "--previous", check=False)
    assert missing.returncode != 0 and "previous terminated container" in missing.stderr


def test_kubectl_logs_follow_streams_until_the_container_exits_and_exec_feeds_stdin(testbed, namespace):
    testbed.apply(namespace, [pod("follow", "echo waiting; while [ ! -e /work/go ]; do sleep 0.1; done; cat /work/go; echo bye")])
    testbed.kubectl("wait", "--for=condition=Ready", "pod/follow", "-n", namespace, "--timeout=90s")
    follower = subprocess.Popen(
        [testbed.kubectl_path, f"--kubeconfig={testbed.kubeconfig}", "logs", "-f", "pod/follow", "-n", namespace],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The first line arrives while the container still runs: the log is streamed, not read at the end.
        assert read_line(follower, 60) == "waiting\n"
        assert follower.poll() is None
        # kubectl exec with stdin: the command runs in the container's mount namespace (its emptyDir at /work).
        result = testbed.run_kubectl("exec", "-i", "follow", "-n", namespace, "--", "sh", "-c", "cat > /work/go",
                                     input="from stdin\n")
        assert result.returncode == 0, result.stderr
        out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    assert out == "from stdin\nbye\n"


def test_kubectl_exec_runs_in_the_container_and_returns_its_exit_code(testbed, namespace):
    # Ready once the marker is written: without a readiness probe it would be Ready as soon as
    # the shell started, perhaps before it wrote the marker.
    testbed.apply(namespace, [pod("shell", "echo inside > /work/marker; exec sleep 3600",
                                  env=[{"name": "GREETING", "value": "hello from the pod"}],
                                  readinessProbe={"exec": {"command": ["test", "-s", "/work/marker"]}, "periodSeconds": 1})])
    testbed.kubectl("wait", "--for=condition=Ready", "pod/shell", "-n", namespace, "--timeout=90s")
    script = 'hostname; echo "$GREETING"; cat /work/marker; echo to-stderr >&2; exit 3'
    result = testbed.run_kubectl("exec", "shell", "-c", "main", "-n", namespace, "--", "sh", "-c", script, check=False)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "shell\nhello from the pod\ninside\n"
    assert "to-stderr" in result.stderr
    assert testbed.kubectl("exec", "shell", "-n", namespace, "--", "true") == ""

    # An interrupted kubectl exec takes its command with it.
    marker = f"{namespace}-interrupted"
    running = subprocess.Popen(
        [testbed.kubectl_path, f"--kubeconfig={testbed.kubeconfig}", "exec", "shell", "-n", namespace, "--",
         "sh", "-c", f"echo started; sleep 3600; : {marker}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(running, 60) == "started\n"
        assert commands_with(marker), "the exec'd command runs as a process on the node"
    finally:
        running.kill()
        running.communicate(timeout=30)
    eventually(lambda: not commands_with(marker), 30, "the exec'd command to stop with its kubectl")


def test_kubectl_logs_previous_shows_the_instance_before_a_restart(testbed, namespace):
    script = "if [ -e /work/ran ]; then echo second run; exec sleep 3600; fi; touch /work/ran; echo first run; exit 1"
    testbed.apply(namespace, [pod("crashy", script, restart="Always")])
    testbed.kubectl("wait", "--for=jsonpath={.status.containerStatuses[0].restartCount}=1", "pod/crashy",
                    "-n", namespace, "--timeout=90s")
    testbed.kubectl("wait", "--for=condition=Ready", "pod/crashy", "-n", namespace, "--timeout=90s")
    assert testbed.kubectl("logs", "crashy", "-n", namespace, "--previous") == "first run\n"
    assert testbed.kubectl("logs", "crashy", "-n", namespace) == "second run\n"


def test_kubectl_port_forward_to_a_service_reaches_a_server_on_the_pods_localhost(testbed, namespace):
    # The server listens on 127.0.0.1 only: just port-forward (inside the pod's network namespace) reaches it.
    # GET answers the pod's hostname; POST reads the whole body and answers its length and sha256,
    # so a large request proves every byte crossed the forward (and the server never closes early).
    server = ("mkdir -p /work/srv && cat > /work/srv/server.py <<'PY'\n"
              "import hashlib, http.server, socket\n"
              "class Handler(http.server.BaseHTTPRequestHandler):\n"
              "    def answer(self, body):\n"
              "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
              "        self.wfile.write(body)\n"
              "    def do_GET(self):\n"
              "        self.answer((socket.gethostname() + '\\n').encode())\n"
              "    def do_POST(self):\n"
              "        data = self.rfile.read(int(self.headers['Content-Length']))\n"
              "        self.answer(f'{len(data)} {hashlib.sha256(data).hexdigest()}'.encode())\n"
              "http.server.ThreadingHTTPServer(('127.0.0.1', 8080), Handler).serve_forever()\n"
              "PY\n"
              "exec python /work/srv/server.py")
    probe = ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/', timeout=1)"]
    testbed.apply(namespace, [
        pod("web", server, restart="Always", ports=[{"name": "http", "containerPort": 8080}],
            readinessProbe={"exec": {"command": probe}, "periodSeconds": 1}),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]}},
    ])
    testbed.kubectl("wait", "--for=condition=Ready", "pod/web", "-n", namespace, "--timeout=90s")
    (local,) = free_ports(1)
    # As the README shows: kubectl port-forward svc/<mdep> 8000 (here on a free local port).
    forward = subprocess.Popen(
        [testbed.kubectl_path, f"--kubeconfig={testbed.kubeconfig}", "port-forward", "svc/web", f"{local}:8000",
         "-n", namespace], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(forward, 60).startswith(f"Forwarding from 127.0.0.1:{local} -> 8080")
        for _ in range(3):  # each request is a connection of its own, each a new pair of streams
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as response:
                assert response.read().decode() == "web\n"
        payload = b"x" * 300_000
        request = urllib.request.Request(f"http://127.0.0.1:{local}/upload", data=payload, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.read().decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
        assert forward.poll() is None, forward.stderr.read() if forward.stderr else ""
    finally:
        forward.terminate()
        forward.communicate(timeout=10)

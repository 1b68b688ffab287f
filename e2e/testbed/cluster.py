"""Bring the local test bed up and down: a real Kubernetes control plane, MinIO and two nodes.

    python -m e2e.testbed.cluster up      # prints the admin kubeconfig path
    python -m e2e.testbed.cluster down    # stops every process it started
    python -m e2e.testbed.cluster status  # prints the state file as JSON

The control plane is upstream etcd, kube-apiserver, kube-controller-manager and
kube-scheduler built by build.sh. Pods are run by our node agent (e2e/nodeagent) as
local processes, each in its own network namespace attached to one bridge, so every
pod has its own IP. The apiserver and MinIO listen on the bridge address, which both
the host and the pods can reach.

Only the standard library and the openssl command are used here, so this runs before
the project's Python environment exists.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from e2e.testbed import netpol

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops"))
SERVICE_CIDR = "10.96.0.0/16"
KUBE_VERSION = "v1.34.4"
POD_NETWORK_PREFIX = 16


@dataclass(frozen=True)
class NodeSpec:
    name: str
    pod_cidr: str
    gpus: int
    kubelet_port: int = 0


@dataclass(frozen=True)
class Layout:
    """Names, addresses and ports of one test bed. Index 0 is the default; another index
    gives a second test bed that can run beside it (used to test teardown)."""

    index: int
    state_dir: Path
    bridge: str
    bridge_ip: str
    netns_prefix: str
    apiserver_port: int
    etcd_client_port: int
    etcd_peer_port: int
    minio_port: int
    controller_manager_port: int
    scheduler_port: int
    nodes: tuple[NodeSpec, ...]

    @classmethod
    def for_index(cls, index: int, state_dir: Path | None = None) -> Layout:
        net = f"10.{244 + index}"
        return cls(
            index=index,
            state_dir=state_dir or CACHE / ("testbed" if index == 0 else f"testbed-{index}"),
            bridge=f"mobr{index}",
            bridge_ip=f"{net}.0.1",
            netns_prefix=f"mo{index}-",
            apiserver_port=6443 + index,
            etcd_client_port=23790 + 10 * index,
            etcd_peer_port=23795 + 10 * index,
            minio_port=9000 + 10 * index,
            controller_manager_port=10257 + 10 * index,
            scheduler_port=10259 + 10 * index,
            nodes=(
                # Both nodes share the bridge IP; each serves its kubelet API on a port of its own.
                NodeSpec("testbed-cpu", f"{net}.1.0/24", gpus=0, kubelet_port=10250 + 10 * index),
                NodeSpec("testbed-gpu", f"{net}.2.0/24", gpus=2, kubelet_port=10251 + 10 * index),
            ),
        )

    @classmethod
    def from_env(cls) -> Layout:
        state_dir = os.environ.get("MODELOPS_TESTBED_DIR")
        return cls.for_index(int(os.environ.get("MODELOPS_TESTBED_INDEX", "0")), Path(state_dir) if state_dir else None)


AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  # Metadata for every request: enough to count reads and writes per user and verb.
  - level: Metadata
"""


def log(message: str) -> None:
    print(f"[testbed] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- state


def state_file(lay: Layout) -> Path:
    return lay.state_dir / "state.json"


def read_state(lay: Layout) -> dict | None:
    try:
        return json.loads(state_file(lay).read_text())
    except FileNotFoundError:
        return None


def write_state(lay: Layout, state: dict) -> None:
    tmp = state_file(lay).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.chmod(0o600)
    tmp.replace(state_file(lay))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; it only waits for its parent to reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# --------------------------------------------------------------------------- PKI


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_key(path: Path) -> None:
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
    path.chmod(0o600)


def make_cert(pki: Path, name: str, subject: str, sans: list[str] | None = None, server: bool = False) -> None:
    """Issue pki/<name>.crt signed by pki/ca.crt for the given subject."""
    key, csr, crt, ext = (pki / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    make_key(key)
    openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    usage = "serverAuth" if server else "clientAuth"
    lines = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
        "-CAcreateserial", "-days", "365", "-sha256", "-extfile", str(ext), "-out", str(crt),
    )
    csr.unlink()
    ext.unlink()


def make_pki(lay: Layout, pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    make_key(pki / "ca.key")
    openssl(
        "req", "-x509", "-new", "-key", str(pki / "ca.key"), "-subj", "/CN=modelops-testbed-ca",
        "-days", "365", "-sha256", "-out", str(pki / "ca.crt"),
    )
    sans = [
        f"IP:{lay.bridge_ip}", "IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes",
        "DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
    ]
    make_cert(pki, "apiserver", "/CN=kube-apiserver", sans, server=True)
    # MinIO serves HTTPS with a certificate from the same CA, so that every namespace's
    # kube-root-ca.crt ConfigMap verifies it (a Model's storage.caBundle names that).
    make_cert(pki, "minio", "/CN=minio", [f"IP:{lay.bridge_ip}", "IP:127.0.0.1", "DNS:localhost"], server=True)
    certs = pki / "minio-certs"
    (certs / "CAs").mkdir(parents=True, exist_ok=True)
    shutil.copy(pki / "minio.crt", certs / "public.crt")
    shutil.copy(pki / "minio.key", certs / "private.key")
    shutil.copy(pki / "ca.crt", certs / "CAs" / "ca.crt")
    make_cert(pki, "admin", "/O=system:masters/CN=modelops-testbed-admin")
    make_cert(pki, "controller-manager", "/CN=system:kube-controller-manager")
    make_cert(pki, "scheduler", "/CN=system:kube-scheduler")
    for node in lay.nodes:
        make_cert(pki, f"node-{node.name}", f"/O=system:nodes/CN=system:node:{node.name}")
        # The node's kubelet API serves on the node's InternalIP (the bridge address).
        make_cert(pki, f"kubelet-{node.name}", f"/CN={node.name}", [f"IP:{lay.bridge_ip}", f"DNS:{node.name}"],
                  server=True)
    # The apiserver's identity towards the kubelets (logs, exec, port-forward).
    make_cert(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    # Service account tokens are signed with an RSA key, as kube-apiserver expects by default.
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    (pki / "sa.key").chmod(0o600)
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def write_kubeconfig(lay: Layout, path: Path, pki: Path, user: str, cert: str) -> None:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: modelops-testbed
  cluster:
    server: https://{lay.bridge_ip}:{lay.apiserver_port}
    certificate-authority: {pki / 'ca.crt'}
contexts:
- name: {user}@modelops-testbed
  context:
    cluster: modelops-testbed
    user: {user}
current-context: {user}@modelops-testbed
users:
- name: {user}
  user:
    client-certificate: {pki / (cert + '.crt')}
    client-key: {pki / (cert + '.key')}
"""
    )
    path.chmod(0o600)


# --------------------------------------------------------------------------- network


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def network_up(lay: Layout) -> None:
    if ip("link", "show", lay.bridge, check=False).returncode != 0:
        ip("link", "add", lay.bridge, "type", "bridge")
    ip("addr", "replace", f"{lay.bridge_ip}/{POD_NETWORK_PREFIX}", "dev", lay.bridge)
    ip("link", "set", lay.bridge, "up")


def network_down(lay: Layout) -> None:
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(lay.netns_prefix):
            ip("netns", "del", name, check=False)
    ip("link", "del", lay.bridge, check=False)


# --------------------------------------------------------------------------- processes


def start_process(lay: Layout, state: dict, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start one component in its own session, and record its PID at once."""
    logs = lay.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True, cwd=lay.state_dir,
        )
    state["pids"][name] = proc.pid
    # Kept so that a fault test can stop a component and start it again as it was.
    state.setdefault("commands", {})[name] = {"argv": argv, "env": env or {}}
    write_state(lay, state)
    return proc.pid


def wait_until(lay: Layout, what: str, check, timeout: float, pids: dict[str, int]) -> None:
    """Poll a readiness check with a deadline; fail fast if a component has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        dead = [n for n, p in pids.items() if not pid_alive(p)]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}; see {lay.state_dir / 'logs'}")
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; see {lay.state_dir / 'logs'}")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def https_ok(url: str, pki: Path, client: str) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / f"{client}.crt"), str(pki / f"{client}.key"))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def kill_pids(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM each process group, then SIGKILL what is left after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if pid_alive(pid):
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.1)


def pod_pids(lay: Layout) -> list[int]:
    """PIDs of pod processes that node agents recorded (they outlive an agent killed with -9)."""
    pids = []
    for pidfile in (lay.state_dir / "nodes").glob("*/pods/*/*.pid"):
        try:
            pids.append(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def unmount_under(root: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(root))), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


# --------------------------------------------------------------------------- MinIO outages


def start_minio_process(lay: Layout, state: dict) -> None:
    start_process(lay, state, "minio", [
        str(Path(state["binaries"]) / "minio"), "server", "--quiet", f"--address={lay.bridge_ip}:{lay.minio_port}",
        "--console-address=127.0.0.1:0", f"--certs-dir={Path(state['pki']) / 'minio-certs'}", str(lay.state_dir / "minio"),
    ], env={"MINIO_ROOT_USER": state["s3_access_key"], "MINIO_ROOT_PASSWORD": state["s3_secret_key"],
            # Public metrics: tests count MinIO's GETs (a warm start from the node cache makes none).
            "MINIO_BROWSER": "off", "MINIO_PROMETHEUS_AUTH_TYPE": "public"})


# Components a fault test may stop and start again, and how to tell that one is serving.
RESTARTABLE = ("etcd", "kube-apiserver", "minio")


def _serving(lay: Layout, state: dict, name: str) -> bool:
    if name == "etcd":
        return port_open("127.0.0.1", lay.etcd_client_port)
    if name == "kube-apiserver":
        return https_ok(f"{state['apiserver_url']}/readyz", Path(state["pki"]), "admin")
    return port_open(lay.bridge_ip, lay.minio_port)


def stop_component(lay: Layout, name: str) -> None:
    """Kill one component (as an outage would: SIGKILL); its data stays on disk."""
    if name not in RESTARTABLE:
        raise ValueError(f"{name}: only {', '.join(RESTARTABLE)} can be stopped and started")
    with open(lay.state_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state(lay)
        kill_pids([state["pids"][name]], grace=0)


def start_component(lay: Layout, name: str, timeout: float = 120) -> None:
    """Start a stopped component again with the same command, and wait until it serves."""
    with open(lay.state_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state(lay)
        if not pid_alive(state["pids"][name]):
            command = state["commands"][name]
            start_process(lay, state, name, command["argv"], command["env"])
        wait_until(lay, name, lambda: _serving(lay, state, name), timeout, {name: state["pids"][name]})


def stop_minio(lay: Layout) -> None:
    """Kill MinIO (as an outage would); its data stays on disk for start_minio."""
    stop_component(lay, "minio")


def start_minio(lay: Layout, timeout: float = 60) -> None:
    """Start MinIO again with the same data and credentials, and wait until it listens."""
    start_component(lay, "minio", timeout)


# --------------------------------------------------------------------------- up / down


# How long a test bed whose processes all run may take to answer /readyz before it counts as
# unhealthy (and is replaced): on a loaded machine one slow answer must not tear down a test
# bed that `make demo` is using.
READY_PATIENCE_S = 30.0


def healthy(state: dict, patience: float = READY_PATIENCE_S) -> bool:
    if state.get("project_root") != str(REPO_ROOT):
        return False
    if not all(pid_alive(pid) for pid in state["pids"].values()):
        return False
    deadline = time.monotonic() + patience
    while True:
        if https_ok(f"{state['apiserver_url']}/readyz", Path(state["pki"]), "admin"):
            return True
        if time.monotonic() >= deadline or not all(pid_alive(pid) for pid in state["pids"].values()):
            return False
        time.sleep(1)


class IndexInUse(RuntimeError):
    """The index's test bed runs for someone else: replacing it would pull it from under them."""


def refuse_foreign(lay: Layout, state: dict | None) -> None:
    """Raise IndexInUse where bringing up this index would replace a test bed that another
    checkout runs (its processes still live) or that another state directory runs (the bridge
    exists and its API server answers, with no state recorded here)."""
    hint = ("set MODELOPS_TESTBED_INDEX to another index (0 to 11) for this checkout, "
            "or stop that test bed first (`make cluster-down` there)")
    if state and state.get("project_root") != str(REPO_ROOT):
        running = sorted(name for name, pid in state["pids"].items() if pid_alive(pid))
        if running:
            raise IndexInUse(
                f"test bed index {lay.index} ({lay.state_dir}) is running for another checkout, "
                f"{state.get('project_root')} ({', '.join(running)}); {hint}")
    if state is None and Path("/sys/class/net", lay.bridge).exists() and port_open(lay.bridge_ip, lay.apiserver_port):
        raise IndexInUse(
            f"test bed index {lay.index}: bridge {lay.bridge} exists and an API server answers on "
            f"{lay.bridge_ip}:{lay.apiserver_port}, but {lay.state_dir} records no test bed (another "
            f"MODELOPS_TESTBED_DIR runs this index); {hint}")


def up(lay: Layout, binaries: Path, python: Path) -> dict:
    lay.state_dir.mkdir(parents=True, exist_ok=True)
    with open(lay.state_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state(lay)
        if state and healthy(state):
            log(f"reusing the running test bed ({state['kubeconfig']})")
            return state
        refuse_foreign(lay, state)
        if state:
            log("the recorded test bed is not healthy; replacing it")
        _down_locked(lay)
        try:
            return _up_locked(lay, binaries, python)
        except BaseException:
            log("bring-up failed; stopping what was started")
            _down_locked(lay)
            raise


def _up_locked(lay: Layout, binaries: Path, python: Path) -> dict:
    started = time.monotonic()
    for sub in ("pki", "etcd", "minio", "logs", "nodes", "audit"):
        shutil.rmtree(lay.state_dir / sub, ignore_errors=True)
    pki = lay.state_dir / "pki"
    make_pki(lay, pki)
    kubeconfigs = {}
    for user, cert in [("admin", "admin"), ("controller-manager", "controller-manager"), ("scheduler", "scheduler")]:
        kubeconfigs[user] = lay.state_dir / f"{user}.kubeconfig"
        write_kubeconfig(lay, kubeconfigs[user], pki, user, cert)
    for node in lay.nodes:
        kubeconfigs[node.name] = lay.state_dir / f"node-{node.name}.kubeconfig"
        write_kubeconfig(lay, kubeconfigs[node.name], pki, f"system:node:{node.name}", f"node-{node.name}")
    (lay.state_dir / "audit").mkdir()
    audit_policy = lay.state_dir / "audit-policy.yaml"
    audit_policy.write_text(AUDIT_POLICY)
    audit_log = lay.state_dir / "audit" / "audit.log"
    s3_access_key = "testbed-" + secrets.token_hex(4)
    s3_secret_key = secrets.token_urlsafe(24)
    network_up(lay)

    pids: dict[str, int] = {}
    state = {
        "project_root": str(REPO_ROOT),
        "state_dir": str(lay.state_dir),
        "binaries": str(binaries),
        "python": str(python),
        "pki": str(pki),
        "kubeconfig": str(kubeconfigs["admin"]),
        "kubectl": str(binaries / "kubectl"),
        "helm": str(binaries / "helm"),
        "apiserver_url": f"https://{lay.bridge_ip}:{lay.apiserver_port}",
        "audit_log": str(audit_log),
        "s3_endpoint": f"https://{lay.bridge_ip}:{lay.minio_port}",
        "s3_ca": str(pki / "ca.crt"),
        "s3_access_key": s3_access_key,
        "s3_secret_key": s3_secret_key,
        "bridge_ip": lay.bridge_ip,
        "index": lay.index,
        "netns_prefix": lay.netns_prefix,
        "nodes": [node.__dict__ for node in lay.nodes],
        "kubernetes_version": KUBE_VERSION,
        "pids": pids,
    }

    write_state(lay, state)
    log("starting etcd")
    etcd_url = f"http://127.0.0.1:{lay.etcd_client_port}"
    start_process(lay, state, "etcd", [
        str(binaries / "etcd"), "--name=testbed", f"--data-dir={lay.state_dir / 'etcd'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{lay.etcd_peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{lay.etcd_peer_port}",
        f"--initial-cluster=testbed=http://127.0.0.1:{lay.etcd_peer_port}",
        "--listen-metrics-urls=", "--log-level=warn",
        # A throwaway test cluster: durability is not worth an fsync per write on a shared disk.
        "--unsafe-no-fsync",
    ])
    log("starting MinIO")
    start_minio_process(lay, state)
    wait_until(lay, "etcd", lambda: port_open("127.0.0.1", lay.etcd_client_port), 30, pids)

    log(f"starting kube-apiserver {KUBE_VERSION}")
    start_process(lay, state, "kube-apiserver", [
        str(binaries / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={lay.bridge_ip}", f"--advertise-address={lay.bridge_ip}", f"--secure-port={lay.apiserver_port}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        # Nodes are reached by their InternalIP, with a verified kubelet certificate.
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--audit-policy-file={audit_policy}", f"--audit-log-path={audit_log}",
        "--audit-log-maxsize=200", "--audit-log-maxbackup=3", "--audit-log-mode=batch",
        "--audit-log-batch-max-wait=1s",
        "--allow-privileged=true", "--profiling=false", "--v=1",
    ])
    wait_until(lay,
        "kube-apiserver /readyz", lambda: https_ok(f"{state['apiserver_url']}/readyz", pki, "admin"), 120, pids
    )

    log("starting kube-controller-manager and kube-scheduler")
    start_process(lay, state, "kube-controller-manager", [
        str(binaries / "kube-controller-manager"),
        f"--kubeconfig={kubeconfigs['controller-manager']}",
        f"--authentication-kubeconfig={kubeconfigs['controller-manager']}",
        f"--authorization-kubeconfig={kubeconfigs['controller-manager']}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
        "--use-service-account-credentials=true", "--leader-elect=false",
        # The upstream default of 20 requests per second per controller caps the Deployment
        # controller at about 6 Deployments a second (it writes a ReplicaSet and 2 to 3 status
        # updates each), which the scale benchmark's 1,000 Deployments would wait on; large
        # clusters raise it the same way.
        "--kube-api-qps=200", "--kube-api-burst=400", "--concurrent-deployment-syncs=16", "--concurrent-replicaset-syncs=16",
        "--bind-address=127.0.0.1", f"--secure-port={lay.controller_manager_port}", "--profiling=false", "--v=1",
    ])
    start_process(lay, state, "kube-scheduler", [
        str(binaries / "kube-scheduler"),
        f"--kubeconfig={kubeconfigs['scheduler']}",
        f"--authentication-kubeconfig={kubeconfigs['scheduler']}",
        f"--authorization-kubeconfig={kubeconfigs['scheduler']}",
        "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={lay.scheduler_port}", "--profiling=false", "--v=1",
    ])
    wait_until(lay, "MinIO", lambda: port_open(lay.bridge_ip, lay.minio_port), 60, pids)

    for node in lay.nodes:
        log(f"starting node agent {node.name}")
        pids[f"node-{node.name}"] = start_process(lay, state, f"node-{node.name}", [
            str(python), "-m", "e2e.nodeagent",
            f"--node-name={node.name}", f"--kubeconfig={kubeconfigs[node.name]}",
            f"--pod-cidr={node.pod_cidr}", f"--gpus={node.gpus}",
            f"--state-dir={lay.state_dir / 'nodes' / node.name}",
            f"--bridge={lay.bridge}", f"--gateway={lay.bridge_ip}", f"--prefix={POD_NETWORK_PREFIX}",
            f"--netns-prefix={lay.netns_prefix}",
            f"--apiserver-host={lay.bridge_ip}", f"--apiserver-port={lay.apiserver_port}",
            f"--project-root={REPO_ROOT}", f"--project-python={python}",
            f"--kubernetes-version={KUBE_VERSION}",
            f"--kubelet-port={node.kubelet_port}", f"--client-ca={pki / 'ca.crt'}",
            f"--kubelet-cert={pki / f'kubelet-{node.name}.crt'}", f"--kubelet-key={pki / f'kubelet-{node.name}.key'}",
        ], env={"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'operator'}"})
    write_state(lay, state)

    kubectl = [str(binaries / "kubectl"), f"--kubeconfig={kubeconfigs['admin']}"]

    def nodes_ready() -> bool:
        out = subprocess.run(
            kubectl + ["get", "nodes", "-o",
                       "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=='Ready')].status} {end}"],
            capture_output=True, text=True,
        ).stdout.split()
        return sorted(out) == sorted(f"{n.name}=True" for n in lay.nodes)

    wait_until(lay, "both nodes Ready", nodes_ready, 60, pids)

    def default_service_account() -> bool:
        return subprocess.run(kubectl + ["get", "serviceaccount", "default", "-n", "default"],
                               capture_output=True).returncode == 0

    wait_until(lay, "the default service account", default_service_account, 60, pids)
    log(f"up in {time.monotonic() - started:.1f}s")
    return state


def down(lay: Layout) -> None:
    if not lay.state_dir.exists():
        return
    with open(lay.state_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _down_locked(lay)


def _down_locked(lay: Layout) -> None:
    state = read_state(lay) or {"pids": {}}
    components = list(state["pids"].values())
    # Node agents first, so that they stop their pods; then whatever pods are left;
    # then the control plane and storage.
    agents = [pid for name, pid in state["pids"].items() if name.startswith("node-")]
    kill_pids(agents)
    kill_pids(pod_pids(lay), grace=5)
    netpol.stop_recorded(lay.state_dir)  # a policy engine a test left running
    kill_pids(components)
    leftover = [pid for pid in components + pod_pids(lay) if pid_alive(pid)]
    unmount_under(lay.state_dir)
    network_down(lay)
    if state_file(lay).exists():
        state_file(lay).unlink()
    if leftover:
        raise RuntimeError(f"processes still running after teardown: {leftover}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--binaries", type=Path, help="directory from build.sh (for up)")
    parser.add_argument("--python", type=Path, help="the project's Python environment interpreter (for up)")
    args = parser.parse_args(argv)
    lay = Layout.from_env()
    if args.command == "up":
        if not args.binaries or not args.python:
            parser.error("up needs --binaries and --python")
        try:
            state = up(lay, args.binaries.resolve(), args.python)
        except IndexInUse as err:
            log(f"refusing to bring up: {err}")
            return 3
        print(state["kubeconfig"])
    elif args.command == "down":
        down(lay)
        log("down: no test bed process is running")
    else:
        state = read_state(lay)
        if state is None:
            log("no test bed is recorded")
            return 1
        redacted = {k: ("<redacted>" if k == "s3_secret_key" else v) for k, v in state.items()}
        print(json.dumps(redacted, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

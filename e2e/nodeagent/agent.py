"""The node agent: registers a Node, keeps its lease alive, and runs the pods bound to it.

It talks to the apiserver with the node's own identity (system:node:<name>), so the
Node authorizer and the NodeRestriction admission plugin check it as they would check a
kubelet: it may only touch its own Node and the pods, secrets and config maps of pods
bound to it.
"""

from __future__ import annotations

import ipaddress
import logging
import platform
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from . import sandbox
from .lifecycle import Backoff
from .pod import API_TIMEOUT_SECONDS, PodWorker, now_rfc3339

log = logging.getLogger("nodeagent")

LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10
STATUS_REPORT_SECONDS = 60
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    kubeconfig: Path
    pod_cidr: str
    gpus: int
    state_dir: Path
    network: sandbox.Network
    netns_prefix: str
    apiserver_host: str
    apiserver_port: int
    project_root: Path
    project_python: Path
    kubernetes_version: str
    cpu_capacity: str
    memory_capacity: str
    max_pods: int
    # The kubelet API (logs, exec, port-forward): its port on the node IP and its TLS files; 0: not served.
    kubelet_port: int = 0
    kubelet_cert: Path | None = None
    kubelet_key: Path | None = None
    client_ca: Path | None = None
    # CrashLoopBackOff: the kubelet's 10 s doubling to 300 s, reset after 10 minutes of running.
    backoff: Backoff = Backoff()


class NodeAgent:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.node_short = cfg.name.rsplit("-", 1)[-1][:6]
        self.state_dir = cfg.state_dir
        self.network = cfg.network
        self.netns_prefix = cfg.netns_prefix
        self.apiserver_host = cfg.apiserver_host
        self.apiserver_port = cfg.apiserver_port
        self.project_root = cfg.project_root
        self.project_python = cfg.project_python
        self.host_ip = cfg.network.gateway
        api_client = config.new_client_from_config(config_file=str(cfg.kubeconfig))
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.workers: dict[str, PodWorker] = {}
        self.ips: dict[str, str] = {}
        self.lock = threading.Lock()
        self.shutting_down = False
        self.stopped = threading.Event()
        self._triton_cache = cfg.state_dir / "triton"

    @property
    def backoff(self) -> Backoff:
        return self.cfg.backoff

    # ------------------------------------------------------------------ node

    def _node_object(self) -> client.V1Node:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "modelops-testbed",
        }
        taints = []
        if self.cfg.gpus:
            # As the NVIDIA GPU operator labels and taints GPU nodes.
            labels.update({"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": str(self.cfg.gpus)})
            taints.append(client.V1Taint(key=GPU_RESOURCE, effect="NoSchedule"))
        return client.V1Node(
            metadata=client.V1ObjectMeta(name=self.name, labels=labels),
            spec=client.V1NodeSpec(pod_cidr=self.cfg.pod_cidr, pod_cidrs=[self.cfg.pod_cidr], taints=taints or None),
        )

    def _node_status(self) -> dict:
        capacity = {"cpu": self.cfg.cpu_capacity, "memory": self.cfg.memory_capacity,
                    "pods": str(self.cfg.max_pods), "ephemeral-storage": "50Gi"}
        if self.cfg.gpus:
            capacity[GPU_RESOURCE] = str(self.cfg.gpus)
        heartbeat = now_rfc3339()
        conditions = [
            {"type": kind, "status": "False", "reason": f"KubeletHas{reason}", "message": message,
             "lastHeartbeatTime": heartbeat, "lastTransitionTime": self._started}
            for kind, reason, message in (
                ("MemoryPressure", "SufficientMemory", "node agent has sufficient memory available"),
                ("DiskPressure", "NoDiskPressure", "node agent has no disk pressure"),
                ("PIDPressure", "SufficientPID", "node agent has sufficient PID available"),
            )
        ]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "modelops test bed node agent is posting ready status",
                           "lastHeartbeatTime": heartbeat, "lastTransitionTime": self._started})
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": self.host_ip}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.kubelet_port}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                "bootID": self._boot_id,
                "kernelVersion": platform.release(),
                "osImage": "modelops test bed",
                "containerRuntimeVersion": "modelops-nodeagent://0.1.0",
                "kubeletVersion": self.cfg.kubernetes_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        self._started = now_rfc3339()
        self._boot_id = str(uuid.uuid4())
        try:
            self.core.create_node(self._node_object())
            log.info("registered node %s", self.name)
        except ApiException as err:
            if err.status != 409:
                raise
            log.info("node %s already registered", self.name)
        self.report_node_status()

    def report_node_status(self) -> None:
        self.core.patch_node_status(self.name, {"status": self._node_status()})

    def renew_lease(self) -> None:
        now = datetime.now(UTC)
        try:
            self.coordination.patch_namespaced_lease(
                self.name, "kube-node-lease",
                {"spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS,
                          "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}},
                _content_type="application/merge-patch+json",
            )
        except ApiException as err:
            if err.status != 404:
                raise
            node = self.core.read_node(self.name)
            self.coordination.create_namespaced_lease("kube-node-lease", client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace="kube-node-lease", owner_references=[
                    client.V1OwnerReference(api_version="v1", kind="Node", name=self.name, uid=node.metadata.uid)]),
                spec=client.V1LeaseSpec(holder_identity=self.name, lease_duration_seconds=LEASE_SECONDS, renew_time=now),
            ))

    def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopped.wait(LEASE_RENEW_SECONDS):
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= STATUS_REPORT_SECONDS:
                    self.report_node_status()
                    last_status = time.monotonic()
            except Exception as err:  # noqa: BLE001 - the apiserver may be down; keep trying
                log.warning("heartbeat failed: %s", err)

    # ------------------------------------------------------------------ pods

    def allocate_ip(self, uid: str) -> str:
        with self.lock:
            if uid in self.ips:
                return self.ips[uid]
            used = set(self.ips.values())
            for host in list(ipaddress.ip_network(self.cfg.pod_cidr).hosts())[1:]:
                if str(host) not in used:
                    self.ips[uid] = str(host)
                    return str(host)
        raise sandbox.SandboxError(f"no free pod IP in {self.cfg.pod_cidr}")

    def release_ip(self, uid: str) -> None:
        with self.lock:
            self.ips.pop(uid, None)

    def forget(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    def triton_command(self, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        from e2e.tritonlocal import triton_command

        return triton_command(argv, self._triton_cache)

    def patch_pod_status(self, namespace: str, name: str, status: dict) -> None:
        # A merge patch replaces lists whole, so container statuses never mix old and new.
        self.core.patch_namespaced_pod_status(
            name, namespace, {"status": status}, _content_type="application/merge-patch+json",
            _request_timeout=API_TIMEOUT_SECONDS,
        )

    def delete_pod(self, namespace: str, name: str, uid: str) -> bool:
        """Finish a pod's deletion (grace 0, this pod's uid only). True once it is gone from the
        apiserver (or replaced by another of that name); False if the apiserver did not answer."""
        try:
            self.core.delete_namespaced_pod(
                name, namespace, body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)),
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except ApiException as err:
            if err.status in (404, 409):
                return True
            log.warning("deleting pod %s/%s failed: %s", namespace, name, err)
            return False
        except Exception as err:  # noqa: BLE001 - the apiserver may be down; the caller retries
            log.warning("deleting pod %s/%s failed: %s", namespace, name, err)
            return False
        return True

    def event(self, pod: dict, kind: str, reason: str, message: str) -> None:
        metadata = pod["metadata"]
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{metadata['name']}.", namespace=metadata["namespace"]),
            involved_object=client.V1ObjectReference(
                kind="Pod", namespace=metadata["namespace"], name=metadata["name"], uid=metadata["uid"], api_version="v1"),
            reason=reason, message=message[:1024], type=kind, source=client.V1EventSource(component="kubelet", host=self.name),
            first_timestamp=now, last_timestamp=now, count=1,
        )
        try:
            self.core.create_namespaced_event(metadata["namespace"], event, _request_timeout=API_TIMEOUT_SECONDS)
        except Exception as err:  # noqa: BLE001 - an event lost to an apiserver outage is not retried, as kubelet's
            log.debug("event not recorded: %s", err)

    def handle_pod(self, event_type: str, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is not None and not worker.is_alive():
                # It ended without forgetting its pod: never leave the pod unsupervised.
                log.error("pod %s/%s: its worker had ended; starting another", pod["metadata"]["namespace"],
                          pod["metadata"]["name"])
                del self.workers[uid]
                worker = None
        if event_type == "DELETED":
            if worker:
                worker.request_stop(0, gone=True)
            return
        if pod["metadata"].get("deletionTimestamp"):
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if worker:
                worker.request_stop(float(grace) if grace is not None else None)
            else:
                self.delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], uid)
            return
        if worker is None:
            worker = PodWorker(self, pod)
            with self.lock:
                self.workers[uid] = worker
            worker.start()

    def watch_pods(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self.stopped.is_set():
            try:
                pods = self.core.list_pod_for_all_namespaces(field_selector=selector)
                seen = set()
                for item in pods.items:
                    pod = self.core.api_client.sanitize_for_serialization(item)
                    seen.add(pod["metadata"]["uid"])
                    self.handle_pod("ADDED", pod)
                with self.lock:
                    vanished = [w for uid, w in self.workers.items() if uid not in seen]
                for worker in vanished:
                    worker.request_stop(0, gone=True)
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, field_selector=selector,
                    resource_version=pods.metadata.resource_version, timeout_seconds=300, allow_watch_bookmarks=True,
                )
                for event in stream:
                    if self.stopped.is_set():
                        return
                    if event["type"] in ("BOOKMARK", "ERROR"):
                        continue
                    pod = self.core.api_client.sanitize_for_serialization(event["object"])
                    self.handle_pod(event["type"], pod)
            except ApiException as err:
                if err.status != 410:
                    log.warning("pod watch failed: %s", err)
                    self.stopped.wait(1.0)
            except Exception as err:  # noqa: BLE001 - reconnect after apiserver outages
                log.warning("pod watch interrupted: %s", err)
                self.stopped.wait(1.0)

    # ------------------------------------------------------------------ lifecycle

    def clean_leftovers(self) -> None:
        """Stop processes and sandboxes left by an earlier run of this agent (for example after kill -9)."""
        for pidfile in (self.state_dir / "pods").glob("*/*.pid"):
            try:
                sandbox.signal_group(int(pidfile.read_text()), signal.SIGKILL)
            except ValueError:
                pass
            pidfile.unlink(missing_ok=True)
        for netns in sandbox.list_netns(f"{self.netns_prefix}{self.node_short}-"):
            sandbox.delete_netns(netns)

    def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.clean_leftovers()
        if self.cfg.kubelet_port:
            from .kubelet import KubeletServer

            KubeletServer(self, self.host_ip, self.cfg.kubelet_port, self.cfg.kubelet_cert, self.cfg.kubelet_key,
                          self.cfg.client_ca).start()
        self.register()
        self.renew_lease()
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.watch_pods, name="pod-watch", daemon=True).start()
        self.stopped.wait()

    def shutdown(self, *_args) -> None:
        """Stop every pod's processes and sandbox; leave the pod objects to the apiserver."""
        self.shutting_down = True
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.request_stop(5)
        for worker in workers:
            worker.join(timeout=10)
        self.stopped.set()


def memory_capacity() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1])}Ki"
    return "8Gi"


def install_signal_handlers(agent: NodeAgent) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=agent.shutdown, daemon=True).start())

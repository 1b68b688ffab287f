"""Reconcile at scale: 10 Models, 1,000 ModelVersions and 1,000 ModelDeployments on the real
control plane of the local test bed, with kwok nodes standing in for the GPU capacity.

    MODELOPS_TESTBED_INDEX=<i> python bench/scale_bench.py [--versions 1000 --deployments 1000]

Set-up. The test bed comes up (or is reused); kwok, built from its Go module by build.sh, runs
against it with kwok's own fast stages and manages only the nodes annotated
kwok.x-k8s.io/node=fake. Those nodes carry the GPU labels and taint that the test bed's GPU node
carries (nvidia.com/gpu.present, nvidia.com/gpu count, the nvidia.com/gpu:NoSchedule taint) plus
kwok's own kwok.x-k8s.io/node=fake:NoSchedule taint, so only pods that ask for them land there:
the test bed's node agents watch only pods bound to their own nodes, so they never touch kwok's.
Compression is a cache hit for every ModelVersion: they all name one artifact and recipe,
whose finished compression (artifact and report, as a Job leaves them) is put in MinIO first,
so each version is Ready from the cached report without a Job. One in ten ModelDeployments runs one Triton pod (one GPU) on
a kwok node, which kwok's pod-ready stage makes Ready; the others have replicas 0.

The operator runs as `python -m modelops` (the code of the chart's image) watching one
namespace, as the test bed's admin, told apart in the audit log by its user agent.

Measured, from one run:
- converged: from the first create to every version Ready and every deployment Ready at its
  generation;
- create to first status write, p50 and p99, for objects created at a steady 10 per second;
- the operator's peak RSS and CPU seconds (from /proc);
- the operator's API requests per object by verb (from the apiserver's audit log);
- a full resync with nothing changed: its writes and CPU seconds;
- the memory of the watch-fed cache for these objects (tracemalloc, in this process).

Results go to bench/results/scale.json; each figure is printed beside its target.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from e2e import support
from e2e.support import OperatorProcess, eventually
from tests.integration.conftest import publish_cached

ROOT = support.REPO_ROOT
RESULTS = ROOT / "bench" / "results" / "scale.json"
NAMESPACE = "scale"
GROUP, VERSION = "modelops.dev", "v1alpha1"
KWOK_NODES = 4
KWOK_GPUS = 32  # per node: room for every serving deployment's pod
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
USER_AGENT = "modelops-operator/"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
RESYNC_SECONDS = 120
TARGETS = {"converged_s": 60.0, "p99_first_status_s": 1.0, "peak_rss_mib": 150.0, "resync_writes": 0, "cpu_ms_per_object": 10.0}
# The run of commit f7cfc88 (bench/results/scale.json then): rerun it beside a new one with
# --operator-path <a checkout of f7cfc88>/operator, since absolute times move with the machine.
BEFORE = {"converged_s": 99.9, "requests_per_object": 5.04, "peak_rss_mib": 140.4, "cpu_ms_per_object": 21.2}


def log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


# -- the cluster -----------------------------------------------------------------------------


def api_clients(kubeconfig: str) -> tuple[Any, Any]:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = 16
    api = client.ApiClient(configuration)
    return client.CustomObjectsApi(api), client.CoreV1Api(api)


def start_kwok(testbed: support.Testbed, log_path: Path) -> subprocess.Popen:
    binary = Path(support.binaries()) / "kwok"
    args = [
        str(binary), f"--kubeconfig={testbed.kubeconfig}", "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--config={ROOT / 'e2e/testbed/kwok-stages.yaml'}", "--node-lease-duration-seconds=40",
        "--server-address=", "--cidr=10.250.0.0/16",
    ]
    return subprocess.Popen(args, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def kwok_nodes(testbed: support.Testbed) -> None:
    docs = []
    for i in range(KWOK_NODES):
        docs.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": f"kwok-gpu-{i}", "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": f"kwok-gpu-{i}", "nvidia.com/gpu.present": "true",
                           "nvidia.com/gpu.count": str(KWOK_GPUS)},
            },
            "spec": {"taints": [KWOK_TAINT, {"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": str(KWOK_GPUS)},
                       "capacity": {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": str(KWOK_GPUS)}}
        })
    testbed.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    eventually(lambda: testbed.kubectl("get", "nodes", "-l", "type=kwok", "-o",
                                       "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{' '}{end}").split()
               == ["True"] * KWOK_NODES, 60, "the kwok nodes to be Ready")


def model_doc(name: str, storage: Any) -> dict[str, Any]:
    """The sample Model on the bench's bucket, over HTTPS verified with the test bed's CA."""
    model = yaml.safe_load((ROOT / "config/samples/01-model.yaml").read_text())
    model["metadata"] = {"name": name}
    model["spec"]["storage"] = storage.model_storage("scale-storage")
    model["spec"]["versionDefaults"].pop("evaluation", None)
    return model


def version_doc(model: str, number: int, uri: str, sha: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": f"{model}-v{number}", "namespace": NAMESPACE},
            "spec": {"model": model, "version": number, "artifact": {"uri": uri, "format": "onnx", "sha256": sha}}}


def deployment_doc(model: str, number: int, serving: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": model, "versionPolicy": "Pinned", "version": number, "replicas": 1 if serving else 0,
                            "triton": {"backend": "python"}}
    if serving:
        spec["scheduling"] = {"gpus": 1, "nodeSelector": {"type": "kwok"},
                              "tolerations": [{"key": KWOK_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}]}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": f"{model}-d{number}", "namespace": NAMESPACE},
            "spec": spec}


# -- the operator --------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """The operator's RSS every half second, for the timeline of where its peak comes from."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.halt.wait(0.5):
            try:
                line = next(x for x in Path(f"/proc/{self.pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
            except (OSError, StopIteration):
                return
            self.samples.append((round(time.monotonic() - start, 1), round(int(line.split()[1]) / 1024, 1)))


def component_cpu(testbed: support.Testbed) -> dict[str, float]:
    """CPU seconds so far of each control-plane process (and kwok), from /proc."""
    state = json.loads((Path(testbed.state_dir) / "state.json").read_text())
    cpu = {}
    for name, pid in (state.get("pids") or {}).items():
        if name.startswith("node-") or name == "minio":
            continue
        try:
            cpu[name] = proc_stats(int(pid))[0]
        except OSError:
            continue
    return cpu


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


class Audit:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.offset = 0

    def mark(self) -> None:
        time.sleep(2)
        self.offset = self.path.stat().st_size

    def operator_requests(self) -> list[dict[str, Any]]:
        time.sleep(2)
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            lines = handle.read().splitlines()
        events = [json.loads(line) for line in lines if line.strip()]
        return [e for e in events if e.get("stage") == "ResponseComplete" and str(e.get("userAgent", "")).startswith(USER_AGENT)
                and (e.get("objectRef") or {}).get("namespace") == NAMESPACE]


def by_verb(events: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(e["verb"] for e in events).items()))


def writes_by_verb_and_resource(events: list[dict[str, Any]]) -> dict[str, int]:
    """Write requests counted as "verb resource[/subresource]", e.g. "patch modelversions/status"."""
    def key(event: dict[str, Any]) -> str:
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        return f"{event['verb']} {resource}"

    return dict(sorted(Counter(key(e) for e in events if e["verb"] in WRITE_VERBS).items()))


# -- phases -------------------------------------------------------------------------------------


def create_all(custom: Any, docs: list[dict[str, Any]], threads: int = 8) -> None:
    def create(doc: dict[str, Any]) -> None:
        plural = "modelversions" if doc["kind"] == "ModelVersion" else "modeldeployments"
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, doc)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, docs))


class Convergence:
    """Follows every ModelVersion and ModelDeployment of the namespace with one watch per kind
    (LISTs of 2,000 objects every second would cost the API server a tenth of its CPU here):
    which versions are Ready, which deployments have a status, and which are Ready at their
    generation; and when each first held for all."""

    def __init__(self, custom: Any) -> None:
        self.custom = custom
        self.lock = threading.Lock()
        self.sets: dict[str, set[str]] = {"versions_ready": set(), "deployments_status": set(), "deployments_ready": set()}
        self.marks: dict[str, float] = {}
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._follow, args=(plural,), daemon=True) for plural in ("modelversions", "modeldeployments")]
        for thread in self.threads:
            thread.start()

    def _judge(self, plural: str, obj: dict[str, Any], deleted: bool) -> None:
        name, status = obj["metadata"]["name"], obj.get("status") or {}
        if plural == "modelversions":
            verdicts = {"versions_ready": status.get("phase") == "Ready"}
        else:
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
            verdicts = {"deployments_status": bool(status),
                        "deployments_ready": ready.get("status") == "True" and status.get("observedGeneration") == obj["metadata"]["generation"]}
        with self.lock:
            for key, holds in verdicts.items():
                (self.sets[key].add if holds and not deleted else self.sets[key].discard)(name)

    def _follow(self, plural: str) -> None:
        from kubernetes import watch

        while not self.halt.is_set():
            try:
                for event in watch.Watch().stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, plural,
                                                  timeout_seconds=60):
                    self._judge(plural, event["object"], event["type"] == "DELETED")
            except Exception as err:  # a dropped watch starts again (and lists afresh)
                log(f"watch of {plural} restarts: {type(err).__name__}")

    def converged(self, versions: int, deployments: int) -> bool:
        """Every version Ready and every deployment Ready at its generation."""
        now = time.monotonic()
        with self.lock:
            counts = {key: len(names) for key, names in self.sets.items()}
        if counts["versions_ready"] >= versions:
            self.marks.setdefault("versions_ready", now)
        if counts["deployments_status"] >= deployments:
            self.marks.setdefault("deployments_status", now)
        return counts["versions_ready"] >= versions and counts["deployments_ready"] >= deployments


def first_status_latencies(testbed: support.Testbed, custom: Any, docs: list[dict[str, Any]], rate: float) -> list[float]:
    """Create `docs` at `rate` per second; seconds from each create to its first status write."""
    from kubernetes import watch

    created: dict[str, float] = {}
    first: dict[str, float] = {}
    done = threading.Event()
    names = {d["metadata"]["name"] for d in docs}

    def follow() -> None:
        w = watch.Watch()
        for event in w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, "modelversions", timeout_seconds=300):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if name in names and name not in first and obj.get("status"):
                first[name] = time.monotonic()
                if len(first) == len(names):
                    break
        done.set()

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    time.sleep(1)
    start = time.monotonic()
    for i, doc in enumerate(docs):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        created[doc["metadata"]["name"]] = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelversions", doc)
    done.wait(120)
    return sorted(first[n] - created[n] for n in first)


def cache_memory(testbed: support.Testbed, custom: Any) -> dict[str, Any]:
    """Memory of the watch-fed cache for the objects now in the namespace, against keeping the
    bodies whole (with managedFields), measured with tracemalloc in this process."""
    from modelops import kube as k8s
    from modelops.handlers.informer import Informer

    bodies = [
        (k8s.MODELVERSIONS, custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelversions")["items"]),
        (k8s.MODELDEPLOYMENTS, custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modeldeployments")["items"]),
        (k8s.MODELS, custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "models")["items"]),
    ]
    children = json.loads(testbed.kubectl("get", "deployments,services", "-n", NAMESPACE, "-o", "json"))["items"]
    bodies += [(k8s.DEPLOYMENTS, [c for c in children if c["kind"] == "Deployment"]),
               (k8s.SERVICES, [c for c in children if c["kind"] == "Service"])]
    count = sum(len(items) for _, items in bodies)

    def measure(keep: Any) -> int:
        fresh = copy.deepcopy(bodies)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = keep(fresh)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del kept
        return after - before

    def whole(fresh: Any) -> Any:
        return [copy.deepcopy(items) for _, items in fresh]

    def cached(fresh: Any) -> Any:
        cache = Informer()
        for resource, items in fresh:
            for item in items:
                cache.observe(resource, copy.deepcopy(item))
        return cache

    whole_bytes, cached_bytes = measure(whole), measure(cached)
    return {"objects": count, "whole_bodies_mib": round(whole_bytes / 2**20, 2), "cache_mib": round(cached_bytes / 2**20, 2)}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def report(results: dict[str, Any]) -> None:
    rows = [
        ("converged (s)", results["converged_s"], f"<= {TARGETS['converged_s']:g}", BEFORE["converged_s"]),
        ("  every version Ready (s)", results["versions_ready_s"], "", None),
        ("  every deployment has a status (s)", results["deployments_first_status_s"], "", None),
        ("  Services the API server created per s", results["apiserver_services_per_s"], "", None),
        ("create -> first status p50 (s)", results["first_status_s"]["p50"], "", None),
        ("create -> first status p99 (s)", results["first_status_s"]["p99"], f"<= {TARGETS['p99_first_status_s']:g}", None),
        ("operator peak RSS (MiB)", results["operator"]["peak_rss_mib"], f"<= {TARGETS['peak_rss_mib']:g}", BEFORE["peak_rss_mib"]),
        ("operator CPU during convergence (s)", results["operator"]["converge_cpu_s"], "", None),
        ("operator CPU per object (ms)", results["operator"]["cpu_ms_per_object"], f"<= {TARGETS['cpu_ms_per_object']:g}",
         BEFORE["cpu_ms_per_object"]),
        ("  operator RSS before creates (MiB)", results["operator"]["rss_mib"]["before_creates"], "", None),
        ("  share of the machine's cores busy", results["cpu_s_while_converging"]["machine_busy_share"], "", None),
        ("  least wall time that CPU allows (s)", results["cpu_s_while_converging"]["cpu_floor_s"], "", None),
        ("API requests per object", results["requests_per_object"], "", BEFORE["requests_per_object"]),
        ("no-op resync: writes", results["resync"]["writes"], f"== {TARGETS['resync_writes']}", None),
        ("no-op resync: CPU (s)", results["resync"]["cpu_s"], "", None),
        ("cache memory (MiB)", results["cache"]["cache_mib"], "", None),
    ]
    print(f"{'figure':40} {'measured':>10} {'target':>8} {'before':>8}")
    for name, value, target, before in rows:
        print(f"{name:40} {value:>10} {target:>8} {before if before is not None else '':>8}")
    print("requests per object by verb:", results["requests_per_object_by_verb"])
    print("writes per object by verb and resource:", results["writes_per_object_by_verb_and_resource"])
    print("load average at convergence:", results["load_average_at_converged"])
    print("CPU seconds while converging:", results["cpu_s_while_converging"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--serving-every", type=int, default=10, help="one deployment in N runs a Triton pod on a kwok node")
    parser.add_argument("--latency-objects", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=0, help="MODELOPS_WORKERS for the operator (0: its default)")
    parser.add_argument("--py-spy", default="", help="py-spy binary: profile the operator while it converges")
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON goes")
    parser.add_argument("--operator-path", default="", help="run the operator from this source folder (another checkout's operator/)")
    parser.add_argument("--skip-resync", action="store_true", help="end after convergence and the latency run (for large runs)")
    args = parser.parse_args()
    # A stopped run (timeout, kill) stops its operator too: SIGTERM runs the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache/modelops")) / "bench" / "scale"
    work.mkdir(parents=True, exist_ok=True)

    testbed, _ = support.bring_up()
    support.install_crds(testbed)
    custom, core = api_clients(testbed.kubeconfig)
    kwok = start_kwok(testbed, work / "kwok.log")
    operator: OperatorProcess | None = None
    try:
        kwok_nodes(testbed)
        testbed.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=600)
        testbed.kubectl("create", "namespace", NAMESPACE)
        storage = testbed.storage("scale-bench")
        storage.ensure()
        artifact = Path(support.digits_model().onnx).read_bytes()
        uri, sha = storage.uri("digits/model.onnx"), storage.put("digits/model.onnx", artifact)
        secret = storage.secret("scale-storage")
        models = [model_doc(f"m{i}", storage) for i in range(args.models)]
        publish_cached(storage, models[0], version_doc("m0", 1, uri, sha), artifact)
        testbed.apply(NAMESPACE, [secret, *models])

        env = {"MODELOPS_RESYNC_SECONDS": str(RESYNC_SECONDS), "MODELOPS_RETRY_SECONDS": "2"}
        if args.workers:
            env["MODELOPS_WORKERS"] = str(args.workers)
        if args.operator_path:
            env["PYTHONPATH"] = str(Path(args.operator_path).resolve())
        operator = OperatorProcess(Path(testbed.kubeconfig), NAMESPACE, work / "operator.log", env)
        operator.start()
        assert operator.process is not None
        pid = operator.process.pid

        per_model = args.versions // args.models
        versions = [version_doc(f"m{i}", n, uri, sha) for n in range(1, per_model + 1) for i in range(args.models)]
        deployments = [deployment_doc(f"m{i}", n, serving=(k % args.serving_every == 0))
                       for k, (n, i) in enumerate((n, i) for n in range(1, args.deployments // args.models + 1) for i in range(args.models))]
        audit = Audit(testbed.audit_log)
        audit.mark()
        cpu0, _ = proc_stats(pid)
        sampler = RssSampler(pid)
        sampler.start()
        idle_rss = proc_stats(pid)[1]
        plane0, kwok0 = component_cpu(testbed), proc_stats(kwok.pid)[0]
        log(f"creating {len(versions)} ModelVersions and {len(deployments)} ModelDeployments")
        profiler = None
        if args.py_spy:
            profiler = subprocess.Popen([args.py_spy, "record", "--nonblocking", "--threads", "--idle", "-r", "50", "-f", "raw",
                                         "-o", str(work / "profile.txt"), "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        convergence = Convergence(custom)
        started = time.monotonic()
        create_all(custom, versions + deployments)
        created_s = time.monotonic() - started
        eventually(lambda: convergence.converged(len(versions), len(deployments)), 1800, "convergence", interval=0.2)
        marks = convergence.marks
        converged_s = time.monotonic() - started
        plane1, kwok1 = component_cpu(testbed), proc_stats(kwok.pid)[0]
        converged_rss = proc_stats(pid)[1]
        load_at_converged = os.getloadavg()
        services = core.list_namespaced_service(NAMESPACE).items
        created = sorted(svc.metadata.creation_timestamp for svc in services)
        service_rate = (len(created) - 1) / max(1.0, (created[-1] - created[0]).total_seconds()) if len(created) > 1 else 0.0
        cpu1, _ = proc_stats(pid)
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(60)
            log(f"profile: {work / 'profile.txt'}")
        requests = audit.operator_requests()
        objects = len(versions) + len(deployments)
        log(f"converged in {converged_s:.1f}s (creates took {created_s:.1f}s)")

        log(f"creating {args.latency_objects} ModelVersions at {args.rate:g}/s")
        extra = [version_doc(f"m{i % args.models}", 10_000 + i, uri, sha) for i in range(args.latency_objects)]
        latencies = first_status_latencies(testbed, custom, extra, args.rate)
        eventually(lambda: convergence.converged(len(versions) + len(extra), len(deployments)), 600, "convergence", interval=0.2)

        audit.mark()
        cpu2, _ = proc_stats(pid)
        if not args.skip_resync:
            log("waiting for a full resync with nothing changed")
            base = operator.metric("modelops_reconcile_total", kind="ModelVersion", result="ok")
            eventually(lambda: operator.metric("modelops_reconcile_total", kind="ModelVersion", result="ok") >= base + len(versions) + len(extra),
                       RESYNC_SECONDS + 300, "a resync", interval=1.0)
            eventually(lambda: operator.metric("modelops_queue_depth") == 0, 300, "the resync to finish", interval=0.5)
            time.sleep(2)
        cpu3, rss = proc_stats(pid)
        sampler.halt.set()
        convergence.halt.set()  # its watches end at their next timeout
        cpu_during = {name: round(plane1[name] - plane0.get(name, 0.0), 1) for name in plane1}
        cpu_during["kwok"] = round(kwok1 - kwok0, 1)
        cpu_during["operator"] = round(cpu1 - cpu0, 1)
        resync = audit.operator_requests()
        resync_writes = [e for e in resync if e["verb"] in WRITE_VERBS]

        results = {
            "machine": machine(),
            "setup": {"models": args.models, "versions": len(versions), "deployments": len(deployments),
                      "serving_deployments": sum(1 for d in deployments if d["spec"]["replicas"]), "kwok_nodes": KWOK_NODES,
                      "compression": "cache hits (a finished compression put in MinIO first), no Job", "creates_s": round(created_s, 1),
                      "workers": args.workers or "default", "operator_path": args.operator_path or "operator"},
            "converged_s": round(converged_s, 1),
            "versions_ready_s": round(marks["versions_ready"] - started, 1),
            "deployments_first_status_s": round(marks.get("deployments_status", marks["versions_ready"]) - started, 1),
            "apiserver_services_per_s": round(service_rate, 2),
            "first_status_s": {"objects": len(latencies), "rate_per_s": args.rate,
                               "p50": round(statistics.median(latencies), 3),
                               "p99": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)},
            "operator": {"peak_rss_mib": round(rss, 1), "converge_cpu_s": round(cpu1 - cpu0, 1),
                         "cpu_ms_per_object": round(1000 * (cpu1 - cpu0) / objects, 1), "total_cpu_s": round(cpu3, 1),
                         "rss_mib": {"before_creates": round(idle_rss, 1), "peak_at_s": max(sampler.samples, key=lambda x: x[1])[0],
                                     "at_converged": round(converged_rss, 1), "after_resync": sampler.samples[-1][1]},
                         "rss_timeline_mib": sampler.samples[::4]},
            # Where the machine's cores went while it converged: the operator is one tenant of them.
            "cpu_s_while_converging": {**cpu_during, "wall_s": round(converged_s, 1),
                                       "machine_busy_share": round(sum(cpu_during.values()) / (converged_s * (os.cpu_count() or 1)), 2),
                                       # The least wall time this much CPU allows on this machine's cores.
                                       "cpu_floor_s": round(sum(cpu_during.values()) / (os.cpu_count() or 1), 1)},
            "requests_per_object": round(len(requests) / objects, 2),
            "requests_per_object_by_verb": {verb: round(n / objects, 3) for verb, n in by_verb(requests).items()},
            "writes_per_object_by_verb_and_resource": {key: round(n / objects, 3)
                                                       for key, n in writes_by_verb_and_resource(requests).items()},
            # The machine is shared: its load while the run converged says how far wall times can be trusted.
            "load_average_at_converged": [round(x, 2) for x in load_at_converged],
            "resync": {"skipped": args.skip_resync, "writes": len(resync_writes), "requests": len(resync), "cpu_s": round(cpu3 - cpu2, 1),
                       "write_examples": [f"{e['verb']} {e.get('requestURI')}" for e in resync_writes[:5]]},
            "cache": cache_memory(testbed, custom),
            "targets": TARGETS,
            "before": BEFORE,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        report(results)
        return 0
    finally:
        if operator is not None:
            operator.stop()
        kwok.terminate()
        kwok.wait(30)
        testbed.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
        testbed.kubectl("delete", "nodes", "-l", "type=kwok", "--ignore-not-found", check=False)


if __name__ == "__main__":
    sys.exit(main())

"""`make bench-large`: a model above 2 GiB through the real operator, end to end.

    scripts/run-tests.sh -s -p no:cacheprovider bench/large_bench.py     (what make bench-large runs)

The model is the BERT-shaped encoder of models/transformer.py at the "large" preset (hidden
2,048, 16 heads, FFN 8,192, 21 layers, the 30,522-token table; 4.2 GiB of fp32), written with
its weights as ONNX external data by `export_external` (seed 0, nothing downloaded). On the
test bed, with the node-local cache on and its agent for the CPU node:

1. the disk's write limit (2 GiB written and fsynced) and MinIO's read limit (the data file
   read with 8 ranged GETs in flight, into memory), measured in this run;
2. the model uploaded; versions 1 (fp32, `quantization: none`), 2 (int8-weight-only) and 3
   (int4-weight-only), each compressed by its Job and gated (cosine similarity ≥ 0.9 on 8
   samples of 32 tokens), with each step's time from `status.timings`;
3. the compressor's peak RSS (VmHWM of a child running the Job's compress_onnx) against the
   model and its largest tensor, for int8 and int4;
4. version 1 (fp32, 4.2 GiB) served by Triton's python backend: the first pod (cold: the agent
   fills the cache from MinIO while the pod's fetch waits), a second replica on the same node
   (warm: linked from the cache), and a pod started after the agent was restarted; each pod's
   schedule, fetch and load seconds from the rollout's pod timestamps, its answers checked
   against onnxruntime on the same files;
5. the fill's throughput against the two limits.

Results: bench/results/large.json; docs/benchmarks.md has the summary. Not a test: it is not in
`make test`'s paths, and it asserts only what must hold for its figures to mean anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from e2e import lifecycle as lc
from e2e import support
from e2e.support import eventually

ROOT = support.REPO_ROOT
RESULTS = ROOT / "bench" / "results" / "large.json"
MODEL = "large"
NODE = "testbed-cpu"
CLAIM = "modelops-nodecache"
SAMPLES = 8
GiB = 2**30


def _transformer():
    spec = importlib.util.spec_from_file_location("transformer_model", ROOT / "models" / "transformer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def disk_write_limit(folder: Path, size: int = 2 * GiB) -> float:
    """Bytes per second written and fsynced, in 16 MiB blocks."""
    block = os.urandom(16 * 2**20)
    path = folder / "disk-probe"
    started = time.perf_counter()
    with open(path, "wb") as out:
        for _ in range(size // len(block)):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return size / seconds


def minio_read_limit(store, uri: str, size: int, part: int = 16 * 2**20, in_flight: int = 8) -> float:
    """Bytes per second of ranged GETs of `uri` with `in_flight` in flight, into memory."""
    from modelops.storage import parse_s3_uri

    location = parse_s3_uri(uri)
    ranges = [(start, min(size, start + part) - 1) for start in range(0, size, part)]
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not ranges:
                    return
                start, end = ranges.pop()
            body = store.client.get_object(Bucket=location.bucket, Key=location.key, Range=f"bytes={start}-{end}")["Body"]
            while body.read(2**20):
                pass

    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return size / (time.perf_counter() - started)


def compressor_rss(source: Path, quantization: str, out: Path) -> dict:
    """The Job's ONNX compression (compress_onnx) in a fresh process: seconds and VmHWM."""
    code = (
        "import json,time,sys;from pathlib import Path;"
        "from modelops.compress.onnx_compress import compress_onnx;from modelops.compress.recipe import Recipe;"
        "t=time.perf_counter();"
        f"compress_onnx(Path({str(source)!r}),Path({str(out)!r}),Recipe.from_dict({{'quantization':{quantization!r}}}),2);"
        "s=time.perf_counter()-t;"
        "hwm=[int(l.split()[1])*1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')][0];"
        "print(json.dumps({'seconds':s,'peak_rss_bytes':hwm}))"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT}"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


class Agent:
    def __init__(self, testbed, root: Path) -> None:
        self.testbed, self.root, self.process = testbed, root, None
        self.log = Path(testbed.state_dir) / "logs" / "bench-large-nodecache.log"

    def start(self) -> None:
        env = {**os.environ, **self.testbed.storage_env(), "KUBECONFIG": self.testbed.kubeconfig,
               "PYTHONPATH": str(ROOT / "operator")}
        command = [sys.executable, "-m", "modelops.nodecache", "--root", str(self.root), "--budget", "40Gi",
                   "--interval", "0.5", "--node", NODE]
        with self.log.open("a") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)


def pod_steps(cluster, namespace: str, pod: dict) -> dict:
    """schedule, fetch and load seconds of one pod, from its own timestamps."""
    from datetime import datetime

    def at(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    pod = cluster.get(namespace, "pod", pod["metadata"]["name"])
    conditions = {c["type"]: c["lastTransitionTime"] for c in pod["status"]["conditions"]}
    fetched = next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == "fetch")["state"]["terminated"]
    created = at(pod["metadata"]["creationTimestamp"])
    return {"schedule": at(conditions["PodScheduled"]) - created,
            "fetch": at(fetched["finishedAt"]) - at(fetched["startedAt"]),
            "load": at(conditions["Ready"]) - at(fetched["finishedAt"]),
            "ready": at(conditions["Ready"]) - created,
            "fetchMessage": fetched.get("message", "").strip()}


def served_outputs(pod_ip: str, data: dict, names: list[str], output: str) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"{pod_ip}:8000", network_timeout=600)
    requests = []
    for name in names:
        batch = np.ascontiguousarray(data[name])
        request = httpclient.InferInput(name, list(batch.shape), "INT64")
        request.set_data_from_numpy(batch)
        requests.append(request)
    return client.infer(MODEL, requests).as_numpy(output)


def pods_of(cluster, namespace: str, name: str) -> list[dict]:
    return cluster.get(namespace, "pods", "-l", f"modelops.dev/deployment={name}")["items"]


@pytest.mark.e2e
@pytest.mark.timeout(5400)  # generation, three Jobs and three pods of a 4 GiB model on 2 cores
def test_bench_large(testbed) -> None:
    transformer = _transformer()
    config = replace(transformer.BERT_BASE, hidden=2048, heads=16, intermediate=8192, layers=21, sequence=32, max_positions=128)
    smoke = os.environ.get("MODELOPS_BENCH_LARGE_SMOKE") == "1"  # the same steps on the small preset, in minutes
    if smoke:
        config = replace(transformer.PRESETS["small"], sequence=32, max_positions=128)
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "config": asdict(config),
                     "parameters": config.parameters}
    work = Path(tempfile.mkdtemp(prefix="bench-large-", dir=testbed.state_dir))
    work.chmod(0o755)

    def save() -> None:
        (work / "large-smoke.json" if smoke else RESULTS).write_text(json.dumps(results, indent=2) + "\n")

    started = time.perf_counter()
    graph, data = transformer.export_external(work / "fp32", config, seed=0)
    results["generate_seconds"] = time.perf_counter() - started
    model_bytes = graph.stat().st_size + data.stat().st_size
    largest = config.vocab * config.hidden * 4
    results |= {"model_bytes": model_bytes, "largest_tensor_bytes": largest}
    assert smoke or model_bytes > 4 * GiB
    transformer.write_eval_npz(work / "eval.npz", config, samples=SAMPLES)
    print(f"\nmodel: {model_bytes / GiB:.2f} GiB in {results['generate_seconds']:.0f}s", flush=True)

    # The compressor's own memory, each recipe in a fresh process.
    results["compressor"] = {}
    for quantization in ("int8-weight-only", "int4-weight-only"):
        out = work / quantization / "model.onnx"
        out.parent.mkdir()
        measured = compressor_rss(graph, quantization, out)
        measured |= {"rss_over_model": measured["peak_rss_bytes"] / model_bytes,
                     "rss_over_largest_tensor": measured["peak_rss_bytes"] / largest,
                     "output_bytes": sum(p.stat().st_size for p in out.parent.iterdir())}
        results["compressor"][quantization] = measured
        print(f"compress {quantization}: {measured}", flush=True)
        for path in out.parent.iterdir():
            path.unlink()
        save()

    # Upload, then the two limits.
    support.install_crds(testbed)
    testbed.ensure_bucket()
    namespace = f"bench-large-{secrets.token_hex(3)}"
    testbed.create_namespace(namespace)
    storage = testbed.storage(support.BUCKET)
    store = testbed.store()
    started = time.perf_counter()
    files = []
    for path in (graph, data):
        uri, digest = testbed.upload(path, f"{namespace}/fp32/{path.name}")
        files.append({"path": path.name, "sha256": digest})
    results["upload_seconds"] = time.perf_counter() - started
    eval_uri, _ = testbed.upload(work / "eval.npz", f"{namespace}/eval.npz")
    results["limits"] = {"disk_write_bytes_per_s": disk_write_limit(work, 256 * 2**20 if smoke else 2 * GiB),
                         "minio_read_bytes_per_s": minio_read_limit(store, storage.uri(f"{namespace}/fp32/{data.name}"), data.stat().st_size)}
    print(f"limits: {results['limits']}", flush=True)
    save()

    # The operator with the node cache, and the cache's agent for the CPU node.
    cache = work / "cache"
    cache.mkdir()
    cache.chmod(0o755)
    agent = Agent(testbed, cache)
    agent.start()
    tensor = {"dataType": "INT64", "dims": [-1]}
    testbed.apply(namespace, [lc.storage_secret(testbed), {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "Model", "metadata": {"name": MODEL},
        "spec": {"storage": storage.model_storage(lc.SECRET_NAME),
                 "signature": {"maxBatchSize": 8, "inputs": [{"name": n, **tensor} for n in transformer.input_names(config)],
                               "outputs": [{"name": transformer.output_name(config), "dataType": "FP32", "dims": [config.hidden]}]},
                 "versionDefaults": {"evaluation": {"datasetUri": eval_uri, "metric": "cosine-similarity", "threshold": 0.9}}}}])
    operator = support.OperatorProcess(Path(testbed.kubeconfig), namespace, Path(testbed.state_dir) / "logs" / f"operator-{namespace}.log",
                                       extra_env={"MODELOPS_NODE_CACHE_CLAIM": CLAIM, "MODELOPS_NODE_CACHE_PATH": str(cache),
                                                  "MODELOPS_NODE_CACHE_WAIT_SECONDS": "1800"})
    operator.start()
    try:
        _versions(testbed, namespace, storage.uri(f"{namespace}/fp32/"), files, results, save)
        _serve(testbed, namespace, agent, results, save, work, transformer, config)
    finally:
        agent.stop()
        operator.stop()
        testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    save()


def _versions(cluster, namespace: str, prefix: str, files: list, results: dict, save) -> None:
    recipes = {1: "none", 2: "int8-weight-only", 3: "int4-weight-only"}
    results["versions"] = {}
    # One at a time: each Job's gate holds the 4 GiB parent and its output in onnxruntime, and
    # three at once would not fit this machine's memory beside the test bed.
    for number, quantization in recipes.items():
        cluster.apply(namespace, [{
            "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": f"{MODEL}-v{number}"},
            "spec": {"model": MODEL, "version": number, "compression": {"quantization": quantization},
                     "artifact": {"uri": prefix, "format": "onnx", "entrypoint": "model.onnx", "files": files}}}])
        cluster.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.phase}=Ready", f"modelversion/{MODEL}-v{number}",
                        "--timeout=3600s", timeout=3630)
        status = cluster.get(namespace, "modelversion", f"{MODEL}-v{number}")["status"]
        report = status.get("report") or {}
        results["versions"][quantization] = {
            "timings": {t["step"]: t["seconds"] for t in status.get("timings", [])},
            "bytes": status["compressedArtifact"].get("bytes"),
            "cosine": (report.get("metric") or {}).get("compressed"),
            "download": report.get("download"),
        }
        print(f"v{number} {quantization}: {results['versions'][quantization]}", flush=True)
        save()


def _serve(cluster, namespace: str, agent: Agent, results: dict, save, work: Path, transformer, config) -> None:
    deployment = lc.deployment_manifest("large-fp32", pinned=1, progress_deadline=3600)
    deployment["spec"]["model"] = MODEL
    deployment["spec"]["scheduling"] = {"nodeSelector": {"kubernetes.io/hostname": NODE}}
    deployment["spec"]["triton"]["startupTimeoutSeconds"] = 1800
    deployment["spec"]["triton"]["resources"] = {"requests": {"cpu": "100m", "memory": "1Gi"}}
    cluster.apply(namespace, [deployment])
    wait = ["wait", "-n", namespace, "--timeout=3600s"]
    cluster.kubectl(*wait, "--for=condition=Ready", "modeldeployment/large-fp32", timeout=3630)
    first = pods_of(cluster, namespace, "large-fp32")[0]
    serving: dict = {"cold": pod_steps(cluster, namespace, first)}
    fill = json.loads((agent.root / "status" / f"pod-{first['metadata']['uid']}.json").read_text())
    serving["coldFill"] = fill
    print(f"cold: {serving['cold']}\nfill: {fill}", flush=True)
    results["serving"] = serving
    save()

    # Served as onnxruntime runs the same files.
    import onnxruntime as ort

    inputs = {k: v[:2] for k, v in np.load(work / "eval.npz").items()}
    expected = ort.InferenceSession(str(work / "fp32" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    ip = lc.ready_server_ips(cluster, namespace, "large-fp32")[0]
    served = served_outputs(ip, inputs, transformer.input_names(config), transformer.output_name(config))
    np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-4)
    serving["servedMaxAbsDifference"] = float(np.abs(served - expected).max())

    # A second replica on the same node: linked from the cache.
    known = {first["metadata"]["uid"]}
    cluster.kubectl("patch", "-n", namespace, "modeldeployment/large-fp32", "--type=merge", "-p", '{"spec":{"replicas":2}}')
    eventually(lambda: len(lc.ready_server_ips(cluster, namespace, "large-fp32")) == 2, 3600, "two ready replicas", interval=1)
    second = next(p for p in pods_of(cluster, namespace, "large-fp32") if p["metadata"]["uid"] not in known)
    serving["warm"] = pod_steps(cluster, namespace, second)
    known.add(second["metadata"]["uid"])
    print(f"warm: {serving['warm']}", flush=True)
    save()

    # The agent restarted, then a pod replaced: the cache survived, the new pod links from it.
    agent.stop()
    agent.start()
    cluster.kubectl("delete", "pod", "-n", namespace, second["metadata"]["name"], "--wait=false")
    (uid,) = eventually(lambda: _ready_uids(cluster, namespace) - known, 3600, "a replacement pod ready", interval=1)
    third = next(p for p in pods_of(cluster, namespace, "large-fp32") if p["metadata"]["uid"] == uid)
    serving["afterAgentRestart"] = pod_steps(cluster, namespace, third)
    print(f"after agent restart: {serving['afterAgentRestart']}", flush=True)
    cold, warm = serving["cold"], serving["warm"]
    serving["warmOverCold"] = (warm["ready"] - warm["load"]) / max(1e-9, cold["ready"] - cold["load"])
    transfer = fill.get("transfer") or {}
    if transfer.get("seconds"):
        rate = transfer["bytes"] / transfer["seconds"]
        limit = min(results["limits"]["disk_write_bytes_per_s"], results["limits"]["minio_read_bytes_per_s"])
        serving["fillBytesPerS"] = rate
        serving["fillOverLowerLimit"] = rate / limit
    save()


def _ready_uids(cluster, namespace: str) -> set[str]:
    uids = set()
    for pod in pods_of(cluster, namespace, "large-fp32"):
        if any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or []):
            uids.add(pod["metadata"]["uid"])
    return uids


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-s", "-p", "no:cacheprovider"]))

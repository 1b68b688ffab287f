"""Building blocks of the whole lifecycle on the test bed, shared by `make demo` and the e2e tests.

The operator runs as a local process with the test bed's admin credentials; artifacts are
the digits classifier trained by models/digits.py, uploaded to the test bed's MinIO with
their sha256; inference goes to the Triton pods' own IPs (the test bed has no kube-proxy).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops"))
BUCKET = "models"
MODEL_NAME = "digits"
SECRET_NAME = "digits-storage"
SERVER_LABEL = "app.kubernetes.io/component=server"


@dataclass(frozen=True)
class Cluster:
    """The test bed as seen by a client: kubectl with the admin kubeconfig, and MinIO."""

    kubeconfig: str
    kubectl_path: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str

    @classmethod
    def from_state(cls, state: dict) -> "Cluster":
        return cls(state["kubeconfig"], state["kubectl"], state["s3_endpoint"], state["s3_access_key"],
                   state["s3_secret_key"])

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 600) -> str:
        result = subprocess.run([self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
                                input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def get(self, namespace: str, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-n", namespace, "-o", "json"))

    def apply(self, namespace: str, docs: list[dict]) -> None:
        import yaml

        self.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))

    def store(self):
        from modelops.storage import ObjectStore, StorageConfig

        return ObjectStore(StorageConfig(endpoint_url=self.s3_endpoint, access_key_id=self.s3_access_key,
                                         secret_access_key=self.s3_secret_key))

    def ensure_bucket(self, bucket: str = BUCKET) -> None:
        client = self.store().client
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)

    def upload(self, path: Path, key: str) -> tuple[str, str]:
        """Upload a file; return its s3:// URI and sha256."""
        uri = f"s3://{BUCKET}/{key}"
        result = self.store().upload_file(path, uri)
        return uri, result.sha256


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/models.modelops.dev",
                    "crd/modelversions.modelops.dev", "crd/modeldeployments.modelops.dev")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Operator:
    """`python -m modelops` as a local process; its output goes to a log file."""

    def __init__(self, cluster: Cluster, log_path: Path, namespaces: list[str]):
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        env = {
            **os.environ,
            "KUBECONFIG": cluster.kubeconfig,
            "PYTHONPATH": f"{REPO_ROOT / 'operator'}{os.pathsep}{REPO_ROOT}",
            "MODELOPS_NAMESPACES": ",".join(namespaces),
            "MODELOPS_HEALTH_PORT": str(self.health_port),
            "MODELOPS_METRICS_PORT": str(self.metrics_port),
            "MODELOPS_BIND_ADDRESS": "127.0.0.1",
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "modelops"], env=env, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the operator did not report ready within {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass(frozen=True)
class DigitsFiles:
    onnx: Path
    eval_npz: Path
    test_accuracy: float


def digits_files() -> DigitsFiles:
    """The trained digits classifier, cached by the training script's content."""
    script = REPO_ROOT / "models" / "digits.py"
    key = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
    out = CACHE / "digits" / key
    meta = out / "meta.json"
    if not meta.exists():
        sys.path.insert(0, str(REPO_ROOT / "models"))
        import digits

        built = digits.build(out)
        meta.write_text(json.dumps({"test_accuracy": built.test_accuracy}))
    return DigitsFiles(out / "model.onnx", out / "eval.npz", json.loads(meta.read_text())["test_accuracy"])


def relabelled_onnx(source: Path, target: Path, doc_string: str) -> Path:
    """The same model with another doc string: identical behaviour, a different sha256."""
    import onnx

    model = onnx.load(str(source))
    model.doc_string = doc_string
    onnx.save(model, str(target))
    return target


def unservable_onnx(source: Path, target: Path) -> Path:
    """A valid ONNX file that passes the compression Job but cannot become ready in Triton.

    Its input also gets a default value (an initializer of the same name), as some exporters
    leave behind. ONNX still calls it an input, so it matches the Model's signature and
    evaluates exactly like its parent; but onnxruntime's serving session no longer lists it
    among the model's inputs, so the Triton model that is configured with it fails at load.
    """
    import onnx

    model = onnx.load(str(source))
    first = model.graph.input[0]
    dims = [d.dim_value or 1 for d in first.type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(first.type.tensor_type.elem_type)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(dims, dtype=dtype), first.name))
    onnx.save(model, str(target))
    return target


# -- manifests -------------------------------------------------------------------------------


def storage_secret(cluster: Cluster) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME}, "type": "Opaque",
            "stringData": {"AWS_ACCESS_KEY_ID": cluster.s3_access_key, "AWS_SECRET_ACCESS_KEY": cluster.s3_secret_key}}


def model_manifest(cluster: Cluster, eval_uri: str, threshold: float = 0.5) -> dict:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "Model", "metadata": {"name": MODEL_NAME},
        "spec": {
            "description": "Handwritten digit classifier (scikit-learn digits).",
            "storage": {"endpoint": cluster.s3_endpoint, "bucket": BUCKET, "credentialsSecret": {"name": SECRET_NAME}},
            "signature": {
                "maxBatchSize": 64,
                "inputs": [{"name": "input", "dataType": "FP32", "dims": [64]}],
                "outputs": [{"name": "logits", "dataType": "FP32", "dims": [10]}],
            },
            "versionDefaults": {
                "evaluation": {"datasetUri": eval_uri, "metric": "top1-accuracy", "threshold": threshold},
                "scheduling": {"gpus": 1},
            },
        },
    }


def version_manifest(version: int, uri: str, sha256: str, quantization: str = "none",
                     pruning: dict | None = None, threshold: float | None = None, eval_uri: str | None = None) -> dict:
    compression: dict = {"quantization": quantization}
    if pruning:
        compression["pruning"] = pruning
    spec: dict = {"model": MODEL_NAME, "version": version,
                  "artifact": {"uri": uri, "format": "onnx", "sha256": sha256}, "compression": compression}
    if threshold is not None:
        spec["evaluation"] = {"datasetUri": eval_uri, "metric": "top1-accuracy", "threshold": threshold}
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": f"{MODEL_NAME}-v{version}"}, "spec": spec}


def deployment_manifest(name: str, pinned: int | None = None, replicas: int = 1,
                        progress_deadline: int = 60) -> dict:
    spec: dict = {
        "model": MODEL_NAME, "replicas": replicas,
        "versionPolicy": "Pinned" if pinned else "Latest",
        "triton": {"backend": "python", "dynamicBatching": {"enabled": True, "maxQueueDelayMicroseconds": 200},
                   "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}},
        "rollout": {"progressDeadlineSeconds": progress_deadline, "autoRollback": True},
    }
    if pinned:
        spec["version"] = pinned
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


# -- serving ---------------------------------------------------------------------------------


def ready_server_ips(cluster: Cluster, namespace: str, deployment: str) -> list[str]:
    pods = cluster.get(namespace, "pods", "-l", f"modelops.dev/deployment={deployment}")["items"]
    ips = []
    for pod in pods:
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
            ips.append(pod["status"]["podIP"])
    return ips


@dataclass(frozen=True)
class Scores:
    accuracy: float
    p50_ms: float
    p99_ms: float
    samples: int


def score(pod_ip: str, inputs: np.ndarray, labels: np.ndarray, model: str = MODEL_NAME) -> Scores:
    """Send every sample, one request each, and measure accuracy and latency."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"{pod_ip}:8000")
    latencies, correct = [], 0
    for x, y in zip(inputs, labels):
        request = httpclient.InferInput("input", [1, x.shape[0]], "FP32")
        request.set_data_from_numpy(x[None, :].astype(np.float32))
        start = time.perf_counter()
        logits = client.infer(model, [request]).as_numpy("logits")
        latencies.append((time.perf_counter() - start) * 1000)
        correct += int(np.argmax(logits[0]) == y)
    return Scores(correct / len(labels), float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99)),
                  len(labels))


def predictions(pod_ip: str, inputs: np.ndarray, model: str = MODEL_NAME) -> np.ndarray:
    """Logits for all inputs in one batched request."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"{pod_ip}:8000")
    outputs = []
    for start in range(0, len(inputs), 64):
        batch = inputs[start:start + 64].astype(np.float32)
        request = httpclient.InferInput("input", list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        outputs.append(client.infer(model, [request]).as_numpy("logits"))
    return np.concatenate(outputs)


class ServiceEndpoints:
    """The ready endpoints of a Service, followed through an EndpointSlice watch.

    The test bed has no kube-proxy, so clients balance over the Service's ready endpoints
    themselves, as kube-proxy would: a pod is added when it becomes ready and dropped when
    it stops being ready or starts terminating.
    """

    def __init__(self, kubeconfig: str, namespace: str, service: str, port: int = 8000):
        import threading

        from kubernetes import client, config

        self._api = client.DiscoveryV1Api(config.new_client_from_config(config_file=kubeconfig))
        self._namespace, self._selector, self._port = namespace, f"kubernetes.io/service-name={service}", port
        self._slices: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def __call__(self) -> list[str]:
        with self._lock:
            return sorted(url for urls in self._slices.values() for url in urls)

    def _ready_urls(self, endpoint_slice) -> list[str]:
        urls = []
        for endpoint in endpoint_slice.endpoints or []:
            conditions = endpoint.conditions
            if conditions and conditions.ready and not conditions.terminating:
                urls += [f"{address}:{self._port}" for address in endpoint.addresses]
        return urls

    def _follow(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            try:
                listed = self._api.list_namespaced_endpoint_slice(self._namespace, label_selector=self._selector)
                with self._lock:
                    self._slices = {s.metadata.name: self._ready_urls(s) for s in listed.items}
                stream = watch.Watch().stream(
                    self._api.list_namespaced_endpoint_slice, self._namespace, label_selector=self._selector,
                    resource_version=listed.metadata.resource_version, timeout_seconds=60)
                for event in stream:
                    if self._stop.is_set():
                        return
                    endpoint_slice = event["object"]
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._slices.pop(endpoint_slice.metadata.name, None)
                        else:
                            self._slices[endpoint_slice.metadata.name] = self._ready_urls(endpoint_slice)
            except Exception:  # noqa: BLE001 - relist after an expired watch or a dropped connection
                self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()

"""The digits lifecycle on the test bed, shared by `make demo` and the e2e tests: its
manifests, artifact variants, and inference against the served model.

The test bed, the operator process, storage and the digits model itself come from
e2e/support.py. Artifacts are the digits classifier trained by models/digits.py, uploaded to
the test bed's MinIO with their sha256; inference goes to the Triton pods' own IPs (the test
bed has no kube-proxy).
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2e import support
from e2e.support import BUCKET, Testbed

MODEL_NAME = "digits"
SECRET_NAME = "digits-storage"


@dataclass(frozen=True)
class ServingNamespace:
    """A restricted namespace with the storage Secret, the digits Model, its fp32 artifact
    and the evaluation set in MinIO, and an operator watching it."""

    namespace: str
    files: Any  # models/digits.py's DigitsArtifacts (see support.digits_model)
    model_uri: str
    model_sha: str
    operator: support.OperatorProcess


@contextmanager
def serving_namespace(cluster: Testbed, prefix: str, operator_env: dict[str, str] | None = None) -> Iterator[ServingNamespace]:
    support.install_crds(cluster)
    namespace = f"{prefix}-{secrets.token_hex(3)}"
    cluster.create_namespace(namespace)
    cluster.ensure_bucket()
    files = support.digits_model()
    # A copy that differs only in its doc string, so this namespace's compressions get cache
    # keys of their own (a test may change a cached artifact).
    unique = relabelled_onnx(files.onnx, Path(tempfile.mkdtemp()) / "model.onnx", namespace)
    model_uri, model_sha = cluster.upload(unique, f"{namespace}/fp32/model.onnx")
    eval_uri, _ = cluster.upload(files.eval_npz, f"{namespace}/eval.npz")
    cluster.apply(namespace, [storage_secret(cluster), model_manifest(cluster, eval_uri)])
    operator = support.OperatorProcess(Path(cluster.kubeconfig), namespace,
                                       Path(cluster.state_dir) / "logs" / f"operator-{namespace}.log",
                                       extra_env=dict(operator_env or {}))
    operator.start()
    try:
        yield ServingNamespace(namespace, files, model_uri, model_sha, operator)
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


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


def storage_secret(cluster: Testbed) -> dict:
    return cluster.storage(BUCKET).secret(SECRET_NAME)


def model_manifest(cluster: Testbed, eval_uri: str, threshold: float = 0.5) -> dict:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "Model", "metadata": {"name": MODEL_NAME},
        "spec": {
            "description": "Handwritten digit classifier (scikit-learn digits).",
            "storage": cluster.storage(BUCKET).model_storage(SECRET_NAME),
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


def ready_server_ips(cluster: Testbed, namespace: str, deployment: str) -> list[str]:
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
    for x, y in zip(inputs, labels, strict=True):
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

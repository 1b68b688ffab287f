"""Test support for the local test bed, shared by tests/integration, e2e/ and `make demo`.

One place for: bringing up the test bed and reaching it (`Testbed`: kubectl, helm, MinIO),
installing the CRDs, running the operator as a local process (`OperatorProcess`), object
storage (`Storage`: a bucket, uploads, the credentials Secret), the digits classifier trained
by models/digits.py (`digits_model`, cached on disk), and polling (`eventually`).

The operator package never imports this module; it imports the operator's storage adapter
lazily, only where an upload goes through it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from e2e.tritonlocal import free_ports

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops"))
BUCKET = "models"
CRDS = ("models.modelops.dev", "modelversions.modelops.dev", "modeldeployments.modelops.dev")
# Every namespace the tests, the e2e suite and the demo create enforces Pod Security
# "restricted": the apiserver refuses any pod we render that breaks it.
POD_SECURITY_LABELS = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
} | {"pod-security.kubernetes.io/enforce-version": "latest"}


def restricted(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """A pod spec with what Pod Security "restricted" asks of every pod and container added,
    for the pods tests write themselves (the operator's own pods come with it)."""
    spec = {**pod_spec, "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"},
                                            **pod_spec.get("securityContext", {})}}
    for kind in ("initContainers", "containers"):
        if kind in spec:
            spec[kind] = [{**c, "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                                    **c.get("securityContext", {})}} for c in spec[kind]]
    return spec


# The test bed's CA, which signs MinIO's certificate, is published in every namespace by
# kube-controller-manager as this ConfigMap; Models name it as their storage.caBundle.
TESTBED_CA_BUNDLE = {"configMapRef": {"name": "kube-root-ca.crt"}, "key": "ca.crt"}


def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5,
               detail: Callable[[], Any] | None = None) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` and the last value,
    and with what `detail` returns then (the state that a bare False would hide)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    seen = f"; {detail()}" if detail is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}{seen}")


# -- the test bed ----------------------------------------------------------------------------


class KubectlError(AssertionError):
    """kubectl exited non-zero; an AssertionError so that pytest reports it as a failed check."""


@dataclass(frozen=True)
class Testbed:
    """What a client needs to reach the local test bed: kubectl, helm and MinIO."""

    kubeconfig: str
    kubectl_path: str
    helm_path: str
    apiserver_url: str
    audit_log: str
    s3_endpoint: str
    s3_ca: str
    s3_access_key: str
    s3_secret_key: str = field(repr=False)  # kept out of test reports
    state_dir: str
    python: str
    project_root: str

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Testbed:
        """From the test bed's state.json, where the binaries are `kubectl` and `helm`."""
        return cls(**{f.name: state[f.name.removesuffix("_path")] for f in fields(cls)})

    def run_kubectl(self, *args: str, check: bool = True, input: str | None = None,
                    timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
            check=False, capture_output=True, text=True, input=input, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
        """kubectl's stdout; with check=False, stdout and stderr, whatever the exit status."""
        result = self.run_kubectl(*args, check=check, input=input, timeout=timeout)
        return result.stdout if check else result.stdout + result.stderr

    def get(self, namespace: str, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "-n", namespace, *args, "-o", "json"))

    def apply(self, namespace: str, docs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))

    def helm(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.helm_path, f"--kubeconfig={self.kubeconfig}", *args],
            check=False, capture_output=True, text=True, timeout=timeout,
        )

    def stop_minio(self) -> None:
        """Kill the test bed's MinIO, as an outage would; data and credentials are kept."""
        from e2e.testbed import cluster

        cluster.stop_minio(cluster.Layout.from_env())

    def start_minio(self) -> None:
        from e2e.testbed import cluster

        cluster.start_minio(cluster.Layout.from_env())

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's output, read from the node agent's log file for that pod."""
        uid = self.get(namespace, "pod", pod)["metadata"]["uid"]
        for path in Path(self.state_dir, "nodes").glob(f"*/pods/{uid}/{container}.log"):
            return path.read_text(errors="replace")
        return ""

    def image_path(self, namespace: str, pod: str, container: str) -> str:
        """How the node agent ran a container, from the pod's Pulled event: "image" (the root
        filesystem of an image `make images` built), "venv" (the development virtualenv) or
        "triton" (the nvidia-pytriton wheel's tritonserver)."""
        events = self.get(namespace, "events", "--field-selector", f"involvedObject.name={pod},reason=Pulled")["items"]
        for event in events:
            for path, words in (("image", "in its root filesystem"), ("venv", "in the development virtualenv"),
                                ("triton", "tritonserver of the nvidia-pytriton wheel")):
                if event["message"].startswith(f"Container {container}: ") and event["message"].endswith(words):
                    return path
        raise AssertionError(f"pod {namespace}/{pod} has no Pulled event for container {container}: {events}")

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A namespace that enforces Pod Security "restricted" (POD_SECURITY_LABELS)."""
        doc = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": {**POD_SECURITY_LABELS, **(labels or {})}}}
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))

    def storage(self, bucket: str) -> Storage:
        return Storage(self.s3_endpoint, self.s3_access_key, self.s3_secret_key, bucket, self.s3_ca)

    def storage_env(self) -> dict[str, str]:
        """The storage settings as the fetch container, the compressor and the node cache agent
        read them (modelops.storage.STORAGE_ENV_VARS)."""
        return {
            "MODELOPS_S3_ENDPOINT": self.s3_endpoint,
            "MODELOPS_S3_CA_BUNDLE": self.s3_ca,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
        }

    # The e2e tests and the demo keep their artifacts in BUCKET.

    def store(self) -> Any:
        return self.storage(BUCKET).store()

    def ensure_bucket(self) -> None:
        self.storage(BUCKET).ensure()

    def upload(self, path: Path, key: str) -> tuple[str, str]:
        return self.storage(BUCKET).upload(path, key)


def binaries() -> Path:
    """The test bed's Go-built binaries: MODELOPS_BINARIES, or the (cached) build."""
    if os.environ.get("MODELOPS_BINARIES"):
        return Path(os.environ["MODELOPS_BINARIES"])
    out = subprocess.run([str(REPO_ROOT / "e2e/testbed/build.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def bring_up() -> tuple[Testbed, bool]:
    """The test bed of MODELOPS_TESTBED_INDEX, reused when one is running; (testbed, reused)."""
    from e2e.testbed import cluster

    layout = cluster.Layout.from_env()
    existing = cluster.read_state(layout)
    reused = bool(existing and cluster.healthy(existing))
    # sys.executable is the project's environment; the node agents run project images with it.
    return Testbed.from_state(cluster.up(layout, binaries(), Path(sys.executable))), reused


def bring_down() -> None:
    from e2e.testbed import cluster

    cluster.down(cluster.Layout.from_env())


def install_crds(testbed: Testbed) -> None:
    testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    testbed.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{name}" for name in CRDS))


# -- the operator process ----------------------------------------------------------------------


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


@dataclass
class OperatorProcess:
    """`python -m modelops` watching `namespace` (comma-separated for several), as `kubeconfig`'s user."""

    kubeconfig: Path
    namespace: str
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = 0
    health_port: int = 0
    process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        """Start it and wait until /readyz answers 200."""
        self.metrics_port, self.health_port = free_ports(2)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT / "operator"),
            "KUBECONFIG": str(self.kubeconfig),
            "MODELOPS_NAMESPACES": self.namespace,
            "MODELOPS_BIND_ADDRESS": "127.0.0.1",
            "MODELOPS_METRICS_PORT": str(self.metrics_port),
            "MODELOPS_HEALTH_PORT": str(self.health_port),
            **self.extra_env,
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelops"], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        eventually(lambda: self.health("/readyz") == 200 or self._exited(), timeout, "the operator to become ready")
        assert not self._exited(), f"the operator exited:\n{self.log_path.read_text()[-3000:]}"

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def health(self, path: str) -> int:
        return _http_get(f"http://127.0.0.1:{self.health_port}{path}")[0]

    def metrics_text(self) -> str:
        return _http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")[1]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash or an OOM kill would leave it."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


# -- object storage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    """One bucket in the test bed's MinIO."""

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)  # kept out of test reports
    bucket: str
    ca_file: str | None = None  # the CA that signs the endpoint's certificate

    def client(self) -> Any:
        """A plain boto3 client: writes through it bypass the operator's storage adapter."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            verify=self.ca_file if self.ca_file else True)

    def store(self) -> Any:
        """The operator's storage adapter (modelops.storage.ObjectStore) on this endpoint."""
        from modelops.storage import ObjectStore, StorageConfig

        return ObjectStore(StorageConfig(endpoint_url=self.endpoint, access_key_id=self.access_key,
                                         secret_access_key=self.secret_key, ca_bundle=self.ca_file))

    def model_storage(self, secret: str = "storage") -> dict[str, Any]:
        """A Model's spec.storage for this bucket: HTTPS, verified with the test bed's CA bundle."""
        return {"endpoint": self.endpoint, "bucket": self.bucket, "credentialsSecret": {"name": secret},
                "caBundle": dict(TESTBED_CA_BUNDLE)}

    def ensure(self) -> None:
        """Create the bucket unless it exists."""
        client = self.client()
        try:
            client.create_bucket(Bucket=self.bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, data: bytes) -> str:
        """Write the bytes as they are (no metadata) and return their sha256."""
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        return hashlib.sha256(data).hexdigest()

    def upload(self, path: Path, key: str) -> tuple[str, str]:
        """Upload a file as the operator's adapter does (sha256 in the metadata); its URI and sha256."""
        uri = self.uri(key)
        return uri, self.store().upload_file(path, uri).sha256

    def secret(self, name: str) -> dict[str, Any]:
        """A Secret manifest with the credentials, as a Model's credentialsSecret expects it."""
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
                "stringData": {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}}


# -- the digits classifier -------------------------------------------------------------------------

DIGITS_SCRIPT = REPO_ROOT / "models" / "digits.py"


def _digits_training() -> Any:
    """models/digits.py as a module (it is a script, not part of a package)."""
    if "digits_training" not in sys.modules:
        spec = importlib.util.spec_from_file_location("digits_training", DIGITS_SCRIPT)
        assert spec is not None and spec.loader is not None, DIGITS_SCRIPT
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules["digits_training"]


def digits_model(seed: int = 0) -> Any:
    """The digits classifier trained with `seed`, in every artifact format, and its held-out data.

    Returns models/digits.py's DigitsArtifacts (onnx, torchscript, exported_program, eval_npz,
    test_accuracy, eval_samples). Built once per machine, cached under $MODELOPS_CACHE/digits
    by the training script's content; the files are shared, so treat them as read-only.
    """
    training = _digits_training()
    key = hashlib.sha256(DIGITS_SCRIPT.read_bytes()).hexdigest()[:12]
    out = CACHE / "digits" / f"{key}-seed{seed}"
    meta = out / "meta.json"
    if not meta.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        scratch.chmod(0o755)
        built = training.build(scratch, seed=seed)
        (scratch / "meta.json").write_text(
            json.dumps({"test_accuracy": built.test_accuracy, "eval_samples": built.eval_samples}))
        try:
            scratch.rename(out)  # atomic: a concurrent build of the same seed leaves one complete copy
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
    facts = json.loads(meta.read_text())
    return training.DigitsArtifacts(
        onnx=out / "model.onnx", torchscript=out / "model.ts.pt", exported_program=out / "model.pt2",
        eval_npz=out / "eval.npz", test_accuracy=facts["test_accuracy"], eval_samples=facts["eval_samples"],
    )

"""Fixtures for the operator's integration tests on the local test bed.

The test bed itself (`testbed`, `namespace`) comes from tests/conftest.py. Here: the CRDs,
an operator identity with least-privilege RBAC (so the audit log can tell its requests
apart), the operator as a subprocess (`python -m modelops`), and artifacts in MinIO.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "modelops-it"
OPERATOR_ACCOUNT = "modelops-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

# What the operator may do, and nothing more. Reads of Secrets are limited to get.
OPERATOR_RULES = [
    {"apiGroups": ["modelops.dev"], "resources": ["models", "modelversions", "modeldeployments"],
     "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["modelops.dev"], "resources": ["models/status", "modelversions/status", "modeldeployments/status"],
     "verbs": ["get", "patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]


# -- kubectl -----------------------------------------------------------------------------


def kubectl(testbed: Any, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(testbed.kubectl_path), f"--kubeconfig={testbed.kubeconfig}", *args],
        input=input, capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result


def apply_docs(testbed: Any, namespace: str, docs: list[dict[str, Any]]) -> None:
    kubectl(testbed, "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def get_json(testbed: Any, namespace: str, *args: str) -> dict[str, Any]:
    return json.loads(kubectl(testbed, "get", "-n", namespace, *args, "-o", "json").stdout)


def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


# -- CRDs and the operator's identity -------------------------------------------------------


@pytest.fixture(scope="session")
def crds(testbed: Any) -> None:
    kubectl(testbed, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl(testbed, "wait", "--for=condition=Established", "crd/models.modelops.dev",
            "crd/modelversions.modelops.dev", "crd/modeldeployments.modelops.dev", "--timeout=60s")


@pytest.fixture(scope="session")
def operator_kubeconfig(testbed: Any, crds: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for a service account bound to exactly OPERATOR_RULES."""
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "modelops-it-operator"},
         "rules": OPERATOR_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "modelops-it-operator"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "modelops-it-operator"},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}]},
    ]
    kubectl(testbed, "apply", "-f", "-", input=yaml.safe_dump_all(docs))
    token = kubectl(testbed, "create", "token", OPERATOR_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=24h").stdout.strip()
    admin = yaml.safe_load(Path(testbed.kubeconfig).read_text())
    cluster = dict(admin["clusters"][0]["cluster"])
    if "certificate-authority" in cluster:  # make the file self-contained
        ca = Path(cluster.pop("certificate-authority")).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": cluster}],
        "users": [{"name": OPERATOR_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "testbed", "user": OPERATOR_ACCOUNT}}],
        "current-context": "operator",
    }
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# -- the operator process ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """`python -m modelops` watching one namespace, as the operator service account."""

    kubeconfig: Path
    namespace: str
    log_path: Path
    extra_env: dict[str, str]
    metrics_port: int = 0
    health_port: int = 0
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "operator"),
            "KUBECONFIG": str(self.kubeconfig),
            "MODELOPS_NAMESPACES": self.namespace,
            "MODELOPS_BIND_ADDRESS": "127.0.0.1",
            "MODELOPS_METRICS_PORT": str(self.metrics_port),
            "MODELOPS_HEALTH_PORT": str(self.health_port),
            "MODELOPS_RETRY_SECONDS": "2",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelops"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        eventually(lambda: self.health("/readyz") == 200 or self._exited(), 60, "the operator to become ready")
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


@pytest.fixture
def start_operator(operator_kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Start the operator (extra MODELOPS_* settings as keyword arguments); stopped after the test."""
    started: list[OperatorProcess] = []

    def start(**settings: str) -> OperatorProcess:
        env = {f"MODELOPS_{key.upper()}": str(value) for key, value in settings.items()}
        operator = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "operator.log", env)
        operator.start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> OperatorProcess:
    return start_operator()


# -- the audit log ------------------------------------------------------------------------------


class AuditLog:
    """Requests the API server recorded, from a marked point on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        time.sleep(2)  # the audit backend writes in batches of at most a second
        self.offset = self.path.stat().st_size

    def events_since_mark(self) -> list[dict[str, Any]]:
        time.sleep(2)
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            lines = handle.read().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def operator_requests(self, namespace: str) -> list[dict[str, Any]]:
        return [
            e for e in self.events_since_mark()
            if e.get("stage") == "ResponseComplete"
            and e.get("user", {}).get("username") == OPERATOR_USER
            and (e.get("objectRef") or {}).get("namespace") in (namespace, None)
        ]


@pytest.fixture
def audit_log(testbed: Any) -> AuditLog:
    return AuditLog(Path(testbed.audit_log))


# -- object storage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")

    def put(self, key: str, data: bytes) -> str:
        """Upload and return the sha256."""
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        return hashlib.sha256(data).hexdigest()

    def secret(self, name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
                "stringData": {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}}


@pytest.fixture
def storage(testbed: Any, namespace: str) -> Storage:
    """A bucket of this test's own, so no compression is reused across tests."""
    bucket = "it-" + hashlib.sha256(namespace.encode()).hexdigest()[:12]
    store = Storage(testbed.s3_endpoint, testbed.s3_access_key, testbed.s3_secret_key, bucket)
    store.client().create_bucket(Bucket=bucket)
    return store


def publish_cached(storage: Storage, model_doc: dict[str, Any], version_doc: dict[str, Any], artifact: bytes,
                   drop: float = 0.0) -> None:
    """Put a finished compression where the version's cache key points, so it is Ready at once:
    the artifact, its record (with the ETag the reuse check verifies) and, with a gate, a
    measurement (a top-1 `drop`) on the dataset object now at the gate's URI."""
    from modelops import reuse
    from modelops.api import ModelSpec, ModelVersionSpec
    from modelops.cachekey import COMPRESSOR_VERSION, recipe_hash
    from modelops.core.versions import effective_evaluation, effective_recipe, output_prefix

    spec, model = ModelVersionSpec.model_validate(version_doc["spec"]), ModelSpec.model_validate(model_doc["spec"])
    prefix = output_prefix(spec, model)
    key = prefix.removeprefix(f"s3://{storage.bucket}/")
    digest = storage.put(key + "model.onnx", artifact)
    etag = storage.client().head_object(Bucket=storage.bucket, Key=key + "model.onnx")["ETag"].strip('"')
    report = {
        "outcome": "Passed", "reason": "Compressed", "message": "ok", "device": "cpu",
        "artifact": {"uri": prefix + "model.onnx", "sha256": digest, "bytes": len(artifact), "format": "onnx", "etag": etag},
        "source": {"uri": spec.artifact.uri, "sha256": spec.artifact.sha256},
        "recipeHash": recipe_hash(effective_recipe(spec, model)), "compressorVersion": COMPRESSOR_VERSION,
        "bytesBefore": 4 * len(artifact), "bytesAfter": len(artifact), "ratio": 4.0,
    }
    gate = effective_evaluation(spec, model)
    if gate is not None:  # a cached gate counts only for the dataset object it was measured on
        data_key = gate.dataset_uri.removeprefix(f"s3://{storage.bucket}/")
        data_etag = storage.client().head_object(Bucket=storage.bucket, Key=data_key)["ETag"].strip('"')
        measurement = {"name": gate.metric, "parent": 97.0, "compressed": 97.0 - drop, "drop": drop,
                       "dataset": {"uri": gate.dataset_uri, "etag": data_etag}}
        uri = reuse.measurement_uri(prefix, gate, data_etag, digest)
        storage.put(uri.removeprefix(f"s3://{storage.bucket}/"), json.dumps(measurement).encode())
    storage.put(key + "report.json", json.dumps(report).encode())


@dataclass(frozen=True)
class Digits:
    """Real digits classifiers (three trainings) and the held-out data."""

    onnx: tuple[bytes, ...]
    eval_npz: bytes
    accuracy: tuple[float, ...]


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_training", ROOT / "models" / "digits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    builds = [module.build(tmp_path_factory.mktemp(f"digits{seed}"), seed=seed) for seed in range(3)]
    return Digits(
        onnx=tuple(b.onnx.read_bytes() for b in builds),
        eval_npz=builds[0].eval_npz.read_bytes(),
        accuracy=tuple(b.test_accuracy for b in builds),
    )

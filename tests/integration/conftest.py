"""Fixtures for the operator's integration tests on the local test bed.

The test bed itself (`testbed`, `namespace`) comes from the root conftest.py, and the helpers
(kubectl, the operator process, storage, the digits model) from e2e/support.py; the names
tests import from here are kept. Here: the CRDs, an operator identity with least-privilege
RBAC (so the audit log can tell its requests apart), the operator as a subprocess
(`python -m modelops`), artifacts in MinIO, and the audit log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import support
from e2e.support import (
    OperatorProcess,
    Storage,
    Testbed,
    eventually,  # noqa: F401 - tests import it from here
)

ROOT = support.REPO_ROOT
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
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # Written only where spec.autoscaling.provider or spec.rollout.canary.httpRoute asks for them;
    # watched (into the cache) wherever their API is served.
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]
# With the chart's nodeCache.enabled: the cache's local volume (cluster-scoped) and the claim
# on it in each serving namespace.
NODE_CACHE_RULES = [
    {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "create", "patch"]},
]
# In the namespace of the leader-election Lease only.
LEADER_ELECTION_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
]


# -- kubectl -----------------------------------------------------------------------------


def kubectl(testbed: Testbed, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
    return testbed.run_kubectl(*args, input=input, check=check, timeout=timeout)


def apply_docs(testbed: Testbed, namespace: str, docs: list[dict[str, Any]]) -> None:
    testbed.apply(namespace, docs)


def get_json(testbed: Testbed, namespace: str, *args: str) -> dict[str, Any]:
    return testbed.get(namespace, *args)


# -- CRDs and the operator's identity -------------------------------------------------------


@pytest.fixture(scope="session")
def crds(testbed: Testbed) -> None:
    support.install_crds(testbed)


@pytest.fixture(scope="session")
def operator_kubeconfig(testbed: Any, crds: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for a service account bound to exactly OPERATOR_RULES."""
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE, "labels": support.POD_SECURITY_LABELS}},
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


@pytest.fixture
def start_operator(operator_kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Start the operator (extra MODELOPS_* settings as keyword arguments); stopped after the test."""
    started: list[OperatorProcess] = []

    def start(**settings: str) -> OperatorProcess:
        env = {"MODELOPS_RETRY_SECONDS": "2"}  # retries within a test's patience
        env |= {f"MODELOPS_{key.upper()}": str(value) for key, value in settings.items()}
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


@pytest.fixture
def storage(testbed: Any, namespace: str) -> Storage:
    """A bucket of this test's own, so no compression is reused across tests."""
    bucket = "it-" + hashlib.sha256(namespace.encode()).hexdigest()[:12]
    store = testbed.storage(bucket)
    store.ensure()
    return store


# A node selector no node has: compression Jobs and Triton pods stay Pending, so a test checks
# the operator's objects without the load of pods.
NOWHERE = {"modelops.dev/test-node": "none"}


def digits_model_manifest(storage: Storage, node_selector: dict[str, str] | None = None, gpus: int = 1) -> dict[str, Any]:
    """The digits Model (64 inputs, 10 logits) on this test's bucket; Jobs go where `node_selector` says."""
    scheduling: dict[str, Any] = {"gpus": gpus}
    if node_selector is not None:
        scheduling["nodeSelector"] = node_selector
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "Model", "metadata": {"name": "digits"},
        "spec": {
            "storage": storage.model_storage("storage"),
            "signature": {"maxBatchSize": 8, "inputs": [{"name": "input", "dataType": "FP32", "dims": [64]}],
                          "outputs": [{"name": "logits", "dataType": "FP32", "dims": [10]}]},
            "versionDefaults": {"scheduling": scheduling},
        },
    }


def digits_version_manifest(storage: Storage, number: int, sha: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": f"digits-v{number}"},
        "spec": {"model": "digits", "version": number,
                 "artifact": {"uri": f"s3://{storage.bucket}/digits/{number}/model.onnx", "format": "onnx", "sha256": sha}},
    }


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
        # The tensors the Job read from the artifact; the reuse check holds them against the signature.
        "interface": {
            kind: [{"name": t.name, "dataType": str(t.data_type), "dims": None} for t in tensors]
            for kind, tensors in (("inputs", model.signature.inputs), ("outputs", model.signature.outputs))
        },
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
def digits() -> Digits:
    builds = [support.digits_model(seed) for seed in range(3)]
    return Digits(
        onnx=tuple(b.onnx.read_bytes() for b in builds),
        eval_npz=builds[0].eval_npz.read_bytes(),
        accuracy=tuple(b.test_accuracy for b in builds),
    )

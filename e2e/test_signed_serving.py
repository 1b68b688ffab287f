"""Signed from bucket to GPU, on the test bed: a user signs the model with the model_signing CLI
(as docs/security.md shows) under a Model that requires a signature; it is verified, compressed
and served; the operator signs each compressed artifact with its key, and the Triton pod's
fetch container verifies it before Triton loads the model. A
compressed artifact whose bytes are overwritten in the cache bucket, and one whose signature
is replaced there, are each refused by the fetch of the version the deployment moves to: the
deployment says why at once, and the pods of the previous version keep serving under load
from before the move until after the refusal, with no request failing."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from e2e import lifecycle as lc
from e2e import support
from e2e.loadgen import InferenceCall, LoadReport, run_load
from e2e.support import eventually

pytestmark = pytest.mark.e2e

KEY_SECRET = "modelops-signing-key"
MODEL_SIGNING = Path(sys.executable).with_name("model_signing")
# Long enough that the refusal is reported before the rollback that the deadline brings.
DEADLINE = 300
MIN_REQUESTS = 1000


@pytest.fixture(scope="module")
def bed(testbed):
    support.install_crds(testbed)
    namespace = f"e2e-signed-{secrets.token_hex(3)}"
    testbed.create_namespace(namespace)
    testbed.ensure_bucket()
    files = support.digits_model()
    work = Path(tempfile.mkdtemp())
    unique = lc.relabelled_onnx(files.onnx, work / "model.onnx", namespace)
    model_uri, model_sha = testbed.upload(unique, f"{namespace}/fp32/model.onnx")
    eval_uri, _ = testbed.upload(files.eval_npz, f"{namespace}/eval.npz")
    # The user's release key and the CLI's bundle, uploaded next to the model (docs/security.md).
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(work / "release.pem")], check=True)
    subprocess.run(["openssl", "ec", "-in", str(work / "release.pem"), "-pubout", "-out", str(work / "release.pub")],
                   check=True, capture_output=True)
    subprocess.run([str(MODEL_SIGNING), "sign", "key", str(unique), "--private_key", str(work / "release.pem"),
                    "--signature", str(work / "model.sig")], check=True, capture_output=True)
    signature_uri, _ = testbed.upload(work / "model.sig", f"{namespace}/fp32/model.sig")
    model = lc.model_manifest(testbed, eval_uri)
    model["spec"]["trust"] = {"required": True, "signers": [
        {"name": "release", "publicKey": {"configMapRef": {"name": "trusted-signers"}, "key": "release.pub"}}]}
    trusted = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "trusted-signers"},
               "data": {"release.pub": (work / "release.pub").read_text()}}
    testbed.apply(namespace, [lc.storage_secret(testbed), trusted, model])
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(work / "key.pem")], check=True)
    testbed.kubectl("create", "secret", "generic", KEY_SECRET, "-n", namespace, f"--from-file=key.pem={work / 'key.pem'}")
    operator = support.OperatorProcess(
        Path(testbed.kubeconfig), namespace, Path(testbed.state_dir) / "logs" / f"operator-{namespace}.log",
        {"MODELOPS_SIGNING_KEY_SECRET": KEY_SECRET, "MODELOPS_SIGNING_KEY_NAMESPACE": namespace},
    )
    operator.start()
    data = np.load(files.eval_npz)
    try:
        yield {"cluster": testbed, "namespace": namespace, "uri": model_uri, "sha": model_sha, "signature": signature_uri,
               "inputs": data["inputs"], "labels": data["labels"]}
    finally:
        operator.stop()
        testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def signed_version(bed, version: int, quantization: str = "none") -> dict:
    """A version of the user's signed model: the CLI's bundle is its spec.artifact.signature."""
    doc = lc.version_manifest(version, bed["uri"], bed["sha"], quantization=quantization)
    doc["spec"]["artifact"]["signature"] = {"uri": bed["signature"]}
    return doc


def refused_fetch(cluster, namespace: str, version: int) -> str | None:
    """The termination message of a fetch container of `version`'s pods that exited non-zero."""
    pods = cluster.get(namespace, "pods", "-l", f"modelops.dev/deployment=digits,modelops.dev/version={version}")["items"]
    for pod in pods:
        for status in pod["status"].get("initContainerStatuses", []):
            for state in (status.get("state", {}), status.get("lastState", {})):
                terminated = state.get("terminated") or {}
                if terminated.get("exitCode") not in (None, 0):
                    return terminated.get("message")
    return None


def ready_pods(cluster, namespace: str) -> set[str]:
    return {p["metadata"]["name"] for p in cluster.get(namespace, "pods", "-l", "modelops.dev/deployment=digits")["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))}


def condition(cluster, namespace: str, type_: str) -> dict:
    status = cluster.get(namespace, "modeldeployment", "digits").get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


class Load:
    """Requests to the digits Service's ready endpoints (no kube-proxy here: the client balances
    as kube-proxy would), in bursts on a thread, from __enter__ until __exit__."""

    def __init__(self, cluster, namespace: str, inputs: np.ndarray) -> None:
        self.endpoints = lc.ServiceEndpoints(cluster.kubeconfig, namespace, "digits")
        batch = inputs[:1].astype(np.float32)

        def validate(outputs):
            assert outputs["logits"].shape == (1, 10), outputs["logits"].shape

        self.call = InferenceCall(model_name=lc.MODEL_NAME, inputs={"input": batch}, outputs=["logits"], validate=validate)
        self.reports: list[LoadReport] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.reports.append(run_load(self.endpoints, self.call, requests=200, concurrency=4, time_limit_s=30,
                                         request_timeout_s=10))

    def __enter__(self) -> Load:
        eventually(lambda: len(self.endpoints()) == 1, 60, "the ready endpoint behind the digits Service")
        self._thread.start()
        eventually(lambda: sum(r.requests for r in self.reports) >= 200, 60, "the first burst of requests")
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.endpoints.stop()

    def summary(self) -> dict:
        return {"requests": sum(r.requests for r in self.reports), "failures": sum(r.failures for r in self.reports),
                "errors": {k: v for r in self.reports for k, v in r.errors.items()},
                "endpoints": sorted({url for r in self.reports for url in r.by_endpoint})}


@pytest.fixture(scope="module")
def serving(bed):
    """v1 served by the pinned deployment `digits`, its pod's name, and v1's status."""
    cluster, namespace = bed["cluster"], bed["namespace"]
    # Unsigned, under a Model that requires a signature: Rejected, and never served.
    unsigned = lc.version_manifest(9, bed["uri"], bed["sha"])
    cluster.apply(namespace, [unsigned])
    cluster.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.phase}=Rejected", "modelversion/digits-v9",
                    "--timeout=120s", timeout=150)
    v9 = cluster.get(namespace, "modelversion", "digits-v9")["status"]
    assert next(c for c in v9["conditions"] if c["type"] == "Ready")["reason"] == "SignatureRequired", v9
    assert "jobName" not in v9, "nothing ran for an unsigned version"
    cluster.apply(namespace, [signed_version(bed, 1), lc.deployment_manifest("digits", pinned=1, progress_deadline=DEADLINE)])
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/digits", "--timeout=400s", timeout=430)
    v1 = cluster.get(namespace, "modelversion", "digits-v1")["status"]
    assert v1["provenance"]["signer"] == "release", "the CLI's signature was verified against the Model's trust policy"
    assert v1["provenance"]["compressedSigner"].startswith("sha256:")
    assert lc.score(lc.ready_server_ips(cluster, namespace, "digits")[0], bed["inputs"][:50], bed["labels"][:50]).accuracy > 0.9
    [fetch] = cluster.get(namespace, "deployment", "digits")["spec"]["template"]["spec"]["initContainers"]
    assert fetch["args"][-2:] == ["--signature-uri", v1["provenance"]["signatureUri"]]
    return ready_pods(cluster, namespace)


def overwrite_bytes(cluster, artifact: dict, provenance: dict) -> tuple[str, str]:
    """Someone with write access to the cache bucket overwrites the compressed artifact."""
    store = cluster.store()
    data = bytearray(store.read_bytes(artifact["uri"]))
    data[-16:] = bytes(16)
    store.upload_bytes(bytes(data), artifact["uri"])
    return "ChecksumMismatch", artifact["uri"]


def replace_signature(cluster, artifact: dict, provenance_status: dict) -> tuple[str, str]:
    """Someone replaces the signature with one of their own key over the same bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from modelops import provenance

    forger = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    forged = provenance.sign(forger, "model.onnx", [provenance.FileDigest("model.onnx", artifact["sha256"])])
    cluster.store().upload_bytes(forged, provenance_status["signatureUri"])
    return "UntrustedSigner", provenance_status["signatureUri"]


@pytest.mark.parametrize(("version", "quantization", "tamper"), [
    (2, "int8-weight-only", overwrite_bytes),
    (3, "int8-dynamic", replace_signature),
], ids=["artifact-overwritten", "signature-replaced"])
def test_a_tampered_cache_entry_is_refused_by_the_fetch_while_the_old_pods_serve_every_request(
        bed, serving, version, quantization, tamper) -> None:
    cluster, namespace = bed["cluster"], bed["namespace"]
    cluster.apply(namespace, [signed_version(bed, version, quantization)])
    cluster.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.phase}=Ready", f"modelversion/digits-v{version}",
                    "--timeout=400s", timeout=430)
    status = cluster.get(namespace, "modelversion", f"digits-v{version}")["status"]
    reason, named = tamper(cluster, status["compressedArtifact"], status["provenance"])

    with Load(cluster, namespace, bed["inputs"]) as load:
        cluster.kubectl("patch", "modeldeployment", "digits", "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"version": version}}))
        eventually(lambda: refused_fetch(cluster, namespace, version) is not None, 180,
                   f"the fetch of version {version} to refuse its artifact")
        message = refused_fetch(cluster, namespace, version)
        assert message.startswith(f"{reason}: ") and named in message, message
        eventually(lambda: f"refused the artifact of version {version}: " in condition(cluster, namespace, "Degraded").get(
            "message", ""), 60, "the deployment to say why")
        degraded = condition(cluster, namespace, "Degraded")
        eventually(lambda: load.summary()["requests"] >= MIN_REQUESTS, 120, f"{MIN_REQUESTS} requests")
    print(f"\nfetch of v{version}: {message}\nDegraded {degraded['reason']}: {degraded['message']}\n"
          f"load: {json.dumps(load.summary())}")

    assert (degraded["status"], degraded["reason"]) == ("True", "ArtifactRefused")
    assert f"refused the artifact of version {version}: {reason}: " in degraded["message"]
    assert named in degraded["message"] and "the pods of version 1 keep serving" in degraded["message"]
    served = cluster.get(namespace, "modeldeployment", "digits")["status"]
    assert served["servedVersion"] == 1
    assert ready_pods(cluster, namespace) == serving, "the old pod keeps serving; the new one never became ready"
    summary = load.summary()
    assert summary["failures"] == 0, summary
    assert summary["requests"] >= MIN_REQUESTS, summary
    assert lc.score(lc.ready_server_ips(cluster, namespace, "digits")[0], bed["inputs"][:50], bed["labels"][:50]).accuracy > 0.9

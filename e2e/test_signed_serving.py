"""Signed from bucket to GPU, on the test bed: the operator signs each compressed artifact with
its key, the Triton pod's fetch container verifies that signature before Triton loads the
model, and a signature replaced in the bucket is refused there while the old pod keeps serving."""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from e2e import lifecycle as lc
from e2e import support
from e2e.support import eventually

pytestmark = pytest.mark.e2e

KEY_SECRET = "modelops-signing-key"


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
    testbed.apply(namespace, [lc.storage_secret(testbed), lc.model_manifest(testbed, eval_uri)])
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(work / "key.pem")], check=True)
    testbed.kubectl("create", "secret", "generic", KEY_SECRET, "-n", namespace, f"--from-file=key.pem={work / 'key.pem'}")
    operator = support.OperatorProcess(
        Path(testbed.kubeconfig), namespace, Path(testbed.state_dir) / "logs" / f"operator-{namespace}.log",
        {"MODELOPS_SIGNING_KEY_SECRET": KEY_SECRET, "MODELOPS_SIGNING_KEY_NAMESPACE": namespace},
    )
    operator.start()
    data = np.load(files.eval_npz)
    try:
        yield {"cluster": testbed, "namespace": namespace, "uri": model_uri, "sha": model_sha,
               "inputs": data["inputs"], "labels": data["labels"]}
    finally:
        operator.stop()
        testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def fetch_failure(cluster, namespace: str) -> str | None:
    for pod in cluster.get(namespace, "pods", "-l", "modelops.dev/deployment=digits")["items"]:
        for status in pod["status"].get("initContainerStatuses", []):
            for state in (status.get("state", {}), status.get("lastState", {})):
                terminated = state.get("terminated") or {}
                if terminated.get("exitCode") not in (None, 0):
                    return terminated.get("message")
    return None


def test_a_signature_replaced_in_the_bucket_is_refused_by_the_fetch_while_the_old_pod_serves(bed) -> None:
    cluster, namespace = bed["cluster"], bed["namespace"]
    cluster.apply(namespace, [lc.version_manifest(1, bed["uri"], bed["sha"]), lc.deployment_manifest("digits", pinned=1)])
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/digits", "--timeout=400s", timeout=430)
    v1 = cluster.get(namespace, "modelversion", "digits-v1")["status"]
    assert v1["provenance"]["compressedSigner"].startswith("sha256:")
    [fetch] = cluster.get(namespace, "deployment", "digits")["spec"]["template"]["spec"]["initContainers"]
    assert fetch["args"][-2:] == ["--signature-uri", v1["provenance"]["signatureUri"]]
    old_pods = {p["metadata"]["name"] for p in cluster.get(namespace, "pods", "-l", "modelops.dev/deployment=digits")["items"]}

    # v2 is compressed and signed; then someone with write access to the bucket replaces its
    # signature by one of their own key over the same bytes.
    cluster.apply(namespace, [lc.version_manifest(2, bed["uri"], bed["sha"], quantization="int8-weight-only")])
    cluster.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.phase}=Ready", "modelversion/digits-v2",
                    "--timeout=400s", timeout=430)
    v2 = cluster.get(namespace, "modelversion", "digits-v2")["status"]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from modelops import provenance

    forger = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    artifact = v2["compressedArtifact"]
    forged = provenance.sign(forger, "model.onnx", [provenance.FileDigest("model.onnx", artifact["sha256"])])
    cluster.store().upload_bytes(forged, v2["provenance"]["signatureUri"])

    cluster.kubectl("patch", "modeldeployment", "digits", "-n", namespace, "--type=merge", "-p", '{"spec": {"version": 2}}')
    eventually(lambda: fetch_failure(cluster, namespace) is not None, 180, "the new pod's fetch to refuse the signature")
    message = fetch_failure(cluster, namespace)
    assert message.startswith("UntrustedSigner: ") and v2["provenance"]["signatureUri"] in message, message
    ready = lc.ready_server_ips(cluster, namespace, "digits")
    ready_names = {p["metadata"]["name"] for p in cluster.get(namespace, "pods", "-l", "modelops.dev/deployment=digits")["items"]
                   if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))}
    assert ready_names == old_pods, "the old pod keeps serving; the new one never became ready"
    assert lc.score(ready[0], bed["inputs"][:50], bed["labels"][:50]).accuracy > 0.9

"""Signed artifacts through the real operator and MinIO: a model signed with the model_signing
CLI (as docs/security.md shows) is Ready with its signer recorded; unsigned when required, an
untrusted key, a manifest for other files and a tampered file (a single file, and a data file
of an external-data file set) are each Rejected with their own reason before any Job or cached
compression is used, and nothing is served; a rotated key verifies beside the old one
until the old one leaves the policy; the operator's requireSignatures setting covers every Model."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    NOWHERE,
    Digits,
    Storage,
    apply_docs,
    digits_model_manifest,
    digits_version_manifest,
    eventually,
    get_json,
    kubectl,
    publish_cached,
)

pytestmark = pytest.mark.integration

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


def status_of(testbed: Any, namespace: str, name: str) -> dict[str, Any]:
    return get_json(testbed, namespace, "modelversion", name).get("status") or {}


def wait_phase(testbed: Any, namespace: str, name: str, phase: str, timeout: int = 120) -> dict[str, Any]:
    kubectl(testbed, "wait", "-n", namespace, f"--for=jsonpath={{.status.phase}}={phase}", f"modelversion/{name}",
            f"--timeout={timeout}s", timeout=timeout + 30)
    return status_of(testbed, namespace, name)


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def new_key(directory: Path, name: str) -> tuple[Path, str]:
    """An ECDSA P-256 key pair made with openssl, as docs/security.md shows: (private key, public PEM)."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(private)], check=True)
    subprocess.run(["openssl", "ec", "-in", str(private), "-pubout", "-out", str(public)], check=True, capture_output=True)
    return private, public.read_text()


def cli_sign(directory: Path, data: bytes, key: Path, filename: str = "model.onnx") -> bytes:
    """`model_signing sign key model.onnx --private_key key.pem --signature model.sig`."""
    work = directory / f"sign-{hashlib.sha256(data).hexdigest()[:8]}-{key.stem}-{filename}"
    work.mkdir(parents=True, exist_ok=True)
    (work / filename).write_bytes(data)
    subprocess.run(
        [str(MODEL_SIGNING), "sign", "key", str(work / filename), "--private_key", str(key), "--signature", str(work / "model.sig")],
        check=True, capture_output=True,
    )
    return (work / "model.sig").read_bytes()


def trust_docs(keys: dict[str, str], required: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ConfigMap of trusted public keys and the Model's spec.trust naming each of them."""
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "trusted-signers"},
                 "data": {f"{name}.pub": pem for name, pem in keys.items()}}
    trust = {"required": required, "signers": [
        {"name": name, "publicKey": {"configMapRef": {"name": "trusted-signers"}, "key": f"{name}.pub"}} for name in keys
    ]}
    return configmap, trust


def signed_version(storage: Storage, number: int, data: bytes, bundle: bytes | None, sha: str | None = None) -> dict[str, Any]:
    doc = digits_version_manifest(storage, number, sha or storage.put(f"digits/{number}/model.onnx", data))
    if bundle is not None:
        storage.put(f"digits/{number}/model.sig", bundle)
        doc["spec"]["artifact"]["signature"] = {"uri": storage.uri(f"digits/{number}/model.sig")}
    return doc


def test_a_model_signed_with_the_cli_is_ready_and_records_its_signer(testbed, namespace, storage, digits: Digits,
                                                                    operator, tmp_path) -> None:
    key, public = new_key(tmp_path, "release")
    configmap, trust = trust_docs({"release": public})
    model = digits_model_manifest(storage, NOWHERE)
    model["spec"]["trust"] = trust
    data = digits.onnx[0]
    version = signed_version(storage, 1, data, cli_sign(tmp_path, data, key))
    publish_cached(storage, model, version, data)  # compressed already: this checks the operator's verification alone
    apply_docs(testbed, namespace, [storage.secret("storage"), configmap, model, version])

    status = wait_phase(testbed, namespace, "digits-v1", "Ready")
    assert status["provenance"] == {"signer": "release"}
    assert ready_condition(status)["reason"] == "CompressedFromCache"


def test_each_refusal_is_rejected_with_its_reason_before_any_job_or_cache(testbed, namespace, storage, digits: Digits,
                                                                         operator, tmp_path) -> None:
    trusted_key, trusted = new_key(tmp_path, "release")
    stranger, _ = new_key(tmp_path, "stranger")
    configmap, trust = trust_docs({"release": trusted})
    model = digits_model_manifest(storage, NOWHERE)
    model["spec"]["trust"] = trust
    data, replaced = digits.onnx[0], digits.onnx[1]
    cases = {
        1: (signed_version(storage, 1, data, None), "SignatureRequired", "spec.artifact.signature is unset"),
        2: (signed_version(storage, 2, data, cli_sign(tmp_path, data, stranger)), "UntrustedSigner", "(trusted: release)"),
        3: (signed_version(storage, 3, data, cli_sign(tmp_path, data, trusted_key, "other.onnx")), "ManifestMismatch",
            "signed but not in the version: other.onnx"),
        # The file was replaced and the version pins the new bytes: the signed digest is the old one.
        4: (signed_version(storage, 4, replaced, cli_sign(tmp_path, data, trusted_key)), "ArtifactTampered", "file model.onnx:"),
    }
    for doc, _, _ in cases.values():
        publish_cached(storage, model, doc, data)  # a cached compression must not stand in for a verification
    apply_docs(testbed, namespace, [storage.secret("storage"), configmap, model, *(doc for doc, _, _ in cases.values())])

    for number, (_, reason, needle) in cases.items():
        status = wait_phase(testbed, namespace, f"digits-v{number}", "Rejected")
        ready = ready_condition(status)
        assert ready["reason"] == reason, (number, ready)
        assert needle in ready["message"], (number, ready["message"])
        assert "compressedArtifact" not in status and "provenance" not in status
    assert get_json(testbed, namespace, "jobs")["items"] == []


def test_a_tampered_data_file_of_a_signed_file_set_is_rejected_naming_it_and_nothing_is_served(
        testbed, namespace, storage, digits: Digits, operator, tmp_path) -> None:
    """An ONNX model with external data (docs/large-models.md), its folder signed with the CLI;
    then one data file is replaced in the bucket and the version pins the bytes now there."""
    from e2e.test_file_sets import DATA_FILES, external_data_model

    key, public = new_key(tmp_path, "release")
    configmap, trust = trust_docs({"release": public})
    model = digits_model_manifest(storage, NOWHERE)
    model["spec"]["trust"] = trust
    source = tmp_path / "digits.onnx"
    source.write_bytes(digits.onnx[0])
    folder = tmp_path / "set"
    paths = external_data_model(source, folder, namespace)
    subprocess.run([str(MODEL_SIGNING), "sign", "key", str(folder), "--private_key", str(key),
                    "--signature", str(tmp_path / "set.sig")], check=True, capture_output=True)
    files = []
    for path in paths:
        relative = path.relative_to(folder).as_posix()
        body = path.read_bytes()
        if relative == DATA_FILES[1]:
            body = body[:-4] + bytes(4)
        files.append({"path": relative, "sha256": storage.put(f"digits/set/{relative}", body)})
    storage.put("digits/set.sig", (tmp_path / "set.sig").read_bytes())
    version = {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "digits-v1"},
        "spec": {"model": "digits", "version": 1,
                 "artifact": {"uri": storage.uri("digits/set/"), "format": "onnx", "entrypoint": "model.onnx", "files": files,
                              "signature": {"uri": storage.uri("digits/set.sig")}}},
    }
    deployment = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
                  "spec": {"model": "digits", "versionPolicy": "Pinned", "version": 1}}
    apply_docs(testbed, namespace, [storage.secret("storage"), configmap, model, version, deployment])

    status = wait_phase(testbed, namespace, "digits-v1", "Rejected")
    ready = ready_condition(status)
    print(f"\nv1 {ready['reason']}: {ready['message']}")
    assert ready["reason"] == "ArtifactTampered", ready
    assert f"file {DATA_FILES[1]}: the version's sha256 is {files[2]['sha256']}" in ready["message"], ready["message"]
    assert "compressedArtifact" not in status and "provenance" not in status
    # Nothing is served: no Job compresses, and the deployment renders no Triton Deployment or pod.
    served = eventually(lambda: next((c for c in (get_json(testbed, namespace, "modeldeployment", "digits").get("status") or {})
                                      .get("conditions") or [] if c["type"] == "Ready"), None), 60, "the deployment's Ready")
    assert (served["status"], served["reason"]) == ("False", "PinnedVersionNotReady"), served
    assert get_json(testbed, namespace, "jobs")["items"] == []
    assert get_json(testbed, namespace, "deployments")["items"] == []
    assert get_json(testbed, namespace, "pods")["items"] == []


def test_a_rotated_key_verifies_beside_the_old_one_until_the_old_one_is_removed(testbed, namespace, storage,
                                                                               digits: Digits, operator, tmp_path) -> None:
    old_key, old = new_key(tmp_path, "old")
    new_key_path, new = new_key(tmp_path, "new")
    configmap, trust = trust_docs({"old": old, "new": new})
    model = digits_model_manifest(storage, NOWHERE)
    model["spec"]["trust"] = trust
    data = digits.onnx[0]
    by_old = cli_sign(tmp_path, data, old_key)
    by_new = cli_sign(tmp_path, data, new_key_path)
    v1, v2 = signed_version(storage, 1, data, by_old), signed_version(storage, 2, data, by_new)
    publish_cached(storage, model, v1, data)
    apply_docs(testbed, namespace, [storage.secret("storage"), configmap, model, v1, v2])
    assert wait_phase(testbed, namespace, "digits-v1", "Ready")["provenance"] == {"signer": "old"}
    assert wait_phase(testbed, namespace, "digits-v2", "Ready")["provenance"] == {"signer": "new"}

    # The old key leaves the policy (and its ConfigMap entry).
    configmap, trust = trust_docs({"new": new})
    model["spec"]["trust"] = trust
    v3, v4 = signed_version(storage, 3, data, by_old), signed_version(storage, 4, data, by_new)
    apply_docs(testbed, namespace, [configmap, model])
    apply_docs(testbed, namespace, [v3, v4])
    rejected = ready_condition(wait_phase(testbed, namespace, "digits-v3", "Rejected"))
    assert rejected["reason"] == "UntrustedSigner" and "(trusted: new)" in rejected["message"]
    assert wait_phase(testbed, namespace, "digits-v4", "Ready")["provenance"] == {"signer": "new"}


def test_require_signatures_covers_every_model(testbed, namespace, storage, digits: Digits, start_operator) -> None:
    start_operator(require_signatures="true")
    model = digits_model_manifest(storage, NOWHERE)  # no spec.trust at all
    version = signed_version(storage, 1, digits.onnx[0], None)
    publish_cached(storage, model, version, digits.onnx[0])
    apply_docs(testbed, namespace, [storage.secret("storage"), model, version])
    ready = ready_condition(wait_phase(testbed, namespace, "digits-v1", "Rejected"))
    assert ready["reason"] == "SignatureRequired" and "requireSignatures" in ready["message"]
    assert get_json(testbed, namespace, "jobs")["items"] == []


def test_the_operator_signs_what_it_serves_with_a_provenance_statement(testbed, namespace, storage, digits: Digits,
                                                                       start_operator, tmp_path) -> None:
    """Until its key Secret exists the operator holds the version back; then the compressed
    artifact carries a model_signing bundle that the CLI verifies with the operator's public key,
    and a signed in-toto statement of the source, its signer, the recipe and the compressor."""
    from modelops import provenance

    start_operator(signing_key_secret="modelops-signing-key", signing_key_namespace=namespace)
    key, public = new_key(tmp_path, "release")
    operator_key, operator_public = new_key(tmp_path, "operator")
    configmap, trust = trust_docs({"release": public})
    model = digits_model_manifest(storage, NOWHERE)
    model["spec"]["trust"] = trust
    data = digits.onnx[0]
    version = signed_version(storage, 1, data, cli_sign(tmp_path, data, key))
    publish_cached(storage, model, version, data)
    # An entry the operator compressed and signed earlier: a cached compression counts only
    # while the operator's signature of it verifies.
    sign_cached(storage, Path(operator_key).read_bytes())
    apply_docs(testbed, namespace, [storage.secret("storage"), configmap, model, version])

    held = ready_condition(wait_phase(testbed, namespace, "digits-v1", "Compressing"))
    assert held["reason"] == "SigningKeyNotFound" and f"{namespace}/modelops-signing-key does not exist" in held["message"]
    kubectl(testbed, "create", "secret", "generic", "modelops-signing-key", "-n", namespace, f"--from-file=key.pem={operator_key}")

    status = wait_phase(testbed, namespace, "digits-v1", "Ready")
    signed, artifact = status["provenance"], status["compressedArtifact"]
    assert signed["signer"] == "release"
    assert signed["compressedSigner"] == provenance.fingerprint(operator_public.encode())

    # The compressed artifact verifies with the model_signing CLI and the operator's public key.
    work = tmp_path / "served"
    work.mkdir()
    client = storage.client()
    for uri, path in ((artifact["uri"], work / "model.onnx"), (signed["signatureUri"], work / "model.sig")):
        path.write_bytes(client.get_object(Bucket=storage.bucket, Key=uri.removeprefix(f"s3://{storage.bucket}/"))["Body"].read())
    (work / "operator.pub").write_text(operator_public)
    subprocess.run([str(MODEL_SIGNING), "verify", "key", str(work / "model.onnx"), "--signature", str(work / "model.sig"),
                    "--public_key", str(work / "operator.pub")], check=True, capture_output=True)

    # The statement verifies with the same key, and says what was made from what.
    bundle = client.get_object(Bucket=storage.bucket, Key=signed["statementUri"].removeprefix(f"s3://{storage.bucket}/"))["Body"].read()
    assert provenance.statement_digest(bundle) == signed["statementSha256"]
    statement = provenance.verify_statement(bundle, operator_public.encode())
    assert statement["subject"] == [{"name": "model.onnx", "uri": artifact["uri"], "digest": {"sha256": artifact["sha256"]}}]
    build = statement["predicate"]["buildDefinition"]
    assert build["resolvedDependencies"] == [{"uri": version["spec"]["artifact"]["uri"],
                                              "digest": {"sha256": version["spec"]["artifact"]["sha256"]},
                                              "annotations": {"signer": "release"}}]
    assert build["externalParameters"]["recipe"]["quantization"] == "int8-weight-only"
    assert statement["predicate"]["runDetails"]["builder"]["version"]["compressor"] == status["report"]["compressorVersion"]
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == status["cacheKey"]
    with pytest.raises(provenance.ProvenanceError):
        provenance.verify_statement(bundle, public.encode())  # not the release key's
    assert get_json(testbed, namespace, "jobs")["items"] == []


def cached_artifact(storage: Storage) -> str:
    """The key of the one compressed artifact in the cache (publish_cached's)."""
    listing = storage.client().list_objects_v2(Bucket=storage.bucket, Prefix="modelops-cache/")
    [key] = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith("/model.onnx")]
    return key


def sign_cached(storage: Storage, private_key: bytes) -> None:
    """The cached artifact's bundle beside it, as the operator writes it, signed with `private_key`."""
    from modelops import provenance

    key = cached_artifact(storage)
    sha = hashlib.sha256(storage.client().get_object(Bucket=storage.bucket, Key=key)["Body"].read()).hexdigest()
    storage.put(key + ".sig", provenance.sign(private_key, "model.onnx", [provenance.FileDigest("model.onnx", sha)]))


def test_a_cached_compression_whose_signature_does_not_verify_is_compressed_again(testbed, namespace, storage,
                                                                                  digits: Digits, start_operator,
                                                                                  tmp_path) -> None:
    """A cache entry replaced in the bucket with a signature of another key is not reused: the
    version gets a Job that compresses again instead of becoming Ready from the cache."""
    start_operator(signing_key_secret="modelops-signing-key", signing_key_namespace=namespace)
    operator_key, _ = new_key(tmp_path, "operator")
    forger, _ = new_key(tmp_path, "forger")
    kubectl(testbed, "create", "secret", "generic", "modelops-signing-key", "-n", namespace, f"--from-file=key.pem={operator_key}")
    model = digits_model_manifest(storage, NOWHERE)
    data = digits.onnx[0]
    version = signed_version(storage, 1, data, None)
    publish_cached(storage, model, version, data)
    sign_cached(storage, forger.read_bytes())
    apply_docs(testbed, namespace, [storage.secret("storage"), model, version])

    [job] = eventually(lambda: get_json(testbed, namespace, "jobs")["items"], 60, "a compression Job")
    assert "--recompress" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    status = status_of(testbed, namespace, "digits-v1")
    assert status["phase"] == "Compressing" and "compressedArtifact" not in status

"""modelops.provenance: model_signing bundles verified against trusted signers and a file list."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path

import model_signing
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from modelops import provenance
from modelops.api.trust import ProvenanceReason
from modelops.provenance import FileDigest, ProvenanceError, TrustedSigner

pytestmark = pytest.mark.unit

DATA = b"\x08\x07model bytes"
SHA = hashlib.sha256(DATA).hexdigest()
FILES = [FileDigest("model.onnx", SHA)]


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def p256():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other():
    return ec.generate_private_key(ec.SECP256R1())


def _signed_by_library(tmp_path: Path, key, data: bytes = DATA, name: str = "model.onnx") -> bytes:
    """A bundle as `model_signing sign key model.onnx` writes it (the library behind the CLI)."""
    model = tmp_path / name
    model.write_bytes(data)
    (tmp_path / "key.pem").write_bytes(_pem(key))
    model_signing.signing.Config().use_elliptic_key_signer(private_key=tmp_path / "key.pem").sign(model, tmp_path / "model.sig")
    return (tmp_path / "model.sig").read_bytes()


def _reason(bundle: bytes, signers, files=FILES) -> tuple[ProvenanceReason, str]:
    with pytest.raises(ProvenanceError) as caught:
        provenance.verify(bundle, signers, files)
    return caught.value.reason, str(caught.value)


def test_a_bundle_from_model_signing_verifies_with_its_public_key(tmp_path, p256) -> None:
    bundle = _signed_by_library(tmp_path, p256)
    verified = provenance.verify(bundle, [TrustedSigner("release", public_key_pem=_public(p256))], FILES)
    assert verified.signer == "release" and verified.files == tuple(FILES)


def test_a_signed_folder_names_its_files_relative_to_the_folder(tmp_path, p256) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(DATA)
    (folder / "model.onnx.data").write_bytes(b"weights")
    (tmp_path / "key.pem").write_bytes(_pem(p256))
    model_signing.signing.Config().use_elliptic_key_signer(private_key=tmp_path / "key.pem").sign(folder, tmp_path / "model.sig")
    files = [FileDigest("model.onnx", SHA), FileDigest("model.onnx.data", hashlib.sha256(b"weights").hexdigest())]
    verified = provenance.verify((tmp_path / "model.sig").read_bytes(), [TrustedSigner("k", public_key_pem=_public(p256))], files)
    assert verified.signer == "k"
    reason, message = _reason((tmp_path / "model.sig").read_bytes(), [TrustedSigner("k", public_key_pem=_public(p256))])
    assert reason == ProvenanceReason.MANIFEST_MISMATCH and "signed but not in the version: model.onnx.data" in message


def test_an_untrusted_key_is_refused_naming_the_signing_key_and_the_trusted_ones(tmp_path, p256, other) -> None:
    bundle = _signed_by_library(tmp_path, p256)
    reason, message = _reason(bundle, [TrustedSigner("ops", public_key_pem=_public(other))])
    fingerprint = provenance.key_fingerprint(p256.public_key())
    assert reason == ProvenanceReason.UNTRUSTED_SIGNER
    assert f"key sha256:{fingerprint}" in message and "(trusted: ops)" in message


def test_no_trusted_signer_at_all_is_untrusted(tmp_path, p256) -> None:
    reason, message = _reason(_signed_by_library(tmp_path, p256), [])
    assert reason == ProvenanceReason.UNTRUSTED_SIGNER and "(trusted: none)" in message


def test_a_digest_other_than_the_signed_one_is_tampered_naming_the_file(tmp_path, p256) -> None:
    bundle = _signed_by_library(tmp_path, p256)
    reason, message = _reason(bundle, [TrustedSigner("k", public_key_pem=_public(p256))], [FileDigest("model.onnx", "a" * 64)])
    assert reason == ProvenanceReason.ARTIFACT_TAMPERED
    assert message.startswith("file model.onnx:") and SHA in message and "a" * 64 in message


def test_a_manifest_for_other_files_is_refused_naming_both_sides(tmp_path, p256) -> None:
    bundle = _signed_by_library(tmp_path, p256, name="other.onnx")
    reason, message = _reason(bundle, [TrustedSigner("k", public_key_pem=_public(p256))])
    assert reason == ProvenanceReason.MANIFEST_MISMATCH
    assert "not signed: model.onnx" in message and "signed but not in the version: other.onnx" in message


def test_an_edited_manifest_breaks_the_signature(tmp_path, p256) -> None:
    """Changing a digest inside the bundle (to match a replaced file) leaves no key that verifies it."""
    bundle = json.loads(_signed_by_library(tmp_path, p256))
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"][0]["digest"] = "b" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    reason, _ = _reason(json.dumps(bundle).encode(), [TrustedSigner("k", public_key_pem=_public(p256))], [FileDigest("model.onnx", "b" * 64)])
    assert reason == ProvenanceReason.UNTRUSTED_SIGNER


def test_rotation_both_keys_verify_while_both_are_trusted(tmp_path, p256, other) -> None:
    old = _signed_by_library(tmp_path, p256)
    new = provenance.sign(_pem(other), "digits", FILES)
    both = [TrustedSigner("old", public_key_pem=_public(p256)), TrustedSigner("new", public_key_pem=_public(other))]
    assert provenance.verify(old, both, FILES).signer == "old"
    assert provenance.verify(new, both, FILES).signer == "new"
    assert _reason(old, both[1:])[0] == ProvenanceReason.UNTRUSTED_SIGNER
    assert provenance.verify(new, both[1:], FILES).signer == "new"


def test_ed25519_keys_sign_and_verify() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    bundle = provenance.sign(_pem(key), "digits", FILES)
    assert provenance.verify(bundle, [TrustedSigner("ed", public_key_pem=_public(key))], FILES).signer == "ed"
    assert _reason(bundle, [TrustedSigner("p", public_key_pem=_public(ec.generate_private_key(ec.SECP256R1())))])[0] == (
        ProvenanceReason.UNTRUSTED_SIGNER
    )


def _certificate(subject: str, key, issuer_key, issuer: str, ca: bool, email: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    if email:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def chain():
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("models CA", ca_key, ca_key, "models CA", ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("release", leaf_key, ca_key, "models CA", ca=False, email="release@example.com")
    return ca, leaf_key, leaf


def _signed_with_certificate(tmp_path: Path, chain) -> bytes:
    ca, leaf_key, leaf = chain
    (tmp_path / "model.onnx").write_bytes(DATA)
    (tmp_path / "leaf.key").write_bytes(_pem(leaf_key))
    (tmp_path / "leaf.crt").write_bytes(_cert_pem(leaf))
    (tmp_path / "ca.crt").write_bytes(_cert_pem(ca))
    model_signing.signing.Config().use_certificate_signer(
        private_key=tmp_path / "leaf.key", signing_certificate=tmp_path / "leaf.crt", certificate_chain=[tmp_path / "ca.crt"]
    ).sign(tmp_path / "model.onnx", tmp_path / "model.sig")
    return (tmp_path / "model.sig").read_bytes()


def test_a_certificate_chain_verifies_the_identity_it_names(tmp_path, chain) -> None:
    bundle = _signed_with_certificate(tmp_path, chain)
    ca = _cert_pem(chain[0])
    trusted = TrustedSigner("ci", certificate_chain_pem=ca, identity="release@example.com")
    assert provenance.verify(bundle, [trusted], FILES).signer == "ci"
    reason, message = _reason(bundle, [TrustedSigner("ci", certificate_chain_pem=ca, identity="someone@example.com")])
    assert reason == ProvenanceReason.UNTRUSTED_SIGNER and "release@example.com" in message


def test_a_certificate_from_another_ca_is_untrusted(tmp_path, chain) -> None:
    bundle = _signed_with_certificate(tmp_path, chain)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _certificate("other CA", other_key, other_key, "other CA", ca=True)
    trusted = TrustedSigner("ci", certificate_chain_pem=_cert_pem(other_ca), identity="release@example.com")
    assert _reason(bundle, [trusted])[0] == ProvenanceReason.UNTRUSTED_SIGNER


@pytest.mark.parametrize(
    ("bundle", "needle"),
    [
        (b"not json", "not a model_signing bundle"),
        (b'{"mediaType": "x"}', "not a model_signing bundle"),
        (b"{" + b" " * provenance.MAX_BUNDLE_BYTES + b"}", "more than"),
    ],
)
def test_what_is_not_a_bundle_is_an_invalid_signature(bundle, needle, p256) -> None:
    reason, message = _reason(bundle, [TrustedSigner("k", public_key_pem=_public(p256))])
    assert reason == ProvenanceReason.INVALID_SIGNATURE and needle in message


def test_a_key_that_is_not_a_supported_public_key_is_a_policy_error(tmp_path, p256) -> None:
    reason, message = _reason(_signed_by_library(tmp_path, p256), [TrustedSigner("bad", public_key_pem=b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")])
    assert reason == ProvenanceReason.TRUST_POLICY_INVALID and "'bad'" in message


def test_the_statement_digest_is_the_sha256_of_the_signed_payload(p256) -> None:
    bundle = provenance.sign(_pem(p256), "digits", FILES)
    payload = base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"])
    assert provenance.statement_digest(bundle) == hashlib.sha256(payload).hexdigest()

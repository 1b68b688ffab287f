"""Signatures of artifacts: verify an OpenSSF model-signing bundle against a trust policy, and
sign a list of files.

Pure: everything works on bytes in memory (bundles, PEM keys and certificates) and on a list
of (path, sha256) files, so a single-file artifact and a file set are verified the same way.
Reading the bundle and the policy's ConfigMaps and Secrets is the caller's I/O.
model_signing takes seconds and tens of MiB to import (it loads sigstore): the operator
imports this module only when a version carries a signature.

A bundle is the `model_signing` CLI's output: a Sigstore bundle holding a DSSE envelope over
an in-toto statement whose predicate lists every signed file with its digest. Verifying it
here needs no network: keys and certificate chains come from the policy, and Sigstore's
keyless bundles (which need a trust root and transparency log) are not accepted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import exceptions as crypto_errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509 import oid
from model_signing import manifest as ms_manifest
from model_signing._hashing import hashing as ms_hashing
from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb, signing
from OpenSSL import crypto
from sigstore_models.bundle import v1 as bundle_pb

from modelops.api.trust import ProvenanceReason

SHA256 = "sha256"
# A bundle is a few KiB per thousand files; anything far larger is not one.
MAX_BUNDLE_BYTES = 4 << 20
# model_signing names a single signed file "." and gives its name as the subject.
_SINGLE_FILE = "."


class ProvenanceError(Exception):
    """A refusal with its reason; the message names the file or the signer."""

    def __init__(self, reason: ProvenanceReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FileDigest:
    """One file of an artifact: its path (relative to the artifact's prefix; the object's name
    for a single file) and the sha256 the version pins."""

    path: str
    sha256: str


@dataclass(frozen=True)
class TrustedSigner:
    """A signer of the trust policy: a public key, or a CA chain and the identity (an email,
    URI or DNS name in the signing certificate, or its common name) it must certify."""

    name: str
    public_key_pem: bytes | None = None
    certificate_chain_pem: bytes | None = None
    identity: str | None = None


@dataclass(frozen=True)
class Verified:
    signer: str
    files: tuple[FileDigest, ...]


def key_fingerprint(public_key: Any) -> str:
    """sha256 of the PEM SubjectPublicKeyInfo: the key hint model_signing writes into bundles."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def fingerprint(public_key_pem: bytes) -> str:
    """`sha256:<hex>` of a PEM public key, as bundles name their key."""
    return "sha256:" + key_fingerprint(serialization.load_pem_public_key(public_key_pem))


def public_key_pem(private_key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_key_pem, None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- verifiers built from bytes (model_signing's take file paths) ---------------------------


class _EcKeyVerifier(sign_ec_key.Verifier):
    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:  # noqa: D107 - no file to read
        sign_ec_key._check_supported_ec_key(public_key)
        self._public_key = public_key


class _Ed25519Verifier(sign_sigstore_pb.Verifier):
    """Ed25519 over the same DSSE envelope (model_signing 1.1 signs with EC keys only)."""

    def __init__(self, public_key: ed25519.Ed25519PublicKey) -> None:
        self._public_key = public_key

    def _verify_bundle(self, bundle: bundle_pb.Bundle) -> tuple[str, bytes]:
        hint = bundle.verification_material.public_key.hint if bundle.verification_material.public_key else None
        if hint and hint != key_fingerprint(self._public_key):
            raise ValueError("key mismatch")
        envelope = bundle.dsse_envelope
        assert envelope is not None  # parse_bundle refuses a bundle without one
        self._public_key.verify(envelope.signatures[0].sig, sign_sigstore_pb.pae(envelope.payload))
        return envelope.payload_type, envelope.payload


class _CertificateVerifier(sign_certificate.Verifier):
    def __init__(self, chain_pem: bytes) -> None:
        self._log_fingerprints = False
        self._store = crypto.X509Store()
        for certificate in x509.load_pem_x509_certificates(chain_pem):
            self._store.add_cert(crypto.X509.from_cryptography(certificate))


def _verifier(signer: TrustedSigner) -> signing.Verifier:
    """The signer's verifier; a PEM that is not a supported key or chain is a policy error."""
    try:
        if signer.certificate_chain_pem is not None:
            return _CertificateVerifier(signer.certificate_chain_pem)
        assert signer.public_key_pem is not None
        key = serialization.load_pem_public_key(signer.public_key_pem)
        if isinstance(key, ed25519.Ed25519PublicKey):
            return _Ed25519Verifier(key)
        if isinstance(key, ec.EllipticCurvePublicKey):
            return _EcKeyVerifier(key)
        raise ValueError(f"{type(key).__name__} keys are not supported: use ECDSA (P-256, P-384, P-521) or Ed25519")
    except (ValueError, TypeError, crypto.Error) as exc:
        raise ProvenanceError(ProvenanceReason.TRUST_POLICY_INVALID, f"trusted signer {signer.name!r}: {exc}") from None


# --- reading a bundle ------------------------------------------------------------------------


def parse_bundle(data: bytes) -> sign_sigstore_pb.Signature:
    """A model_signing bundle from its JSON bytes (what `Signature.read` does with a file)."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise ProvenanceError(ProvenanceReason.INVALID_SIGNATURE, f"the signature bundle is {len(data)} bytes, more than {MAX_BUNDLE_BYTES}")
    try:
        parsed = json.loads(data)
        material = parsed["verificationMaterial"]
        material.setdefault("tlogEntries", [])
        if "publicKey" in material:
            material["publicKey"].setdefault("hint", None)
            for extra in ("rawBytes", "keyDetails"):
                material["publicKey"].pop(extra, None)
        bundle = bundle_pb.Bundle.from_dict(parsed)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProvenanceError(
            ProvenanceReason.INVALID_SIGNATURE, f"the signature is not a model_signing bundle ({type(exc).__name__}: {exc})"
        ) from None
    if bundle.dsse_envelope is None or not bundle.dsse_envelope.signatures:
        kind = "a Sigstore keyless bundle (it needs a trust root and transparency log)" if bundle.message_signature is None else "a message signature"
        raise ProvenanceError(ProvenanceReason.INVALID_SIGNATURE, f"the signature bundle holds no DSSE envelope; it is {kind}")
    return sign_sigstore_pb.Signature(bundle)


def bundle_signer(signature: sign_sigstore_pb.Signature) -> str:
    """Who the bundle says signed it: a key fingerprint, or the signing certificate's identity."""
    material = signature.bundle.verification_material
    chain = material.x509_certificate_chain
    if chain is not None and chain.certificates:
        leaf = x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)
        names = certificate_identities(leaf)
        return f"certificate {leaf.subject.rfc4514_string()}" + (f" ({', '.join(names)})" if names else "")
    if material.public_key is not None and material.public_key.hint:
        return f"key sha256:{material.public_key.hint}"
    return "an unnamed key"


def certificate_identities(certificate: x509.Certificate) -> list[str]:
    """The identities a certificate vouches for: its SAN emails, URIs and DNS names, else its CN."""
    names: list[str] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName):
            names.extend(str(v) for v in san.get_values_for_type(kind))
    except x509.ExtensionNotFound:
        pass
    if not names:
        names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(oid.NameOID.COMMON_NAME)]
    return names


def _leaf(signature: sign_sigstore_pb.Signature) -> x509.Certificate | None:
    chain = signature.bundle.verification_material.x509_certificate_chain
    if chain is None or not chain.certificates:
        return None
    return x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)


def _try(signer: TrustedSigner, verifier: signing.Verifier, signature: sign_sigstore_pb.Signature) -> ms_manifest.Manifest | None:
    """The signed manifest when `signer` made the signature; None when it did not."""
    is_chain = signer.certificate_chain_pem is not None
    if is_chain != (_leaf(signature) is not None):
        return None  # a key cannot verify a certificate's signature, nor a chain a bare key's
    try:
        signed = verifier.verify(signature)
    except (ValueError, crypto_errors.InvalidSignature, crypto.X509StoreContextError, TypeError, AttributeError):
        return None
    if is_chain:
        leaf = _leaf(signature)
        assert leaf is not None
        if signer.identity not in certificate_identities(leaf):
            return None
    return signed


def _signed_files(signed: ms_manifest.Manifest) -> dict[str, str]:
    serialization_type = signed.serialization_type
    if serialization_type.get("method") != "files":
        raise ProvenanceError(
            ProvenanceReason.MANIFEST_MISMATCH,
            f"the signed manifest was made by {serialization_type.get('method')!r} serialization; sign whole files "
            "(model_signing's default)",
        )
    files: dict[str, str] = {}
    for descriptor in signed.resource_descriptors():
        if descriptor.digest.algorithm != SHA256:
            raise ProvenanceError(
                ProvenanceReason.MANIFEST_MISMATCH,
                f"the signed manifest hashes {descriptor.identifier} with {descriptor.digest.algorithm}; sign with sha256, "
                "the digest the version pins",
            )
        name = signed.model_name if descriptor.identifier == _SINGLE_FILE else descriptor.identifier
        files[name] = descriptor.digest.digest_hex
    return files


def compare(signed: dict[str, str], files: Sequence[FileDigest]) -> None:
    """The signed manifest must list exactly the version's files, each with its digest."""
    wanted = {f.path: f.sha256.lower() for f in files}
    for path in sorted(wanted.keys() & signed.keys()):
        if signed[path] != wanted[path]:
            raise ProvenanceError(
                ProvenanceReason.ARTIFACT_TAMPERED,
                f"file {path}: the version's sha256 is {wanted[path]} but the signed manifest says {signed[path]}",
            )
    unsigned = sorted(wanted.keys() - signed.keys())
    extra = sorted(signed.keys() - wanted.keys())
    if unsigned or extra:
        parts = []
        if unsigned:
            parts.append(f"not signed: {', '.join(unsigned)}")
        if extra:
            parts.append(f"signed but not in the version: {', '.join(extra)}")
        raise ProvenanceError(
            ProvenanceReason.MANIFEST_MISMATCH, f"the signed manifest is for other files ({'; '.join(parts)})"
        )


def verify(bundle: bytes, signers: Sequence[TrustedSigner], files: Sequence[FileDigest]) -> Verified:
    """Verify `bundle` against the trusted signers and the version's files; raise ProvenanceError."""
    verifiers = [(signer, _verifier(signer)) for signer in signers]  # a bad policy first: it is not the bundle's fault
    signature = parse_bundle(bundle)
    for signer, verifier in verifiers:
        signed = _try(signer, verifier, signature)
        if signed is not None:
            compare(_signed_files(signed), files)
            return Verified(signer.name, tuple(files))
    trusted = ", ".join(s.name for s in signers) or "none"
    raise ProvenanceError(
        ProvenanceReason.UNTRUSTED_SIGNER,
        f"signed by {bundle_signer(signature)}, which no trusted signer verifies (trusted: {trusted})",
    )


# --- signing -------------------------------------------------------------------------------


class _EcKeySigner(sign_ec_key.Signer):
    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        sign_ec_key._check_supported_ec_key(private_key.public_key())
        self._private_key = private_key


class _Ed25519Signer(sign_ec_key.Signer):
    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._ed25519 = private_key

    def sign(self, payload: signing.Payload) -> signing.Signature:
        # The envelope and bundle as model_signing writes them, signed with Ed25519.
        from google.protobuf import json_format
        from sigstore_models import intoto as intoto_pb

        raw = json_format.MessageToJson(payload.statement.pb).encode("utf-8")
        sig = base64.b64encode(self._ed25519.sign(sign_sigstore_pb.pae(raw)))
        envelope = intoto_pb.Envelope(
            payload=base64.b64encode(raw),
            payload_type=signing._IN_TOTO_JSON_PAYLOAD_TYPE,
            signatures=[intoto_pb.Signature(sig=sig, keyid="")],
        )
        return sign_sigstore_pb.Signature(
            bundle_pb.Bundle(
                media_type=sign_sigstore_pb._BUNDLE_MEDIA_TYPE,  # type: ignore[arg-type]
                verification_material=self._get_verification_material(),
                dsse_envelope=envelope,
            )
        )


def file_manifest(name: str, files: Iterable[FileDigest]) -> ms_manifest.Manifest:
    serialization_type = ms_manifest._FileSerialization(SHA256)
    items = [
        ms_manifest.FileManifestItem(
            path=pathlib.PurePosixPath(f.path), digest=ms_hashing.Digest(SHA256, bytes.fromhex(f.sha256))
        )
        for f in files
    ]
    return ms_manifest.Manifest(name, items, serialization_type)


def sign(private_key_pem: bytes, name: str, files: Iterable[FileDigest]) -> bytes:
    """A bundle over `files`, as `model_signing sign key` writes for a folder named `name`, or,
    when the one file is `name` itself, for that file (so `model_signing verify` takes it)."""
    files = list(files)
    if len(files) == 1 and files[0].path == name:
        files = [FileDigest(_SINGLE_FILE, files[0].sha256)]
    key = serialization.load_pem_private_key(private_key_pem, None)
    signer: signing.Signer
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signer = _Ed25519Signer(key)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signer = _EcKeySigner(key)
    else:
        raise ValueError(f"{type(key).__name__} keys are not supported: use ECDSA (P-256) or Ed25519")
    signature = signer.sign(signing.Payload(file_manifest(name, files)))
    assert isinstance(signature, sign_sigstore_pb.Signature)
    return signature.bundle.to_json().encode()


def statement_digest(bundle: bytes) -> str:
    """sha256 of the in-toto statement a bundle signs (its DSSE payload)."""
    envelope = json.loads(bundle)["dsseEnvelope"]
    return hashlib.sha256(base64.b64decode(envelope["payload"])).hexdigest()



# --- what we produce: the compressed artifact's signature and provenance statement ----------

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://modelops.dev/compression/v1"
BUILDER_ID = "https://modelops.dev/compressor"


@dataclass(frozen=True)
class Produced:
    """What one compression made from what, for its provenance statement."""

    artifact_uri: str
    artifact_sha256: str
    source_uri: str
    source_sha256: str
    source_signer: str | None
    recipe: dict[str, Any]
    compressor_version: str | None
    evaluation: dict[str, Any] | None = None  # the gate: datasetUri, metric, threshold
    measurement: dict[str, Any] | None = None  # the report's metric: values and the dataset object read
    cache_key: str | None = None


def provenance_statement(produced: Produced) -> dict[str, Any]:
    """An in-toto Statement with a SLSA v1 provenance predicate for a compressed artifact."""
    source: dict[str, Any] = {"uri": produced.source_uri, "digest": {SHA256: produced.source_sha256}}
    if produced.source_signer is not None:
        source["annotations"] = {"signer": produced.source_signer}
    internal: dict[str, Any] = {}
    if produced.measurement is not None:
        internal["gate"] = produced.measurement
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": produced.artifact_uri.rsplit("/", 1)[-1], "uri": produced.artifact_uri,
                     "digest": {SHA256: produced.artifact_sha256}}],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"recipe": produced.recipe, "evaluation": produced.evaluation},
                "internalParameters": internal,
                "resolvedDependencies": [source],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"compressor": produced.compressor_version or "unknown"}},
                "metadata": {"invocationId": produced.cache_key or ""},
            },
        },
    }


class _Statement:
    """What model_signing's signers read from a payload: `.statement.pb`."""

    def __init__(self, statement: dict[str, Any]) -> None:
        from in_toto_attestation.v1 import statement as intoto_statement  # type: ignore[import-untyped]

        self.statement = intoto_statement.Statement(
            subjects=[intoto_statement.ResourceDescriptor(**s).pb for s in statement["subject"]],
            predicate_type=statement["predicateType"],
            predicate=statement["predicate"],
        )


def sign_statement(private_key_pem: bytes, statement: dict[str, Any]) -> bytes:
    """`statement` in a DSSE envelope signed with the key, in model_signing's bundle format."""
    key = serialization.load_pem_private_key(private_key_pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the operator's signing key must be an ECDSA key (P-256)")
    signature = _EcKeySigner(key).sign(_Statement(statement))  # type: ignore[arg-type]
    assert isinstance(signature, sign_sigstore_pb.Signature)
    return signature.bundle.to_json().encode()


def verify_statement(bundle: bytes, public_key_pem: bytes) -> dict[str, Any]:
    """The statement a bundle signs, once its signature verifies with the key; ProvenanceError otherwise."""
    signature = parse_bundle(bundle)
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ProvenanceError(ProvenanceReason.TRUST_POLICY_INVALID, "the operator's key must be an ECDSA key")
    try:
        payload_type, payload = _EcKeyVerifier(key)._verify_signed_content(signature)
    except (ValueError, crypto_errors.InvalidSignature):
        raise ProvenanceError(
            ProvenanceReason.UNTRUSTED_SIGNER, f"the statement is signed by {bundle_signer(signature)}, not by this key"
        ) from None
    statement: dict[str, Any] = json.loads(payload)
    if payload_type != signing._IN_TOTO_JSON_PAYLOAD_TYPE or statement.get("_type") != STATEMENT_TYPE:
        raise ProvenanceError(ProvenanceReason.INVALID_SIGNATURE, "the bundle does not sign an in-toto statement")
    return statement

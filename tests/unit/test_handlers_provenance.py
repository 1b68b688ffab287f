"""handlers.provenance: the trust policy's PEMs from ConfigMaps and Secrets, the bundle from the
bucket, and the state each answer leaves the version in."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelops import provenance
from modelops.api.model import ModelSpec
from modelops.api.version import ModelVersionSpec
from modelops.handlers.informer import Informer
from modelops.handlers.provenance import check_source
from modelops.handlers.reads import Reads
from modelops.settings import Settings
from modelops.storage import ObjectNotFound

pytestmark = pytest.mark.unit

SHA = hashlib.sha256(b"model").hexdigest()
KEY = ec.generate_private_key(ec.SECP256R1())
PRIVATE = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
PUBLIC = provenance.public_key_pem(PRIVATE)
BUNDLE_URI = "s3://models/digits/1/model.sig"


@dataclass
class SecretsApi:
    """The API server's answers to the GETs of named Secrets and ConfigMaps, by (kind, name)."""

    objects: dict[tuple[str, str], dict[str, Any]]

    def get(self, resource: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((resource.kind, name))


@dataclass
class FakeContext:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    settings: Settings = field(default_factory=lambda: Settings.from_env({}))
    reads: Reads = field(init=False)

    def __post_init__(self) -> None:
        self.reads = Reads(Informer(), SecretsApi(self.objects))  # type: ignore[arg-type]


@dataclass
class FakeStore:
    objects: dict[str, bytes] = field(default_factory=dict)

    def read_bytes(self, uri: str) -> bytes:
        if uri not in self.objects:
            raise ObjectNotFound(uri)
        return self.objects[uri]


def model(trust: dict[str, Any]) -> ModelSpec:
    return ModelSpec.model_validate({
        "storage": {"bucket": "models"},
        "signature": {"inputs": [{"name": "x", "dataType": "FP32", "dims": [4]}], "outputs": [{"name": "y", "dataType": "FP32", "dims": [2]}]},
        "trust": trust,
    })


def version(signed: bool = True) -> ModelVersionSpec:
    artifact: dict[str, Any] = {"uri": "s3://models/digits/1/model.onnx", "format": "onnx", "sha256": SHA}
    if signed:
        artifact["signature"] = {"uri": BUNDLE_URI}
    return ModelVersionSpec.model_validate({"model": "digits", "version": 1, "artifact": artifact})


SECRET_POLICY = {"required": True, "signers": [{"name": "release", "publicKey": {"secretRef": {"name": "keys"}, "key": "release.pub"}}]}


def test_a_key_from_a_secret_verifies_and_names_its_signer() -> None:
    ctx = FakeContext({("Secret", "keys"): {"data": {"release.pub": base64.b64encode(PUBLIC).decode()}}})
    store = FakeStore({BUNDLE_URI: provenance.sign(PRIVATE, "digits", [provenance.FileDigest("model.onnx", SHA)])})
    verified = check_source(ctx, store, "ns", version(), model(SECRET_POLICY))  # type: ignore[arg-type]
    assert isinstance(verified, provenance.Verified) and verified.signer == "release"


@pytest.mark.parametrize(
    ("objects", "needle"),
    [
        ({}, "Secret keys named in spec.trust.signers[0].publicKey.secretRef does not exist"),
        ({("Secret", "keys"): {"data": {}}}, "Secret keys has no PEM document under the key release.pub (spec.trust.signers[0].publicKey.key)"),
        ({("Secret", "keys"): {"data": {"release.pub": base64.b64encode(b"-----BEGIN PUBLIC KEY-----\nAA\n").decode()}}},
         "trusted signer 'release'"),
    ],
)
def test_a_policy_key_that_is_missing_or_unusable_keeps_the_version_verifying(objects, needle) -> None:
    store = FakeStore({BUNDLE_URI: b"{}"})
    state = check_source(FakeContext(objects), store, "ns", version(), model(SECRET_POLICY))  # type: ignore[arg-type]
    assert (state.phase, state.reason) == ("Verifying", "TrustPolicyInvalid")  # type: ignore[union-attr]
    assert needle in state.message and state.retry_after  # type: ignore[union-attr]


def test_a_missing_bundle_keeps_the_version_verifying() -> None:
    ctx = FakeContext({("Secret", "keys"): {"data": {"release.pub": base64.b64encode(PUBLIC).decode()}}})
    state = check_source(ctx, FakeStore(), "ns", version(), model(SECRET_POLICY))  # type: ignore[arg-type]
    assert (state.phase, state.reason) == ("Verifying", "SignatureNotFound")  # type: ignore[union-attr]
    assert BUNDLE_URI in state.message  # type: ignore[union-attr]


def test_unsigned_is_fine_unless_the_model_or_the_operator_requires_a_signature() -> None:
    assert check_source(FakeContext(), FakeStore(), "ns", version(signed=False), model({})) is None  # type: ignore[arg-type]
    state = check_source(FakeContext(), FakeStore(), "ns", version(signed=False), model({"required": True}))  # type: ignore[arg-type]
    assert (state.phase, state.reason) == ("Rejected", "SignatureRequired")  # type: ignore[union-attr]
    strict = FakeContext(settings=Settings.from_env({"MODELOPS_REQUIRE_SIGNATURES": "true"}))
    state = check_source(strict, FakeStore(), "ns", version(signed=False), model({}))  # type: ignore[arg-type]
    assert (state.phase, state.reason) == ("Rejected", "SignatureRequired") and "requireSignatures" in state.message  # type: ignore[union-attr]

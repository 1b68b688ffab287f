"""A Model's trust policy: which signers' signatures its versions' artifacts may carry, and
whether they must carry one. Verification itself is modelops.provenance."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from modelops.api.types import ApiModel, ConfigMapOrSecretKey, LocalObjectReference, S3Uri, cel, validations

_KEY_RULE = r"^[-._a-zA-Z0-9]+$"


class ProvenanceReason(StrEnum):
    """Why an artifact's provenance stops a version: Rejected, except SignatureNotFound and
    TrustPolicyInvalid, which keep it Verifying until the bundle or the policy's key exists."""

    SIGNATURE_REQUIRED = "SignatureRequired"
    SIGNATURE_NOT_FOUND = "SignatureNotFound"
    INVALID_SIGNATURE = "InvalidSignature"
    UNTRUSTED_SIGNER = "UntrustedSigner"
    ARTIFACT_TAMPERED = "ArtifactTampered"
    MANIFEST_MISMATCH = "ManifestMismatch"
    TRUST_POLICY_INVALID = "TrustPolicyInvalid"
    # The operator cannot sign what it produced yet (its key Secret, or storage): retried.
    SIGNING_KEY_NOT_FOUND = "SigningKeyNotFound"
    SIGNING_FAILED = "SigningFailed"


class PemRef(ConfigMapOrSecretKey):
    """A PEM document under one key of a ConfigMap or Secret in the Model's namespace."""

    config_map_ref: LocalObjectReference | None = Field(None, description="ConfigMap in the Model's namespace that holds the PEM.")
    secret_ref: LocalObjectReference | None = Field(None, description="Secret in the Model's namespace that holds the PEM.")
    key: str = Field(min_length=1, max_length=253, pattern=_KEY_RULE, description="Key of the PEM document in the object.")


class TrustedSigner(ApiModel):
    """One signer whose signatures are accepted: a public key, or a certificate chain and the
    identity the signing certificate must name."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.publicKey) != has(self.certificateChain)",
                "exactly one of publicKey and certificateChain must be set",
            ),
            cel(
                "has(self.certificateChain) == has(self.identity)",
                "identity is required with certificateChain, and only there",
                fieldPath=".identity",
            ),
        )
    }

    name: str = Field(
        min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Name of the signer, shown in the version's status and in every refusal.",
    )
    public_key: PemRef | None = Field(None, description="PEM public key (ECDSA P-256, P-384, P-521, or Ed25519).")
    certificate_chain: PemRef | None = Field(
        None, description="PEM certificates (the root CA and any intermediates) that the signing certificate must chain to."
    )
    identity: str | None = Field(
        None, min_length=1, max_length=1024,
        description="With certificateChain: an email, URI or DNS name in the signing certificate's subjectAltName "
        "(or its common name, when it has none).",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> TrustedSigner:
        if (self.public_key is None) == (self.certificate_chain is None):
            raise ValueError("exactly one of publicKey and certificateChain must be set")
        if (self.certificate_chain is None) != (self.identity is None):
            raise ValueError("identity is required with certificateChain, and only there")
        return self


class TrustPolicy(ApiModel):
    """Who may sign this Model's artifacts (OpenSSF model signing), and whether they must."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.signers) || self.signers.all(a, self.signers.exists_one(b, b.name == a.name))",
                "signer names must be unique",
                fieldPath=".signers",
            )
        )
    }

    required: bool = Field(
        False,
        description="Reject a version whose artifact has no signature (spec.artifact.signature). The operator's "
        "requireSignatures setting makes this true for every Model.",
    )
    signers: list[TrustedSigner] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
        description="Trusted signers; a signature by any one of them verifies. List the old and the new key while a key is rotated.",
    )

    @field_validator("signers")
    @classmethod
    def _unique(cls, signers: list[TrustedSigner]) -> list[TrustedSigner]:
        names = [s.name for s in signers]
        if len(set(names)) != len(names):
            raise ValueError("signer names must be unique")
        return signers


class ArtifactSignature(ApiModel):
    """The artifact's signature bundle, as `model_signing sign` writes it."""

    uri: S3Uri = Field(description="S3 URI of the bundle (model_signing's model.sig), read with the Model's storage credentials.")


class ProvenanceStatus(ApiModel):
    """Who signed what this version serves."""

    signer: str | None = Field(None, description="The trusted signer (spec.trust.signers) whose signature on spec.artifact verified; unset when the artifact is unsigned.")
    compressed_signer: str | None = Field(None, description="The operator's key (sha256:<fingerprint>) that signed the compressed artifact and its provenance statement.")
    compressed_signer_key: str | None = Field(None, description="The operator's public key (PEM) that signed them; the fetch container verifies the bundle with it before Triton loads the artifact.")
    signature_uri: str | None = Field(None, description="S3 URI of the compressed artifact's model_signing bundle.")
    statement_uri: str | None = Field(None, description="S3 URI of the signed in-toto provenance statement (SLSA v1): sources, signer, recipe, compressor version and the gate's measurement.")
    statement_sha256: str | None = Field(None, description="sha256 of the provenance statement (the signed DSSE payload).")

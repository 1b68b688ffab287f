"""The I/O around modelops.provenance for one ModelVersion: read the trust policy's keys and
certificates from ConfigMaps and Secrets, and the signature bundle from the bucket."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from modelops import kube as k8s
from modelops.api.model import ModelSpec
from modelops.api.trust import PemRef, ProvenanceReason, ProvenanceStatus, TrustPolicy
from modelops.api.version import ModelVersionSpec, Phase
from modelops.core.versions import VersionState, waiting
from modelops.handlers.context import Context
from modelops.handlers.reads import StorageReads
from modelops.storage import ObjectNotFound, StorageError, parse_s3_uri

if TYPE_CHECKING:  # modelops.provenance loads model_signing: imported where a signature is verified
    from modelops import provenance

_PEM = b"-----BEGIN "


class PolicyNotReady(Exception):
    """A ConfigMap, Secret or key the trust policy names is missing: fixable, so retried."""


def _pem(ctx: Context, namespace: str, ref: PemRef, where: str) -> bytes:
    kind, name = ref.source
    found, pem = ctx.reads.key_of(namespace, ref)
    if not found:
        raise PolicyNotReady(f"{kind} {name} named in {where}.{ref.ref_field} does not exist")
    if pem is None or _PEM not in pem:
        raise PolicyNotReady(f"{kind} {name} has no PEM document under the key {ref.key} ({where}.key)")
    return pem


def trusted_signers(ctx: Context, namespace: str, policy: TrustPolicy) -> list[provenance.TrustedSigner]:
    from modelops import provenance

    signers = []
    for index, signer in enumerate(policy.signers):
        where = f"spec.trust.signers[{index}]"
        if signer.public_key is not None:
            key = _pem(ctx, namespace, signer.public_key, f"{where}.publicKey")
            signers.append(provenance.TrustedSigner(signer.name, public_key_pem=key))
        else:
            assert signer.certificate_chain is not None
            chain = _pem(ctx, namespace, signer.certificate_chain, f"{where}.certificateChain")
            signers.append(provenance.TrustedSigner(signer.name, certificate_chain_pem=chain, identity=signer.identity))
    return signers


def artifact_files(spec: ModelVersionSpec) -> list[provenance.FileDigest]:
    """The version's files as the signed manifest must list them: a single file by its name,
    a file set's files by their paths under its prefix."""
    from modelops import provenance

    if spec.artifact.files is not None:
        return [provenance.FileDigest(f.path, f.sha256) for f in spec.artifact.files]
    key = parse_s3_uri(spec.artifact.uri).key
    return [provenance.FileDigest(key.rsplit("/", 1)[-1], str(spec.artifact.sha256))]


def stored_files(uri: str, sha256: str, files: list[dict[str, Any]] | None) -> list[provenance.FileDigest]:
    """A compressed artifact's files as the operator signs them: one file by its name, a file
    set (ONNX with external data) by the paths its record lists."""
    from modelops import provenance

    if files:
        return [provenance.FileDigest(str(f["path"]), str(f["sha256"])) for f in files]
    return [provenance.FileDigest(uri.rsplit("/", 1)[-1], sha256)]


def check_source(
    ctx: Context, store: StorageReads, namespace: str, spec: ModelVersionSpec, model: ModelSpec
) -> VersionState | provenance.Verified | None:
    """The verified signer, None for an unsigned artifact that may be used, or the state that
    stops the version (Rejected, or Verifying while something the policy names is missing).
    A StorageError reading the bundle is the caller's to report."""
    retry = ctx.settings.retry_seconds
    signature = spec.artifact.signature
    if signature is None:
        if model.trust.required or ctx.settings.require_signatures:
            where = "spec.trust.required of Model " + spec.model if model.trust.required else "the operator's requireSignatures"
            return waiting(
                Phase.REJECTED, ProvenanceReason.SIGNATURE_REQUIRED,
                f"spec.artifact.signature is unset and {where} requires a signature; sign the artifact "
                "(docs/security.md) and create a new ModelVersion that names its bundle",
            )
        return None
    try:
        signers = trusted_signers(ctx, namespace, model.trust)
    except PolicyNotReady as err:
        return waiting(Phase.VERIFYING, ProvenanceReason.TRUST_POLICY_INVALID, f"{err}; checked again every {retry:g}s", retry)
    try:
        bundle = store.read_bytes(signature.uri)
    except ObjectNotFound:
        return waiting(
            Phase.VERIFYING, ProvenanceReason.SIGNATURE_NOT_FOUND,
            f"no object at {signature.uri} (spec.artifact.signature.uri); upload the bundle (checked again every {retry:g}s)",
            retry,
        )
    from modelops import provenance

    try:
        return provenance.verify(bundle, signers, artifact_files(spec))
    except provenance.ProvenanceError as err:
        if err.reason == ProvenanceReason.TRUST_POLICY_INVALID:  # a bad PEM in the policy: fix it, retried
            return waiting(Phase.VERIFYING, err.reason, f"{err}; checked again every {retry:g}s", retry)
        return waiting(Phase.REJECTED, err.reason, f"spec.artifact.signature: {err}")


SIGNING_KEY = "key.pem"
# Beside the compressed artifact: its model_signing bundle and its provenance statement.
SIGNATURE_SUFFIX = ".sig"
STATEMENT_SUFFIX = ".provenance.json"


def signing_key(ctx: Context) -> bytes:
    """The operator's private key from its Secret; PolicyNotReady names what is missing."""
    name, namespace = ctx.settings.signing_key_secret, ctx.settings.signing_key_namespace
    if not namespace:
        raise PolicyNotReady("MODELOPS_SIGNING_KEY_NAMESPACE is unset")
    secret = ctx.reads.get(k8s.SECRETS, namespace, name)
    if secret is None:
        raise PolicyNotReady(f"the operator's signing key Secret {namespace}/{name} does not exist")
    encoded = (secret.get("data") or {}).get(SIGNING_KEY)
    pem = base64.b64decode(encoded) if encoded else b""
    if _PEM not in pem:
        raise PolicyNotReady(f"the operator's signing key Secret {namespace}/{name} has no PEM under the key {SIGNING_KEY}")
    return pem


def sign_output(
    ctx: Context, store: StorageReads, spec: ModelVersionSpec, model: ModelSpec, state: VersionState,
    old: ProvenanceStatus | None,
) -> VersionState:
    """A Ready state whose compressed artifact the operator has signed, with a provenance
    statement beside it (both uploaded next to the artifact); the state unchanged when signing
    is off or done already; Compressing, retried, while the key or storage is missing."""
    from modelops import provenance
    from modelops.core.versions import effective_evaluation, effective_recipe

    compressed = state.compressed
    if state.phase != Phase.READY or compressed is None or not ctx.settings.signing_key_secret:
        return state
    signer = state.provenance.signer if state.provenance is not None else (old.signer if old else None)
    if old is not None and old.statement_sha256:
        return replace(state, provenance=old)  # signed already: keep the record whole
    retry = ctx.settings.retry_seconds
    try:
        key = signing_key(ctx)
    except PolicyNotReady as err:
        return waiting(Phase.COMPRESSING, ProvenanceReason.SIGNING_KEY_NOT_FOUND, f"{err}; checked again every {retry:g}s",
                       retry, job_name=state.job_name, cache_key=state.cache_key)
    evaluation = effective_evaluation(spec, model)
    report = state.report
    produced = provenance.Produced(
        artifact_uri=compressed.uri, artifact_sha256=compressed.sha256,
        source_uri=spec.artifact.uri, source_sha256=spec.artifact.digest, source_signer=signer,
        recipe=effective_recipe(spec, model).wire(),
        compressor_version=report.compressor_version if report else None,
        evaluation=evaluation.wire() if evaluation is not None else None,
        measurement=report.metric.wire() if report is not None and report.metric is not None else None,
        cache_key=state.cache_key,
    )
    name = compressed.uri.rsplit("/", 1)[-1]
    files = [f.wire() for f in compressed.files] if compressed.files else None
    bundle = provenance.sign(key, name, stored_files(compressed.uri, compressed.sha256, files))
    statement = provenance.sign_statement(key, provenance.provenance_statement(produced))
    signature_uri, statement_uri = compressed.uri + SIGNATURE_SUFFIX, compressed.uri + STATEMENT_SUFFIX
    try:
        store.store.upload_bytes(bundle, signature_uri, "application/json")
        store.store.upload_bytes(statement, statement_uri, "application/json")
    except StorageError as err:
        return waiting(Phase.COMPRESSING, ProvenanceReason.SIGNING_FAILED,
                       f"writing the signature of {compressed.uri}: {err}; retrying every {retry:g}s",
                       retry, job_name=state.job_name, cache_key=state.cache_key)
    return replace(state, provenance=ProvenanceStatus(
        signer=signer, compressed_signer=provenance.fingerprint(provenance.public_key_pem(key)),
        compressed_signer_key=provenance.public_key_pem(key).decode(), signature_uri=signature_uri,
        statement_uri=statement_uri, statement_sha256=provenance.statement_digest(statement),
    ))


def cached_signature_verifies(ctx: Context, store: StorageReads, report: dict[str, Any]) -> bool:
    """Whether a cached entry's artifact carries the operator's signature for the sha256 its
    record names: a cached compression counts only while it does. Without the key there is
    nothing to check against yet (and nothing becomes Ready: `sign_output` waits for it).
    A StorageError reading the bundle is the caller's to report."""
    from modelops import provenance

    artifact = report.get("artifact") or {}
    uri, sha256 = artifact.get("uri"), artifact.get("sha256")
    if not uri or not sha256:
        return False
    try:
        key = signing_key(ctx)
    except PolicyNotReady:
        return True
    try:
        bundle = store.read_bytes(uri + SIGNATURE_SUFFIX)
    except ObjectNotFound:
        return False
    try:
        provenance.verify(bundle, [provenance.TrustedSigner("operator", public_key_pem=provenance.public_key_pem(key))],
                          stored_files(uri, sha256, artifact.get("files")))
    except provenance.ProvenanceError:
        return False
    return True

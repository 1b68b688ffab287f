"""Plain views of Kubernetes objects, read from their JSON bodies.

Decisions take these small frozen values instead of raw dicts, so tests can build them
in one line and the logic never depends on how the API client shapes objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelops.api.types import API_VERSION
from modelops.api.version import Phase


@dataclass(frozen=True)
class OwnerRef:
    """Enough of an object to put it in another object's ownerReferences."""

    api_version: str
    kind: str
    name: str
    uid: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> OwnerRef:
        meta = body["metadata"]
        return cls(body.get("apiVersion", API_VERSION), body["kind"], meta["name"], meta["uid"])

    def reference(self, controller: bool = True) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": controller,
            "blockOwnerDeletion": False,
        }


def owned_by(body: dict[str, Any] | None, owner_uid: str) -> bool:
    if body is None:
        return False
    refs = body.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid for ref in refs)


def with_owner(references: list[dict[str, Any]] | None, owner: OwnerRef) -> list[dict[str, Any]] | None:
    """The owner references with `owner` added as controller; None when it is already there."""
    references = list(references or [])
    if any(ref.get("uid") == owner.uid for ref in references):
        return None
    has_controller = any(ref.get("controller") for ref in references)
    return references + [owner.reference(controller=not has_controller)]


@dataclass(frozen=True)
class VersionView:
    """A ModelVersion as version resolution and rendering need it."""

    name: str
    model: str
    version: int
    phase: str | None = None
    created: str = ""
    deleting: bool = False
    compressed_uri: str | None = None
    compressed_sha256: str | None = None
    compressed_format: str | None = None
    # The operator's signature of the compressed artifact, and the public key it verifies with.
    signature_uri: str | None = None
    signer_key: str | None = None
    failed_by: tuple[str, ...] = ()  # ModelDeployments whose rollout of this version failed

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> VersionView:
        meta, spec, status = body["metadata"], body.get("spec", {}), body.get("status") or {}
        compressed = status.get("compressedArtifact") or {}
        return cls(
            name=meta["name"],
            model=spec.get("model", ""),
            version=int(spec.get("version", 0)),
            phase=status.get("phase"),
            created=meta.get("creationTimestamp", ""),
            deleting=bool(meta.get("deletionTimestamp")),
            compressed_uri=compressed.get("uri"),
            compressed_sha256=compressed.get("sha256"),
            compressed_format=compressed.get("format"),
            signature_uri=(status.get("provenance") or {}).get("signatureUri"),
            signer_key=(status.get("provenance") or {}).get("compressedSignerKey"),
            failed_by=tuple(status.get("failedBy") or ()),
        )

    @property
    def ready(self) -> bool:
        return self.phase == Phase.READY and bool(self.compressed_uri and self.compressed_sha256)

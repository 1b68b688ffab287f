"""Plain views of Kubernetes objects, read from their JSON bodies.

Decisions take these small frozen values instead of raw dicts, so tests can build them
in one line and the logic never depends on how the API client shapes objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelops.api.types import API_VERSION
from modelops.api.version import Phase
from modelops.core import naming


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


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the object a plan is about."""

    type: str  # Normal or Warning
    reason: str
    message: str


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
    # A file set's files ({path, sha256, bytes}), paths relative to the folder of compressed_uri.
    compressed_files: tuple[dict[str, Any], ...] = ()
    # The operator's signature of the compressed artifact, and the public key it verifies with.
    signature_uri: str | None = None
    signer_key: str | None = None

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
            compressed_files=tuple(compressed.get("files") or ()),
            signature_uri=(status.get("provenance") or {}).get("signatureUri"),
            signer_key=(status.get("provenance") or {}).get("compressedSignerKey"),
        )

    @property
    def ready(self) -> bool:
        return self.phase == Phase.READY and bool(self.compressed_uri and self.compressed_sha256)


@dataclass(frozen=True)
class ServerState:
    """A live Triton Deployment (stable or canary), reduced to what rollout and canary decisions need."""

    version: int | None
    replicas: int
    updated: int = 0
    ready: int = 0
    available: int = 0
    total: int = 0
    generation: int = 1
    observed_generation: int = 1
    deadline_exceeded: bool = False
    # The live pod template is what the current spec (and retry) renders. A deadline that an
    # older template exceeded never judges the new attempt: it is rendered again instead.
    current: bool = True

    @classmethod
    def from_deployment(cls, body: dict[str, Any]) -> ServerState:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
        raw_version = annotations.get(naming.ANNOTATION_VERSION)
        generation = int(body.get("metadata", {}).get("generation", 1))
        observed = int(status.get("observedGeneration", 0))
        # The condition speaks of the template the controller last observed: after a new
        # template is applied it is stale until observedGeneration catches up.
        exceeded = observed >= generation and any(
            c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason") == "ProgressDeadlineExceeded"
            for c in status.get("conditions") or []
        )
        return cls(
            version=int(raw_version) if raw_version and raw_version.isdigit() else None,
            replicas=int(spec.get("replicas", 1)),
            updated=int(status.get("updatedReplicas", 0)),
            ready=int(status.get("readyReplicas", 0)),
            available=int(status.get("availableReplicas", 0)),
            total=int(status.get("replicas", 0)),
            generation=generation,
            observed_generation=observed,
            deadline_exceeded=exceeded,
        )

    @property
    def rolled_out(self) -> bool:
        """Every pod runs the current template and no old pod is left (available or not)."""
        return (
            self.observed_generation >= self.generation
            and self.updated == self.replicas
            and self.total == self.replicas
        )

    @property
    def template_rolled_out(self) -> bool:
        """The controller observed the spec and no pod of an older template is left: the pod
        count may still change (a scale), but the template does not."""
        return self.observed_generation >= self.generation and self.updated == self.total

    @property
    def complete(self) -> bool:
        """Rolled out, and every pod is available."""
        return self.rolled_out and self.available == self.replicas

    def ready_at(self, version: int, replicas: int) -> bool:
        """Runs `version` with `replicas` pods, all updated and available (a canary's step)."""
        return self.version == version and self.replicas == replicas and self.updated >= replicas and self.available >= replicas

"""What every reconcile needs: settings, the Kubernetes adapter, its reads (`reads.Reads`),
storage access, metrics and a clock. Built once at startup; nothing here is global."""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from modelops import kube as k8s
from modelops.api.model import ModelReason, StorageSpec
from modelops.core.endpoints import EndpointPolicy
from modelops.core.objects import OwnerRef, with_owner
from modelops.core.patch import merge_patch
from modelops.handlers.informer import Informer
from modelops.handlers.reads import Reads, Resolutions, StorageReads
from modelops.operatormetrics import Metrics
from modelops.settings import Settings
from modelops.storage import ObjectStore, StorageConfig, StorageError, TransferTuning

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The operator only HEADs and reads small objects: fail fast and let the queue retry.
OPERATOR_TUNING = TransferTuning(max_attempts=2, stream_attempts=1, connect_timeout_s=3.0, read_timeout_s=10.0)


class CredentialsProblem(Exception):
    """The Model's credentials Secret (or its CA bundle) is missing or incomplete. The message
    is for people; `reason` is the condition reason."""

    reason: str = ModelReason.CREDENTIALS_NOT_FOUND


class CABundleProblem(CredentialsProblem):
    """The ConfigMap or Secret named in spec.storage.caBundle, or its key, is missing."""

    reason = ModelReason.CA_BUNDLE_NOT_FOUND


class BucketProblem(CredentialsProblem):
    """The bucket named in spec.storage.bucket does not exist at the endpoint."""

    reason = ModelReason.BUCKET_NOT_FOUND


class EndpointProblem(CredentialsProblem):
    """spec.storage.endpoint names an address the operator may not be pointed at."""

    reason = ModelReason.ENDPOINT_NOT_ALLOWED


_written_bundles: set[Path] = set()


def ca_bundle_file(pem: bytes, directory: Path | None = None) -> str:
    """The bundle as a file (boto3 takes a path), named by its content so that equal bundles
    share one file and a changed bundle gets a new one, and with it a new client. Each file is
    written once per process; later calls (every reconcile that reads storage) touch no disk."""
    root = directory or Path(tempfile.gettempdir()) / "modelops-ca"
    path = root / f"{hashlib.sha256(pem).hexdigest()}.pem"
    if path in _written_bundles:
        return str(path)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_bytes(pem)
        os.replace(partial, path)
    _written_bundles.add(path)
    return str(path)


class StorePool:
    """One ObjectStore (and boto3 client) per distinct storage configuration, with its memo of reads (`reads.StorageReads`)."""

    def __init__(self, limit: int = 64, workers: int = 8) -> None:
        self._stores: OrderedDict[str, StorageReads] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()
        # A connection for every reconcile worker: a smaller pool would drop connections and
        # pay a TLS handshake for each new one.
        self._tuning = replace(OPERATOR_TUNING, max_concurrency=max(OPERATOR_TUNING.max_concurrency, workers))

    def get(self, config: StorageConfig) -> StorageReads:
        material = config.model_dump_json() + "|" + "|".join(
            s.get_secret_value() if s else "" for s in (config.access_key_id, config.secret_access_key)
        )
        digest = hashlib.sha256(material.encode()).hexdigest()
        with self._lock:
            store = self._stores.get(digest)
            if store is None:
                store = StorageReads(ObjectStore(config, self._tuning))
                store.store.client  # noqa: B018 - made once here, not by every worker that races to it
                self._stores[digest] = store
                while len(self._stores) > self._limit:
                    self._stores.popitem(last=False)
            self._stores.move_to_end(digest)
            return store


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    settings: Settings
    kube: k8s.Kube
    metrics: Metrics
    stores: StorePool
    clock: Callable[[], datetime] = utcnow
    endpoints: EndpointPolicy = field(default_factory=EndpointPolicy)
    resolve: Callable[[str], list[str]] = field(default_factory=Resolutions)  # host names, reused briefly
    # The operator's scaler: the last reading of Triton's counters per ModelDeployment.
    readings: dict[tuple[str, str], Any] = field(default_factory=dict)
    # Namespaces whose node cache volume and claim this process applied (once each: the
    # apiserver keeps them, and a deleted one comes back at the operator's next start).
    node_cache_namespaces: set[str] = field(default_factory=set)

    # Every read a reconcile makes goes through here (`modelops.handlers.reads`). The operator
    # gives it the informer that its watches feed (`with_informer`).
    reads: Reads = field(init=False)

    def __post_init__(self) -> None:
        self.reads = Reads(Informer(), self.kube)

    def with_informer(self, informer: Informer) -> Context:
        self.reads = Reads(informer, self.kube)
        return self

    def credentials(self, namespace: str, storage: StorageSpec) -> tuple[SecretStr | None, SecretStr | None]:
        """Access keys from the Model's Secret; raises CredentialsProblem naming what is missing."""
        ref = storage.credentials_secret
        if ref is None:
            return None, None
        secret = self.reads.get(k8s.SECRETS, namespace, ref.name)
        if secret is None:
            raise CredentialsProblem(f"Secret {ref.name} named in spec.storage.credentialsSecret does not exist")
        data = secret.get("data") or {}
        missing = [key for key in CREDENTIAL_KEYS if not data.get(key)]
        if missing:
            raise CredentialsProblem(f"Secret {ref.name} lacks the key(s) {', '.join(missing)}")
        key_id, secret_key = (SecretStr(base64.b64decode(data[key]).decode()) for key in CREDENTIAL_KEYS)
        return key_id, secret_key

    def ca_bundle(self, namespace: str, storage: StorageSpec) -> str | None:
        """The path of a file with the Model's CA bundle; raises CABundleProblem naming what is missing."""
        ref = storage.ca_bundle
        if ref is None:
            return None
        kind, name = ref.source
        found, pem = self.reads.key_of(namespace, ref)
        if not found:
            raise CABundleProblem(f"{kind} {name} named in spec.storage.caBundle.{ref.ref_field} does not exist")
        if not pem or b"-----BEGIN CERTIFICATE-----" not in pem:
            raise CABundleProblem(f"{kind} {name} has no PEM certificate under the key {ref.key} (spec.storage.caBundle.key)")
        return ca_bundle_file(pem)

    def endpoint_problem(self, url: str, field: str) -> str | None:
        """Why the operator may not send requests to `url` (named in `field`), or None."""
        return self.endpoints.problem(url, field, self.resolve(url))

    def check_endpoint(self, storage: StorageSpec) -> None:
        """Raises EndpointProblem when spec.storage.endpoint may not be reached."""
        problem = self.endpoint_problem(storage.endpoint, "spec.storage.endpoint") if storage.endpoint else None
        if problem is not None:
            raise EndpointProblem(problem)

    def check_storage(self, namespace: str, storage: StorageSpec) -> None:
        """What the operator needs before it can talk to storage: an endpoint it may reach, the
        Secret and the CA bundle."""
        self.check_endpoint(storage)
        self.credentials(namespace, storage)
        self.ca_bundle(namespace, storage)

    def check_bucket(self, namespace: str, storage: StorageSpec) -> None:
        """Raises BucketProblem when the Model's bucket does not exist. Any other storage
        answer (unreachable, or denied to credentials without s3:ListBucket) is left to the
        versions, whose conditions name the URI."""
        try:
            exists = self.store_for(namespace, storage).bucket_exists_recent(storage.bucket)
        except StorageError:
            return
        if not exists:
            where = f" at {storage.endpoint}" if storage.endpoint else ""
            raise BucketProblem(
                f"bucket {storage.bucket} named in spec.storage.bucket does not exist{where}; "
                "create it or fix spec.storage.bucket"
            )

    def store_for(self, namespace: str, storage: StorageSpec) -> StorageReads:
        """The store of a Model's storage; every storage request goes through here, so an
        endpoint the operator may not reach is refused before any request is sent."""
        self.check_endpoint(storage)
        key_id, secret_key = self.credentials(namespace, storage)
        config = StorageConfig(
            endpoint_url=storage.endpoint,
            region=storage.region,
            verify_tls=storage.verify_tls,
            ca_bundle=self.ca_bundle(namespace, storage),
            access_key_id=key_id,
            secret_access_key=secret_key,
        )
        return self.stores.get(config)

    def write_status(self, resource: k8s.Resource, body: dict[str, Any], status: dict[str, Any]) -> bool:
        """Patch the status only where it differs from what is stored. Returns whether it wrote."""
        old = body.get("status") or {}
        patch = merge_patch(old, status)
        if not patch:
            return False
        meta = body["metadata"]
        self.reads.wrote(resource, self.kube.patch_status(resource, meta["namespace"], meta["name"], patch))
        return True

    def adopt(self, resource: k8s.Resource, body: dict[str, Any]) -> dict[str, Any]:
        """Make the Model named in spec.model an owner of this ModelVersion or ModelDeployment,
        so that deleting the Model removes it. Each kind's own reconcile adopts its object, so
        one controller writes all of it; the object is the user's, created before the operator
        sees it, so the reference can only be added afterwards. Returns the body as it now is.

        The JSON patch is guarded by a test of the list it was computed from, so a concurrent
        change of that list is not lost, while a status write meanwhile (which a resourceVersion
        guard would turn into a conflict) does not matter."""
        meta = body["metadata"]
        model = self.reads.get(k8s.MODELS, meta["namespace"], str((body.get("spec") or {}).get("model") or ""))
        if model is None or model["metadata"].get("deletionTimestamp") or meta.get("deletionTimestamp"):
            return body
        old = meta.get("ownerReferences")
        owner_references = with_owner(old, OwnerRef.of(model))
        if owner_references is None:
            return body
        # A test for null passes only where the list is absent (the apiserver's JSON patch).
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/ownerReferences", "value": old},
                                     {"op": "add", "path": "/metadata/ownerReferences", "value": owner_references}]
        try:
            patched = self.kube.json_patch(resource, meta["namespace"], meta["name"], ops)
        except k8s.Invalid:  # the test failed: someone changed the list since it was read
            raise k8s.Conflict(f"{resource.kind} {meta['name']}: ownerReferences changed while it was adopted", 409) from None
        if patched is None:
            return body
        self.reads.wrote(resource, patched)
        return self.reads.get(resource, meta["namespace"], meta["name"]) or body

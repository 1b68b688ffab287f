"""What every reconcile needs: settings, the Kubernetes adapter and the watch-fed cache it
reads from, storage access, metrics, a clock and a way to wake other objects. Built once at
startup; nothing here is global."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from modelops import kube as k8s
from modelops.api.model import ModelReason, StorageSpec
from modelops.core.endpoints import EndpointPolicy, HostPort
from modelops.core.patch import merge_patch
from modelops.handlers.cache import Cache
from modelops.handlers.queue import Key
from modelops.metrics import Metrics
from modelops.settings import Settings
from modelops.storage import ObjectInfo, ObjectStore, StorageConfig, StorageError, TransferTuning

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The operator only HEADs and reads small objects: fail fast and let the queue retry.
OPERATOR_TUNING = TransferTuning(max_attempts=2, stream_attempts=1, connect_timeout_s=3.0, read_timeout_s=10.0)
# An artifact's existence, credentials Secrets and CA bundles are reused for this long (watching
# every Secret and ConfigMap of the cluster would need RBAC to read them all), and at most this many
# are kept.
READ_TTL_SECONDS = 10.0
READ_CACHE_LIMIT = 4096
SMALL_READ_LIMIT = 1 << 20  # bytes: reports and measurements, never artifacts


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


def resolve_host(url: str) -> list[str]:
    """The addresses a URL's host name resolves to (none for a literal address or a name that
    does not resolve: a request to it fails on its own)."""
    where = HostPort.of(url)
    if where is None:
        return []
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(where.host, where.port, proto=socket.IPPROTO_TCP)})
    except (OSError, UnicodeError):
        return []


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


class _Bounded:
    """A least-recently-used map of at most `limit` entries, safe across threads."""

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)

    def drop(self, which: Callable[[Any], bool]) -> None:
        with self._lock:
            for key in [k for k in self._items if which(k)]:
                del self._items[key]


class CachedReads:
    """The operator's reads of one store. A report's or measurement's bytes are reused by URI
    and ETag: each look asks a fresh HEAD (cheap), and reads the object again only when the HEAD
    shows new content. HEADs themselves are fresh, since an ETag decides reuse (a dataset
    replaced in place must be evaluated again at once); only the check that a version's own
    artifact exists (`head_recent`) may be `ttl` seconds old, because the Job verifies the
    artifact's bytes anyway. Misses and errors are never kept: an upload is seen at once."""

    def __init__(self, store: ObjectStore, ttl: float = READ_TTL_SECONDS, limit: int = READ_CACHE_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._ttl = ttl
        self._clock = clock
        self._heads = _Bounded(limit)
        self._bodies = _Bounded(limit)

    def head(self, uri: str) -> ObjectInfo:
        return self.store.head(uri)

    def head_recent(self, uri: str) -> ObjectInfo:
        """A HEAD at most `ttl` seconds old."""
        kept = self._heads.get(uri)
        now = self._clock()
        if kept is not None and kept[0] > now:
            return kept[1]  # type: ignore[no-any-return]
        info = self.store.head(uri)
        self._heads.put(uri, (now + self._ttl, info))
        return info

    def bucket_exists_recent(self, bucket: str) -> bool:
        """Whether the bucket exists, by a HEAD bucket; a bucket seen may be `ttl` seconds old,
        a missing one is asked again every time (so its creation is seen at once)."""
        key = ("bucket", bucket)
        kept = self._heads.get(key)
        now = self._clock()
        if kept is not None and kept[0] > now:
            return True
        exists = self.store.bucket_exists(bucket)
        if exists:
            self._heads.put(key, (now + self._ttl, True))
        return exists

    def read_bytes(self, uri: str) -> bytes:
        info = self.head(uri)
        key = (uri, info.etag)
        kept = self._bodies.get(key)
        if kept is not None:
            return kept  # type: ignore[no-any-return]
        data = self.store.read_bytes(uri)
        if info.etag and len(data) <= SMALL_READ_LIMIT:
            self._bodies.put(key, data)
        return data


class StoreCache:
    """One ObjectStore (and boto3 client) per distinct storage configuration, with its cached reads."""

    def __init__(self, limit: int = 64, workers: int = 8) -> None:
        self._stores: OrderedDict[str, CachedReads] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()
        # A connection for every reconcile worker: a smaller pool would drop connections and
        # pay a TLS handshake for each new one.
        self._tuning = replace(OPERATOR_TUNING, max_concurrency=max(OPERATOR_TUNING.max_concurrency, workers))

    def get(self, config: StorageConfig) -> CachedReads:
        material = config.model_dump_json() + "|" + "|".join(
            s.get_secret_value() if s else "" for s in (config.access_key_id, config.secret_access_key)
        )
        digest = hashlib.sha256(material.encode()).hexdigest()
        with self._lock:
            store = self._stores.get(digest)
            if store is None:
                store = CachedReads(ObjectStore(config, self._tuning))
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
    stores: StoreCache
    wake: Callable[[Key], None]
    cache: Cache = field(default_factory=Cache)
    clock: Callable[[], datetime] = utcnow
    _recent_reads: _Bounded = field(default_factory=lambda: _Bounded(512))
    endpoints: EndpointPolicy = field(default_factory=EndpointPolicy)
    resolve: Callable[[str], list[str]] = resolve_host

    def read_recent(self, resource: k8s.Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret or ConfigMap as read at most READ_TTL_SECONDS ago (None: it does not exist)."""
        now = time.monotonic()
        kept = self._recent_reads.get((resource.plural, namespace, name))
        if kept is not None and kept[0] > now:
            return kept[1]  # type: ignore[no-any-return]
        obj = self.kube.get(resource, namespace, name)
        self._recent_reads.put((resource.plural, namespace, name), (now + READ_TTL_SECONDS, obj))
        return obj

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.read_recent(k8s.SECRETS, namespace, name)

    def forget_recent(self, namespace: str) -> None:
        """Read the namespace's Secrets and ConfigMaps afresh: a changed Model may be the user's
        sign that they fixed one (a CA bundle is otherwise not retried on a timer)."""
        self._recent_reads.drop(lambda key: key[1] == namespace)
    # The operator's scaler: the last reading of Triton's counters per ModelDeployment.
    readings: dict[tuple[str, str], Any] = field(default_factory=dict)

    def credentials(self, namespace: str, storage: StorageSpec) -> tuple[SecretStr | None, SecretStr | None]:
        """Access keys from the Model's Secret; raises CredentialsProblem naming what is missing."""
        ref = storage.credentials_secret
        if ref is None:
            return None, None
        secret = self.secret(namespace, ref.name)
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
        field = "configMapRef" if kind == "ConfigMap" else "secretRef"
        obj = self.read_recent(k8s.CONFIGMAPS if kind == "ConfigMap" else k8s.SECRETS, namespace, name)
        if obj is None:
            raise CABundleProblem(f"{kind} {name} named in spec.storage.caBundle.{field} does not exist")
        if kind == "ConfigMap":
            text = (obj.get("data") or {}).get(ref.key)
            pem = text.encode() if text else None
        else:
            encoded = (obj.get("data") or {}).get(ref.key)
            pem = base64.b64decode(encoded) if encoded else None
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

    def store_for(self, namespace: str, storage: StorageSpec) -> CachedReads:
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
        self.cache.store(resource, self.kube.patch_status(resource, meta["namespace"], meta["name"], patch))
        return True

    def adopt(self, resource: k8s.Resource, body: dict[str, Any], owner_references: list[dict[str, Any]] | None) -> None:
        """Set ownerReferences with a JSON patch guarded by a test of the list it was computed
        from, so a concurrent change of that list is not lost, while a status write meanwhile
        (which a resourceVersion guard would turn into a conflict) does not matter."""
        if owner_references is None:
            return
        meta = body["metadata"]
        old = meta.get("ownerReferences")
        ops: list[dict[str, Any]] = [{"op": "add", "path": "/metadata/ownerReferences", "value": owner_references}]
        if old is not None:
            ops.insert(0, {"op": "test", "path": "/metadata/ownerReferences", "value": old})
        try:
            patched = self.kube.json_patch(resource, meta["namespace"], meta["name"], ops)
        except k8s.Invalid:  # the test failed: someone changed the list since it was read
            raise k8s.Conflict(f"{resource.kind} {meta['name']}: ownerReferences changed while it was adopted", 409) from None
        self.cache.store(resource, patched)

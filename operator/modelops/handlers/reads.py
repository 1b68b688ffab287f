"""Every read a reconcile makes, behind one object (`Reads` for Kubernetes, `StorageReads` for
object storage), with how fresh each one is decided here and nowhere else.

Kubernetes (`FRESHNESS`):
- WATCHED: the watch-fed informer (`handlers/informer.py`), as fresh as the watch, plus the answers
  of the operator's own writes, so a reconcile that follows its own write does not work from
  the state before it. Every kind the operator owns or reconciles is read this way: the custom
  resources, Jobs and their pods, Triton Deployments, Services and pods, HPAs, ScaledObjects
  and HTTPRoutes. A change of any of them arrives as a watch event, which wakes whoever reads it.
- RECENT: a live GET, reused for `READ_TTL_SECONDS`. Only Secrets and ConfigMaps, and only the
  ones a Model names (credentials, CA bundle): watching them would need RBAC to list and watch
  every Secret in each namespace, which the operator does not ask for. A changed Model reads
  them afresh (`forget_recent`), since that is the user's sign that they fixed one.

Endpoint host names (`Resolutions`): the addresses a Model's storage endpoint or a KEDA
Prometheus address resolves to, for the endpoint policy (`core/endpoints.py`), reused for
`READ_TTL_SECONDS`: every version's reconcile asks, and a lookup may wait on DNS.

Object storage (`StorageReads`): HEADs are fresh, since an ETag decides whether a report or a
measurement is read again; only the existence of a version's own artifact and of a bucket may be
`READ_TTL_SECONDS` old, and misses are never kept.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from modelops import kube as k8s
from modelops.api.types import ConfigMapOrSecretKey
from modelops.core.endpoints import HostPort
from modelops.handlers.informer import WATCHED_KINDS, Body, Informer
from modelops.storage import ObjectInfo, ObjectStore

READ_TTL_SECONDS = 10.0
STORAGE_MEMO_LIMIT = 4096
RECENT_LIMIT = 512  # Secrets and ConfigMaps kept from live reads
SMALL_READ_LIMIT = 1 << 20  # bytes: reports and measurements, never artifacts


class Freshness(StrEnum):
    WATCHED = "watched"  # the watch-fed informer and our own writes' answers
    RECENT = "recent"  # a live GET at most READ_TTL_SECONDS old


FRESHNESS: dict[str, Freshness] = {
    **{resource.plural: Freshness.WATCHED for resource in WATCHED_KINDS},
    k8s.SECRETS.plural: Freshness.RECENT,
    k8s.CONFIGMAPS.plural: Freshness.RECENT,
}


class Bounded:
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


class Reads:
    """The Kubernetes reads of every reconcile, by the rule of `FRESHNESS`. A kind that is not
    in it is no kind a reconcile reads: asking for one is a programming error (KeyError)."""

    def __init__(self, informer: Informer, kube: k8s.Kube, ttl: float = READ_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.informer = informer
        self._kube = kube
        self._ttl = ttl
        self._clock = clock
        self._recent = Bounded(RECENT_LIMIT)

    def get(self, resource: k8s.Resource, namespace: str, name: str) -> Body | None:
        if FRESHNESS[resource.plural] is Freshness.WATCHED:
            return self.informer.get(resource, namespace, name)
        key = (resource.plural, namespace, name)
        now = self._clock()
        kept = self._recent.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]  # type: ignore[no-any-return]
        body = self._kube.get(resource, namespace, name)
        self._recent.put(key, (now + self._ttl, body))
        return body

    def key_of(self, namespace: str, ref: ConfigMapOrSecretKey) -> tuple[bool, bytes | None]:
        """Whether the ConfigMap or Secret that `ref` names exists, and the bytes under its key
        (None when the key is absent or empty; a Secret's value decoded)."""
        kind, name = ref.source
        obj = self.get(k8s.CONFIGMAPS if kind == "ConfigMap" else k8s.SECRETS, namespace, name)
        if obj is None:
            return False, None
        value = (obj.get("data") or {}).get(ref.key)
        if not value:
            return True, None
        return True, value.encode() if kind == "ConfigMap" else base64.b64decode(value)

    def forget_recent(self, namespace: str) -> None:
        """Read the namespace's Secrets and ConfigMaps afresh next time."""
        self._recent.drop(lambda key: key[1] == namespace)

    def versions_of(self, namespace: str, model: str) -> list[Body]:
        return self.informer.versions_of(namespace, model)

    def deployments_of(self, namespace: str, model: str) -> list[Body]:
        return self.informer.deployments_of(namespace, model)

    def pods_of_job(self, namespace: str, job_uid: str) -> list[Body]:
        return self.informer.pods_of_job(namespace, job_uid)

    def server_pods(self, namespace: str, deployment: str) -> list[Body]:
        return self.informer.server_pods(namespace, deployment)

    def wrote(self, resource: k8s.Resource, answer: Body | None) -> None:
        """What a write of ours returned, so that the next read sees it before its watch event."""
        self.informer.store(resource, answer)


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


class Resolutions:
    """`resolve(url)` as answered at most `ttl` seconds ago, for at most `limit` URLs."""

    def __init__(self, resolve: Callable[[str], list[str]] = resolve_host, ttl: float = READ_TTL_SECONDS,
                 limit: int = RECENT_LIMIT, clock: Callable[[], float] = time.monotonic) -> None:
        self._resolve = resolve
        self._ttl = ttl
        self._clock = clock
        self._kept = Bounded(limit)

    def __call__(self, url: str) -> list[str]:
        now = self._clock()
        kept = self._kept.get(url)
        if kept is not None and kept[0] > now:
            return kept[1]  # type: ignore[no-any-return]
        addresses = self._resolve(url)
        self._kept.put(url, (now + self._ttl, addresses))
        return addresses


class StorageReads:
    """The operator's reads of one store. A report's or measurement's bytes are reused by URI
    and ETag: each look asks a fresh HEAD (cheap), and reads the object again only when the HEAD
    shows new content. HEADs themselves are fresh, since an ETag decides reuse (a dataset
    replaced in place must be evaluated again at once); only the check that a version's own
    artifact exists (`head_recent`) may be `ttl` seconds old, because the Job verifies the
    artifact's bytes anyway. Misses and errors are never kept: an upload is seen at once."""

    def __init__(self, store: ObjectStore, ttl: float = READ_TTL_SECONDS, limit: int = STORAGE_MEMO_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._ttl = ttl
        self._clock = clock
        self._heads = Bounded(limit)
        self._bodies = Bounded(limit)

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

"""The cache's names and decisions, with no I/O: where each thing lives under the root, what a
request and a manifest say, and which entries an eviction removes.

    <root>/sha256/<hex>                 a verified entry, read-only (0444)
    <root>/sha256/<hex>.meta            its record: {"size": N}; its mtime is the entry's last use
    <root>/sha256/<hex>.partial         a download in progress, and its journal <hex>.partial.parts
    <root>/sets/<set-digest>.json       a file set's manifest: entrypoint and {path, sha256, size}
    <root>/pins/<claim>/<hex>           an empty file: the claim uses entry (or set) <hex>
    <root>/requests/<name>.json         a wanted artifact (the agent's spool)
    <root>/status/<name>.json           the agent's answer to it
    <root>/.lock                        flock held while entries are committed, pinned or evicted
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from modelops.api.version import file_set_digest, path_problems
from modelops.storage import InvalidS3Uri, parse_s3_uri

ENTRIES = "sha256"
SETS = "sets"
PINS = "pins"
REQUESTS = "requests"
STATUS = "status"
LOCK = ".lock"
# The agent's heartbeat, rewritten every scan: a reader waits for a fill only while it is fresh.
HEARTBEAT = "agent.json"
# Requests the agent writes itself for the serving pods on its node: pod-<uid>.json.
POD_REQUEST_PREFIX = "pod-"
META_SUFFIX = ".meta"
PARTIAL_SUFFIX = ".partial"
JOURNAL_SUFFIX = ".partial.parts"
# What a writer leaves while it writes a small file (a record, a manifest, a status) before its rename.
TMP_SUFFIX = ".tmp"

_HEX = re.compile(r"^[0-9a-f]{64}$")
# A claim is a directory name: a pod's namespace and uid, for example `serving.5f0c...`.
_CLAIM = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")
# A request's name: the spool file's stem.
_REQUEST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


class Phase(StrEnum):
    """Where a request stands (status/<name>.json `phase`)."""

    PENDING = "Pending"  # not filled yet, or waiting to retry (reason says why)
    FILLING = "Filling"
    READY = "Ready"
    EVICTED = "Evicted"  # was Ready, then evicted (or found corrupt); rewrite the request to fill it again
    FAILED = "Failed"  # retrying cannot help: a bad request, a missing object, a digest mismatch


class Reason(StrEnum):
    """Why a request is in its phase (beside the fetch container's FetchReason values)."""

    FILLED = "Filled"
    ALREADY_CACHED = "AlreadyCached"
    DOWNLOADING = "Downloading"
    EVICTED = "Evicted"
    CACHE_FULL = "CacheFull"
    INVALID_REQUEST = "InvalidRequest"
    OTHER_STORAGE = "OtherStorage"


def is_digest(name: str) -> bool:
    return bool(_HEX.match(name))


def validate_claim(claim: str) -> str:
    if not _CLAIM.match(claim):
        raise ValueError(f"claim {claim!r}: must be lowercase letters, digits, '.', '_' or '-' (a directory name)")
    return claim


def is_request_name(name: str) -> bool:
    return bool(_REQUEST_NAME.match(name))


@dataclass(frozen=True)
class CacheFile:
    path: str  # relative to the set's root; for a single-file artifact, the object's name
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A file set as the cache keeps it: its files by path, each an entry by digest."""

    entrypoint: str | None
    files: tuple[CacheFile, ...]

    @property
    def digest(self) -> str:
        return file_set_digest(self.entrypoint, [(f.path, f.sha256) for f in self.files])

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def render(self) -> str:
        files = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files]
        return json.dumps({"entrypoint": self.entrypoint, "files": files}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def parse(cls, text: str, digest: str) -> Manifest:
        """The manifest stored under `digest`; ValueError when it is not valid or not that set."""
        data = json.loads(text)
        files = tuple(CacheFile(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in data["files"])
        manifest = cls(data.get("entrypoint"), files)
        if manifest.digest != digest:
            raise ValueError(f"manifest {digest}: its files hash to {manifest.digest}")
        return manifest


@dataclass(frozen=True)
class FillRequest:
    """One wanted artifact (requests/<name>.json), in the shape of a ModelVersion's artifact:

        {"uri": "s3://bucket/folder/<file>", "sha256": "<hex>"}          one file
        {"uri": "s3://bucket/prefix/", "entrypoint": "<graph path>",         a file set
         "files": [{"path": "<graph path>", "sha256": "<hex>"}, ...]}
    """

    uri: str
    files: tuple[tuple[str, str], ...]  # (path, sha256); a single file's path is the object's name
    entrypoint: str | None
    is_set: bool
    # The S3 endpoint the artifact lives on (None: the agent's own, or AWS). The agent fills
    # only from its own endpoint, with its own credentials.
    endpoint: str | None = None

    def document(self) -> str:
        """The request as a spool file holds it; parse_request reads it back."""
        data: dict[str, Any] = {"uri": self.uri}
        if self.is_set:
            data["entrypoint"] = self.entrypoint
            data["files"] = [{"path": p, "sha256": d} for p, d in self.files]
        else:
            data["sha256"] = self.files[0][1]
        if self.endpoint is not None:
            data["endpoint"] = self.endpoint
        return json.dumps(data, sort_keys=True)

    @property
    def folder(self) -> str:
        return self.uri if self.is_set else self.uri[: self.uri.rindex("/") + 1]

    def file_uri(self, path: str) -> str:
        return self.folder + path

    @property
    def digest(self) -> str:
        """What the request is looked up by: the sha256 of one file, the set digest of a set."""
        return file_set_digest(self.entrypoint, list(self.files)) if self.is_set else self.files[0][1]

    def manifest(self, sizes: Mapping[str, int]) -> Manifest:
        return Manifest(self.entrypoint, tuple(CacheFile(p, d, sizes[d]) for p, d in self.files))


def parse_request(text: str) -> FillRequest:
    """A request file's JSON; ValueError naming the field that is wrong."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object")
    uri = data.get("uri")
    if not isinstance(uri, str):
        raise ValueError(f"uri: {uri!r} must be s3://bucket/key or a prefix s3://bucket/folder/")
    try:
        parse_s3_uri(uri + "_" if uri.endswith("/") else uri)  # a prefix: its bucket and folder
    except InvalidS3Uri as err:
        raise ValueError(f"uri: {err}") from None
    endpoint = data.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise ValueError(f"endpoint: {endpoint!r} must be a URL")
    if "files" in data:
        return dataclasses.replace(_parse_set(uri, data), endpoint=endpoint)
    if uri.endswith("/"):
        raise ValueError("uri: a prefix ending in '/' needs files")
    digest = _digest(data.get("sha256"), "sha256")
    return FillRequest(uri, ((uri.rsplit("/", 1)[1], digest),), None, is_set=False, endpoint=endpoint)


def _digest(value: Any, field: str) -> str:
    if not isinstance(value, str) or not is_digest(value):
        raise ValueError(f"{field}: {value!r} is not a sha256 hex digest (64 lowercase hex characters)")
    return value


def _parse_set(uri: str, data: dict[str, Any]) -> FillRequest:
    if not uri.endswith("/"):
        raise ValueError("uri: a file set's uri is a prefix ending in '/'")
    raw = data["files"]
    if not isinstance(raw, list) or not raw:
        raise ValueError("files: must be a non-empty list of {path, sha256}")
    files = []
    for index, item in enumerate(raw):
        path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(path, str) or not _relative_path_ok(path):
            raise ValueError(f"files[{index}].path: {path!r} must be a relative path without empty, '.' or '..' segments")
        files.append((path, _digest(item.get("sha256"), f"files[{index}].sha256")))
    problem = path_problems([p for p, _ in files], "files")
    if problem is not None:
        raise ValueError(problem)
    entrypoint = data.get("entrypoint")
    if entrypoint is not None and entrypoint not in {p for p, _ in files}:
        raise ValueError(f"entrypoint: {entrypoint!r} is not among the files")
    return FillRequest(uri, tuple(files), entrypoint, is_set=True)


def _relative_path_ok(path: str) -> bool:
    segments = path.split("/")
    return bool(path) and len(path) <= 512 and all(s not in ("", ".", "..") for s in segments) and path.isprintable()


@dataclass(frozen=True)
class Entry:
    digest: str
    size: int
    last_used: float


@dataclass(frozen=True)
class EvictionPlan:
    evict: tuple[str, ...]  # least recently used first
    shortfall: int  # bytes still missing for `needed` once every unpinned entry would be gone


def plan_eviction(entries: Iterable[Entry], pinned: set[str], budget: int, needed: int = 0) -> EvictionPlan:
    """The least recently used unpinned entries to remove so that the entries plus `needed`
    bytes fit the budget; a pinned entry is never chosen. When the pins leave too little room,
    the plan lists every unpinned entry and says how many bytes are still short: a fill then
    evicts nothing and waits, a trim (needed 0) removes what it can."""
    entries = list(entries)
    excess = sum(e.size for e in entries) + needed - budget
    chosen: list[str] = []
    freed = 0
    for entry in sorted((e for e in entries if e.digest not in pinned), key=lambda e: (e.last_used, e.digest)):
        if freed >= excess:
            break
        chosen.append(entry.digest)
        freed += entry.size
    return EvictionPlan(tuple(chosen), max(0, excess - freed))


def status_document(phase: Phase, reason: str, message: str, digest: str | None, stats: Mapping[str, Any] | None) -> str:
    body: dict[str, Any] = {"phase": str(phase), "reason": str(reason), "message": message}
    if digest is not None:
        body["digest"] = digest
    if stats:
        body["transfer"] = dict(stats)
    return json.dumps(body, sort_keys=True) + "\n"


def pinned_digests(pins: Mapping[str, Sequence[str]], manifests: Mapping[str, Manifest]) -> set[str]:
    """Every entry a claim uses: the digests it names, and the files of the sets it names."""
    pinned: set[str] = set()
    for digests in pins.values():
        for digest in digests:
            pinned.add(digest)
            manifest = manifests.get(digest)
            if manifest is not None:
                pinned.update(f.sha256 for f in manifest.files)
    return pinned

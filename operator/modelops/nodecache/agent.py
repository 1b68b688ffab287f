"""The node agent: fills the artifacts asked for in its spool and keeps the store in budget.

Interface (files under the root, each written whole: write `<name>.json.tmp`, then rename):

    requests/<name>.json   a wanted artifact (layout.FillRequest), written by a client
    status/<name>.json     the agent's answer: {"phase", "reason", "message", "digest",
                           "transfer": {bytes, fetchedBytes, resumedParts, ...}}

Each scan (every `interval_s`), a request is filled when it has no answer yet or was rewritten
since; a Pending one (a transient failure, or CacheFull) is tried again after `retry_s`. A
Ready request whose entries were evicted is answered Evicted and not filled again until it is
rewritten, so two requests that do not fit the budget together do not evict each other in
turn. Removing a request removes its answer; its entries stay until LRU eviction takes them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops.contract.exitcodes import ExitCode
from modelops.nodecache import layout
from modelops.nodecache.layout import FillRequest, Phase, Reason
from modelops.nodecache.pods import is_pod_claim, pod_artifacts
from modelops.nodecache.store import CacheFull, RebuildReport, Store, write_atomically
from modelops.storage import ChecksumMismatch, ObjectStore
from modelops.transfer import TransferStats

log = logging.getLogger("modelops.nodecache")


def _endpoint_key(endpoint: str | None) -> str:
    return (endpoint or "").rstrip("/").lower()


@dataclass(frozen=True)
class Answer:
    phase: Phase
    reason: str
    message: str
    digest: str | None = None
    stats: dict[str, Any] | None = None


PodLister = Callable[[], list[dict[str, Any]]]


class Agent:
    """With `pods` (the serving pods on this node, listed each scan), the agent also writes the
    requests of those pods and pins their artifacts while they live (nodecache.pods)."""

    def __init__(self, store: Store, objects: ObjectStore, retry_s: float = 10.0,
                 clock: Callable[[], float] = time.time, pods: PodLister | None = None) -> None:
        self.store = store
        self.objects = objects
        self.retry_s = retry_s
        self._clock = clock
        self._pods = pods
        self.endpoint = _endpoint_key(objects.config.endpoint_url)
        self.requests_dir = store.root / layout.REQUESTS
        self.status_dir = store.root / layout.STATUS
        self.requests_dir.mkdir(exist_ok=True)
        self.status_dir.mkdir(exist_ok=True)

    # ----------------------------------------------------------------- spool

    def _requests(self) -> dict[str, tuple[Path, FillRequest | ValueError]]:
        found: dict[str, tuple[Path, FillRequest | ValueError]] = {}
        for path in sorted(self.requests_dir.glob("*.json")):
            if not layout.is_request_name(path.stem):
                continue
            try:
                found[path.stem] = (path, layout.parse_request(path.read_text(encoding="utf-8")))
            except ValueError as err:
                found[path.stem] = (path, err)
            except OSError:
                continue  # removed while being read
        return found

    def _status_path(self, name: str) -> Path:
        return self.status_dir / f"{name}.json"

    def _answer(self, name: str) -> tuple[dict[str, Any], float] | None:
        path = self._status_path(name)
        try:
            return json.loads(path.read_text(encoding="utf-8")), path.stat().st_mtime
        except (OSError, ValueError):
            return None

    def _write(self, name: str, answer: Answer) -> None:
        write_atomically(
            self._status_path(name),
            layout.status_document(answer.phase, answer.reason, answer.message, answer.digest, answer.stats),
        )
        log.info("%s: %s (%s) %s", name, answer.phase, answer.reason, answer.message)

    def wanted(self) -> set[str]:
        """The entries the spool asks for: their partial downloads are kept at a restart."""
        return {d for _, req in self._requests().values() if isinstance(req, FillRequest) for _, d in req.files}

    def start(self) -> RebuildReport:
        return self.store.rebuild(self.wanted())

    def scan(self) -> None:
        """One pass over the spool, then the store trimmed to its budget."""
        write_atomically(self.store.root / layout.HEARTBEAT, json.dumps({"time": self._clock()}))
        if self._pods is not None:
            self._sync_pods()
        requests = self._requests()
        for name, (path, request) in requests.items():
            if self._due(name, path):
                self._write(name, self._fill(name, request))
        self.store.trim()
        self._notice_evictions(requests)
        for status in self.status_dir.glob("*.json"):
            if status.stem not in requests:
                status.unlink(missing_ok=True)

    def _due(self, name: str, request_path: Path) -> bool:
        known = self._answer(name)
        if known is None:
            return True
        body, answered = known
        try:
            if request_path.stat().st_mtime > answered:
                return True  # rewritten since the answer
        except FileNotFoundError:
            return False
        if body.get("phase") == Phase.FILLING:
            return True  # the agent stopped mid-fill: resume it
        return body.get("phase") == Phase.PENDING and self._clock() >= answered + self.retry_s

    def _notice_evictions(self, requests: dict[str, tuple[Path, FillRequest | ValueError]]) -> None:
        for name, (_, request) in requests.items():
            known = self._answer(name)
            if known is None or known[0].get("phase") != Phase.READY or not isinstance(request, FillRequest):
                continue
            gone = [p for p, d in request.files if not self.store.entry_path(d).exists()]
            if gone:
                self._write(name, Answer(Phase.EVICTED, Reason.EVICTED, f"evicted: {', '.join(gone)}", request.digest))

    def _sync_pods(self) -> None:
        """Each live serving pod's request written and its artifact pinned; a pod's request and
        pin removed once it is gone. A failed list changes nothing."""
        try:
            live = pod_artifacts(self._pods() if self._pods is not None else [])
        except Exception as err:  # noqa: BLE001 - the API may be away; the pins stay as they are
            log.warning("listing this node's pods failed: %s: %s", type(err).__name__, err)
            return
        pins = self.store.pins()
        for name, artifact in live.items():
            path = self.requests_dir / f"{name}.json"
            document = artifact.request.document()
            try:
                unchanged = path.read_text(encoding="utf-8") == document
            except OSError:
                unchanged = False
            if not unchanged:
                write_atomically(path, document)
            if artifact.request.digest not in pins.get(artifact.claim, ()):
                self.store.pin(artifact.claim, [artifact.request.digest])
        claims = {artifact.claim for artifact in live.values()}
        for claim in pins:
            if is_pod_claim(claim) and claim not in claims:
                self.store.unpin(claim)
        for path in self.requests_dir.glob(f"{layout.POD_REQUEST_PREFIX}*.json"):
            if path.stem not in live:
                path.unlink(missing_ok=True)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        self.start()
        while not stop.is_set():
            try:
                self.scan()
            except OSError as err:  # a full or failing disk: said, and tried again next time
                log.error("scan failed: %s: %s", type(err).__name__, err)
            stop.wait(interval_s)

    # ----------------------------------------------------------------- fill

    def _cached(self, request: FillRequest) -> bool:
        if request.is_set:
            return self.store.manifest(request.digest) is not None
        return self.store.lookup(request.digest) is not None

    def _fill(self, name: str, request: FillRequest | ValueError) -> Answer:
        from modelops.fetch import classify_failure

        if isinstance(request, ValueError):
            return Answer(Phase.FAILED, Reason.INVALID_REQUEST, str(request))
        if self._cached(request):
            return Answer(Phase.READY, Reason.ALREADY_CACHED, f"{len(request.files)} files in the cache", request.digest)
        if request.endpoint is not None and _endpoint_key(request.endpoint) != self.endpoint:
            # The agent's credentials are for its own storage only; the pod downloads it itself.
            return Answer(Phase.FAILED, Reason.OTHER_STORAGE,
                          f"the artifact is on {request.endpoint}; this agent fills from {self.endpoint or 'AWS S3'}", request.digest)
        try:
            return self._download(name, request)
        except CacheFull as err:
            return Answer(Phase.PENDING, Reason.CACHE_FULL, str(err), request.digest)
        except Exception as err:  # noqa: BLE001 - every failure is answered with its reason
            failure = classify_failure(err)
            phase = Phase.PENDING if failure.exit_code == ExitCode.TRANSIENT else Phase.FAILED
            return Answer(phase, failure.reason, failure.message, request.digest)

    def _download(self, name: str, request: FillRequest) -> Answer:
        digests = {d for _, d in request.files}
        sizes = {d: s for d in digests if self.store.lookup(d) is not None and (s := self.store.size_of(d)) is not None}
        missing = [(p, d) for p, d in request.files if d not in sizes]
        for path, digest in missing:
            sizes[digest] = self.objects.head(request.file_uri(path)).size
        needed = sum(sizes[d] for d in {d for _, d in missing})
        self.store.reserve(needed, keep=digests)
        self._write(name, Answer(Phase.FILLING, Reason.DOWNLOADING, f"{needed} bytes to fetch", request.digest))
        total = TransferStats()
        for index, (path, digest) in enumerate(missing):
            if self.store.lookup(digest, touch=False) is not None:
                continue  # the same bytes under two paths: filled once
            try:
                result = self._fill_file(request.file_uri(path), digest, sizes[digest])
            except ChecksumMismatch as err:
                raise ChecksumMismatch(f"file {path!r} (files[{index}]) of {request.folder}", err.expected, err.actual) from None
            if result.stats is not None:
                total.add(result.stats)
        if request.is_set:
            self.store.store_manifest(request.manifest(sizes))
        return Answer(Phase.READY, Reason.FILLED, f"{len(request.files)} files, {total.describe()}", request.digest, total.wire())

    def _fill_file(self, uri: str, digest: str, size: int) -> Any:
        def download(dest: Path) -> Any:
            return self.objects.download(uri, dest, expected_sha256=digest)

        return self.store.fill(digest, size, download)

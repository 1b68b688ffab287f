"""Ranged, resumable, verified downloads: the engine behind ObjectStore.download, and so behind
the compression Job, the serving pod's fetch container and anything else that reads an artifact.

- The object is cut into parts of `part_size` bytes, fetched as ranged GETs by
  `max_concurrency` threads, each pinned to the object's ETag (the caller's `open_range` sends
  If-Match), with at most 2 × max_concurrency parts in flight or waiting to be hashed.
- The sha256 is computed in order while the parts arrive, so verifying costs no second pass.
- Each finished part is written at its offset of the partial file and recorded in a journal
  beside it (`<partial>.parts`). A retry after a dropped connection, or a later run after the
  process died, fetches only the parts the journal lacks; those it has are read back from the
  partial file for the hash. A journal of another ETag, size or part size is discarded.
- A stall detector replaces any total timeout: a part that receives no byte for
  `stall_timeout_s` has its connection closed and is retried, however long a healthy
  download of a large model takes. The watch covers the body; while the request waits for
  its headers, the socket's read timeout (set to the same value by storage) does the same,
  and such an error (`stalled = True`) is counted as a stall too.
- Progress goes to the `modelops.transfer` log every `progress_interval_s`; the caller gets
  the figures (TransferStats) for its termination message.

This module does no I/O of its own beyond the files it is given: the object store supplies
`open_range`, so only modelops.storage imports boto3.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("modelops.transfer")

# Bytes asked of a response body at a time: the granularity of the stall detector's view (a
# link slower than READ_CHUNK per stall timeout counts as stalled).
READ_CHUNK = 256 * 1024


class Stream(Protocol):
    """A response body: read(n) returns at most n bytes (b"" at the end); close() may be called
    from another thread to break a read that hangs."""

    def read(self, n: int) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Part:
    index: int
    start: int
    end: int  # inclusive, as in an HTTP Range

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def plan_parts(size: int, part_size: int) -> list[Part]:
    """[0, size) in parts of part_size bytes (the last one shorter)."""
    if part_size <= 0:
        raise ValueError("part_size must be positive")
    return [Part(i, start, min(start + part_size, size) - 1) for i, start in enumerate(range(0, size, part_size))]


@dataclass
class TransferStats:
    """What one download did, for the log and the termination message."""

    bytes: int = 0  # size of the object
    fetched_bytes: int = 0  # bytes received over the network (resumed parts excluded)
    resumed_parts: int = 0  # parts a journal had from an earlier attempt
    parts: int = 0
    retries: int = 0  # part attempts that were repeated (dropped connection, short read, stall)
    stalls: int = 0
    seconds: float = 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.fetched_bytes / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        rate = self.bytes_per_second / 2**20
        text = f"{self.bytes} bytes in {self.seconds:.1f}s ({rate:.1f} MiB/s)"
        extra = []
        if self.resumed_parts:
            extra.append(f"{self.resumed_parts} of {self.parts} parts resumed")
        if self.retries:
            extra.append(f"{self.retries} part retries")
        if self.stalls:
            extra.append(f"{self.stalls} stalls")
        return text + (f"; {', '.join(extra)}" if extra else "")

    def add(self, other: TransferStats) -> None:
        for name in ("bytes", "fetched_bytes", "resumed_parts", "parts", "retries", "stalls"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds

    def wire(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "fetchedBytes": self.fetched_bytes,
            "seconds": round(self.seconds, 3),
            "bytesPerSecond": round(self.bytes_per_second),
            "resumedParts": self.resumed_parts,
            "retries": self.retries,
            "stalls": self.stalls,
        }


class Journal:
    """The parts of a partial file that are complete: `<partial>.parts`, a header line naming
    the object (ETag, size, part size) and one line per finished part."""

    def __init__(self, partial: Path, etag: str, size: int, part_size: int) -> None:
        self.path = partial.with_name(partial.name + ".parts")
        self.header = {"etag": etag, "size": size, "partSize": part_size}
        self._lock = threading.Lock()
        self._fd: int | None = None

    def load(self) -> set[int]:
        """The finished parts of an earlier attempt at the same object; empty (and the journal
        started afresh) when there is none or it describes another object."""
        done: set[int] = set()
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            if lines and json.loads(lines[0]) == self.header:
                done = {int(line) for line in lines[1:] if line.strip().isdigit()}
        except (OSError, ValueError):
            done = set()
        if not done:
            self.path.write_text(json.dumps(self.header) + "\n", encoding="utf-8")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        return done

    def record(self, index: int) -> None:
        with self._lock:
            assert self._fd is not None
            os.write(self._fd, f"{index}\n".encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class StallWatch:
    """Closes the stream of a part that received no byte for `timeout_s` seconds."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: dict[int, tuple[Stream, float]] = {}
        self._stalled: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3-stall-watch", daemon=True)

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, index: int, stream: Stream) -> None:
        with self._lock:
            self._streams[index] = (stream, self._clock())
            self._stalled.discard(index)

    def touch(self, index: int) -> None:
        with self._lock:
            if index in self._streams:
                self._streams[index] = (self._streams[index][0], self._clock())

    def done(self, index: int) -> bool:
        """Stop watching the part; True when it was closed for stalling."""
        with self._lock:
            self._streams.pop(index, None)
            stalled = index in self._stalled
            self._stalled.discard(index)
            return stalled

    def check(self) -> None:
        now = self._clock()
        with self._lock:
            stalled = [(i, s) for i, (s, last) in self._streams.items() if now - last > self.timeout_s]
            for index, _ in stalled:
                self._streams.pop(index)
                self._stalled.add(index)
        for index, stream in stalled:
            log.warning("part %d received no byte for %.0fs: closing its connection to retry it", index, self.timeout_s)
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - a body that fails to close is abandoned all the same
                pass

    def _run(self) -> None:
        interval = min(1.0, self.timeout_s / 4)
        while not self._stop.wait(interval):
            self.check()


class Stalled(Exception):
    """A part's connection was closed by the stall detector; the caller's retry policy decides."""


@dataclass
class _Progress:
    label: str
    total: int
    interval_s: float
    clock: Callable[[], float]
    started: float = 0.0
    done: int = 0
    last_log: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            now = self.clock()
            if now - self.last_log < self.interval_s:
                return
            self.last_log = now
            elapsed = max(now - self.started, 1e-9)
            percent = 100.0 * self.done / self.total if self.total else 100.0
        log.info("%s: %d of %d bytes (%.0f%%), %.1f MiB/s", self.label, self.done, self.total, percent,
                 self.done / elapsed / 2**20)


@dataclass(frozen=True)
class Engine:
    """The knobs of one download (from storage's TransferTuning)."""

    part_size: int
    max_concurrency: int
    stall_timeout_s: float
    progress_interval_s: float = 5.0


@dataclass
class _PartFetcher:
    """Fetches one part into its offset of the file, with the figures and the journal."""

    open_range: Callable[[int, int], Stream]
    fd: int
    engine: Engine
    journal: Journal | None
    stats: TransferStats
    progress: _Progress
    attempts: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _stalled(self, part: Part, got: int) -> Stalled:
        self.progress.add(-got)
        with self.lock:
            self.stats.stalls += 1
        return Stalled(f"bytes {part.start}-{part.end}: no byte for {self.engine.stall_timeout_s:g}s")

    def _receive(self, part: Part, stream: Stream, view: memoryview, watch: StallWatch) -> int:
        got = 0
        try:
            while got < part.size:
                chunk = stream.read(min(READ_CHUNK, part.size - got))
                if not chunk:
                    break
                view[got : got + len(chunk)] = chunk
                got += len(chunk)
                watch.touch(part.index)
                self.progress.add(len(chunk))
        except Exception as exc:
            closed_by_watch = watch.done(part.index)
            if getattr(exc, "stalled", False):  # the socket's own read timeout
                self._stalled(part, got)
                raise
            if closed_by_watch:
                raise self._stalled(part, got) from exc
            self.progress.add(-got)
            raise
        finally:
            stream.close()
        if watch.done(part.index):
            raise self._stalled(part, got)
        return got

    def once(self, part: Part, watch: StallWatch) -> bytearray:
        """One attempt at the part; the caller's retry policy repeats it."""
        with self.lock:
            self.attempts[part.index] = self.attempts.get(part.index, 0) + 1
        try:
            stream = self.open_range(part.start, part.end)
        except Exception as exc:
            if getattr(exc, "stalled", False):  # the socket's read timeout, waiting for headers
                with self.lock:
                    self.stats.stalls += 1
            raise
        watch.watch(part.index, stream)
        buffer = bytearray(part.size)
        view = memoryview(buffer)
        got = self._receive(part, stream, view, watch)
        if got != part.size:
            self.progress.add(-got)
            raise ShortRead(f"short read at bytes {part.start}-{part.end}: got {got} of {part.size} bytes")
        os.pwrite(self.fd, view, part.start)
        if self.journal is not None:
            self.journal.record(part.index)
        with self.lock:
            self.stats.fetched_bytes += part.size
        return buffer

    def read_back(self, part: Part) -> bytes:
        data = os.pread(self.fd, part.size, part.start)
        self.progress.add(len(data))
        return data


def download(
    open_range: Callable[[int, int], Stream],
    size: int,
    fd: int,
    engine: Engine,
    retry: Callable[[Callable[[], bytearray]], bytearray],
    *,
    journal: Journal | None = None,
    label: str = "download",
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, TransferStats]:
    """Fetch [0, size) into `fd` (opened read-write) and return its sha256 and the figures.

    `retry(action)` runs one part's attempt under the caller's retry policy (storage's
    with_retries), which sees Stalled and ShortRead as transient. Parts the journal lists are
    read back from `fd` instead of fetched.
    """
    stats = TransferStats(bytes=size)
    parts = plan_parts(size, engine.part_size)
    stats.parts = len(parts)
    finished = journal.load() if journal is not None else set()
    finished &= {p.index for p in parts}
    stats.resumed_parts = len(finished)
    progress = _Progress(label, size, engine.progress_interval_s, clock)
    progress.started = progress.last_log = clock()
    fetcher = _PartFetcher(open_range, fd, engine, journal, stats, progress)

    def fetch(part: Part, watch: StallWatch) -> bytearray:
        return retry(lambda: fetcher.once(part, watch))

    started = clock()
    try:
        sha256 = _run_parts(parts, finished, fetch, fetcher.read_back, hashlib.sha256(), engine, clock)
    finally:
        if journal is not None:
            journal.close()  # after the pool is done: a part still running records itself
    stats.seconds = clock() - started
    stats.retries = sum(n - 1 for n in fetcher.attempts.values())
    log.info("%s: done, %s", label, stats.describe())
    return sha256, stats


def _run_parts(
    parts: list[Part],
    finished: set[int],
    fetch: Callable[[Part, StallWatch], bytearray],
    read_back: Callable[[Part], bytes],
    hasher: Any,
    engine: Engine,
    clock: Callable[[], float],
) -> str:
    """Fetch the parts on a pool, at most 2 × max_concurrency ahead of the hash, in order."""
    window = 2 * engine.max_concurrency
    pending = iter(parts)
    with StallWatch(engine.stall_timeout_s, clock) as watch, ThreadPoolExecutor(
        max_workers=engine.max_concurrency, thread_name_prefix="s3-get"
    ) as pool:

        def submit(part: Part) -> tuple[Part, Future[bytearray] | None]:
            return (part, None) if part.index in finished else (part, pool.submit(fetch, part, watch))

        in_flight: deque[tuple[Part, Future[bytearray] | None]] = deque()
        for part in pending:
            in_flight.append(submit(part))
            if len(in_flight) >= window:
                break
        try:
            while in_flight:
                part, future = in_flight.popleft()
                hasher.update(read_back(part) if future is None else future.result())
                following = next(pending, None)
                if following is not None:
                    in_flight.append(submit(following))
        except BaseException:
            for _, future in in_flight:
                if future is not None:
                    future.cancel()
            raise
    return str(hasher.hexdigest())


class ShortRead(Exception):
    """A body ended before its range did; the caller's retry policy decides."""

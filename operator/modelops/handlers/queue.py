"""A coalescing work queue, as controllers use: a key waits at most once, a key is never
worked on twice at the same time, and a key that changes while being worked on runs again.

Two lanes: a change (a watch event, a timer the reconcile asked for) goes before the periodic
resync, so that a resync of thousands of unchanged objects never delays a new one. A key waiting
in the resync lane moves to the front lane when it changes."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Key:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


# Reconciles return how long to wait before looking again unprompted, or None.
Worker = Callable[[Key], Awaitable[float | None]]


class WorkQueue:
    def __init__(self, worker: Worker, workers: int, max_backoff: float, on_depth: Callable[[int], None] = lambda n: None) -> None:
        self._worker = worker
        self._workers = workers
        self._max_backoff = max_backoff
        self._on_depth = on_depth
        self._changed: deque[Key] = deque()
        self._resync: deque[Key] = deque()
        # One permit per lane entry; an entry whose key was already taken is skipped.
        self._entries = asyncio.Semaphore(0)
        self._waiting: set[Key] = set()
        self._waiting_changed: set[Key] = set()
        self._active: set[Key] = set()
        self._again: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"modelops-worker-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def alive(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    @property
    def depth(self) -> int:
        return len(self._waiting)

    def add(self, key: Key, resync: bool = False) -> None:
        """Reconcile `key` soon; after every changed key if this is only a periodic `resync`."""
        if resync and (key in self._active or key in self._waiting):
            return  # it runs soon anyway
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._active:
            self._again.add(key)
            return
        if resync:
            self._resync.append(key)
        elif key not in self._waiting_changed:
            self._waiting_changed.add(key)
            self._changed.append(key)
        else:
            return
        self._entries.release()
        self._waiting.add(key)
        self._on_depth(len(self._waiting))

    async def _next(self) -> Key:
        while True:
            await self._entries.acquire()
            key = self._changed.popleft() if self._changed else self._resync.popleft()
            if key in self._waiting:
                self._waiting.discard(key)
                self._waiting_changed.discard(key)
                return key

    def add_after(self, key: Key, delay: float) -> None:
        """Reconcile `key` after `delay` seconds unless it is queued sooner."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None and existing.when() <= loop.time() + delay:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _backoff(self, key: Key) -> float:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        return min(self._max_backoff, 0.5 * 2.0 ** (failures - 1))

    async def _run(self) -> None:
        while True:
            key = await self._next()
            self._on_depth(len(self._waiting))
            self._active.add(key)
            retry_after: float | None = None
            try:
                retry_after = await self._worker(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except RetryLater as err:
                retry_after = err.delay if err.delay is not None else self._backoff(key)
            except Exception:
                logger.exception("reconcile of %s failed", key)
                retry_after = self._backoff(key)
            finally:
                self._active.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.add(key)
            elif retry_after is not None:
                self.add_after(key, retry_after)


class RetryLater(Exception):
    """Raised by a reconcile to be retried: after `delay` seconds, or with backoff if None."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay

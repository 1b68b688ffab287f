"""The work queue coalesces, serialises per key, re-runs changed keys and backs off."""

from __future__ import annotations

import asyncio

import pytest

from modelops.handlers.queue import Key, RetryLater, WorkQueue

pytestmark = pytest.mark.unit

A, B = Key("Model", "ns", "a"), Key("Model", "ns", "b")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=5))


def test_a_key_queued_many_times_runs_once() -> None:
    async def scenario() -> list[Key]:
        seen: list[Key] = []

        async def work(key: Key) -> None:
            seen.append(key)

        queue = WorkQueue(work, workers=2, max_backoff=1)
        for _ in range(5):
            queue.add(A)
        queue.add(B)
        queue.start()
        while len(seen) < 2 or queue.depth:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await queue.stop()
        return seen

    assert sorted(run(scenario())) == [A, B]


def test_a_key_changed_while_running_runs_again_but_never_concurrently() -> None:
    async def scenario() -> tuple[int, int]:
        runs, active, overlap = 0, 0, 0
        release = asyncio.Event()

        async def work(key: Key) -> None:
            nonlocal runs, active, overlap
            runs += 1
            active += 1
            overlap = max(overlap, active)
            if runs == 1:
                await release.wait()
            active -= 1

        queue = WorkQueue(work, workers=3, max_backoff=1)
        queue.start()
        queue.add(A)
        while runs < 1:
            await asyncio.sleep(0.01)
        queue.add(A)
        queue.add(A)
        release.set()
        while runs < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await queue.stop()
        return runs, overlap

    assert run(scenario()) == (2, 1)


def test_failures_and_requested_delays_requeue() -> None:
    async def scenario() -> list[str]:
        log: list[str] = []

        async def work(key: Key) -> float | None:
            log.append(key.name)
            if log.count(key.name) == 1:
                if key == A:
                    raise RuntimeError("boom")
                raise RetryLater("later", delay=0.05)
            return None

        queue = WorkQueue(work, workers=1, max_backoff=0.1)
        queue.start()
        queue.add(A)
        queue.add(B)
        while len(log) < 4:
            await asyncio.sleep(0.01)
        await queue.stop()
        return log

    assert sorted(run(scenario())) == ["a", "a", "b", "b"]


def test_an_earlier_wakeup_replaces_a_later_one() -> None:
    async def scenario() -> int:
        runs = 0

        async def work(key: Key) -> None:
            nonlocal runs
            runs += 1

        queue = WorkQueue(work, workers=1, max_backoff=1)
        queue.start()
        queue.add_after(A, 60)
        queue.add_after(A, 0.02)
        await asyncio.sleep(0.2)
        await queue.stop()
        return runs

    assert run(scenario()) == 1


def test_a_changed_key_goes_before_every_resync_key_and_a_waiting_resync_key_moves_up() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []

        async def work(key: Key) -> None:
            seen.append(key.name)

        queue = WorkQueue(work, workers=1, max_backoff=1)
        resynced = [Key("Model", "ns", f"r{i}") for i in range(5)]
        for key in resynced:
            queue.add(key, resync=True)
        queue.add(A)
        queue.add(resynced[3])  # it changed while waiting for the resync
        queue.add(resynced[0], resync=True)  # already waiting: not queued twice
        assert queue.depth == 6
        queue.start()
        while len(seen) < 6:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await queue.stop()
        return seen

    assert run(scenario()) == ["a", "r3", "r0", "r1", "r2", "r4"]

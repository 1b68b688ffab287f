"""The running operator: its context, the work queue that runs the reconcilers, the resync
loop and the probe servers. `handlers/registry.py` wires kopf's watches to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modelops import kube as k8s
from modelops.handlers.context import Context
from modelops.handlers.deployments import reconcile_deployment
from modelops.handlers.informer import Informer
from modelops.handlers.models import reconcile_model
from modelops.handlers.probes import serve_health, serve_metrics
from modelops.handlers.queue import Key, RetryLater, WorkQueue
from modelops.handlers.versions import reconcile_version
from modelops.settings import Settings

Reconciler = Callable[[Context, Key], float | None]
RECONCILERS: dict[str, Reconciler] = {
    "Model": reconcile_model,
    "ModelVersion": reconcile_version,
    "ModelDeployment": reconcile_deployment,
}


class Operator:
    """The running operator: context, queue, resync loop and probe servers."""

    def __init__(self, settings: Settings, make_context: Callable[[], Context]) -> None:
        self.settings = settings
        self._make_context = make_context
        self.ctx: Context | None = None
        self.queue: WorkQueue | None = None
        self.known: set[Key] = set()
        self.informer = Informer()
        self._runners: list[Any] = []
        self._resync: asyncio.Task[None] | None = None
        # Reconciles wait on the API server most of the time: one thread per worker, so that
        # `workers` requests are in flight (asyncio's default pool has only cores + 4 threads).
        self._threads = ThreadPoolExecutor(settings.workers, thread_name_prefix="modelops-reconcile")
        self.ready = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self.ctx = self._make_context().with_informer(self.informer)
        self.queue = WorkQueue(
            self._work, self.settings.workers, self.settings.max_backoff_seconds, self.ctx.metrics.queue_depth.set
        )
        self.queue.start()
        self._runners = [
            await serve_metrics(self.ctx.metrics, self.settings.bind_address, self.settings.metrics_port),
            await serve_health(self.live, lambda: self.ready, self.settings.bind_address, self.settings.health_port),
        ]
        self._resync = asyncio.create_task(self._resync_loop(), name="modelops-resync")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._resync is not None:
            self._resync.cancel()
        if self.queue is not None:
            await self.queue.stop()
        for runner in self._runners:
            await runner.cleanup()
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self.ctx is not None:
            self.ctx.kube.close()

    def live(self) -> bool:
        return self.queue is not None and self.queue.alive

    # -- keys --------------------------------------------------------------------------

    def wake(self, key: Key) -> None:
        if self.queue is not None and key.name:
            self.queue.add(key)

    def seen(self, key: Key, deleted: bool) -> None:
        if deleted:
            self.known.discard(key)
        else:
            self.known.add(key)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            if self.queue is not None:
                for key in sorted(self.known):
                    self.queue.add(key, resync=True)

    async def _work(self, key: Key) -> float | None:
        ctx = self.ctx
        assert ctx is not None
        started = time.monotonic()
        try:
            retry_after = await asyncio.get_running_loop().run_in_executor(self._threads, RECONCILERS[key.kind], ctx, key)
        except k8s.Conflict:
            ctx.metrics.reconciles.labels(key.kind, "conflict").inc()
            raise RetryLater(f"{key}: changed while reconciling", delay=0.0) from None
        except k8s.Throttled as err:
            ctx.metrics.reconcile_errors.labels(key.kind, "Throttled").inc()
            raise RetryLater(str(err), delay=err.retry_after) from None
        except Exception as err:
            ctx.metrics.reconcile_errors.labels(key.kind, type(err).__name__).inc()
            raise
        finally:
            ctx.metrics.reconcile_seconds.labels(key.kind).observe(time.monotonic() - started)
        ctx.metrics.reconciles.labels(key.kind, "ok").inc()
        return retry_after

"""HTTP endpoints: /metrics on one port, /healthz and /readyz on another."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from modelops.operatormetrics import CONTENT_TYPE, Metrics


async def _serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve_metrics(metrics: Metrics, host: str, port: int) -> web.AppRunner:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return await _serve(app, host, port)


async def serve_health(live: Callable[[], bool], ready: Callable[[], bool], host: str, port: int) -> web.AppRunner:
    """Liveness: the event loop answers and the workers run. Readiness: the operator's startup
    finished (its queue, workers and resync loop run); kopf starts its watches after that, and
    no reconcile runs before kopf's initial listings have filled the informer. A standby waiting
    for the Lease answers both with 200 (`modelops.__main__`)."""

    def check(probe: Callable[[], bool]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(_: web.Request) -> web.Response:
            ok = probe()
            return web.Response(status=200 if ok else 503, text="ok\n" if ok else "not ready\n")

        return handle

    app = web.Application()
    app.router.add_get("/healthz", check(live))
    app.router.add_get("/readyz", check(ready))
    return await _serve(app, host, port)

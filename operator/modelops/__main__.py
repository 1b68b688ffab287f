"""Run the operator: `python -m modelops`. Settings come from MODELOPS_* variables."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import kopf

from modelops import __version__
from modelops.core.endpoints import EndpointPolicy, HostPort, parse_networks
from modelops.handlers.context import Context, StorePool
from modelops.handlers.operator import Operator
from modelops.handlers.probes import serve_health, serve_metrics
from modelops.handlers.registry import build_registry
from modelops.kube import Kube
from modelops.leader import LeaderElector, LeaseConfig
from modelops.operatormetrics import Metrics
from modelops.settings import Settings, SettingsError

logger = logging.getLogger("modelops")

# Where a pod finds its own namespace.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def identity(settings: Settings) -> str:
    """This replica's name: the Lease holder and the user agent in the audit log."""
    return settings.leader_election_identity or socket.gethostname()


def user_agent(settings: Settings) -> str:
    return f"modelops-operator/{__version__} ({identity(settings)})"


def context_factory(settings: Settings, metrics: Metrics) -> Callable[[], Context]:
    def make() -> Context:
        kube = Kube.from_environment(
            observe=metrics.observe_request, user_agent=user_agent(settings), connections=settings.workers + 2
        )
        return Context(
            settings=settings,
            kube=kube,
            metrics=metrics,
            stores=StorePool(workers=settings.workers),
            endpoints=endpoint_policy(settings, kube.server, os.environ),
        )

    return make


def endpoint_policy(settings: Settings, server: str, environ: Mapping[str, str]) -> EndpointPolicy:
    """The endpoints Models and ModelDeployments may name: the settings, and the API server both
    as this client reaches it and as the in-cluster service a pod would."""
    apiservers = [where for where in (HostPort.of(server),) if where is not None]
    if environ.get("KUBERNETES_SERVICE_HOST"):
        apiservers.append(HostPort(environ["KUBERNETES_SERVICE_HOST"], int(environ.get("KUBERNETES_SERVICE_PORT") or 443)))
    return EndpointPolicy(
        allowed=settings.allowed_endpoints, denied=parse_networks(settings.denied_cidrs), apiservers=tuple(apiservers),
        own=(settings.pod_ip,) if settings.pod_ip else (),
    )


def lease_config(settings: Settings) -> LeaseConfig:
    namespace = settings.leader_election_namespace
    if not namespace and SERVICE_ACCOUNT_NAMESPACE.exists():
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    if not namespace:
        raise SettingsError("MODELOPS_LEADER_ELECTION_NAMESPACE: required outside a pod")
    return LeaseConfig(
        name=settings.leader_election_id,
        namespace=namespace,
        identity=identity(settings),
        lease_duration=settings.lease_duration_seconds,
        renew_deadline=settings.lease_renew_deadline_seconds,
        retry_period=settings.lease_retry_period_seconds,
    )


def lost_leadership() -> None:
    """Stop at once: a replica that may no longer hold the Lease must not reconcile another
    moment. The restarted pod comes back as a standby."""
    logger.critical("lost the leader lease; exiting so that a restart comes back as a standby")
    logging.shutdown()
    os._exit(1)


async def run(settings: Settings, elector: LeaderElector | None) -> None:
    metrics = Metrics()
    if elector is not None:
        # A standby answers its probes (it is healthy and ready to take over), serves
        # modelops_leader 0 on /metrics, and reconciles nothing.
        servers = [await serve_health(lambda: True, lambda: True, settings.bind_address, settings.health_port),
                   await serve_metrics(metrics, settings.bind_address, settings.metrics_port)]
        try:
            await asyncio.to_thread(elector.acquire)
        finally:
            for server in servers:
                await server.cleanup()
        elector.keep(on_lost=lost_leadership)
    metrics.leader.set(1)
    operator = Operator(settings, context_factory(settings, metrics))
    try:
        await kopf.operator(
            registry=build_registry(operator),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            # kopf would otherwise name itself after the login user, and an image that runs
            # as a numeric UID with no passwd entry (runAsUser) has none.
            # (kopf.Identity is a NewType of str that kopf does not export.)
            identity=cast(Any, identity(settings)),
        )
    finally:
        if elector is not None:
            # Hand over at once on a clean stop instead of after a lease duration.
            await asyncio.to_thread(elector.release)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread a malloc arena of its own (up to 8 per core). The reconcile
    threads mostly wait on the API server, and the responses they parse, freed, stay spread
    over those arenas, so RSS grows with the thread count. Two arenas are enough for threads
    that wait. MALLOC_ARENA_MAX in the environment, which glibc reads itself, takes precedence."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl has no arenas to limit)
        return
    m_arena_max = -8  # from glibc's malloc.h
    libc.mallopt(m_arena_max, arenas)


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
        config = lease_config(settings) if settings.leader_election else None
    except (SettingsError, ValueError) as err:
        print(f"modelops: invalid settings: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf logs every watch event at DEBUG and every handler call at INFO; keep it quiet unless asked.
    logging.getLogger("kopf").setLevel(max(logging.INFO, getattr(logging, settings.log_level)))
    logging.getLogger("kopf.objects").setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING)
    limit_malloc_arenas()
    elector = None
    if config is not None:
        elector = LeaderElector(Kube.from_environment(user_agent=user_agent(settings)), config)
    asyncio.run(run(settings, elector))
    return 0


if __name__ == "__main__":
    sys.exit(main())

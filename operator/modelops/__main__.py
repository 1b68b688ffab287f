"""Run the operator: `python -m modelops`. Settings come from MODELOPS_* variables."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable

import kopf

from modelops.handlers.context import Context, StoreCache
from modelops.handlers.queue import Key
from modelops.handlers.registry import Operator, build_registry
from modelops.kube import Kube
from modelops.metrics import Metrics
from modelops.settings import Settings, SettingsError


def context_factory(settings: Settings) -> Callable[[Callable[[Key], None]], Context]:
    def make(wake: Callable[[Key], None]) -> Context:
        metrics = Metrics()
        return Context(
            settings=settings,
            kube=Kube.from_environment(observe=metrics.observe_request),
            metrics=metrics,
            stores=StoreCache(),
            wake=wake,
        )

    return make


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as err:
        print(f"modelops: invalid settings: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf logs every watch event at DEBUG; keep it quiet unless asked.
    logging.getLogger("kopf").setLevel(max(logging.INFO, getattr(logging, settings.log_level)))
    operator = Operator(settings, context_factory(settings))
    asyncio.run(
        kopf.operator(
            registry=build_registry(operator),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

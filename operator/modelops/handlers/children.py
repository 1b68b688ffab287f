"""Keep one child as the operator renders it: what it renders, it keeps (a hand edit of an
owned child is reverted), and nothing is written when nothing differs."""

from __future__ import annotations

from typing import Any

from modelops import kube as k8s
from modelops.core.drift import differences, removals
from modelops.core.upgrade import keep_running_fetcher
from modelops.handlers.context import Context
from modelops.handlers.queue import RetryLater


def keep(ctx: Context, resource: k8s.Resource, live: dict[str, Any] | None, desired: dict[str, Any]) -> None:
    """Make the live child what we render: server-side apply when a rendered field is missing
    or different (this also recreates a deleted child), then remove the entries that someone
    added to a rendered list, which apply leaves to their owner. No write when nothing differs.
    A Deployment keeps its running fetch image while nothing else of its pods changes (core/upgrade)."""
    if resource == k8s.DEPLOYMENTS:
        desired = keep_running_fetcher(desired, live)
    found = differences(desired, live)
    if not found:
        return
    if any(d.kind != "extra" for d in found):
        live = ctx.kube.apply(resource, desired)
        ctx.reads.wrote(resource, live)
        found = differences(desired, live)
    ops = removals(found)
    if ops:
        meta = desired["metadata"]
        try:
            ctx.reads.wrote(resource, ctx.kube.json_patch(resource, meta["namespace"], meta["name"], ops))
        except k8s.Invalid:  # a guarding test failed: the list changed since it was read
            raise RetryLater(f"{resource.kind} {meta['name']} changed while entries added by hand were removed") from None

"""Run the node cache agent:

    python -m modelops.nodecache --root /var/lib/modelops/cache --budget 200Gi \\
        [--interval 2] [--retry 10] [--part-size 16Mi] [--max-concurrency 8] [--once] [--node NAME]

With --node (in the DaemonSet, the pod's spec.nodeName), the agent also lists the serving pods
on that node each scan, fills what their fetch containers name and pins it while they live.

Each flag may come from the environment instead (MODELOPS_NODECACHE_ROOT, _BUDGET, _INTERVAL,
_RETRY, _PART_SIZE, _MAX_CONCURRENCY, _NODE); storage settings come from MODELOPS_S3_* and AWS_*, as
for the fetch container. SIGTERM or SIGINT stops it once the scan in progress ends; a kill
mid-fill leaves the partial download, which the next start resumes. Exit 2 on bad settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelops.contract.exitcodes import ExitCode
from modelops.nodecache.agent import Agent
from modelops.nodecache.store import Store
from modelops.storage import ObjectStore, StorageConfig, TransferTuning

ENV_PREFIX = "MODELOPS_NODECACHE_"
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str) -> int:
    """`200Gi`, `500M`, `1048576` as bytes (Kubernetes quantity suffixes)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]i?)?\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (for example 200Gi, 500M or 1048576)")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(name: str, default: str | None = None) -> str | None:
        return environ.get(ENV_PREFIX + name) or default

    parser = argparse.ArgumentParser(prog="python -m modelops.nodecache", description="The node-local model cache agent.")
    parser.add_argument("--root", default=env("ROOT"), required=env("ROOT") is None, help="the cache's directory")
    parser.add_argument("--budget", default=env("BUDGET"), required=env("BUDGET") is None, help="bytes the entries may take (200Gi)")
    parser.add_argument("--interval", type=float, default=float(env("INTERVAL", "2") or 2), help="seconds between scans of the spool")
    parser.add_argument("--retry", type=float, default=float(env("RETRY", "10") or 10), help="seconds before a Pending request is tried again")
    parser.add_argument("--part-size", default=env("PART_SIZE", "16Mi"), help="bytes per ranged GET")
    parser.add_argument("--max-concurrency", type=int, default=int(env("MAX_CONCURRENCY", "8") or 8), help="ranged GETs in flight")
    parser.add_argument("--once", action="store_true", help="rebuild, scan the spool once, and exit")
    parser.add_argument("--node", default=env("NODE"), help="fill and pin for the serving pods on this node")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = _parser(environ).parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        budget = parse_bytes(args.budget)
        tuning = TransferTuning(part_size=parse_bytes(args.part_size), max_concurrency=args.max_concurrency)
        objects = ObjectStore(StorageConfig.from_env(environ), tuning)
    except ValueError as err:
        print(f"InvalidArguments: {err}", file=sys.stderr)
        return ExitCode.USAGE
    agent = Agent(Store(Path(args.root), budget), objects, retry_s=args.retry, pods=_node_pods(args.node) if args.node else None)
    if args.once:
        agent.start()
        agent.scan()
        return ExitCode.SUCCESS
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.run(stop, args.interval)
    return ExitCode.SUCCESS


def _node_pods(node: str) -> Callable[[], list[dict[str, Any]]]:
    from modelops import kube
    from modelops.nodecache.pods import SERVING_PODS

    client = kube.Kube.from_environment(user_agent=f"modelops-nodecache/{node}", connections=1)
    return lambda: client.list(kube.PODS, "", label_selector=SERVING_PODS, field_selector=f"spec.nodeName={node}")


if __name__ == "__main__":
    sys.exit(main())

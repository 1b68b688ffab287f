"""Run one test bed node: python -m e2e.nodeagent --node-name testbed-cpu ..."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .agent import NodeAgent, NodeConfig, install_signal_handlers, memory_capacity
from .lifecycle import Backoff
from .sandbox import Network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--pod-cidr", required=True)
    parser.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu capacity to advertise")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--bridge", required=True)
    parser.add_argument("--gateway", required=True, help="the bridge's address: pods' default route and the node IP")
    parser.add_argument("--prefix", type=int, required=True, help="pod network prefix length")
    parser.add_argument("--netns-prefix", default="mo-")
    parser.add_argument("--apiserver-host", required=True)
    parser.add_argument("--apiserver-port", type=int, required=True)
    parser.add_argument("--project-root", type=Path, required=True)
    parser.add_argument("--project-python", type=Path, required=True)
    parser.add_argument("--kubernetes-version", required=True)
    # Pods here are processes sharing the machine; the node advertises more CPU than it
    # has so that a demo's handful of pods with modest requests all fit, as on an
    # overcommitted node.
    parser.add_argument("--cpu", default=str(max(8, (os.cpu_count() or 2) * 4)))
    parser.add_argument("--max-pods", type=int, default=110)
    parser.add_argument("--kubelet-port", type=int, default=0, help="serve the kubelet API (logs, exec, port-forward) here")
    parser.add_argument("--kubelet-cert", type=Path, help="the kubelet API's serving certificate")
    parser.add_argument("--kubelet-key", type=Path)
    parser.add_argument("--client-ca", type=Path, help="the CA whose client certificates the kubelet API accepts")
    defaults = Backoff()
    parser.add_argument("--backoff-initial", type=float, default=defaults.initial,
                        help="seconds before the first restart of a container that exited (CrashLoopBackOff)")
    parser.add_argument("--backoff-max", type=float, default=defaults.cap, help="the longest back-off, in seconds")
    parser.add_argument("--backoff-reset", type=float, default=defaults.reset_after,
                        help="a container that ran this many seconds before it exited backs off from the start again")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    agent = NodeAgent(NodeConfig(
        name=args.node_name, kubeconfig=args.kubeconfig, pod_cidr=args.pod_cidr, gpus=args.gpus,
        state_dir=args.state_dir, network=Network(args.bridge, args.gateway, args.prefix),
        netns_prefix=args.netns_prefix, apiserver_host=args.apiserver_host, apiserver_port=args.apiserver_port,
        project_root=args.project_root, project_python=args.project_python,
        kubernetes_version=args.kubernetes_version, cpu_capacity=args.cpu,
        memory_capacity=memory_capacity(), max_pods=args.max_pods, kubelet_port=args.kubelet_port,
        kubelet_cert=args.kubelet_cert, kubelet_key=args.kubelet_key, client_ca=args.client_ca,
        backoff=Backoff(args.backoff_initial, args.backoff_max, args.backoff_reset),
    ))
    install_signal_handlers(agent)
    agent.run()


if __name__ == "__main__":
    main()

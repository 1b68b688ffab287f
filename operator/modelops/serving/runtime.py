"""The serving-runtime seam: what the operator needs from a model server to run it in a pod.

`core.render` builds the Deployment and the Service (names, labels, owner, replicas, the fetch
init container, security, scheduling) and asks the runtime for the parts that are the server's
own, in the spirit of KServe's ServingRuntime: its container (image, command, arguments,
ports and probes), where it reads its model repository and how the fetch container lays a
version out there, the port and path it publishes metrics on and the names of the metrics the
canary analysis and the autoscaler read, and how long a pod needs to drain.
A second runtime implements this Protocol; `serving.triton.TRITON` is the one there is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol

from modelops.api.deployment import ModelDeploymentSpec
from modelops.api.model import ModelSpec


@dataclass(frozen=True)
class Port:
    """A named container port, published by the Service under the same name."""

    name: str
    number: int


@dataclass(frozen=True)
class RepositoryLayout:
    """What the fetch init container is told, beyond the artifact and the version, to lay the
    version out the way the server reads it: its extra arguments and environment."""

    args: tuple[str, ...]
    env: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class MetricNames:
    """The server's Prometheus names for what the canary analysis and the autoscaler read. The
    counters' attribute names are `core.canary.PodMetrics` fields."""

    success: str
    failure: str
    duration_us: str
    queue_us: str
    compute_us: str
    inferences: str
    # A summary of request latency, and the quantile label of its p99.
    p99_summary: str
    p99_quantile: str

    @property
    def counters(self) -> dict[str, str]:
        """PodMetrics field by counter name."""
        return {getattr(self, f.name): f.name for f in fields(self) if not f.name.startswith("p99")}


class ServingRuntime(Protocol):
    @property
    def name(self) -> str:
        """The server container's name."""
        ...

    @property
    def model_repository(self) -> str:
        """Where the fetch container lays the model out and the server reads it."""
        ...

    @property
    def ports(self) -> tuple[Port, ...]:
        """Every port, in the order the container and the Service list them."""
        ...

    @property
    def http_port(self) -> int:
        """The port routes and clients send inference requests to."""
        ...

    @property
    def metrics_port(self) -> int: ...

    @property
    def metrics_path(self) -> str: ...

    @property
    def metrics(self) -> MetricNames: ...

    @property
    def termination_grace_seconds(self) -> int:
        """Drain plus the server's own shutdown."""
        ...

    def repository_layout(self, model_name: str, model: ModelSpec, spec: ModelDeploymentSpec, version: int) -> RepositoryLayout:
        """How the fetch container lays this version out; raises serving.ServingConfigError
        naming a bad field, so that a bad spec is reported before any pod is made."""
        ...

    def container(
        self, *, spec: ModelDeploymentSpec, image: str, pull_policy: str, mounts: list[dict[str, Any]],
        security_context: dict[str, Any], resources: dict[str, Any],
    ) -> dict[str, Any]:
        """The server's container; `mounts` start with the model repository (read-only)."""
        ...

    def endpoints(self, host: str) -> dict[str, str]:
        """The addresses clients use, by protocol."""
        ...

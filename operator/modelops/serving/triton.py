"""NVIDIA Triton as a serving runtime: its container, ports, probes, model repository and the
names of the metrics the canary analysis and the autoscaler read. The rest of the operator
reaches these through `TRITON` (a `serving.runtime.ServingRuntime`)."""

from __future__ import annotations

import math
from typing import Any, Final

from modelops.api.deployment import ModelDeploymentSpec
from modelops.api.model import ModelSpec
from modelops.serving.config import render_config_pbtxt, served_model
from modelops.serving.runtime import MetricNames, Port, RepositoryLayout

MODEL_REPOSITORY: Final = "/models"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
STARTUP_PERIOD_SECONDS: Final = 5
# Seconds a terminating Triton pod keeps serving before it is asked to stop, and the
# seconds Triton then gets to finish the requests in flight.
DRAIN_SECONDS: Final = 5
TRITON_SHUTDOWN_SECONDS: Final = 30

# The environment variable that carries config.pbtxt to the fetch container.
CONFIG_ENV: Final = "MODELOPS_TRITON_CONFIG"

METRICS: Final = MetricNames(
    success="nv_inference_request_success",
    failure="nv_inference_request_failure",
    duration_us="nv_inference_request_duration_us",
    queue_us="nv_inference_queue_duration_us",
    compute_us="nv_inference_compute_infer_duration_us",
    inferences="nv_inference_count",
    # Published with --metrics-config=summary_latencies=true.
    p99_summary="nv_inference_request_summary_us",
    p99_quantile="0.99",
)


def triton_config_text(model_name: str, model: ModelSpec, spec: ModelDeploymentSpec, version: int) -> str:
    """config.pbtxt for one version; raises serving.ServingConfigError naming a bad field."""
    return render_config_pbtxt(served_model(model_name, model, spec, version))


def _http_probe(path: str, period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


class Triton:
    """tritonserver with a fixed model repository (model-control-mode none) and strict readiness."""

    name = "triton"
    model_repository = MODEL_REPOSITORY
    ports: tuple[Port, ...] = (Port("http", HTTP_PORT), Port("grpc", GRPC_PORT), Port("metrics", METRICS_PORT))
    http_port = HTTP_PORT
    metrics_port = METRICS_PORT
    metrics_path = "/metrics"
    metrics = METRICS
    termination_grace_seconds = DRAIN_SECONDS + TRITON_SHUTDOWN_SECONDS

    def repository_layout(self, model_name: str, model: ModelSpec, spec: ModelDeploymentSpec, version: int) -> RepositoryLayout:
        """A Triton model folder for the backend, with config.pbtxt passed in the environment."""
        config = triton_config_text(model_name, model, spec, version)
        return RepositoryLayout(
            args=("--backend", str(spec.triton.backend), "--repository", MODEL_REPOSITORY),
            env=({"name": CONFIG_ENV, "value": config},),
        )

    def container(
        self, *, spec: ModelDeploymentSpec, image: str, pull_policy: str, mounts: list[dict[str, Any]],
        security_context: dict[str, Any], resources: dict[str, Any],
    ) -> dict[str, Any]:
        startup_failures = max(1, math.ceil(spec.triton.startup_timeout_seconds / STARTUP_PERIOD_SECONDS))
        container: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "imagePullPolicy": pull_policy,
            "command": ["tritonserver"],
            # Rendered empty so that a variable added by hand is seen as drift and removed.
            "env": [],
            "args": [
                f"--model-repository={MODEL_REPOSITORY}",
                "--model-control-mode=none",
                "--strict-readiness=true",
                f"--http-port={HTTP_PORT}",
                f"--grpc-port={GRPC_PORT}",
                f"--metrics-port={METRICS_PORT}",
                # p99 request latency for the canary analysis (METRICS.p99_summary).
                "--metrics-config=summary_latencies=true",
            ],
            "ports": [{"name": p.name, "containerPort": p.number, "protocol": "TCP"} for p in self.ports],
            "startupProbe": _http_probe("/v2/health/ready", STARTUP_PERIOD_SECONDS, startup_failures),
            "readinessProbe": _http_probe("/v2/health/ready", 5, 3),
            "livenessProbe": _http_probe("/v2/health/live", 10, 3),
            "volumeMounts": mounts,
            "securityContext": security_context,
            # A terminating pod leaves the Service's endpoints asynchronously; keep serving
            # until every proxy and client has seen that, so a rollout drops no request.
            "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        }
        if resources:
            container["resources"] = resources
        return container

    def endpoints(self, host: str) -> dict[str, str]:
        return {"http": f"http://{host}:{HTTP_PORT}", "grpc": f"{host}:{GRPC_PORT}"}


TRITON: Final = Triton()

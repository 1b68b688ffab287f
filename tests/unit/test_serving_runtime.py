"""The serving-runtime seam and the one format-to-file table: a second runtime renders its own
pod through the same `core.render`, and every side names an artifact's file from one table."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from modelops.api import ModelDeploymentSpec, ModelSpec
from modelops.api.version import ArtifactFormat
from modelops.contract.formats import ARTIFACT_FILES, artifact_file, artifact_suffix
from modelops.core.canary import PodMetrics
from modelops.core.render import DeploymentInputs, endpoints, render_deployment, render_service
from modelops.serving import config
from modelops.serving.runtime import MetricNames, Port, RepositoryLayout, ServingRuntime
from modelops.serving.triton import TRITON
from modelops.settings import Settings
from tests.unit.test_render_scalers_golden import MODEL, OWNER, VERSION

pytestmark = pytest.mark.unit


class OtherServer:
    """A runtime that is not Triton: one port, its own repository and layout."""

    name = "other"
    model_repository = "/mnt/models"
    ports: tuple[Port, ...] = (Port("http", 8080),)
    http_port = 8080
    metrics_port = 8080
    metrics_path = "/stats"
    metrics = MetricNames(success="ok", failure="err", duration_us="dur", queue_us="queue", compute_us="compute",
                          inferences="count", p99_summary="latency", p99_quantile="0.99")
    termination_grace_seconds = 12

    def repository_layout(self, model_name: str, model: ModelSpec, spec: ModelDeploymentSpec, version: int) -> RepositoryLayout:
        return RepositoryLayout(args=("--layout", "flat", "--repository", self.model_repository),
                                env=({"name": "OTHER_CONFIG", "value": f"{model_name}:{version}"},))

    def container(
        self, *, spec: ModelDeploymentSpec, image: str, pull_policy: str, mounts: list[dict[str, Any]],
        security_context: dict[str, Any], resources: dict[str, Any],
    ) -> dict[str, Any]:
        return {"name": self.name, "image": image, "args": ["serve", self.model_repository], "volumeMounts": mounts,
                "securityContext": security_context}

    def endpoints(self, host: str) -> dict[str, str]:
        return {"http": f"http://{host}:{self.http_port}"}


def test_a_second_runtime_renders_its_own_pod_through_the_same_renderer() -> None:
    runtime: ServingRuntime = OtherServer()
    deployment = render_deployment(DeploymentInputs(name="digits", namespace="ml", owner=OWNER, spec=ModelDeploymentSpec(model="digits"),
                                   model_name="digits", model=MODEL, version=VERSION, settings=Settings.from_env({}),
                                   runtime=runtime))
    template = deployment["spec"]["template"]
    pod = template["spec"]
    [server] = pod["containers"]
    [fetch] = pod["initContainers"]
    assert server["name"] == "other" and server["args"] == ["serve", "/mnt/models"]
    assert server["volumeMounts"][0] == {"name": "models", "mountPath": "/mnt/models", "readOnly": True}
    assert fetch["args"][-4:] == ["--layout", "flat", "--repository", "/mnt/models"]
    assert {"name": "OTHER_CONFIG", "value": "digits:3"} in fetch["env"]
    assert not any(e["name"] == "MODELOPS_TRITON_CONFIG" for e in fetch["env"])
    assert pod["terminationGracePeriodSeconds"] == 12
    assert (template["metadata"]["annotations"]["prometheus.io/port"], template["metadata"]["annotations"]["prometheus.io/path"]) == ("8080", "/stats")
    service = render_service(name="digits", namespace="ml", owner=OWNER, model_name="digits", runtime=runtime)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert endpoints("digits", "ml", runtime) == {"http": "http://digits.ml.svc:8080"}


def test_the_service_publishes_every_container_port_by_name() -> None:
    deployment = render_deployment(DeploymentInputs(name="digits", namespace="ml", owner=OWNER, spec=ModelDeploymentSpec(model="digits"),
                                   model_name="digits", model=MODEL, version=VERSION, settings=Settings.from_env({})))
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    service = render_service(name="digits", namespace="ml", owner=OWNER, model_name="digits")
    assert [(p["name"], p["containerPort"]) for p in server["ports"]] == [(p["name"], p["port"]) for p in service["spec"]["ports"]]


def test_the_metric_names_map_onto_every_pod_metrics_counter() -> None:
    counted = {f.name for f in dataclasses.fields(PodMetrics)} - {"p99_us"}
    assert sorted(TRITON.metrics.counters.values()) == sorted(counted)
    assert TRITON.metrics.counters["nv_inference_count"] == "inferences"
    assert TRITON.metrics.p99_summary not in TRITON.metrics.counters


def test_every_artifact_format_has_one_file_and_the_loaders_suffix() -> None:
    # Every single-file format; a format that is a folder has no one file to name.
    assert set(ARTIFACT_FILES) == {ArtifactFormat.ONNX, ArtifactFormat.TORCHSCRIPT, ArtifactFormat.EXPORTED_PROGRAM}
    assert len(set(ARTIFACT_FILES.values())) == len(ARTIFACT_FILES)
    assert [artifact_suffix(f) for f in ("onnx", "torchscript", "exported-program")] == [".onnx", ".pt", ".pt2"]
    assert artifact_suffix("tensorflow") == ""
    with pytest.raises(ValueError):
        artifact_file("tensorflow")


@pytest.mark.parametrize(("backend", "served", "loaded"), [
    ("onnxruntime", ArtifactFormat.ONNX, "model.onnx"),
    ("python", ArtifactFormat.ONNX, "model.py"),
    ("pytorch", ArtifactFormat.TORCHSCRIPT, "model.pt"),
])
def test_a_version_folder_names_its_artifact_from_the_format_table(backend: str, served: ArtifactFormat, loaded: str) -> None:
    assert config.artifact_filename(backend) == ARTIFACT_FILES[served]
    assert config.default_model_filename(backend) == loaded


def test_no_other_module_spells_an_artifact_file_name() -> None:
    root = Path(__file__).resolve().parents[2] / "operator" / "modelops"
    # The python backend's model.py runs alone inside Triton and cannot import the table; it
    # must agree with it.
    alone = root / "serving" / "python_backend" / "model.py"
    [assigned] = [n.value for n in ast.walk(ast.parse(alone.read_text())) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "ONNX_FILENAME" for t in n.targets)]
    assert isinstance(assigned, ast.Constant) and assigned.value == ARTIFACT_FILES[ArtifactFormat.ONNX]
    # The API's default entrypoint of an ONNX file set is that name too; the API cannot import
    # the table (the contract imports the API), so it must agree with it.
    from modelops.api.version import DEFAULT_ENTRYPOINT

    api = root / "api" / "version.py"
    assert ARTIFACT_FILES[ArtifactFormat.ONNX] == DEFAULT_ENTRYPOINT
    table = root / "contract" / "formats.py"
    spelled = [str(p.relative_to(root)) for p in root.rglob("*.py") if p not in (table, alone, api)
               and any(f'"{name}"' in p.read_text() for name in ARTIFACT_FILES.values())]
    assert spelled == []

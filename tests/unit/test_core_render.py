"""Rendering of the compression Job, the Triton Deployment and its Service."""

from __future__ import annotations

import json

import pytest

from modelops.api import ModelDeploymentSpec, ModelSpec
from modelops.api.model import StorageSpec, Toleration
from modelops.core import naming
from modelops.core.objects import OwnerRef, VersionView
from modelops.core.render import (
    DeploymentInputs,
    JobInputs,
    managed_replicas,
    render_deployment,
    render_job,
    render_service,
)
from modelops.core.versions import Scheduling
from modelops.serving import ServingConfigError
from modelops.serving.triton import triton_config_text
from modelops.settings import Settings

pytestmark = pytest.mark.unit

SETTINGS = Settings.from_env({})
MV_OWNER = OwnerRef("modelops.dev/v1alpha1", "ModelVersion", "digits-v1", "uid-mv")
MD_OWNER = OwnerRef("modelops.dev/v1alpha1", "ModelDeployment", "digits", "uid-md")
ARTIFACT = {"uri": "s3://models/digits/1.onnx", "sha256": "ab" * 32, "format": "onnx"}
RECIPE = {"quantization": "int8-weight-only", "pruning": {"method": "none", "amount": 0.0}, "targetFormat": "onnx"}
GPU_NODE = {"nvidia.com/gpu.present": "true"}


def model_spec(**signature) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "storage": {"endpoint": "https://minio:9000", "bucket": "models", "credentialsSecret": {"name": "s3-creds"}},
            "signature": {"inputs": [{"name": "x", "dataType": "FP32", "dims": [64]}],
                          "outputs": [{"name": "y", "dataType": "FP32", "dims": [10]}], "maxBatchSize": 8, **signature},
        }
    )


def job(**overrides):
    args = {
        "name": "digits-v1-compress", "namespace": "ns", "owner": MV_OWNER, "model": "digits", "version_name": "digits-v1", "version": 1,
        "artifact": ARTIFACT, "recipe": RECIPE, "evaluation": None, "output_prefix": "s3://models/modelops-cache/" + "k" * 64 + "/",
        "storage": model_spec().storage, "signature": model_spec().signature, "scheduling": Scheduling(gpus=1, node_selector=GPU_NODE),
        "settings": SETTINGS,
    }
    return render_job(JobInputs(**{**args, **overrides}))


def env_map(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_job_identity_and_ownership() -> None:
    rendered = job()
    meta = rendered["metadata"]
    assert meta["name"] == "digits-v1-compress" and meta["namespace"] == "ns"
    assert meta["ownerReferences"] == [
        {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "name": "digits-v1", "uid": "uid-mv",
         "controller": True, "blockOwnerDeletion": False}
    ]
    assert meta["labels"][naming.LABEL_MANAGED_BY] == "modelops"
    assert meta["labels"][naming.LABEL_VERSION] == "1"
    assert meta["annotations"] == {naming.ANNOTATION_VERSION: "1"}


def test_job_runs_the_compressor_cli_contract() -> None:
    container = job(evaluation={"datasetUri": "s3://models/e.npz", "metric": "top1-accuracy", "threshold": 0.5})["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == SETTINGS.compressor_image
    assert container["command"] == ["python", "-m", "modelops.compress"]
    args = container["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=False))
    assert pairs["--source-uri"] == ARTIFACT["uri"] and pairs["--source-sha256"] == ARTIFACT["sha256"]
    assert pairs["--source-format"] == "onnx"
    assert json.loads(pairs["--recipe-json"]) == RECIPE
    assert json.loads(pairs["--eval-json"])["metric"] == "top1-accuracy"
    assert pairs["--output-prefix"].endswith("/")
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = env_map(container)
    assert env["MODELOPS_S3_ENDPOINT"] == "https://minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert "--eval-json" not in job()["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    ("source_format", "max_batch", "expected"),
    [
        ("onnx", 8, {}),
        ("exported-program", 8, {"--input-names": "x", "--output-names": "y"}),
        ("torchscript", 8, {"--input-names": "x", "--output-names": "y", "--input-shape": "1,64"}),
        ("torchscript", 0, {"--input-names": "x", "--output-names": "y", "--input-shape": "64"}),
    ],
)
def test_torch_sources_export_with_the_signature_names(source_format, max_batch, expected) -> None:
    rendered = job(artifact={**ARTIFACT, "format": source_format}, signature=model_spec(maxBatchSize=max_batch).signature)
    args = rendered["spec"]["template"]["spec"]["containers"][0]["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=False))
    assert {k: v for k, v in pairs.items() if k in ("--input-names", "--output-names", "--input-shape")} == expected
    assert pairs["--source-format"] == source_format


def test_job_failure_policy_and_retries() -> None:
    spec = job()["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    fail_now = [r for r in rules if r["action"] == "FailJob"][0]["onExitCodes"]["values"]
    count = [r for r in rules if r["action"] == "Count"][0]["onExitCodes"]["values"]
    assert {10, 11} <= set(fail_now) and 12 not in fail_now
    assert count == [12]
    custom = job(settings=Settings.from_env({"MODELOPS_JOB_BACKOFF_LIMIT": "7"}))
    assert custom["spec"]["backoffLimit"] == 7


@pytest.mark.parametrize(
    ("scheduling", "gpu_limit", "tolerations"),
    [
        (Scheduling(gpus=1, node_selector=GPU_NODE), 1, [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
        (Scheduling(gpus=2), 2, [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
        (Scheduling(gpus=0), None, None),
        (
            Scheduling(gpus=1, tolerations=(Toleration(key="nvidia.com/gpu", operator="Exists"),)),
            1,
            [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        ),
        (
            Scheduling(gpus=0, tolerations=(Toleration(key="pool", operator="Equal", value="batch", effect="NoSchedule"),)),
            None,
            [{"key": "pool", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}],
        ),
    ],
)
def test_job_gpu_scheduling(scheduling, gpu_limit, tolerations) -> None:
    pod = job(scheduling=scheduling)["spec"]["template"]["spec"]
    limits = pod["containers"][0].get("resources", {}).get("limits", {})
    assert limits.get("nvidia.com/gpu") == gpu_limit
    assert pod.get("tolerations") == tolerations
    assert pod.get("nodeSelector") == (dict(scheduling.node_selector) or None)


def test_job_render_is_deterministic() -> None:
    assert job() == job()
    assert job() != job(version=2)


def served(number: int = 1, sha: str = "cd" * 32) -> VersionView:
    return VersionView(name=f"digits-v{number}", model="digits", version=number, phase="Ready",
                       compressed_uri=f"s3://models/modelops-cache/{number}/model.onnx", compressed_sha256=sha, compressed_format="onnx")


def test_a_suspended_deployment_renders_zero_replicas() -> None:
    assert deployment({"replicas": 3, "suspended": True})["spec"]["replicas"] == 0
    assert deployment({"replicas": 3, "suspended": True})["spec"]["template"] == deployment({"replicas": 3})["spec"]["template"]


def deployment(spec: dict | None = None, version: VersionView | None = None, model: ModelSpec | None = None, settings=SETTINGS):
    return render_deployment(DeploymentInputs(
        name="digits", namespace="ns", owner=MD_OWNER, spec=ModelDeploymentSpec.model_validate({"model": "digits", **(spec or {})}),
        model_name="digits", model=model or model_spec(), version=version or served(), settings=settings,
    ))


def test_triton_container_ports_probes_and_command() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert [p["name"] for p in triton["ports"]] == ["http", "grpc", "metrics"]
    assert [p["containerPort"] for p in triton["ports"]] == [8000, 8001, 8002]
    assert triton["command"] == ["tritonserver"]
    assert triton["args"] == [
        "--model-repository=/models", "--model-control-mode=none", "--strict-readiness=true",
        "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002",
        "--metrics-config=summary_latencies=true",
    ]
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_startup_probe_is_sized_from_the_spec() -> None:
    startup = deployment({"triton": {"startupTimeoutSeconds": 1800}})["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800


def test_pod_security_is_restricted() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod["initContainers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["runAsNonRoot"] is True and ctx["seccompProfile"]["type"] == "RuntimeDefault"


def _pods() -> list[tuple[str, dict]]:
    return [("job", job()["spec"]["template"]["spec"]), ("triton", deployment()["spec"]["template"]["spec"])]


@pytest.mark.parametrize("which", ["job", "triton"])
def test_every_rendered_pod_is_restricted_with_a_read_only_root(which: str) -> None:
    pod = dict(_pods())[which]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"] + pod.get("initContainers", []):
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert isinstance(ctx["runAsUser"], int) and ctx["runAsUser"] > 0
        assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        # Writes go to emptyDirs only: scratch at /tmp, and the model repository.
        assert "emptyDir" in volumes[mounts["/tmp"]], container["name"]
        for name in mounts.values():
            assert set(volumes[name]) & {"emptyDir", "configMap", "secret"}, name
        assert "privileged" not in ctx and "hostPath" not in str(pod)


@pytest.mark.parametrize(
    ("ref", "volume"),
    [
        ({"configMapRef": {"name": "storage-ca"}}, {"configMap": {"name": "storage-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}),
        ({"secretRef": {"name": "tls"}, "key": "bundle.pem"},
         {"secret": {"secretName": "tls", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}}),
    ],
)
def test_the_ca_bundle_reaches_the_job_and_the_fetcher(ref: dict, volume: dict) -> None:
    model = model_spec()
    model = model.model_copy(update={"storage": StorageSpec.model_validate({**model.storage.wire(), "caBundle": ref})})
    pods = [
        ("compress", job(storage=model.storage)["spec"]["template"]["spec"], "containers"),
        ("fetch", deployment(model=model)["spec"]["template"]["spec"], "initContainers"),
    ]
    for name, pod, kind in pods:
        container = pod[kind][0]
        assert container["name"] == name
        assert {"name": "storage-ca", **volume} in pod["volumes"]
        assert {"name": "storage-ca", "mountPath": "/etc/modelops/storage-ca", "readOnly": True} in container["volumeMounts"]
        assert env_map(container)["MODELOPS_S3_CA_BUNDLE"] == "/etc/modelops/storage-ca/ca.crt"
    # Triton itself never talks to storage.
    triton = pods[1][1]["containers"][0]
    assert all(m["name"] != "storage-ca" for m in triton["volumeMounts"])


def test_credentials_reach_pods_only_through_secret_key_refs() -> None:
    for _, pod in _pods():
        for container in pod["containers"] + pod.get("initContainers", []):
            for var in container["env"]:
                if var["name"].startswith("AWS_"):
                    assert set(var) == {"name", "valueFrom"} and set(var["valueFrom"]) == {"secretKeyRef"}, var


def test_job_refuses_inputs_above_the_configured_limits() -> None:
    settings = Settings.from_env({"MODELOPS_MAX_ARTIFACT_BYTES": "1000", "MODELOPS_MAX_DATASET_BYTES": "10"})
    args = job(settings=settings)["spec"]["template"]["spec"]["containers"][0]["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=False))
    assert pairs["--max-artifact-bytes"] == "1000" and pairs["--max-dataset-bytes"] == "10"


def test_init_container_fetches_exactly_the_version() -> None:
    pod = deployment({"triton": {"backend": "python"}}, version=served(3))["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]
    assert fetch["image"] == SETTINGS.operator_image
    assert fetch["command"] == ["python", "-m", "modelops.fetch"]
    args = dict(zip(fetch["args"][::2], fetch["args"][1::2], strict=False))
    assert args == {
        "--uri": "s3://models/modelops-cache/3/model.onnx", "--sha256": "cd" * 32, "--model-name": "digits",
        "--version": "3", "--backend": "python", "--repository": "/models",
    }
    env = env_map(fetch)
    assert 'backend: "python"' in env["MODELOPS_TRITON_CONFIG"]
    assert "versions: [3]" in env["MODELOPS_TRITON_CONFIG"]
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["MODELOPS_S3_ENDPOINT"] == "https://minio:9000"
    assert pod["volumes"] == [{"name": "models", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    assert fetch["volumeMounts"][0]["mountPath"] == "/models"


def test_rollout_strategy_and_deadline() -> None:
    spec = deployment({"rollout": {"progressDeadlineSeconds": 90}, "replicas": 3})["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["progressDeadlineSeconds"] == 90 and spec["replicas"] == 3


def test_gpu_serving_gets_limits_selector_tolerations_and_gpu_instances() -> None:
    rendered = deployment({"scheduling": {"gpus": 1, "nodeSelector": GPU_NODE}, "triton": {"resources": {"limits": {"memory": "4Gi"}}}})
    pod = rendered["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "4Gi", "nvidia.com/gpu": 1}
    assert pod["nodeSelector"] == GPU_NODE
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    config = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]}["MODELOPS_TRITON_CONFIG"]
    assert "KIND_GPU" in config
    cpu = deployment()["spec"]["template"]["spec"]
    assert "tolerations" not in cpu and "resources" not in cpu["containers"][0]


def test_template_carries_version_and_digest_and_scrape_annotations() -> None:
    template = deployment(version=served(4))["spec"]["template"]
    assert template["metadata"]["labels"][naming.LABEL_VERSION] == "4"
    annotations = template["metadata"]["annotations"]
    assert annotations[naming.ANNOTATION_VERSION] == "4"
    assert annotations[naming.ANNOTATION_ARTIFACT_SHA256] == "cd" * 32
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"


def test_only_version_related_fields_change_between_versions() -> None:
    one, two = deployment(version=served(1)), deployment(version=served(2, sha="ef" * 32))
    assert one["spec"]["selector"] == two["spec"]["selector"]
    assert {k: v for k, v in one["spec"].items() if k != "template"} == {k: v for k, v in two["spec"].items() if k != "template"}
    assert one["spec"]["template"] != two["spec"]["template"]
    assert deployment(version=served(1)) == one  # deterministic


def test_image_overrides() -> None:
    settings = Settings.from_env({"MODELOPS_TRITON_IMAGE": "local/triton:1", "MODELOPS_OPERATOR_IMAGE": "local/op:1"})
    pod = deployment(settings=settings)["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "local/triton:1" and pod["initContainers"][0]["image"] == "local/op:1"
    pod = deployment({"triton": {"image": "custom/triton:2"}}, settings=settings)["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "custom/triton:2"


def test_invalid_serving_config_is_reported_with_the_field() -> None:
    with pytest.raises(ServingConfigError, match="triton.dynamicBatching.enabled"):
        triton_config_text("digits", model_spec(maxBatchSize=0), ModelDeploymentSpec.model_validate(
            {"model": "digits", "triton": {"dynamicBatching": {"enabled": True}}}), 1)


def test_a_version_without_compressed_artifact_is_not_rendered() -> None:
    with pytest.raises(ValueError, match="no compressed artifact"):
        deployment(version=VersionView("digits-v9", "digits", 9, "Compressing"))


def test_service_ports_and_selector_match_the_pods() -> None:
    service = render_service(name="digits", namespace="ns", owner=MD_OWNER, model_name="digits")
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 8000), ("grpc", 8001), ("metrics", 8002)]
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-md"


def test_replicas_belong_to_the_model_deployment() -> None:
    assert managed_replicas(ModelDeploymentSpec.model_validate({"model": "digits", "replicas": 3})) == 3
    assert deployment(spec={"replicas": 3})["spec"]["replicas"] == 3
    assert deployment(spec={"replicas": 0})["spec"]["replicas"] == 0


def test_long_names_make_valid_job_names() -> None:
    assert naming.job_name("digits-v1") == "digits-v1-compress"
    long = "a" * 80
    name = naming.job_name(long)
    assert len(name) <= 63 and name.endswith("-compress")
    assert naming.job_name(long) == name and naming.job_name(long + "b") != name


def test_the_canary_deployment_shares_the_service_selector_and_has_its_own() -> None:
    from modelops.core import naming

    stable = deployment()
    canary = render_deployment(DeploymentInputs(
        name="digits", namespace="ns", owner=MD_OWNER, spec=ModelDeploymentSpec.model_validate({"model": "digits"}),
        model_name="digits", model=model_spec(), version=served(), settings=SETTINGS, canary_replicas=2,
    ))
    service_selector = naming.server_selector("digits")
    assert canary["metadata"]["name"] == "digits-canary" and canary["spec"]["replicas"] == 2
    assert canary["spec"]["selector"]["matchLabels"] == {**service_selector, "modelops.dev/track": "canary"}
    assert stable["spec"]["selector"]["matchLabels"] == service_selector
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert service_selector.items() <= labels.items() and labels["modelops.dev/track"] == "canary"
    assert canary["spec"]["template"]["spec"] == stable["spec"]["template"]["spec"]


FILE_SET = {"uri": "s3://models/llm/1/", "format": "onnx", "entrypoint": "g/model.onnx",
            "files": [{"path": "g/model.onnx", "sha256": "ab" * 32}, {"path": "g/model.onnx.data", "sha256": "cd" * 32}]}


def test_a_file_set_job_gets_every_file_and_the_set_digest() -> None:
    from modelops.api.version import Artifact

    args = job(artifact=FILE_SET)["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--source-uri"] == "s3://models/llm/1/"
    assert flags["--source-sha256"] == Artifact.model_validate(FILE_SET).digest != "ab" * 32
    assert flags["--source-entrypoint"] == "g/model.onnx"
    assert json.loads(flags["--source-files-json"]) == FILE_SET["files"]
    assert "--source-files-json" not in job()["spec"]["template"]["spec"]["containers"][0]["args"]


def test_a_served_file_set_is_fetched_file_by_file_and_each_file_changes_the_template() -> None:
    files = ({"path": "model.onnx", "sha256": "cd" * 32, "bytes": 10}, {"path": "model.onnx.data", "sha256": "ef" * 32, "bytes": 99})
    rendered = deployment(version=VersionView(**{**served().__dict__, "compressed_files": files}))
    fetch = rendered["spec"]["template"]["spec"]["initContainers"][0]
    listed = json.loads(fetch["args"][fetch["args"].index("--files-json") + 1])
    assert listed == [{"path": f["path"], "sha256": f["sha256"]} for f in files]
    other = ({**files[0]}, {**files[1], "sha256": "00" * 32})
    changed = deployment(version=VersionView(**{**served().__dict__, "compressed_files": other}))
    annotation = naming.ANNOTATION_ARTIFACT_SHA256
    template = rendered["spec"]["template"]["metadata"]["annotations"][annotation]
    assert template != changed["spec"]["template"]["metadata"]["annotations"][annotation]
    assert template != deployment()["spec"]["template"]["metadata"]["annotations"][annotation]


def test_a_verified_signer_reaches_the_job_and_an_unsigned_artifact_adds_nothing() -> None:
    def args(rendered: dict) -> list[str]:
        return rendered["spec"]["template"]["spec"]["containers"][0]["args"]

    signed = args(job(source_signer="release"))
    assert signed[signed.index("--source-signer") + 1] == "release"
    assert "--source-signer" not in args(job())


def test_a_signed_version_has_its_fetch_verify_the_operators_signature() -> None:
    spec = ModelDeploymentSpec.model_validate({"model": "digits"})
    base = VersionView("digits-v1", "digits", 1, phase="Ready", compressed_uri="s3://models/c/model.onnx", compressed_sha256="ab" * 32)
    signed = VersionView("digits-v1", "digits", 1, phase="Ready", compressed_uri="s3://models/c/model.onnx",
                         compressed_sha256="ab" * 32, signature_uri="s3://models/c/model.onnx.sig", signer_key="PEM")

    def fetch(view):
        rendered = render_deployment(DeploymentInputs(name="digits", namespace="ns", owner=MD_OWNER, model_name="digits", model=model_spec(),
                                     spec=spec, version=view, settings=SETTINGS))
        return rendered["spec"]["template"]["spec"]["initContainers"][0]

    plain, checked = fetch(base), fetch(signed)
    assert "--signature-uri" not in plain["args"] and "MODELOPS_SIGNER_KEY" not in env_map(plain)
    assert checked["args"][-2:] == ["--signature-uri", "s3://models/c/model.onnx.sig"]
    assert env_map(checked)["MODELOPS_SIGNER_KEY"] == "PEM"


def test_recompress_reaches_the_job_only_when_asked() -> None:
    def args(rendered: dict) -> list[str]:
        return rendered["spec"]["template"]["spec"]["containers"][0]["args"]

    assert "--recompress" in args(job(recompress=True)) and "--recompress" not in args(job())

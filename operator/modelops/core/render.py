"""Rendering of the objects the operator owns: the compression Job, the serving Deployment and
its Service. Pure functions of the specs; the same input always gives the same object. What is
the model server's own (its container, ports, probes, repository) comes from a
`serving.runtime.ServingRuntime`, Triton by default."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelops.api.deployment import AutoscalingProvider, ModelDeploymentSpec
from modelops.api.model import ModelSpec, Signature, StorageSpec
from modelops.api.types import Toleration
from modelops.api.version import Artifact, file_set_digest
from modelops.contract import exitcodes
from modelops.core import naming
from modelops.core.objects import OwnerRef, VersionView
from modelops.core.versions import COMPRESSOR_CONTAINER, Scheduling
from modelops.serving.runtime import RepositoryLayout, ServingRuntime
from modelops.serving.triton import TRITON
from modelops.settings import Settings

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
# Images run as this unprivileged user; the NGC Triton image ships it as triton-server.
RUN_AS_USER = 1000


def managed_replicas(spec: ModelDeploymentSpec) -> int | None:
    """The replica count the operator keeps on the Triton Deployment. It is the
    ModelDeployment's own (0 while suspended); when an autoscaler owns the count, this returns
    None and the field is left out of the render, so that server-side apply leaves it to the
    autoscaler."""
    if spec.suspended:
        return 0
    if spec.autoscaling is not None and spec.autoscaling.provider != AutoscalingProvider.OPERATOR:
        return None
    return spec.replicas


def restricted_container_security() -> dict[str, Any]:
    """The container half of the Pod Security Standard "restricted", with a read-only root
    filesystem: every container writes only to the emptyDirs it mounts (scratch at /tmp)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# Every container's writable scratch (the root filesystem is read-only).
SCRATCH_VOLUME = {"name": "tmp", "emptyDir": {}}
SCRATCH_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
# Where a pod finds the Model's CA bundle (spec.storage.caBundle), as one file.
CA_BUNDLE_VOLUME = "storage-ca"
CA_BUNDLE_DIR = "/etc/modelops/storage-ca"
CA_BUNDLE_FILE = "ca.crt"


def ca_bundle_volumes(storage: StorageSpec) -> list[dict[str, Any]]:
    """The volume with the Model's CA bundle at CA_BUNDLE_FILE, if it names one."""
    ref = storage.ca_bundle
    if ref is None:
        return []
    items = [{"key": ref.key, "path": CA_BUNDLE_FILE}]
    kind, name = ref.source
    if kind == "ConfigMap":
        return [{"name": CA_BUNDLE_VOLUME, "configMap": {"name": name, "items": items}}]
    return [{"name": CA_BUNDLE_VOLUME, "secret": {"secretName": name, "items": items}}]


def ca_bundle_mounts(storage: StorageSpec) -> list[dict[str, Any]]:
    if storage.ca_bundle is None:
        return []
    return [{"name": CA_BUNDLE_VOLUME, "mountPath": CA_BUNDLE_DIR, "readOnly": True}]


def restricted_pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def storage_env(storage: StorageSpec) -> list[dict[str, Any]]:
    """Storage settings for a pod: endpoint and region as values, credentials from the Secret."""
    env: list[dict[str, Any]] = []
    if storage.endpoint:
        env.append({"name": "MODELOPS_S3_ENDPOINT", "value": storage.endpoint})
    env.append({"name": "MODELOPS_S3_REGION", "value": storage.region})
    env.append({"name": "MODELOPS_S3_VERIFY_TLS", "value": "true" if storage.verify_tls else "false"})
    if storage.ca_bundle is not None:
        env.append({"name": "MODELOPS_S3_CA_BUNDLE", "value": f"{CA_BUNDLE_DIR}/{CA_BUNDLE_FILE}"})
    if storage.credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append(
                {"name": key, "valueFrom": {"secretKeyRef": {"name": storage.credentials_secret.name, "key": key}}}
            )
    return env


def tolerations_for(tolerations: tuple[Toleration, ...] | list[Toleration], gpus: int) -> list[dict[str, Any]]:
    rendered = [t.wire() for t in tolerations]
    if gpus > 0 and not any(t.get("key") == GPU_RESOURCE or (not t.get("key") and t.get("operator") == "Exists") for t in rendered):
        rendered.append(dict(GPU_TOLERATION))
    return rendered


def _compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def torch_export_args(source_format: str, signature: Signature) -> list[str]:
    """Names (and, for TorchScript, an example shape) so that a torch source exports to ONNX
    with exactly the tensor names Triton will be configured with."""
    if source_format == "onnx":
        return []
    args = [
        "--input-names", ",".join(t.name for t in signature.inputs),
        "--output-names", ",".join(t.name for t in signature.outputs),
    ]
    if source_format == "torchscript" and len(signature.inputs) == 1:
        dims = [1 if d == -1 else d for d in signature.inputs[0].dims]
        shape = [1, *dims] if signature.max_batch_size > 0 else dims
        args += ["--input-shape", ",".join(str(d) for d in shape)]
    return args


@dataclass(frozen=True)
class JobInputs:
    """What the compression Job of one ModelVersion is rendered from. `source_signer` is the
    trusted signer whose signature the operator verified: the Job then refuses bytes that differ
    from the signed digests as tampered. `recompress` tells it to reuse nothing from the cache."""

    name: str
    namespace: str
    owner: OwnerRef
    model: str
    version_name: str
    version: int
    artifact: dict[str, Any]
    recipe: dict[str, Any]
    evaluation: dict[str, Any] | None
    output_prefix: str
    storage: StorageSpec
    signature: Signature
    scheduling: Scheduling
    settings: Settings
    source_signer: str | None = None
    recompress: bool = False


def render_job(job: JobInputs) -> dict[str, Any]:
    """The compression Job of one ModelVersion."""
    labels = naming.job_labels(job.model, job.version_name, job.version)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": labels,
            "annotations": {naming.ANNOTATION_VERSION: str(job.version)},
            "ownerReferences": [job.owner.reference()],
        },
        "spec": {
            "backoffLimit": job.settings.job_backoff_limit,
            "podFailurePolicy": _job_failure_policy(),
            "template": {"metadata": {"labels": labels}, "spec": _job_pod_spec(job)},
        },
    }


def _job_args(job: JobInputs) -> list[str]:
    """The compressor's command line: the source, the recipe, where to write, and the limits."""
    source, settings = Artifact.model_validate(job.artifact), job.settings
    args = [
        "--source-uri", source.uri,
        "--source-sha256", source.digest,
        "--source-format", source.format,
        "--recipe-json", _compact_json(job.recipe),
        "--output-prefix", job.output_prefix,
        "--signature-json", _compact_json(job.signature.wire()),
        "--max-artifact-bytes", str(settings.max_artifact_bytes),
        "--max-dataset-bytes", str(settings.max_dataset_bytes),
    ]
    if source.files is not None:
        # A file set: every file with its sha256; --source-sha256 is the set's digest.
        args += ["--source-entrypoint", source.graph_path, "--source-files-json", _compact_json([f.wire() for f in source.files])]
    if job.evaluation is not None:
        args += ["--eval-json", _compact_json(job.evaluation)]
    if job.source_signer is not None:
        args += ["--source-signer", job.source_signer]
    if job.recompress:
        args.append("--recompress")
    return args + torch_export_args(job.artifact["format"], job.signature)


def _job_pod_spec(job: JobInputs) -> dict[str, Any]:
    settings, storage, scheduling = job.settings, job.storage, job.scheduling
    container: dict[str, Any] = {
        "name": COMPRESSOR_CONTAINER,
        "image": settings.compressor_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "modelops.compress"],
        "args": _job_args(job),
        "env": [*storage_env(storage), {"name": "MODELOPS_TERMINATION_LOG", "value": "/dev/termination-log"}],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [SCRATCH_MOUNT, *ca_bundle_mounts(storage)],
        "securityContext": restricted_container_security(),
    }
    if scheduling.gpus > 0:
        container["resources"] = {"limits": {GPU_RESOURCE: scheduling.gpus}}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # The Job talks to storage only; it has no business with the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": [SCRATCH_VOLUME, *ca_bundle_volumes(storage)],
    }
    if scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(scheduling.node_selector)
    tolerations = tolerations_for(scheduling.tolerations, scheduling.gpus)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return pod_spec


def _job_failure_policy() -> dict[str, Any]:
    """Permanent failures fail the Job at once, transient ones use up a retry."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": COMPRESSOR_CONTAINER,
                    "operator": "In",
                    "values": sorted(int(c) for c in exitcodes.PERMANENT_FAILURES),
                },
            },
            {
                "action": "Count",
                "onExitCodes": {
                    "containerName": COMPRESSOR_CONTAINER,
                    "operator": "In",
                    "values": [int(exitcodes.TRANSIENT)],
                },
            },
            # A node drain or preemption is nobody's fault and does not use up a retry.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


def _served_digest(version: VersionView) -> str:
    """What the pod template records of the artifact: its sha256, or a file set's digest, so
    that a change of any file starts a new rollout."""
    assert version.compressed_sha256 is not None
    if not version.compressed_files:
        return version.compressed_sha256
    return file_set_digest(version.compressed_uri, [(f["path"], f["sha256"]) for f in version.compressed_files])


def _fetch_files_args(version: VersionView) -> list[str]:
    if not version.compressed_files:
        return []
    files = [{"path": f["path"], "sha256": f["sha256"]} for f in version.compressed_files]
    return ["--files-json", _compact_json(files)]


@dataclass(frozen=True)
class DeploymentInputs:
    """What a serving Deployment is rendered from: the ModelDeployment (its name, namespace,
    owner reference and spec), its Model, the version it serves and the operator's settings.
    With `canary_replicas`, the canary Deployment `<name>-canary` instead: that many pods,
    selected by the same Service as the stable ones, told apart by the canary track label.
    `retry` is the ModelDeployment's modelops.dev/retry annotation: it goes on the pod template,
    so that a retry starts a new ReplicaSet, and with it a new progress deadline. `runtime` is
    the model server, Triton unless told."""

    name: str
    namespace: str
    owner: OwnerRef
    spec: ModelDeploymentSpec
    model_name: str
    model: ModelSpec
    version: VersionView
    settings: Settings
    canary_replicas: int | None = None
    retry: str | None = None
    runtime: ServingRuntime = TRITON


def render_deployment(served: DeploymentInputs) -> dict[str, Any]:
    """The serving Deployment (the runtime's pods) for the version. Only the version (and the
    specs) change it."""
    version, spec, runtime = served.version, served.spec, served.runtime
    if not (version.compressed_uri and version.compressed_sha256):
        raise ValueError(f"version {version.version} has no compressed artifact to serve")
    canary = served.canary_replicas is not None
    labels = naming.server_labels(served.name, served.model_name)
    selector = naming.server_selector(served.name)
    if canary:
        labels = {**labels, naming.LABEL_TRACK: naming.TRACK_CANARY}
        selector = naming.canary_selector(served.name)
    template_labels = {**labels, naming.LABEL_VERSION: str(version.version)}
    template_annotations = {
        naming.ANNOTATION_VERSION: str(version.version),
        naming.ANNOTATION_ARTIFACT_SHA256: _served_digest(version),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(runtime.metrics_port),
        "prometheus.io/path": runtime.metrics_path,
    }
    if served.retry is not None:
        template_annotations[naming.ANNOTATION_RETRY] = served.retry
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": naming.canary_name(served.name) if canary else served.name,
            "namespace": served.namespace,
            "labels": labels,
            "annotations": {naming.ANNOTATION_VERSION: str(version.version)},
            "ownerReferences": [served.owner.reference()],
        },
        "spec": {
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": spec.rollout.max_surge, "maxUnavailable": spec.rollout.max_unavailable},
            },
            "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {"labels": template_labels, "annotations": template_annotations},
                "spec": _serving_pod_spec(served),
            },
        },
    }
    replicas = managed_replicas(spec) if served.canary_replicas is None else served.canary_replicas
    if replicas is not None:
        deployment["spec"]["replicas"] = replicas
    return deployment


def _serving_pod_spec(served: DeploymentInputs) -> dict[str, Any]:
    """The fetch init container, which puts the verified artifact in the model repository, and the server."""
    spec, runtime, settings = served.spec, served.runtime, served.settings
    gpus = spec.scheduling.gpus or 0
    layout = runtime.repository_layout(served.model_name, served.model, spec, served.version.version)
    volume_mount = {"name": "models", "mountPath": runtime.model_repository}
    resources = spec.triton.resources.wire() if spec.triton.resources else {}
    if gpus > 0:
        resources = {**resources, "limits": {**resources.get("limits", {}), GPU_RESOURCE: gpus}}
    server = runtime.container(
        spec=spec,
        image=spec.triton.image or settings.triton_image,
        pull_policy=settings.image_pull_policy,
        # With the node cache, the version folder's files are links into it.
        mounts=[{**volume_mount, "readOnly": True}, SCRATCH_MOUNT, *([{**NODE_CACHE_MOUNT}] if settings.node_cache_claim else [])],
        security_context=restricted_container_security(),
        resources=resources,
    )
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        "terminationGracePeriodSeconds": runtime.termination_grace_seconds,
        "initContainers": [_fetch_container(served, layout, volume_mount)],
        "containers": [server],
        "volumes": [{"name": "models", "emptyDir": {}}, SCRATCH_VOLUME, *ca_bundle_volumes(served.model.storage)],
    }
    if settings.node_cache_claim:
        pod_spec["volumes"].append(
            {"name": NODE_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": settings.node_cache_claim, "readOnly": True}}
        )
    if spec.scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(spec.scheduling.node_selector)
    tolerations = tolerations_for(spec.scheduling.tolerations or (), gpus)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return pod_spec


NODE_CACHE_VOLUME = "node-cache"
# Where a serving pod mounts its node's cache, read-only; the version folder links into it.
NODE_CACHE_MOUNT = {"name": NODE_CACHE_VOLUME, "mountPath": "/cache", "readOnly": True}


def node_cache_volume_name(namespace: str) -> str:
    return f"modelops-nodecache-{namespace}"


def render_node_cache_volume(namespace: str, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cache's `local` PersistentVolume for one serving namespace and the claim bound to it.

    A PersistentVolume binds one claim, so each namespace has its own, all at the same path on
    every node: a `local` volume is the node's directory wherever the pod runs, so a
    Deployment's replicas stay free to spread (a volume per node would pin them to it). Pod
    Security `restricted` allows claims, not hostPath."""
    name, claim = node_cache_volume_name(namespace), settings.node_cache_claim
    labels = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "capacity": {"storage": settings.node_cache_size},
            "accessModes": ["ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "volumeMode": "Filesystem",
            "local": {"path": settings.node_cache_path},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim},
            # Every node: the agents' DaemonSet runs on each one that serves.
            "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "Exists"}]},
            ]}},
        },
    }
    claim_body = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": namespace, "labels": labels},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "resources": {"requests": {"storage": settings.node_cache_size}},
            "storageClassName": "",
            "volumeName": name,
        },
    }
    return volume, claim_body


def _node_cache_env(settings: Settings) -> list[dict[str, Any]]:
    return [
        {"name": "MODELOPS_NODECACHE_MOUNT", "value": NODE_CACHE_MOUNT["mountPath"]},
        {"name": "MODELOPS_NODECACHE_WAIT_SECONDS", "value": f"{settings.node_cache_wait_seconds:g}"},
        {"name": "MODELOPS_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]


def _fetch_container(served: DeploymentInputs, layout: RepositoryLayout, volume_mount: dict[str, Any]) -> dict[str, Any]:
    version, model, settings = served.version, served.model, served.settings
    assert version.compressed_uri and version.compressed_sha256
    fetch: dict[str, Any] = {
        "name": naming.FETCH_CONTAINER,
        "image": settings.operator_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "modelops.fetch"],
        "args": [
            "--uri", version.compressed_uri,
            "--sha256", version.compressed_sha256,
            "--model-name", served.model_name,
            "--version", str(version.version),
            *layout.args,
            *_fetch_files_args(version),
        ],
        "env": [*storage_env(model.storage), *layout.env],
        "volumeMounts": [volume_mount, SCRATCH_MOUNT, *ca_bundle_mounts(model.storage)],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container_security(),
    }
    if settings.node_cache_claim:
        fetch["volumeMounts"].append({**NODE_CACHE_MOUNT})
        fetch["env"] += _node_cache_env(settings)
    if version.signature_uri and version.signer_key:
        # The operator signed this artifact: the fetch refuses bytes its key did not sign.
        fetch["args"] += ["--signature-uri", version.signature_uri]
        fetch["env"].append({"name": "MODELOPS_SIGNER_KEY", "value": version.signer_key})
    return fetch


def render_service(
    *, name: str, namespace: str, owner: OwnerRef, model_name: str, runtime: ServingRuntime = TRITON
) -> dict[str, Any]:
    """The Service in front of the serving pods: every port the runtime names (for Triton http, grpc and metrics)."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": naming.server_labels(name, model_name),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": naming.server_selector(name),
            "ports": [{"name": p.name, "port": p.number, "targetPort": p.name, "protocol": "TCP"} for p in runtime.ports],
        },
    }
    return service


def endpoints(name: str, namespace: str, runtime: ServingRuntime = TRITON) -> dict[str, str]:
    return runtime.endpoints(f"{name}.{namespace}.svc")

"""Valid manifests of the three kinds and invalid edits of them, with the field the error
must name. The integration test sends them to the apiserver; a unit test checks that the
pydantic models refuse the same ones, so the operator and the Job never parse what the
apiserver would have refused."""

from __future__ import annotations

import copy
import re
from typing import Any

SHA = "ab" * 32
MODEL: dict[str, Any] = {
    "apiVersion": "modelops.dev/v1alpha1", "kind": "Model", "metadata": {"name": "digits"},
    "spec": {
        "storage": {"endpoint": "https://minio:9000", "bucket": "models", "credentialsSecret": {"name": "s3"}},
        "signature": {"inputs": [{"name": "input", "dataType": "FP32", "dims": [64]}],
                      "outputs": [{"name": "logits", "dataType": "FP32", "dims": [10]}]},
    },
}
VERSION: dict[str, Any] = {
    "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "digits-v1"},
    "spec": {"model": "digits", "version": 1, "artifact": {"uri": "s3://models/digits/1/model.onnx", "format": "onnx", "sha256": SHA}},
}
# A file set: an ONNX graph and its external data under one prefix.
FILE_SET = {"uri": "s3://models/llm/1/", "format": "onnx", "entrypoint": "model.onnx",
            "files": [{"path": "model.onnx", "sha256": SHA}, {"path": "weights/part-0.bin", "sha256": "cd" * 32}]}


def file_set(*paths: str, **fields: Any) -> dict[str, Any]:
    """FILE_SET with these paths (the first is the entrypoint unless `entrypoint` says otherwise)."""
    return {**FILE_SET, "entrypoint": paths[0], "files": [{"path": p, "sha256": SHA} for p in paths], **fields}


DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
    "spec": {"model": "digits"},
}


def edited(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `doc` with the dotted `path` set to `value` (or removed when value is ...)."""
    out = copy.deepcopy(doc)
    *parents, leaf = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(leaf)
    else:
        node[leaf] = value
    return out


def gate(metric: str, threshold: float, uri: str = "s3://models/e.npz") -> dict[str, Any]:
    return {"datasetUri": uri, "metric": metric, "threshold": threshold}


def tensors(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "dataType": "FP32", "dims": [4]} for name in names]


def pruning(**fields: Any) -> dict[str, Any]:
    return {"pruning": fields}


# (case, manifest, field the error names, text the apiserver's message contains)
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("sha256 shape", edited(VERSION, "spec.artifact.sha256", "abc123"), "spec.artifact.sha256", "64 lowercase hexadecimal"),
    ("sha256 upper case", edited(VERSION, "spec.artifact.sha256", "AB" * 32), "spec.artifact.sha256", "sha256 digest"),
    ("sha256 missing", edited(VERSION, "spec.artifact.sha256", ...), "spec.artifact", "set sha256 for a single file"),
    ("artifact URI scheme", edited(VERSION, "spec.artifact.uri", "https://models/digits/1/model.onnx"), "spec.artifact.uri", "s3://<bucket>/<key>"),
    ("artifact URI without key", edited(VERSION, "spec.artifact.uri", "s3://models/"), "spec.artifact", "exactly when files is set"),
    ("artifact URI traversal", edited(VERSION, "spec.artifact.uri", "s3://bucket/../../etc/passwd"), "spec.artifact.uri", "'..' segments"),
    ("artifact URI dot segment", edited(VERSION, "spec.artifact.uri", "s3://models/a/./b"), "spec.artifact.uri", "'..' segments"),
    ("artifact URI empty segment", edited(VERSION, "spec.artifact.uri", "s3://models/a//b"), "spec.artifact.uri", "empty"),
    ("artifact URI trailing slash", edited(VERSION, "spec.artifact.uri", "s3://models/a/"), "spec.artifact", "exactly when files is set"),
    ("file set path with ..", edited(VERSION, "spec.artifact", file_set("model.onnx", "../secrets/key.bin")), "spec.artifact.files[1].path", "'..'"),
    ("file set path .. inside", edited(VERSION, "spec.artifact", file_set("model.onnx", "w/../../x.bin")), "spec.artifact.files[1].path", "'..'"),
    ("file set absolute path", edited(VERSION, "spec.artifact", file_set("model.onnx", "/etc/passwd")), "spec.artifact.files[1].path", "no leading '/'"),
    ("file set empty segment", edited(VERSION, "spec.artifact", file_set("model.onnx", "w//x.bin")), "spec.artifact.files[1].path", "empty"),
    ("file set dot segment", edited(VERSION, "spec.artifact", file_set("model.onnx", "./x.bin")), "spec.artifact.files[1].path", "'.'"),
    ("file set empty path", edited(VERSION, "spec.artifact", file_set("model.onnx", "")), "spec.artifact.files[1].path", "relative path"),
    ("file set duplicate path", edited(VERSION, "spec.artifact", file_set("model.onnx", "w.bin", "w.bin")), "spec.artifact.files", "Duplicate value"),
    ("file set bad file digest", edited(VERSION, "spec.artifact", {**FILE_SET, "files": [{"path": "model.onnx", "sha256": "x"}]}),
     "spec.artifact.files[0].sha256", "sha256 digest"),
    ("file set without its entrypoint", edited(VERSION, "spec.artifact", file_set("w.bin", entrypoint="graph.onnx")), "spec.artifact.entrypoint", "must list the entrypoint"),
    ("file set without model.onnx", edited(VERSION, "spec.artifact", {k: v for k, v in file_set("w.bin").items() if k != "entrypoint"}), "spec.artifact.entrypoint", "must list the entrypoint"),
    ("file set with sha256 too", edited(VERSION, "spec.artifact", {**FILE_SET, "sha256": SHA}), "spec.artifact", "not both"),
    ("file set uri without /", edited(VERSION, "spec.artifact", {**FILE_SET, "uri": "s3://models/llm/1"}), "spec.artifact", "exactly when files is set"),
    ("file set of torchscript", edited(VERSION, "spec.artifact", {**FILE_SET, "format": "torchscript"}), "spec.artifact", "onnx (with external data) or directory"),
    ("directory without files", edited(VERSION, "spec.artifact.format", "directory"), "spec.artifact", "directory needs files"),
    ("entrypoint of one file", edited(VERSION, "spec.artifact.entrypoint", "model.onnx"), "spec.artifact", "entrypoint is for a file set"),
    ("file set too large", edited(VERSION, "spec.artifact", file_set(*[f"w{i}.bin" for i in range(1025)])), "spec.artifact.files", "1024"),
    ("artifact URI control character", edited(VERSION, "spec.artifact.uri", "s3://models/a\nb"), "spec.artifact.uri", "control characters"),
    ("artifact URI NUL", edited(VERSION, "spec.artifact.uri", "s3://models/a\x00b"), "spec.artifact.uri", "control characters"),
    ("artifact URI bucket with ..", edited(VERSION, "spec.artifact.uri", "s3://my..bucket/k"), "spec.artifact.uri", "valid bucket name"),
    ("artifact URI bucket is an IP", edited(VERSION, "spec.artifact.uri", "s3://10.0.0.1/k"), "spec.artifact.uri", "valid bucket name"),
    ("version zero", edited(VERSION, "spec.version", 0), "spec.version", "1 or greater"),
    ("negative version", edited(VERSION, "spec.version", -3), "spec.version", "1 or greater"),
    ("artifact format", edited(VERSION, "spec.artifact.format", "pickle"), "spec.artifact.format", "Unsupported value"),
    ("quantization", edited(VERSION, "spec.compression", {"quantization": "int3"}), "spec.compression.quantization", "Unsupported value"),
    ("pruning amount 1", edited(VERSION, "spec.compression", pruning(method="structured", amount=1.0)),
     "spec.compression.pruning.amount", "less than 1"),
    ("pruning method without amount", edited(VERSION, "spec.compression", pruning(method="unstructured")),
     "spec.compression.pruning.amount", "amount must be greater than 0 and less than 1 when method is not none"),
    ("pruning method with amount 0", edited(VERSION, "spec.compression", pruning(method="structured", amount=0)),
     "spec.compression.pruning.amount", "amount must be greater than 0 and less than 1 when method is not none"),
    ("pruning none with an amount", edited(VERSION, "spec.compression", pruning(method="none", amount=0.3)),
     "spec.compression.pruning.amount", "amount must be 0 or unset when method is none"),
    ("pruning negative amount", edited(VERSION, "spec.compression", pruning(amount=-0.1)),
     "spec.compression.pruning.amount", "greater than or equal to 0"),
    ("default pruning method without amount", edited(MODEL, "spec.versionDefaults", {"compression": pruning(method="unstructured")}),
     "spec.versionDefaults.compression.pruning.amount", "amount must be greater than 0 and less than 1 when method is not none"),
    ("dataset URI", edited(VERSION, "spec.evaluation", gate("top1-accuracy", 0.5, "file:///tmp/x.npz")),
     "spec.evaluation.datasetUri", "S3 URI"),
    ("dataset URI traversal", edited(VERSION, "spec.evaluation", gate("top1-accuracy", 0.5, "s3://models/../x.npz")),
     "spec.evaluation.datasetUri", "'..' segments"),
    ("metric", edited(VERSION, "spec.evaluation", gate("f1", 0.5)), "spec.evaluation.metric", "Unsupported value"),
    ("cosine threshold 7", edited(VERSION, "spec.evaluation", gate("cosine-similarity", 7)),
     "spec.evaluation.threshold", "threshold for cosine-similarity must be between 0 and 1"),
    ("agreement threshold above 1", edited(VERSION, "spec.evaluation", gate("top1-agreement", 1.5)),
     "spec.evaluation.threshold", "threshold for top1-agreement must be between 0 and 1"),
    ("accuracy drop above 100", edited(VERSION, "spec.evaluation", gate("top1-accuracy", 101)),
     "spec.evaluation.threshold", "threshold for top1-accuracy must be between 0 and 100"),
    ("negative accuracy drop", edited(VERSION, "spec.evaluation", gate("top1-accuracy", -1)),
     "spec.evaluation.threshold", "threshold for top1-accuracy must be between 0 and 100"),
    ("negative max-abs-error", edited(VERSION, "spec.evaluation", gate("max-abs-error", -0.01)),
     "spec.evaluation.threshold", "threshold for max-abs-error must be 0 or greater"),
    ("default gate threshold", edited(MODEL, "spec.versionDefaults", {"evaluation": gate("cosine-similarity", 2)}),
     "spec.versionDefaults.evaluation.threshold", "threshold for cosine-similarity must be between 0 and 1"),
    ("negative GPUs", edited(VERSION, "spec.scheduling", {"gpus": -1}), "spec.scheduling.gpus", "greater than or equal to 0"),
    ("node selector value", edited(VERSION, "spec.scheduling", {"nodeSelector": {"pool": "a b"}}),
     "spec.scheduling.nodeSelector.pool", "should match"),
    ("toleration key", edited(VERSION, "spec.scheduling", {"tolerations": [{"key": "bad key", "operator": "Exists"}]}),
     "spec.scheduling.tolerations[0].key", "should match"),
    ("Pinned without version", edited(DEPLOYMENT, "spec.versionPolicy", "Pinned"), "spec.version", "required when versionPolicy is Pinned"),
    ("Latest with version", edited(DEPLOYMENT, "spec.version", 2), "spec.version", "must not be set when versionPolicy is Latest"),
    ("Pinned to version zero", edited(edited(DEPLOYMENT, "spec.versionPolicy", "Pinned"), "spec.version", 0), "spec.version", "1 or greater"),
    ("negative replicas", edited(DEPLOYMENT, "spec.replicas", -1), "spec.replicas", "greater than or equal to 0"),
    ("unknown backend", edited(DEPLOYMENT, "spec.triton", {"backend": "tensorrt"}), "spec.triton.backend", "Unsupported value"),
    ("image with a space", edited(DEPLOYMENT, "spec.triton", {"image": "triton:1 --evil"}), "spec.triton.image", "should match"),
    ("preferred batch size 0", edited(DEPLOYMENT, "spec.triton", {"dynamicBatching": {"preferredBatchSizes": [0]}}),
     "spec.triton.dynamicBatching.preferredBatchSizes[0]", "greater than or equal to 1"),
    ("resource quantity", edited(DEPLOYMENT, "spec.triton", {"resources": {"limits": {"memory": "lots"}}}),
     "spec.triton.resources.limits.memory", "should match"),
    ("resource name", edited(DEPLOYMENT, "spec.triton", {"resources": {"limits": {"nvidia.com/gpu": 1}}}),
     "spec.triton.resources.limits", "resource names must be one of"),
    ("rollout cannot progress", edited(DEPLOYMENT, "spec.rollout", {"maxSurge": 0, "maxUnavailable": "0%"}),
     "spec.rollout.maxUnavailable", "maxUnavailable must not be 0 when maxSurge is 0"),
    ("rollout maxSurge 0 with the default maxUnavailable", edited(DEPLOYMENT, "spec.rollout", {"maxSurge": 0}),
     "spec.rollout.maxUnavailable", "maxUnavailable must not be 0 when maxSurge is 0"),
    ("rollout percentage", edited(DEPLOYMENT, "spec.rollout", {"maxSurge": "150%"}), "spec.rollout.maxSurge", "should match"),
    ("deployment name is not a DNS label", edited(DEPLOYMENT, "metadata.name", "1digits"), "metadata.name", "DNS label"),
    ("canary settings with RollingUpdate", edited(DEPLOYMENT, "spec.rollout", {"canary": {"steps": [{"weight": 10}]}}),
     "spec.rollout.canary", "canary must not be set when strategy is RollingUpdate"),
    ("canary weight 100", edited(DEPLOYMENT, "spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"weight": 100}]}}),
     "spec.rollout.canary.steps[0].weight", "less than or equal to 99"),
    ("canary without steps", edited(DEPLOYMENT, "spec.rollout", {"strategy": "Canary", "canary": {"steps": []}}),
     "spec.rollout.canary.steps", "at least 1 items"),
    ("canary pause", edited(DEPLOYMENT, "spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"weight": 10, "pause": "5 min"}]}}),
     "spec.rollout.canary.steps[0].pause", "should match"),
    ("canary error ratio", edited(DEPLOYMENT, "spec.rollout", {"strategy": "Canary", "canary": {"analysis": {"maxErrorRatio": 2}}}),
     "spec.rollout.canary.analysis.maxErrorRatio", "less than or equal to 1"),
    ("unknown strategy", edited(DEPLOYMENT, "spec.rollout", {"strategy": "BlueGreen"}), "spec.rollout.strategy", "Unsupported value"),
    ("autoscaling min above max", edited(DEPLOYMENT, "spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2, "target": 1}),
     "spec.autoscaling.maxReplicas", "minReplicas must not be greater than maxReplicas"),
    ("keda without Prometheus", edited(DEPLOYMENT, "spec.autoscaling", {"maxReplicas": 2, "target": 1, "provider": "keda"}),
     "spec.autoscaling.prometheusAddress", "prometheusAddress is required when provider is keda"),
    ("autoscaling metric", edited(DEPLOYMENT, "spec.autoscaling", {"maxReplicas": 2, "target": 1, "metric": "gpu"}),
     "spec.autoscaling.metric", "Unsupported value"),
    ("autoscaling target 0", edited(DEPLOYMENT, "spec.autoscaling", {"maxReplicas": 2, "target": 0}),
     "spec.autoscaling.target", "greater than 0"),
    ("bucket name", edited(MODEL, "spec.storage.bucket", "Models_Bucket"), "spec.storage.bucket", "must be a bucket name"),
    ("bucket name with ..", edited(MODEL, "spec.storage.bucket", "my..models"), "spec.storage.bucket", "must be a bucket name"),
    ("bucket name is an IP", edited(MODEL, "spec.storage.bucket", "192.168.1.1"), "spec.storage.bucket", "not an IP address"),
    ("bucket name too short", edited(MODEL, "spec.storage.bucket", "ab"), "spec.storage.bucket", "must be a bucket name"),
    ("region", edited(MODEL, "spec.storage.region", "us east"), "spec.storage.region", "should match"),
    ("endpoint scheme", edited(MODEL, "spec.storage.endpoint", "minio:9000"), "spec.storage.endpoint", "http:// or https://"),
    ("endpoint with credentials", edited(MODEL, "spec.storage.endpoint", "https://key:secret@minio:9000"),
     "spec.storage.endpoint", "no user info"),
    ("endpoint port", edited(MODEL, "spec.storage.endpoint", "https://minio:70000"), "spec.storage.endpoint", "http:// or https://"),
    ("endpoint with a space", edited(MODEL, "spec.storage.endpoint", "https://minio :9000"), "spec.storage.endpoint", "http:// or https://"),
    ("tensor data type", edited(MODEL, "spec.signature.inputs", [{"name": "input", "dataType": "float", "dims": [64]}]),
     "spec.signature.inputs[0].dataType", "Unsupported value"),
    ("tensor name with a quote", edited(MODEL, "spec.signature.inputs", tensors('in"put')),
     "spec.signature.inputs[0].name", "must be a tensor name"),
    ("tensor name with ../", edited(MODEL, "spec.signature.outputs", tensors("../logits")),
     "spec.signature.outputs[0].name", "must be a tensor name"),
    ("tensor name with a leading /", edited(MODEL, "spec.signature.outputs", tensors("/logits")),
     "spec.signature.outputs[0].name", "must be a tensor name"),
    ("tensor name with a newline", edited(MODEL, "spec.signature.outputs", tensors("lo\ngits")),
     "spec.signature.outputs[0].name", "must be a tensor name"),
    ("duplicate tensor names", edited(MODEL, "spec.signature.inputs", tensors("x", "x")),
     "spec.signature.inputs", "tensor names must be unique within inputs"),
    ("tensor dims", edited(MODEL, "spec.signature.outputs", [{"name": "logits", "dataType": "FP32", "dims": [0]}]),
     "spec.signature.outputs[0].dims", "-1 (variable) or 1 to"),
    ("tensor dims -2", edited(MODEL, "spec.signature.outputs", [{"name": "logits", "dataType": "FP32", "dims": [-2]}]),
     "spec.signature.outputs[0].dims", "-1 (variable) or 1 to"),
    ("no outputs", edited(MODEL, "spec.signature.outputs", []), "spec.signature.outputs", "at least 1 items"),
    ("maxBatchSize too big", edited(MODEL, "spec.signature.maxBatchSize", 1 << 20), "spec.signature.maxBatchSize", "less than or equal to"),
    ("negative maxBatchSize", edited(MODEL, "spec.signature.maxBatchSize", -1), "spec.signature.maxBatchSize", "greater than or equal to 0"),
    ("caBundle with both refs", edited(MODEL, "spec.storage.caBundle", {"configMapRef": {"name": "ca"}, "secretRef": {"name": "ca"}}),
     "spec.storage.caBundle", "exactly one of configMapRef and secretRef"),
    ("caBundle with no ref", edited(MODEL, "spec.storage.caBundle", {"key": "ca.crt"}),
     "spec.storage.caBundle", "exactly one of configMapRef and secretRef"),
    ("caBundle key", edited(MODEL, "spec.storage.caBundle", {"configMapRef": {"name": "ca"}, "key": "../ca"}),
     "spec.storage.caBundle.key", "should match"),
    ("signer with a key and a chain", edited(MODEL, "spec.trust.signers", [
        {"name": "a", "publicKey": {"configMapRef": {"name": "k"}, "key": "a.pub"},
         "certificateChain": {"configMapRef": {"name": "k"}, "key": "ca.pem"}, "identity": "a@example.com"}]),
     "spec.trust.signers[0]", "exactly one of publicKey and certificateChain"),
    ("certificate chain without identity", edited(MODEL, "spec.trust.signers", [
        {"name": "a", "certificateChain": {"secretRef": {"name": "k"}, "key": "ca.pem"}}]),
     "spec.trust.signers[0]", "identity is required with certificateChain"),
    ("duplicate signer names", edited(MODEL, "spec.trust.signers", [
        {"name": "a", "publicKey": {"configMapRef": {"name": "k"}, "key": "a.pub"}},
        {"name": "a", "publicKey": {"configMapRef": {"name": "k"}, "key": "b.pub"}}]),
     "spec.trust.signers", "signer names must be unique"),
    ("signature uri", edited(VERSION, "spec.artifact.signature", {"uri": "https://example.com/model.sig"}),
     "spec.artifact.signature.uri", "s3://"),
]

# Refused by the apiserver (CEL) but parsed by the pydantic models, because a Model stored
# before the rule existed must still reach the operator, which reports it
# (StorageSpec.transport_problem: InsecureEndpoint) instead of failing to read it.
APISERVER_ONLY: list[tuple[str, dict[str, Any], str, str]] = [
    ("http endpoint without insecure", edited(MODEL, "spec.storage.endpoint", "http://minio:9000"),
     "spec.storage.endpoint", "use https://, or set insecure: true"),
    ("caBundle with verifyTLS false", edited(edited(MODEL, "spec.storage.verifyTLS", False), "spec.storage.caBundle",
                                             {"configMapRef": {"name": "ca"}}),
     "spec.storage.caBundle", "caBundle needs verifyTLS true"),
]

# Names and values the rules must keep accepting.
VALID_EDITS: list[tuple[str, dict[str, Any]]] = [
    ("ONNX file set", edited(VERSION, "spec.artifact", FILE_SET)),
    ("ONNX file set with the default entrypoint", edited(VERSION, "spec.artifact", {k: v for k, v in FILE_SET.items() if k != "entrypoint"})),
    ("ONNX file set in a nested folder", edited(VERSION, "spec.artifact", file_set("graph/m.onnx", "graph/m.onnx.data", "..hidden/x", uri="s3://models/"))),
    ("directory", edited(VERSION, "spec.artifact", {"uri": "s3://models/llm/1/", "format": "directory", "files": [
        {"path": "config.json", "sha256": SHA}, {"path": "model-00001-of-00002.safetensors", "sha256": SHA}]})),
    ("1024 files", edited(VERSION, "spec.artifact", file_set(*["model.onnx", *[f"w{i}.bin" for i in range(1023)]]))),
    ("transformer tensor names", edited(MODEL, "spec.signature.inputs", tensors("input_ids", "attention_mask", "input.1", "onnx::Gemm_0"))),
    ("variable dims", edited(MODEL, "spec.signature.outputs", [{"name": "logits", "dataType": "FP32", "dims": [-1, 2]}])),
    ("https endpoint with path", edited(MODEL, "spec.storage.endpoint", "https://s3.eu-west-1.amazonaws.com/")),
    ("IP endpoint", edited(MODEL, "spec.storage.endpoint", "https://127.0.0.1:9000")),
    ("trust policy of two keys and a chain", edited(MODEL, "spec.trust", {"required": True, "signers": [
        {"name": "old", "publicKey": {"configMapRef": {"name": "k"}, "key": "old.pub"}},
        {"name": "new", "publicKey": {"secretRef": {"name": "k"}, "key": "new.pub"}},
        {"name": "ci", "certificateChain": {"configMapRef": {"name": "k"}, "key": "ca.pem"}, "identity": "ci@example.com"}]})),
    ("signed artifact", edited(VERSION, "spec.artifact.signature", {"uri": "s3://models/digits/1/model.sig"})),
    ("insecure http endpoint", edited(edited(MODEL, "spec.storage.endpoint", "http://127.0.0.1:9000"), "spec.storage.insecure", True)),
    ("CA bundle in a ConfigMap", edited(MODEL, "spec.storage.caBundle", {"configMapRef": {"name": "kube-root-ca.crt"}})),
    ("CA bundle in a Secret", edited(MODEL, "spec.storage.caBundle", {"secretRef": {"name": "tls"}, "key": "ca.pem"})),
    ("dotted bucket", edited(MODEL, "spec.storage.bucket", "my.models-1")),
    ("default pruning", edited(MODEL, "spec.versionDefaults", {"compression": pruning(method="structured", amount=0.5)})),
    ("pruning amount only", edited(VERSION, "spec.compression", pruning(amount=0.3))),
    ("pruning none", edited(VERSION, "spec.compression", pruning(method="none"))),
    ("cosine threshold", edited(VERSION, "spec.evaluation", gate("cosine-similarity", 0.99))),
    ("accuracy drop", edited(VERSION, "spec.evaluation", gate("top1-accuracy", 100))),
    ("max-abs-error", edited(VERSION, "spec.evaluation", gate("max-abs-error", 1000))),
    ("resources", edited(DEPLOYMENT, "spec.triton", {"resources": {"limits": {"cpu": "500m", "memory": "2Gi"}, "requests": {"cpu": 1}}})),
    ("rollout percentages", edited(DEPLOYMENT, "spec.rollout", {"maxSurge": "25%", "maxUnavailable": 0})),
    ("suspended", edited(DEPLOYMENT, "spec.suspended", True)),
    ("autoscaling", edited(DEPLOYMENT, "spec.autoscaling", {"minReplicas": 1, "maxReplicas": 4, "metric": "inferences-per-second",
                                                          "target": 150, "provider": "keda",
                                                          "prometheusAddress": "http://prometheus.monitoring:9090"})),
    ("canary with the defaults", edited(DEPLOYMENT, "spec.rollout", {"strategy": "Canary"})),
    ("canary steps and analysis", edited(DEPLOYMENT, "spec.rollout", {"strategy": "Canary", "canary": {
        "steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "2m"}],
        "analysis": {"maxErrorRatio": 0.01, "maxP99LatencyMs": 250, "maxLatencyRatio": 3, "minRequests": 500, "interval": "5s"},
        "httpRoute": {"parent": "public", "namespace": "gateways", "sectionName": "http"}}})),
]


def pydantic_loc(field: str) -> tuple[str | int, ...]:
    """spec.signature.inputs[0].name -> ("signature", "inputs", 0, "name")."""
    parts: list[str | int] = []
    for piece in field.removeprefix("spec.").split("."):
        name, *indexes = re.split(r"\[(\d+)\]", piece)
        parts.append(name)
        parts += [int(i) for i in indexes if i]
    return tuple(parts)

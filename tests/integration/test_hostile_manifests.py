"""Generated hostile manifests of the three kinds against the real apiserver, with the
operator running.

Each manifest is either rejected with an error that names the field, or stored, and then
the operator reports it with a Ready condition. The pydantic models agree with the
apiserver on every one (the operator and the Job parse with them). The operator neither
crashes nor loops hot: its CPU seconds over the run are bounded, and so is its CPU while the
stored objects sit unchanged.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from pydantic import ValidationError

from modelops.api import ModelDeploymentSpec, ModelSpec, ModelVersionSpec
from tests.api_cases import DEPLOYMENT, MODEL, VERSION
from tests.integration.conftest import Storage, apply_docs, eventually

pytestmark = pytest.mark.integration

EXAMPLES = 1000
GROUP, API = "modelops.dev", "v1alpha1"
PLURALS = {"Model": "models", "ModelVersion": "modelversions", "ModelDeployment": "modeldeployments"}
SPECS = {"Model": ModelSpec, "ModelVersion": ModelVersionSpec, "ModelDeployment": ModelDeploymentSpec}
ANCHOR = "anchor"  # a Model with real storage, so versions that name it reach MinIO
# Operator CPU seconds allowed for the whole run, and per second while nothing changes.
CPU_BUDGET_S = 60.0
IDLE_WINDOW_S = 10.0
IDLE_CPU_FRACTION = 0.2

# Every string field that reaches storage, a file, a pod or config.pbtxt, and the numbers.
STRING_FIELDS = {
    "Model": ["spec.storage.endpoint", "spec.storage.bucket", "spec.storage.region", "spec.storage.credentialsSecret.name",
              "spec.signature.inputs.0.name", "spec.signature.outputs.0.name", "spec.signature.inputs.0.dataType",
              "spec.versionDefaults.evaluation.datasetUri", "spec.description",
              "spec.versionDefaults.scheduling.nodeSelector.pool"],
    "ModelVersion": ["spec.model", "spec.artifact.uri", "spec.artifact.sha256", "spec.artifact.format",
                     "spec.evaluation.datasetUri", "spec.evaluation.metric", "spec.compression.quantization",
                     "spec.compression.pruning.method", "spec.scheduling.tolerations.0.key",
                     "spec.scheduling.nodeSelector.pool", "spec.artifact.entrypoint", "spec.artifact.files.0.path",
                     "spec.artifact.files.1.path", "spec.artifact.files.1.sha256"],
    "ModelDeployment": ["spec.model", "spec.triton.image", "spec.triton.backend", "spec.versionPolicy",
                        "spec.triton.resources.limits.memory", "spec.rollout.maxSurge",
                        "spec.scheduling.nodeSelector.pool", "spec.triton.instanceGroups.0.kind"],
}
NUMBER_FIELDS = {
    "Model": ["spec.signature.maxBatchSize", "spec.signature.inputs.0.dims.0", "spec.versionDefaults.scheduling.gpus",
              "spec.versionDefaults.compression.pruning.amount", "spec.versionDefaults.evaluation.threshold"],
    "ModelVersion": ["spec.version", "spec.compression.pruning.amount", "spec.evaluation.threshold", "spec.scheduling.gpus",
                     "spec.scheduling.tolerations.0.tolerationSeconds"],
    "ModelDeployment": ["spec.version", "spec.replicas", "spec.triton.startupTimeoutSeconds",
                        "spec.triton.dynamicBatching.maxQueueDelayMicroseconds", "spec.triton.instanceGroups.0.count",
                        "spec.rollout.progressDeadlineSeconds", "spec.rollout.maxUnavailable"],
}

HOSTILE_TEXT = [
    "../../etc/passwd", "s3://models/../../etc/passwd", "s3://models//x", "s3://models/a/./b", "/etc/passwd",
    "a/../../b", "..", ".", "", " ", "in\"put", "in'put", "a\\b", "a\nb", "a\rb", "a\x00b", "a\x1b[31mb", "a\x7fb",
    "$(reboot)", "; rm -rf /", "}\nname: \"evil\"\n{", "input_ids", "logits", "onnx::Gemm_0", "input.1",
    "http://minio:9000", "http://user:pw@minio:9000", "file:///etc/passwd", "s3://10.0.0.1/k", "s3://a..b/k",
    "models", "Models", "FP32", "onnx", "none", "unstructured", "Pinned", "Latest", "python", "KIND_GPU", "25%", "2Gi",
    "é", "\u202e", "\ud7ff", "%2e%2e%2f",
]
# Unusual values the schema accepts, so that stored objects carry them to the operator.
ODD_BUT_VALID = {
    "spec.storage.endpoint": ["https://s3.amazonaws.com", "https://[::1]:9000/", "https://127.0.0.1:1"],
    "spec.storage.bucket": ["my.odd-bucket.1", "a" * 63],
    "spec.signature.inputs.0.name": ["input.1", "onnx::Gemm_0", "a/b.c", "_"],
    "spec.signature.outputs.0.name": ["logits:0", "out-1", "9"],
    "spec.artifact.uri": ["s3://models/.hidden/model.onnx", "s3://models/" + "k/" * 200 + "x", "s3://models/é~%20!"],
    "spec.artifact.files.1.path": ["..w/x", "w/...", ".hidden", "a" * 512, "é/ü"],
    "spec.evaluation.datasetUri": ["s3://models/eval/..x", "s3://no-such-bucket/e.npz"],
    "spec.versionDefaults.evaluation.datasetUri": ["s3://models/a...b"],
    "spec.model": ["no-such-model", "a" * 253],
    "spec.triton.image": ["registry.local:5000/triton@sha256:" + "a" * 64, "x"],
    "spec.triton.resources.limits.memory": ["1e3", "0", ".5Ki"],
    "spec.rollout.maxSurge": ["100%", 0],
}
HOSTILE_NUMBERS = [0, -1, 1, 2, 7, 100, 101, -0.5, 0.5, 0.999, 1.0, 1e-300, 1e308, -1e308, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63)]


def huge_text(size: int) -> str:
    return ("s3://models/" + "a" * size) if size % 2 else "x" * size


text_values = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(min_size=0, max_size=40),
    st.integers(100, 70_000).map(huge_text),
    st.sampled_from(HOSTILE_TEXT).flatmap(lambda t: st.sampled_from([t, "s3://models/" + t, "s3://models/k/" + t])),
)
number_values = st.one_of(st.sampled_from(HOSTILE_NUMBERS), st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False))
wrong_types = st.one_of(st.none(), st.booleans(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                        st.sampled_from(["1", "true", "x"]), st.integers())


def base(kind: str, name: str) -> dict[str, Any]:
    doc = json.loads(json.dumps({"Model": MODEL, "ModelVersion": VERSION, "ModelDeployment": DEPLOYMENT}[kind]))
    doc["metadata"] = {"name": name}
    return doc


def full(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Fill the optional sections, so that every listed field has a parent to replace."""
    spec = doc["spec"]
    if kind == "Model":
        spec["versionDefaults"] = {
            "compression": {"pruning": {"method": "unstructured", "amount": 0.2}},
            "evaluation": {"datasetUri": "s3://models/e.npz", "metric": "top1-accuracy", "threshold": 1},
            "scheduling": {"gpus": 0, "nodeSelector": {"pool": "cpu"}},
        }
    elif kind == "ModelVersion":
        # A file set, so that its paths and digests are mutated too.
        spec["artifact"] = {"uri": "s3://models/set/", "format": "onnx", "entrypoint": "model.onnx",
                            "files": [{"path": "model.onnx", "sha256": "ab" * 32}, {"path": "w/0.bin", "sha256": "cd" * 32}]}
        spec["compression"] = {"quantization": "int8-dynamic", "pruning": {"method": "structured", "amount": 0.5}}
        spec["evaluation"] = {"datasetUri": "s3://models/e.npz", "metric": "cosine-similarity", "threshold": 0.99}
        spec["scheduling"] = {"gpus": 0, "nodeSelector": {"pool": "cpu"},
                              "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}
    else:
        spec["triton"] = {"backend": "python", "resources": {"limits": {"memory": "1Gi"}},
                          "dynamicBatching": {"enabled": False, "maxQueueDelayMicroseconds": 10},
                          "instanceGroups": [{"count": 1, "kind": "KIND_CPU"}]}
        spec["rollout"] = {"maxSurge": 1, "maxUnavailable": 0}
        spec["scheduling"] = {"nodeSelector": {"pool": "cpu"}}
    return doc


def put(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value


@st.composite
def manifests(draw: st.DrawFn, counter: list[int]) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(PLURALS)))
    counter[0] += 1
    doc = base(kind, f"h{counter[0]}")
    if draw(st.booleans()):
        doc = full(kind, doc)
    if kind != "Model" and draw(st.booleans()):
        doc["spec"]["model"] = ANCHOR
    if kind == "ModelVersion":
        doc["spec"]["version"] = counter[0]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))):
        mutation = draw(st.sampled_from(["odd", "odd", "text", "number", "type", "unknown", "name"]))
        if mutation == "odd":
            path = draw(st.sampled_from(sorted(p for p in ODD_BUT_VALID if p in STRING_FIELDS[kind])))
            put(doc, path, draw(st.sampled_from(ODD_BUT_VALID[path])))
        elif mutation == "text":
            put(doc, draw(st.sampled_from(STRING_FIELDS[kind])), draw(text_values))
        elif mutation == "number":
            put(doc, draw(st.sampled_from(NUMBER_FIELDS[kind])), draw(number_values))
        elif mutation == "type":
            put(doc, draw(st.sampled_from(STRING_FIELDS[kind] + NUMBER_FIELDS[kind])), draw(wrong_types))
        elif mutation == "unknown":
            put(doc, draw(st.sampled_from(["spec.bogus", "spec.storage.inlineSecret", "spec.artifact.path", "spec.triton.args"])), "x")
        else:
            doc["metadata"]["name"] = draw(st.sampled_from(["../x", "A", "x" * 300, "a_b", "a\x00"])) + str(counter[0])
    return kind, doc


def rejection_names_a_field(error: client.ApiException) -> bool:
    body = json.loads(error.body or "{}")
    causes = (body.get("details") or {}).get("causes") or []
    if causes:
        return all(c.get("field") for c in causes)
    message = body.get("message", "")
    return 'unknown field "' in message or "spec." in message or "metadata." in message


def pydantic_accepts(kind: str, spec: Any) -> bool:
    """The models parse the apiserver's JSON strictly (JSON types, as the apiserver sees them)."""
    try:
        SPECS[kind].model_validate_json(json.dumps(spec), strict=True)
    except ValidationError:
        return False
    return True


def field_causes(error: client.ApiException) -> list[str]:
    body = json.loads(error.body or "{}")
    return [c.get("field", "") for c in (body.get("details") or {}).get("causes") or []] or [body.get("message", "")]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_generated_hostile_manifests_are_rejected_or_reported(testbed, crds, namespace, storage: Storage, start_operator, kube_api) -> None:
    apply_docs(testbed, namespace, [
        storage.secret("s3"),
        {**MODEL, "metadata": {"name": ANCHOR},
         "spec": {**MODEL["spec"], "storage": storage.model_storage("s3")}},
    ])
    operator = start_operator(retry_seconds="30")
    assert operator.process is not None
    pid = operator.process.pid
    api = client.CustomObjectsApi(kube_api)
    counts: Counter[str] = Counter()
    stored: list[tuple[str, str]] = []
    disagreements: list[str] = []
    unnamed: list[str] = []
    counter = [0]
    cpu_before, started = cpu_seconds(pid), time.monotonic()

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(manifests(counter))
    def send(generated: tuple[str, dict[str, Any]]) -> None:
        kind, doc = generated
        counts["sent"] += 1
        try:
            created = api.create_namespaced_custom_object(GROUP, API, namespace, PLURALS[kind], doc, field_validation="Strict")
        except client.ApiException as error:
            assert error.status in (400, 422), (error.status, error.body)
            counts["rejected"] += 1
            if not rejection_names_a_field(error):
                unnamed.append(error.body)
            fields = field_causes(error)
            spec_only = all(f.startswith("spec") for f in fields) and "unknown field" not in (error.body or "")
            if spec_only and isinstance(doc.get("spec"), dict) and pydantic_accepts(kind, doc["spec"]):
                disagreements.append(f"apiserver refused, models accept: {kind} {fields} {json.dumps(doc)[:300]}")
            return
        counts["accepted"] += 1
        stored.append((kind, created["metadata"]["name"]))
        if not pydantic_accepts(kind, created["spec"]):
            disagreements.append(f"apiserver stored, models refuse: {kind} {json.dumps(created['spec'])[:300]}")

    send()
    sent_s = time.monotonic() - started

    def unreported() -> list[tuple[str, str]]:
        """Stored objects without a Ready condition, from one list call per kind."""
        reported = set()
        for kind, plural in PLURALS.items():
            for body in api.list_namespaced_custom_object(GROUP, API, namespace, plural)["items"]:
                if any(c.get("type") == "Ready" for c in (body.get("status") or {}).get("conditions") or []):
                    reported.add((kind, body["metadata"]["name"]))
        return [key for key in stored if key not in reported]

    eventually(lambda: not unreported(), 300, "a Ready condition on every stored object", interval=2)
    counts["reported"] = len(stored) - len(unreported())
    reported_s = time.monotonic() - started
    cpu_run = cpu_seconds(pid) - cpu_before
    # Settled: no reconcile in a whole second (a hot loop never gets there).
    last = [operator.metric("modelops_reconcile_total")]

    def quiet() -> bool:
        time.sleep(1)
        now = operator.metric("modelops_reconcile_total")
        still, last[0] = now == last[0], now
        return still

    eventually(quiet, 120, "the operator to stop reconciling", interval=0)
    settled_s = time.monotonic() - started
    idle_start = cpu_seconds(pid)
    time.sleep(IDLE_WINDOW_S)  # a measurement window, not a wait for something to happen
    cpu_idle = cpu_seconds(pid) - idle_start

    print(f"\nhostile manifests: sent {counts['sent']}, rejected {counts['rejected']}, accepted {counts['accepted']}, "
          f"reported {counts['reported']}; sending took {sent_s:.1f}s, all reported after {reported_s:.1f}s, "
          f"settled after {settled_s:.1f}s; "
          f"operator CPU {cpu_run:.1f}s over the run, {cpu_idle:.2f}s in {IDLE_WINDOW_S:.0f}s idle")
    assert counts["sent"] >= EXAMPLES
    assert counts["rejected"] > 0 and counts["accepted"] > 0
    assert counts["reported"] == counts["accepted"]
    assert not unnamed, unnamed[:5]
    assert not disagreements, disagreements[:10]
    assert operator.process.poll() is None, "the operator exited"
    assert cpu_run <= CPU_BUDGET_S
    assert cpu_idle <= IDLE_CPU_FRACTION * IDLE_WINDOW_S
    assert "Traceback" not in operator.log_path.read_text(errors="replace")

"""A three-input transformer end to end: Job, gate, Triton, served outputs against onnxruntime.

The model is the generated BERT-shaped encoder (models/transformer.py, "small" preset) with
input_ids, attention_mask and token_type_ids, exported once and never re-exported. Version 1
asks for int8-dynamic; version 2 asks for `quantization: auto`, which tries every candidate
against the gate and serves its pick; version 3 asks explicitly for the recipe auto picked
and reuses auto's cache entry. Version 5 asks for `quantization: auto` with a calibration
dataset of its own and a 0.98 cosine gate: Ready at least 5× smaller than fp32, and served as
onnxruntime runs the artifact. A version that names its evaluation dataset as calibration is
refused by the apiserver, naming both fields.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from e2e import lifecycle as lc
from e2e import support

pytestmark = pytest.mark.e2e

MODEL = "bert"
SAMPLES = 32


def _transformer_module():
    spec = importlib.util.spec_from_file_location("transformer_model", support.REPO_ROOT / "models" / "transformer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def model_manifest(cluster: support.Testbed, eval_uri: str, config, transformer) -> dict:
    tensor = {"dataType": "INT64", "dims": [-1]}
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "Model", "metadata": {"name": MODEL},
        "spec": {
            "description": "BERT-shaped sentence encoder (generated weights), three inputs.",
            "storage": cluster.storage(support.BUCKET).model_storage(lc.SECRET_NAME),
            "signature": {
                "maxBatchSize": 8,
                "inputs": [{"name": name, **tensor} for name in transformer.input_names(config)],
                "outputs": [{"name": transformer.output_name(config), "dataType": "FP32", "dims": [config.hidden]}],
            },
            "versionDefaults": {
                "evaluation": {"datasetUri": eval_uri, "metric": "cosine-similarity", "threshold": 0.99},
                "scheduling": {"gpus": 1},
            },
        },
    }


def version_manifest(version: int, uri: str, sha: str, compression: dict) -> dict:
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": f"{MODEL}-v{version}"},
            "spec": {"model": MODEL, "version": version, "artifact": {"uri": uri, "format": "onnx", "sha256": sha},
                     "compression": compression}}


def deployment_manifest() -> dict:
    spec = lc.deployment_manifest(f"{MODEL}-latest")
    spec["spec"]["model"] = MODEL
    return spec


@pytest.fixture(scope="module")
def bed(testbed):
    cluster = testbed
    support.install_crds(testbed)
    namespace = f"e2e-bert-{secrets.token_hex(3)}"
    cluster.create_namespace(namespace)
    cluster.ensure_bucket()
    transformer = _transformer_module()
    config = transformer.PRESETS["small"]
    assert transformer.input_names(config) == ["input_ids", "attention_mask", "token_type_ids"]
    work = Path(tempfile.mkdtemp())
    model = transformer.build_model(config, seed=0)
    model.doc_string = namespace  # a cache key of this module's own
    import onnx

    onnx.save(model, str(work / "model.onnx"))
    # The same weights under another doc string, for the auto versions: keys of their own, so
    # that only auto's entry can serve the explicit request that follows it.
    model.doc_string = f"{namespace}-auto"
    onnx.save(model, str(work / "model-auto.onnx"))
    transformer.write_eval_npz(work / "eval.npz", config, samples=SAMPLES)
    transformer.write_eval_npz(work / "calibration.npz", config, samples=SAMPLES, seed=2)  # other samples
    model_uri, model_sha = cluster.upload(work / "model.onnx", f"{namespace}/bert/model.onnx")
    auto_uri, auto_sha = cluster.upload(work / "model-auto.onnx", f"{namespace}/bert-auto/model.onnx")
    eval_uri, _ = cluster.upload(work / "eval.npz", f"{namespace}/bert/eval.npz")
    calibration_uri, calibration_sha = cluster.upload(work / "calibration.npz", f"{namespace}/bert/calibration.npz")
    cluster.apply(namespace, [lc.storage_secret(cluster), model_manifest(cluster, eval_uri, config, transformer)])
    operator = support.OperatorProcess(Path(testbed.kubeconfig), namespace,
                                       Path(testbed.state_dir) / "logs" / f"operator-{namespace}.log")
    operator.start()
    data = dict(np.load(work / "eval.npz"))
    yield {"cluster": cluster, "namespace": namespace, "uri": model_uri, "sha": model_sha, "data": data,
           "auto_uri": auto_uri, "auto_sha": auto_sha, "eval_uri": eval_uri,
           "calibration": {"datasetUri": calibration_uri, "sha256": calibration_sha},
           "config": config, "output": transformer.output_name(config), "work": work}
    operator.stop()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def wait(bed, *args: str, timeout: int = 300) -> None:
    bed["cluster"].kubectl("wait", "-n", bed["namespace"], *args, f"--timeout={timeout}s", timeout=timeout + 30)


def status(bed, kind: str, name: str) -> dict:
    return bed["cluster"].get(bed["namespace"], kind, name).get("status", {})


def served_outputs(pod_ip: str, data: dict, output: str) -> np.ndarray:
    """Every sample through Triton, in requests of up to 8 (the signature's maxBatchSize)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"{pod_ip}:8000")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    results = []
    for start in range(0, SAMPLES, 8):
        requests = []
        for name in names:
            batch = np.ascontiguousarray(data[name][start:start + 8])
            request = httpclient.InferInput(name, list(batch.shape), "INT64")
            request.set_data_from_numpy(batch)
            requests.append(request)
        results.append(client.infer(MODEL, requests).as_numpy(output))
    return np.concatenate(results)


def direct_outputs(bed, artifact: dict) -> np.ndarray:
    import onnxruntime as ort

    local = bed["work"] / f"served-{artifact['sha256'][:12]}.onnx"
    bed["cluster"].store().download(artifact["uri"], local, expected_sha256=artifact["sha256"])
    session = ort.InferenceSession(str(local), providers=["CPUExecutionProvider"])
    # The same batches of 8 as the requests: int8-dynamic scales activations per batch.
    names = [i.name for i in session.get_inputs()]
    return np.concatenate([
        session.run([bed["output"]], {n: bed["data"][n][start:start + 8] for n in names})[0]
        for start in range(0, SAMPLES, 8)
    ])


def assert_served_like_onnxruntime(bed, version: int) -> None:
    artifact = status(bed, "modelversion", f"{MODEL}-v{version}")["compressedArtifact"]
    ip = lc.ready_server_ips(bed["cluster"], bed["namespace"], f"{MODEL}-latest")[0]
    served = served_outputs(ip, bed["data"], bed["output"])
    direct = direct_outputs(bed, artifact)
    assert served.shape == direct.shape == (SAMPLES, bed["config"].hidden)
    np.testing.assert_allclose(served, direct, rtol=1e-4, atol=1e-5)


def test_three_input_transformer_is_gated_and_served_as_onnxruntime_runs_it(bed):
    cluster, namespace = bed["cluster"], bed["namespace"]
    cluster.apply(namespace, [version_manifest(1, bed["uri"], bed["sha"], {"quantization": "int8-dynamic"}),
                              deployment_manifest()])
    wait(bed, "--for=condition=Ready", f"modelversion/{MODEL}-v1", timeout=600)
    report = status(bed, "modelversion", f"{MODEL}-v1")["report"]
    assert report["metric"]["name"] == "cosine-similarity" and report["metric"]["passed"] is True
    assert report["metric"]["compressed"] >= 0.99
    assert report["latency"]["runtime"].startswith("onnxruntime ") and report["latency"]["device"] == "cpu"
    assert "vnni" in report["latency"]["cpu"], "the report says whether the CPU has VNNI"
    assert report["latencyMsBefore"] > 0 and report["latencyMsAfter"] > 0
    wait(bed, "--for=jsonpath={.status.servedVersion}=1", f"modeldeployment/{MODEL}-latest", timeout=300)
    wait(bed, "--for=condition=Ready", f"modeldeployment/{MODEL}-latest")
    assert_served_like_onnxruntime(bed, 1)


def test_auto_reports_every_candidate_and_serves_its_pick(bed):
    cluster, namespace = bed["cluster"], bed["namespace"]
    cluster.apply(namespace, [version_manifest(2, bed["auto_uri"], bed["auto_sha"], {"quantization": "auto", "objective": "size"})])
    wait(bed, "--for=condition=Ready", f"modelversion/{MODEL}-v2", timeout=900)
    mv = status(bed, "modelversion", f"{MODEL}-v2")
    report = mv["report"]
    candidates = {c["quantization"]: c for c in report["candidates"]}
    assert list(candidates) == ["int8-dynamic", "int8-weight-only", "int4-weight-only", "int4-mixed", "fp16"]
    assert candidates["int4-mixed"]["verdict"] == "Unsupported" and "calibration" in candidates["int4-mixed"]["message"]
    for candidate in candidates.values():
        assert candidate["verdict"] in ("Passed", "Rejected", "Unsupported", "Failed")
        if candidate["verdict"] in ("Passed", "Rejected"):
            assert candidate["bytes"] > 0 and candidate["metric"]["name"] == "cosine-similarity"
            # Only a candidate that passed is timed.
            assert candidate["latencyMs"] > 0 if candidate["verdict"] == "Passed" else candidate.get("latencyMs") is None
    passed = [c for c in candidates.values() if c["verdict"] == "Passed"]
    chosen = report["chosenQuantization"]
    assert chosen == min(passed, key=lambda c: c["bytes"])["quantization"]
    assert mv["compressedArtifact"]["bytes"] == candidates[chosen]["bytes"]
    ready = next(c for c in mv["conditions"] if c["type"] == "Ready")
    assert chosen in ready["message"], "the status names the chosen recipe"
    print("auto candidates:", {q: (c["verdict"], c.get("bytes"), c.get("latencyMs")) for q, c in candidates.items()},
          "chose", chosen)
    wait(bed, "--for=jsonpath={.status.servedVersion}=2", f"modeldeployment/{MODEL}-latest", timeout=300)
    wait(bed, "--for=condition=Ready", f"modeldeployment/{MODEL}-latest")
    assert_served_like_onnxruntime(bed, 2)

    # An explicit request for the recipe auto picked finds auto's entry in the cache.
    cluster.apply(namespace, [version_manifest(3, bed["auto_uri"], bed["auto_sha"], {"quantization": chosen})])
    wait(bed, "--for=condition=Ready", f"modelversion/{MODEL}-v3", timeout=300)
    v3 = status(bed, "modelversion", f"{MODEL}-v3")
    assert v3["compressedArtifact"] == mv["compressedArtifact"]
    assert next(c for c in v3["conditions"] if c["type"] == "Ready")["reason"] == "CompressedFromCache"


def test_an_artifact_that_does_not_match_the_signature_is_rejected_naming_the_tensor(bed):
    import onnx

    cluster, namespace = bed["cluster"], bed["namespace"]
    model = onnx.load(str(bed["work"] / "model.onnx"))
    old, new = model.graph.output[0].name, "embedding"
    for node in model.graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
    model.graph.output[0].name = new
    onnx.save(model, str(bed["work"] / "renamed.onnx"))
    uri, sha = cluster.upload(bed["work"] / "renamed.onnx", f"{namespace}/bert-renamed/model.onnx")
    served_before = status(bed, "modeldeployment", f"{MODEL}-latest")["servedVersion"]
    cluster.apply(namespace, [version_manifest(4, uri, sha, {"quantization": "int8-dynamic"})])
    wait(bed, "--for=jsonpath={.status.phase}=Rejected", f"modelversion/{MODEL}-v4", timeout=300)
    ready = next(c for c in status(bed, "modelversion", f"{MODEL}-v4")["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "SignatureMismatch"
    assert f"output '{old}'" in ready["message"] and f"'{new}'" in ready["message"]
    md = status(bed, "modeldeployment", f"{MODEL}-latest")
    assert md["servedVersion"] == served_before and md.get("desiredVersion") != 4, "never rolled out"


def test_the_evaluation_dataset_is_refused_as_calibration_naming_both_fields(bed):
    cluster, namespace = bed["cluster"], bed["namespace"]
    manifest = version_manifest(6, bed["auto_uri"], bed["auto_sha"], {
        "quantization": "int4-mixed", "calibration": {"datasetUri": bed["eval_uri"], "sha256": "0" * 64}})
    manifest["spec"]["evaluation"] = {"datasetUri": bed["eval_uri"], "metric": "cosine-similarity", "threshold": 0.98}
    refused = cluster.run_kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert refused.returncode != 0
    assert "compression.calibration.datasetUri and evaluation.datasetUri name the same object" in refused.stderr
    assert "NotFound" in cluster.kubectl("get", "-n", namespace, f"modelversion/{MODEL}-v6", check=False)


def test_auto_with_calibration_serves_int4_at_least_5x_smaller_through_a_0_98_gate(bed):
    cluster, namespace = bed["cluster"], bed["namespace"]
    manifest = version_manifest(5, bed["auto_uri"], bed["auto_sha"], {"quantization": "auto", "calibration": bed["calibration"]})
    manifest["spec"]["evaluation"] = {"datasetUri": bed["eval_uri"], "metric": "cosine-similarity", "threshold": 0.98}
    cluster.apply(namespace, [manifest])
    wait(bed, "--for=condition=Ready", f"modelversion/{MODEL}-v5", timeout=1200)
    report = status(bed, "modelversion", f"{MODEL}-v5")["report"]
    print("auto with calibration:", report["chosenQuantization"], report["ratio"], report["metric"]["compressed"],
          {c["quantization"]: (c["verdict"], c.get("ratio")) for c in report["candidates"]})
    assert report["ratio"] >= 5.0 and report["metric"]["passed"] is True and report["metric"]["compressed"] >= 0.98
    assert report["chosenQuantization"] in ("int4-weight-only", "int4-mixed")
    assert report["calibration"]["uri"] == bed["calibration"]["datasetUri"]
    assert report["calibration"]["sha256"] == bed["calibration"]["sha256"] != report["metric"]["dataset"]["sha256"]
    mixed = next(c for c in report["candidates"] if c["quantization"] == "int4-mixed")
    assert mixed["verdict"] in ("Passed", "Rejected")
    if report["chosenQuantization"] == "int4-mixed":
        # The cache entry's report.json lists every weight's precision (the status, what fits).
        artifact = status(bed, "modelversion", f"{MODEL}-v5")["compressedArtifact"]
        local = bed["work"] / "v5-report.json"
        bed["cluster"].store().download(artifact["uri"].rsplit("/", 1)[0] + "/report.json", local)
        layers = json.loads(local.read_text())["layers"]
        assert layers and {layer["precision"] for layer in layers} <= {"int4", "int8"} and "int4" in {layer["precision"] for layer in layers}
        assert all(layer["bytes"] > 0 for layer in layers)
        assert {layer["precision"] for layer in report.get("layers") or []} <= {"int8", "int4"}
    wait(bed, "--for=jsonpath={.status.servedVersion}=5", f"modeldeployment/{MODEL}-latest", timeout=300)
    wait(bed, "--for=condition=Ready", f"modeldeployment/{MODEL}-latest")
    assert_served_like_onnxruntime(bed, 5)

"""File-set artifacts end to end: an ONNX model with external data (three files) is
compressed, gated and served by the real operator, compressor, MinIO, node agent and
tritonserver, every file verified by its own sha256; a tampered data file is refused with the
file named; a '..' path is refused by the apiserver.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from e2e import lifecycle as lc

pytestmark = pytest.mark.e2e

DATA_FILES = ("weights/layer-0.bin", "weights/rest.bin")


def external_data_model(source: Path, folder: Path, doc_string: str) -> list[Path]:
    """The digits model saved as a graph and two external data files: its largest weight in
    the first, every other tensor of 64 bytes or more in the second."""
    import onnx
    from onnx import external_data_helper

    model = onnx.load(str(source))
    model.doc_string = doc_string  # this test's own cache key
    tensors = sorted(model.graph.initializer, key=lambda t: len(t.raw_data), reverse=True)
    assert len(tensors) >= 2 and len(tensors[1].raw_data) >= 64, [t.name for t in tensors]
    (folder / "weights").mkdir(parents=True)
    for index, tensor in enumerate(t for t in tensors if len(t.raw_data) >= 64):
        external_data_helper.set_external_data(tensor, DATA_FILES[0] if index == 0 else DATA_FILES[1])
    external_data_helper.write_external_data_tensors(model, str(folder))
    onnx.save(model, str(folder / "model.onnx"))
    paths = [folder / "model.onnx", *(folder / p for p in DATA_FILES)]
    assert all(p.stat().st_size > 0 for p in paths) and sum(p.stat().st_size for p in paths) < 100 * 2**20
    return paths


def upload_file_set(storage, folder: Path, paths: list[Path], prefix: str) -> list[dict[str, str]]:
    """Each file under `prefix` at its path relative to `folder`; returns the spec's `files`."""
    files = []
    for path in paths:
        relative = path.relative_to(folder).as_posix()
        storage.put(prefix + relative, path.read_bytes())
        files.append({"path": relative, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return files


def file_set_version(number: int, prefix_uri: str, files: list[dict[str, str]], quantization: str) -> dict:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": f"{lc.MODEL_NAME}-v{number}"},
        "spec": {"model": lc.MODEL_NAME, "version": number,
                 "artifact": {"uri": prefix_uri, "format": "onnx", "entrypoint": "model.onnx", "files": files},
                 "compression": {"quantization": quantization}},
    }


@pytest.fixture(scope="module")
def bed(testbed):
    with lc.serving_namespace(testbed, "e2e-filesets") as ns:
        folder = Path(tempfile.mkdtemp())
        paths = external_data_model(ns.files.onnx, folder, ns.namespace)
        storage = testbed.storage(lc.support.BUCKET)
        files = upload_file_set(storage, folder, paths, f"{ns.namespace}/set/")
        data = np.load(ns.files.eval_npz)
        yield {"cluster": testbed, "ns": ns, "namespace": ns.namespace, "storage": storage, "files": files,
               "prefix": storage.uri(f"{ns.namespace}/set/"), "folder": folder, "inputs": data["inputs"]}


def kwait(bed, *args: str, timeout: int = 600) -> None:
    bed["cluster"].kubectl("wait", "-n", bed["namespace"], *args, f"--timeout={timeout}s", timeout=timeout + 30)


def test_a_dot_dot_path_is_refused_by_the_apiserver(bed):
    files = [*bed["files"], {"path": "weights/../../escape.bin", "sha256": "ab" * 32}]
    manifest = file_set_version(9, bed["prefix"], files, "none")
    result = bed["cluster"].run_kubectl("create", "-n", bed["namespace"], "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert "spec.artifact.files[3].path" in result.stderr and "'..'" in result.stderr, result.stderr
    print("\napiserver:", result.stderr.strip())


def test_an_external_data_model_is_compressed_gated_and_served(bed):
    cluster, namespace = bed["cluster"], bed["namespace"]
    cluster.apply(namespace, [
        file_set_version(1, bed["prefix"], bed["files"], "int8-weight-only"),
        lc.deployment_manifest("digits-set", progress_deadline=300),
    ])
    kwait(bed, "--for=jsonpath={.status.phase}=Ready", "modelversion/digits-v1")
    status = cluster.get(namespace, "modelversion", "digits-v1")["status"]
    # The gate ran on the external-data parent and its compressed form.
    assert status["report"]["metric"]["passed"] is True and status["report"]["metric"]["name"] == "top1-accuracy"
    assert status["report"]["bytesBefore"] == sum((bed["folder"] / f["path"]).stat().st_size for f in bed["files"])
    artifact = status["compressedArtifact"]
    assert [f["path"] for f in artifact["files"]] == ["model.onnx", "model.onnx.data"]
    folder = artifact["uri"].rsplit("/", 1)[0] + "/"
    store = cluster.store()
    with tempfile.TemporaryDirectory() as tmp:
        for item in artifact["files"]:  # what the status says is what storage holds
            result = store.download(folder + item["path"], Path(tmp) / item["path"], expected_sha256=item["sha256"])
            assert result.size == item["bytes"]
        import onnxruntime as ort

        session = ort.InferenceSession(str(Path(tmp) / "model.onnx"), providers=["CPUExecutionProvider"])
        direct = session.run(["logits"], {"input": bed["inputs"].astype(np.float32)})[0]

    kwait(bed, "--for=jsonpath={.status.servedVersion}=1", "modeldeployment/digits-set")
    kwait(bed, "--for=condition=Ready", "modeldeployment/digits-set")
    pod = cluster.get(namespace, "pods", "-l", "modelops.dev/deployment=digits-set")["items"][0]
    fetched = next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == "fetch")
    message = fetched["state"]["terminated"]["message"]
    assert "Fetched 2 files" in message and "each verified by its sha256" in message, message
    print(f"\nv1 Ready: {status['conditions'][0]['message']}\nfetch: {message}")
    ip = lc.ready_server_ips(cluster, namespace, "digits-set")[0]
    served = lc.predictions(ip, bed["inputs"])
    np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-5)

    # Time to ready, step by step: the version's in order and back to back, the rollout's from
    # this pod; the fetch step is the fetch container's own start and end.
    steps = {t["step"]: t for t in status["timings"]}
    assert list(steps) == ["verify", "download", "compress", "evaluate"], status["timings"]
    assert steps["verify"]["finishedAt"] <= steps["download"]["startedAt"] <= steps["compress"]["startedAt"]
    rollout = cluster.get(namespace, "modeldeployment", "digits-set")["status"]["rollouts"][-1]
    served_steps = {t["step"]: t for t in rollout["timings"]}
    assert list(served_steps) == ["schedule", "fetch", "load", "ready"], rollout
    assert (served_steps["fetch"]["startedAt"], served_steps["fetch"]["finishedAt"]) == (
        fetched["state"]["terminated"]["startedAt"], fetched["state"]["terminated"]["finishedAt"])
    assert served_steps["ready"]["seconds"] >= served_steps["load"]["seconds"]
    print("timings:", {k: v["seconds"] for k, v in steps.items()}, {k: v["seconds"] for k, v in served_steps.items()})


def test_a_tampered_data_file_is_refused_with_the_file_named(bed):
    cluster, namespace = bed["cluster"], bed["namespace"]
    # Same paths and digests as v1, but the bytes of one data file changed in the bucket; a
    # recipe of its own so that no cache entry answers for it.
    tampered = f"{namespace}/tampered/"
    for item in bed["files"]:
        body = (bed["folder"] / item["path"]).read_bytes()
        if item["path"] == DATA_FILES[1]:
            body = body[:-4] + bytes(4)
        bed["storage"].put(tampered + item["path"], body)
    cluster.apply(namespace, [file_set_version(2, bed["storage"].uri(tampered), bed["files"], "fp16")])
    kwait(bed, "--for=jsonpath={.status.phase}=Failed", "modelversion/digits-v2")
    status = cluster.get(namespace, "modelversion", "digits-v2")["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    index = [f["path"] for f in bed["files"]].index(DATA_FILES[1])
    assert ready["reason"] == "ChecksumMismatch", ready
    assert f"spec.artifact.files[{index}] ({DATA_FILES[1]})" in ready["message"], ready["message"]
    print(f"\nv2 {ready['reason']}: {ready['message']}")
    # Nothing was published for it and the deployment still serves v1.
    assert "compressedArtifact" not in status
    assert cluster.get(namespace, "modeldeployment", "digits-set")["status"]["servedVersion"] == 1

"""`make demo`: the whole lifecycle of a model on the local test bed, narrated.

1. bring up the test bed and start the operator;
2. train the digits classifier and upload it to MinIO with its sha256;
3. apply a Model, version 1 (fp32) and version 2 (int8), a Latest and a Pinned(v1) deployment;
4. wait on conditions, then send the held-out digits to both endpoints and compare;
5. publish a broken version 3 and watch the Latest deployment roll back to version 2;
6. publish a version 4 whose output is renamed: the compression Job rejects it
   (SignatureMismatch) and it is never rolled out.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from e2e import lifecycle as lc
from e2e import support
from e2e.support import Testbed

NAMESPACE = "modelops-demo"
STARTED = time.monotonic()


def step(title: str) -> None:
    print(f"\n\033[1m[{time.monotonic() - STARTED:6.1f}s] {title}\033[0m", flush=True)


def say(text: str) -> None:
    print(f"         {text}", flush=True)


def wait(cl: Testbed, what: str, *args: str, timeout: int = 600) -> None:
    say(f"waiting: {what}")
    cl.kubectl("wait", *args, "-n", NAMESPACE, f"--timeout={timeout}s", timeout=timeout + 30)


def version_line(mv: dict) -> str:
    status = mv.get("status", {})
    report = status.get("report") or {}
    parts = [f"v{mv['spec']['version']}", f"phase={status.get('phase')}"]
    if report:
        metric = report.get("metric") or {}
        parts += [
            f"bytes {report.get('bytesBefore')} -> {report.get('bytesAfter')} (ratio {report.get('ratio')})",
            f"latency {report.get('latencyMsBefore')} -> {report.get('latencyMsAfter')} ms on {report.get('device')}",
        ]
        if metric:
            parts.append(f"{metric.get('name')}: parent {metric.get('parent'):.2f} compressed {metric.get('compressed'):.2f}")
        if report.get("fromCache"):
            parts.append("reused from the compression cache, no Job")
    return ", ".join(str(p) for p in parts)


def deployment_line(md: dict) -> str:
    status = md.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return (f"{md['metadata']['name']}: policy={md['spec']['versionPolicy']} desired={status.get('desiredVersion')} "
            f"served={status.get('servedVersion')} previous={status.get('previousVersion')} "
            f"ready={status.get('readyReplicas')}/{md['spec']['replicas']} "
            f"Ready={ready.get('status')} ({ready.get('reason')}: {ready.get('message')})")


def renamed_output_onnx(source: Path, target: Path, new_name: str) -> Path:
    """The same model with its output tensor renamed: it no longer matches the Model's signature."""
    import onnx

    model = onnx.load(str(source))
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [new_name if name == old else name for name in node.output]
    model.graph.output[0].name = new_name
    onnx.save(model, str(target))
    return target


def main() -> int:
    step("Bringing up the test bed: etcd, kube-apiserver, controller-manager, scheduler, MinIO, two nodes")
    cl, _ = support.bring_up()
    print(cl.kubectl("get", "nodes", "-o", "wide"), end="")

    step("Installing the CRDs and starting the operator")
    support.install_crds(cl)
    cl.create_namespace(NAMESPACE)
    cl.kubectl("delete", "modeldeployments,modelversions,models", "--all", "-n", NAMESPACE, "--wait=true",
               check=False, timeout=600)
    operator = support.OperatorProcess(Path(cl.kubeconfig), NAMESPACE, Path(cl.state_dir) / "logs" / "demo-operator.log")
    try:
        operator.start()
        say(f"operator ready (log: {operator.log_path})")
        return run(cl)
    finally:
        operator.stop()
        say("operator stopped; the test bed keeps running (make cluster-down stops it)")


def run(cl: Testbed) -> int:
    step("Training the digits classifier (scikit-learn's digits) and uploading it to MinIO")
    files = support.digits_model()
    say(f"trained: test accuracy {files.test_accuracy:.4f} ({files.onnx})")
    cl.ensure_bucket()
    model_uri, model_sha = cl.upload(files.onnx, "digits/fp32/model.onnx")
    eval_uri, _ = cl.upload(files.eval_npz, "digits/eval.npz")
    say(f"{model_uri} sha256={model_sha}")
    say(f"{eval_uri} (held-out evaluation set)")

    step("Applying a Model, v1 (fp32), v2 (int8), a Latest and a Pinned(v1) deployment")
    cl.apply(NAMESPACE, [
        lc.storage_secret(cl),
        lc.model_manifest(cl, eval_uri),
        lc.version_manifest(1, model_uri, model_sha, quantization="none"),
        lc.version_manifest(2, model_uri, model_sha, quantization="int8-weight-only"),
        lc.deployment_manifest("digits-latest"),
        lc.deployment_manifest("digits-pinned", pinned=1),
    ])
    wait(cl, "both versions Ready (compression Jobs on the GPU node, accuracy gate)",
         "--for=condition=Ready", "modelversion/digits-v1", "modelversion/digits-v2")
    for name in ("digits-v1", "digits-v2"):
        say(version_line(cl.get(NAMESPACE, "modelversion", name)))
    for pod in cl.get(NAMESPACE, "pods", "-l", "app.kubernetes.io/component=compressor")["items"]:
        say(f"compression Job pod {pod['metadata']['name']} ran on {pod['spec']['nodeName']}: "
            f"{pod['status']['phase']}")
    wait(cl, "both deployments Ready", "--for=condition=Ready", "modeldeployment/digits-latest",
         "modeldeployment/digits-pinned")
    wait(cl, "the Latest deployment serving v2", "--for=jsonpath={.status.servedVersion}=2",
         "modeldeployment/digits-latest")
    print(cl.kubectl("get", "modelops", "-n", NAMESPACE), end="")

    step("Sending the held-out digits to both endpoints (tritonclient, one request per sample)")
    data = np.load(files.eval_npz)
    inputs, labels = data["inputs"], data["labels"]
    rows = []
    for deployment in ("digits-pinned", "digits-latest"):
        ip = lc.ready_server_ips(cl, NAMESPACE, deployment)[0]
        served = cl.get(NAMESPACE, "modeldeployment", deployment)["status"]["servedVersion"]
        scores = lc.score(ip, inputs, labels)
        rows.append((deployment, served, ip, scores))
    print(f"         {'deployment':<15} {'version':>7} {'pod IP':<12} {'accuracy':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for deployment, served, ip, s in rows:
        print(f"         {deployment:<15} {served:>7} {ip:<12} {s.accuracy:>8.4f} {s.p50_ms:>7.2f} {s.p99_ms:>7.2f}")
    say(f"{rows[0][3].samples} samples each; accuracy drop v1 -> v2: "
        f"{(rows[0][3].accuracy - rows[1][3].accuracy) * 100:.2f} points")

    # A renamed tensor would be Rejected by the Job (SignatureMismatch) before any rollout; this
    # re-export matches the signature and passes the gate, but Triton cannot load it.
    step("Publishing v3: a re-export that gives its input a default value, so Triton cannot load it")
    with tempfile.TemporaryDirectory() as tmp:
        broken = lc.unservable_onnx(files.onnx, Path(tmp) / "model.onnx")
        v3_uri, v3_sha = cl.upload(broken, "digits/v3/model.onnx")
    cl.apply(NAMESPACE, [lc.version_manifest(3, v3_uri, v3_sha, quantization="int8-weight-only")])
    wait(cl, "v3 Ready (it compresses and passes the gate: the model itself is fine)",
         "--for=condition=Ready", "modelversion/digits-v3")
    wait(cl, "the Latest deployment to start rolling out v3", "--for=jsonpath={.status.desiredVersion}=3",
         "modeldeployment/digits-latest")
    rollout_started = time.monotonic()
    wait(cl, "the rollback (progressDeadlineSeconds=60)", "--for=jsonpath={.status.servedVersion}=2",
         "modeldeployment/digits-latest", timeout=300)
    wait(cl, "the RolledBack condition",
         "--for=jsonpath={.status.conditions[?(@.type=='Degraded')].reason}=RolledBack",
         "modeldeployment/digits-latest", timeout=120)
    say(f"rolled back {time.monotonic() - rollout_started:.0f}s after v3 became the desired version")
    wait(cl, "digits-latest Ready again on v2", "--for=condition=Ready", "modeldeployment/digits-latest")
    for name in ("digits-latest", "digits-pinned"):
        say(deployment_line(cl.get(NAMESPACE, "modeldeployment", name)))
    failed = cl.get(NAMESPACE, "modeldeployment", "digits-latest")["status"].get("failedVersions")
    say(f"digits-latest status.failedVersions={failed}")
    for condition in cl.get(NAMESPACE, "modelversion", "digits-v3")["status"]["conditions"]:
        if condition["type"] == "RolloutFailed":
            say(f"digits-v3 RolloutFailed={condition['status']} ({condition['reason']}): {condition['message']}")
    ip = lc.ready_server_ips(cl, NAMESPACE, "digits-latest")[0]
    after = lc.score(ip, inputs[:200], labels[:200])
    say(f"digits-latest still answers: accuracy {after.accuracy:.4f} on 200 samples, p50 {after.p50_ms:.2f} ms")

    step("Publishing v4: a re-export whose output is renamed; the Job checks it against the signature")
    with tempfile.TemporaryDirectory() as tmp:
        renamed = renamed_output_onnx(files.onnx, Path(tmp) / "model.onnx", "scores")
        v4_uri, v4_sha = cl.upload(renamed, "digits/v4/model.onnx")
    cl.apply(NAMESPACE, [lc.version_manifest(4, v4_uri, v4_sha, quantization="int8-weight-only")])
    wait(cl, "v4 Rejected by the compression Job", "--for=jsonpath={.status.phase}=Rejected", "modelversion/digits-v4")
    ready = next(c for c in cl.get(NAMESPACE, "modelversion", "digits-v4")["status"]["conditions"] if c["type"] == "Ready")
    say(f"digits-v4 Ready={ready['status']} ({ready['reason']}): {ready['message']}")
    say(deployment_line(cl.get(NAMESPACE, "modeldeployment", "digits-latest")))
    print(cl.kubectl("get", "modelops", "-n", NAMESPACE), end="")
    step("Done")
    print(json.dumps({"namespace": NAMESPACE, "seconds": round(time.monotonic() - STARTED, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

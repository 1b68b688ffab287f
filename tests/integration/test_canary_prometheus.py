"""The canary analysis and the autoscaler through Prometheus: a real Prometheus (built by
`e2e/testbed/build.sh prometheus`) runs on the host and scrapes the Triton pods it finds with
Kubernetes service discovery, relabelled to `namespace` and `pod` as usual; the operator is
given its URL (MODELOPS_PROMETHEUS_URL) and reads Triton's counters only there.

While Prometheus is down, a canary waits with `MetricsUnavailable` and is never promoted;
once it is back, the good version is promoted; a version whose every request fails is aborted
at its first step, with figures that Prometheus's own series confirm. The operator's
autoscaler scales on the counters read there, and holds its count, saying why, once
Prometheus is gone. On demand (`make test-canary-prometheus`, marker `prometheus`): the
Prometheus build takes minutes cold.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from e2e import support
from tests.integration.canaryload import Traffic, publish_versions, reasons, serve
from tests.integration.conftest import (
    apply_docs,
    digits_model_manifest,
    digits_version_manifest,
    eventually,
    get_json,
    kubectl,
    publish_cached,
)

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

ROOT = Path(__file__).resolve().parents[2]
STABLE = 2
# With 2 stable pods, 34 % is 1 canary pod (33.3 %).
STEPS = [{"weight": 34, "pause": "10s"}]
ANALYSIS = {"maxErrorRatio": 0.01, "maxLatencyRatio": 4, "minRequests": 200, "interval": "2s"}
SCRAPE_INTERVAL = "2s"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """One Prometheus process on 127.0.0.1 that scrapes the Triton pods of `namespace`."""

    def __init__(self, binary: Path, directory: Path, kubeconfig: str, namespace: str) -> None:
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            # The query log records every query with its HTTP method: the operator's are POSTs.
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                       "query_log_file": str(directory / "queries.log")},
            "scrape_configs": [{
                "job_name": "triton",
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": kubeconfig, "namespaces": {"names": [namespace]}}],
                # The usual annotation recipe: prometheus.io/scrape keeps a pod, prometheus.io/port and
                # /path say where (each container port of a pod becomes the same target, scraped
                # once); namespace and pod become labels.
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "action": "keep", "regex": "true"},
                    {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "target_label": "__metrics_path__",
                     "regex": "(.+)"},
                    {"source_labels": ["__meta_kubernetes_pod_ip", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                     "regex": "(.+);(.+)", "replacement": "$1:$2", "target_label": "__address__"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            }],
        }))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.directory / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.binary), f"--config.file={self.config}", f"--storage.tsdb.path={self.directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT)
        eventually(self._ready, 60, f"Prometheus ready at {self.url}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        self.process = None

    def query(self, expression: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, expression: str) -> float:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else 0.0

    def posted_queries(self) -> list[str]:
        """The queries that came as POSTs (the operator's; this test's own are GETs)."""
        path = self.directory / "queries.log"
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        return [e["params"]["query"] for e in entries if (e.get("httpRequest") or {}).get("method") == "POST"]


@pytest.fixture
def prometheus(testbed: Any, namespace: str, tmp_path: Path) -> Iterator[Prometheus]:
    built = subprocess.run([str(ROOT / "e2e/testbed/build.sh"), "prometheus"], check=True, capture_output=True, text=True)
    server = Prometheus(Path(built.stdout.strip().splitlines()[-1]) / "prometheus", tmp_path, testbed.kubeconfig, namespace)
    server.start()
    yield server
    server.stop()


def condition(md: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in (md.get("status") or {}).get("conditions") or [] if c["type"] == kind)


@pytest.mark.timeout(1800)
def test_the_canary_analysis_reads_triton_counters_through_prometheus(testbed, namespace, storage, digits, start_operator, prometheus) -> None:
    start_operator(resync_seconds=30, prometheus_url=prometheus.url)
    model, docs = publish_versions(storage, digits)
    apply_docs(testbed, namespace, [storage.secret("storage"), model, docs[1], serve(STABLE, STEPS, ANALYSIS)])
    kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/serve", "--timeout=400s", timeout=430)
    inputs = np.load(support.digits_model(0).eval_npz)["inputs"]
    selector = f'namespace="{namespace}",model="digits"'
    eventually(lambda: prometheus.value(f"count(nv_inference_request_success{{{selector}}})") >= STABLE, 60,
               "Prometheus scraping the stable pods")
    log: dict[str, Any] = {}

    # -- Prometheus down: the canary's step waits and says why; nothing is promoted ----------------
    prometheus.stop()
    with Traffic(testbed, namespace, inputs, STABLE) as good:
        apply_docs(testbed, namespace, [docs[2]])

        def blind() -> dict[str, Any] | None:
            md = get_json(testbed, namespace, "modeldeployment", "serve")
            progressing = condition(md, "Progressing")
            return md if progressing["reason"] == "MetricsUnavailable" else None

        md = eventually(blind, 300, "Progressing MetricsUnavailable while Prometheus is down", interval=1)
        unavailable = condition(md, "Progressing")
        log["unavailable"] = unavailable["message"]
        assert f"Prometheus at {prometheus.url} could not be read" in unavailable["message"], unavailable
        assert md["status"]["canary"]["phase"] == "Progressing" and md["status"]["servedVersion"] == 1
        assert not md["status"]["canary"].get("lastAnalysis"), "no analysis without the counters"
        warnings = [m for r, m in reasons(testbed, namespace) if r == "MetricsUnavailable"]
        assert any("could not be read" in m for m in warnings), warnings

        # -- Prometheus back: the good canary is promoted from its figures ---------------------------
        prometheus.start()

        def promoted() -> dict[str, Any] | None:
            md = get_json(testbed, namespace, "modeldeployment", "serve")
            canary = (md.get("status") or {}).get("canary") or {}
            return md if canary.get("version") == 2 and canary.get("phase") == "Promoted" else None

        md = eventually(promoted, 600, "version 2 promoted", interval=1)
        eventually(lambda: get_json(testbed, namespace, "modeldeployment", "serve")["status"].get("servedVersion") == 2,
                   600, "version 2 served by the stable pods")
    good_analysis = md["status"]["canary"]["lastAnalysis"]
    posted = prometheus.posted_queries()
    served = prometheus.value(f'sum(max_over_time(nv_inference_request_success{{{selector},pod=~"serve-canary-.+"}}[10m]))')
    log["good"] = {"requests": good.requests(), "failures": good.failures(), "last_analysis": good_analysis,
                   "operator_queries": len(posted), "a_query": posted[-1] if posted else None,
                   "prometheus_canary_successes": served, "message": md["status"]["canary"]["message"]}
    print("\ngood canary through Prometheus:", json.dumps(log["good"], indent=2))
    assert good.failures() == 0, log["good"]
    assert good_analysis["verdict"].startswith("Pass") and good_analysis["canary"]["requests"] >= ANALYSIS["minRequests"]
    assert good_analysis["canary"]["failures"] == 0 and served >= good_analysis["canary"]["requests"], log["good"]
    assert posted and all(f'namespace="{namespace}"' in q and "nv_inference_request_success" in q for q in posted), posted[:3]

    # -- a bad canary: aborted at its first step, with figures Prometheus confirms ------------------
    with Traffic(testbed, namespace, inputs, STABLE) as bad:
        apply_docs(testbed, namespace, [docs[3]])
        kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.canary.phase}=Aborted",
                "modeldeployment/serve", "--timeout=300s", timeout=330)
    md = get_json(testbed, namespace, "modeldeployment", "serve")
    status = md["status"]
    failed = status["canary"]["lastAnalysis"]["canary"]["failures"]
    # Every failure the analysis counted is in Prometheus's series of the canary pod.
    in_prometheus = prometheus.value(
        f'sum(max_over_time(nv_inference_request_failure{{{selector},pod=~"serve-canary-.+"}}[10m]))')
    log["bad"] = {"requests": bad.requests(), "failures": bad.failures(), "message": status["canary"]["message"],
                  "last_analysis": status["canary"]["lastAnalysis"], "prometheus_canary_failures": in_prometheus}
    print("\nbad canary through Prometheus:", json.dumps(log["bad"], indent=2))
    assert status["canary"]["step"] == 0 and status["failedVersions"] == [3]
    assert "error ratio" in status["canary"]["message"] and f"{failed}/" in status["canary"]["message"]
    assert failed >= ANALYSIS["minRequests"] and in_prometheus >= failed, log["bad"]  # every request of version 3 fails
    assert status["servedVersion"] == 2
    (Path(testbed.state_dir) / "canary-prometheus.json").write_text(json.dumps(log, indent=2, default=str))


AUTOSCALING = {"minReplicas": 1, "maxReplicas": 3, "metric": "inferences-per-second", "target": 60,
               "stabilizationWindow": "20s", "cooldown": "30s", "interval": "3s"}


@pytest.mark.timeout(900)
def test_the_autoscaler_reads_through_prometheus_and_holds_when_it_cannot(testbed, namespace, storage, digits, start_operator,
                                                                          prometheus) -> None:
    start_operator(resync_seconds=30, prometheus_url=prometheus.url)
    model = digits_model_manifest(storage, None, gpus=0)
    v1 = digits_version_manifest(storage, 1, storage.put("digits/1/model.onnx", digits.onnx[0]))
    publish_cached(storage, model, v1, digits.onnx[0])
    md = serve(1, STEPS, ANALYSIS)
    md["spec"].pop("replicas")
    md["spec"]["autoscaling"] = AUTOSCALING
    apply_docs(testbed, namespace, [storage.secret("storage"), model, v1, md])
    kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/serve", "--timeout=300s", timeout=330)
    inputs = np.load(support.digits_model(0).eval_npz)["inputs"]

    def scaler() -> dict[str, Any]:
        return (get_json(testbed, namespace, "modeldeployment", "serve").get("status") or {}).get("autoscaling") or {}

    with Traffic(testbed, namespace, inputs, 1) as load:
        grown = eventually(lambda: (s := scaler()).get("replicas", 1) >= 2 and s, 300, "the scaler asking for more pods", interval=1)
        posted = prometheus.posted_queries()
        # Prometheus gone: the count holds, and the status and an event say why.
        prometheus.stop()
        held = eventually(lambda: "could not be read" in ((s := scaler()).get("message") or "") and s, 120,
                          "status.autoscaling.message saying Prometheus could not be read", interval=1)
    log = {"grown": grown, "held": held, "requests": load.requests(), "failures": load.failures(), "operator_queries": len(posted)}
    print("\nautoscaler through Prometheus:", json.dumps(log, indent=2))
    assert grown["value"] > AUTOSCALING["target"] and posted, log
    assert held["replicas"] == get_json(testbed, namespace, "deployment", "serve")["spec"]["replicas"] >= grown["replicas"], log
    assert held["message"].startswith(f"Prometheus at {prometheus.url} could not be read") and held["message"].endswith(
        "replicas stay as they are"), held
    events = [m for r, m in reasons(testbed, namespace) if r == "MetricsUnavailable"]
    assert any(m.startswith(f"autoscaler: Prometheus at {prometheus.url} could not be read") for m in events), events
    assert load.failures() == 0, log

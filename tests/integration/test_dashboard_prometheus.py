"""Every query of the chart's Grafana dashboard runs against a real Prometheus (built by
`e2e/testbed/build.sh prometheus`) that scrapes the test bed after a load: the Triton pods
relabelled as the chart's PodMonitor does (namespace, pod, deployment, track) and the operator's
own /metrics, as its ServiceMonitor does. None errors and each returns series, and the series
the alerts watch (reconcile errors and durations, the work queue, the leader) are there. On
demand with the canary tests through Prometheus (`make test-prometheus`, marker `prometheus`):
the Prometheus build takes 5 to 17 minutes cold, the test about a minute.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from e2e import support
from tests.integration.canaryload import Traffic, publish_versions, serve
from tests.integration.conftest import ROOT, apply_docs, eventually, kubectl
from tests.integration.test_canary_prometheus import ANALYSIS, SCRAPE_INTERVAL, STEPS, Prometheus

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

# What Grafana puts for $__rate_interval at this scrape interval (4 × 2 s, rounded up).
RATE_INTERVAL = "1m"
REPLICAS = 2
KINDS = ("Model", "ModelVersion", "ModelDeployment")


def dashboard() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("generate_dashboard", ROOT / "scripts" / "generate-dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered: dict[str, Any] = json.loads(module.render())
    # The chart ships the committed JSON; the unit tests hold it to the generator.
    assert rendered == json.loads((ROOT / "charts/modelops/dashboards/modelops.json").read_text())
    return rendered


def panel_queries(namespace: str) -> list[tuple[str, str, str]]:
    """(panel, legend, query) of every target, with the variables as Grafana would fill them."""
    out = []
    for p in dashboard()["panels"]:
        for t in p.get("targets") or []:
            query = t["expr"].replace("$namespace", namespace).replace("$model", "digits").replace("$__rate_interval", RATE_INTERVAL)
            assert "$" not in query, query
            out.append((p["title"], t["legendFormat"], query))
    return out


def scrape_config(kubeconfig: str, namespace: str, operator_port: int) -> dict[str, Any]:
    """The chart's PodMonitor and ServiceMonitor, as plain Prometheus scrape configs."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
        "scrape_configs": [
            {"job_name": "triton",
             "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": kubeconfig, "namespaces": {"names": [namespace]}}],
             "relabel_configs": [
                 # The PodMonitor's selector and port.
                 {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_managed_by",
                                    "__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                  "action": "keep", "regex": "modelops;triton"},
                 {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "action": "keep", "regex": "metrics"},
                 # The Prometheus Operator's own target labels, then the PodMonitor's relabelings.
                 {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                 {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                 {"source_labels": ["__meta_kubernetes_pod_label_modelops_dev_deployment"], "target_label": "deployment"},
                 {"source_labels": ["__meta_kubernetes_pod_label_modelops_dev_track"], "target_label": "track"},
             ]},
            {"job_name": "modelops", "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}]},
        ],
    }


def number(result: dict[str, Any]) -> float:
    return float(result["value"][1])


@pytest.mark.timeout(1200)
def test_every_dashboard_query_returns_series_after_a_load(testbed, namespace, storage, digits, start_operator, tmp_path: Path) -> None:
    built = subprocess.run([str(ROOT / "e2e/testbed/build.sh"), "prometheus"], check=True, capture_output=True, text=True)
    operator = start_operator(resync_seconds=30)
    server = Prometheus(Path(built.stdout.strip().splitlines()[-1]) / "prometheus", tmp_path, testbed.kubeconfig, namespace)
    server.config.write_text(yaml.safe_dump(scrape_config(testbed.kubeconfig, namespace, operator.metrics_port)))
    server.start()
    try:
        model, docs = publish_versions(storage, digits, count=1)
        apply_docs(testbed, namespace, [storage.secret("storage"), model, docs[1], serve(REPLICAS, STEPS, ANALYSIS)])
        kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/serve", "--timeout=400s", timeout=430)
        inputs = np.load(support.digits_model(0).eval_npz)["inputs"]
        with Traffic(testbed, namespace, inputs, REPLICAS) as load:
            # Two samples of the load in every pod's counters inside the rate window.
            eventually(lambda: server.value(f'count(rate(nv_inference_request_success{{namespace="{namespace}"}}[{RATE_INTERVAL}]) > 0)')
                       >= REPLICAS, 120, "Prometheus seeing the requests on every pod", interval=1)
            answers = {(title, legend, query): server.query(query) for title, legend, query in panel_queries(namespace)}  # status success
        assert load.requests() > 0 and load.failures() == 0

        empty = [key for key, result in answers.items() if not result]
        assert not empty, f"queries with no series: {empty}"
        print("\n" + "\n".join(f"{title} [{legend}]: {len(result)} series, {[round(number(r), 4) for r in result][:6]}"
                               for (title, legend, _), result in answers.items()))

        def panel(title: str, legend: str | None = None) -> list[dict[str, Any]]:
            return [r for (t, g, _), result in answers.items() if t == title and legend in (None, g) for r in result]

        # The panels show this load, not merely some series.
        assert all(number(r) > 0 for r in panel("Requests")), panel("Requests")
        assert [number(r) for r in panel("Error ratio")] == [0.0]
        assert [number(r) for r in panel("Replicas")] == [REPLICAS]
        assert [(r["metric"]["version"], number(r)) for r in panel("Version served")] == [("1", REPLICAS)]
        assert all(math.isfinite(number(r)) and number(r) > 0 for r in panel("Latency p50 and p99")), panel("Latency p50 and p99")
        # The series the alerts watch: every kind reconciled, each with its errors line (0 here) and its p99.
        assert {r["metric"]["kind"] for r in panel("Reconciles and errors", "{{kind}} errors")} == set(KINDS)
        assert all(number(r) == 0 for r in panel("Reconciles and errors", "{{kind}} errors"))
        assert {r["metric"]["kind"] for r in panel("Reconcile duration (p99)")} == set(KINDS)
        assert [number(r) for r in panel("Work queue and leader", "leaders")] == [1]
        assert [math.isfinite(number(r)) for r in panel("Work queue and leader", "objects waiting")] == [True]
        stages = {r["metric"]["stage"]: number(r) for r in panel("Time to ready per stage (p99)")}
        assert set(stages) == {"verify", "compress", "gate", "serve"} and stages["serve"] > 0, stages
    finally:
        server.stop()

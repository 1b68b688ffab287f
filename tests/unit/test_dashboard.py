"""The chart's Grafana dashboard is what scripts/generate-dashboard.py generates, and it has the
panels the monitoring promises, each with Prometheus queries on the dashboard's variables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_dashboard", ROOT / "scripts" / "generate-dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_dashboard_is_the_generators_output() -> None:
    gen = generator()
    assert gen.OUT.read_text() == gen.render(), "run scripts/generate-dashboard.py and commit its output"


def test_every_panel_queries_prometheus_through_the_variables() -> None:
    gen = generator()
    dashboard = json.loads(gen.render())
    panels = [p for p in dashboard["panels"] if p["type"] == "timeseries"]
    titles = {p["title"] for p in panels}
    assert {"Requests", "Error ratio", "Latency p50 and p99", "Queue time per request", "Replicas", "Version served",
            "Rollouts and rollbacks", "Compression duration", "Time to ready per stage (p99)", "Reconciles and errors",
            "Reconcile duration (p99)", "Work queue and leader"} <= titles
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "namespace", "model"]
    per_model = {title for title, *_ in gen.MODEL_PANELS}
    for p in panels:
        assert p["targets"], p["title"]
        for target in p["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            if p["title"] in per_model:
                assert '$namespace' in target["expr"] and '$model' in target["expr"], target["expr"]


def test_the_operator_panels_show_the_series_the_alerts_use() -> None:
    exprs = " ".join(t["expr"] for p in json.loads(generator().render())["panels"] if p["type"] == "timeseries" for t in p["targets"])
    for series in ("modelops_reconcile_errors_total", "modelops_reconcile_duration_seconds_bucket", "modelops_queue_depth",
                   "modelops_leader", "modelops_rollbacks_total", "modelops_phase_duration_seconds_bucket"):
        assert series in exprs, series

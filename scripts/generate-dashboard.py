#!/usr/bin/env python3
"""Generate the chart's Grafana dashboard (charts/modelops/dashboards/modelops.json) with
grafana-foundation-sdk. The JSON is committed; tests/unit/test_dashboard.py checks that it is
what this script writes. Run: `$(scripts/ensure-venv.sh)/bin/python scripts/generate-dashboard.py`.

Per model (variables namespace and model, from the PodMonitor's Triton series): requests,
error ratio, p50/p99 latency, queue time, replicas, the version served. From the operator's
own series: rollouts and rollbacks, compression durations, the time to ready per stage,
reconciles and their errors and durations, the work queue and the leader.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, QueryVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

OUT = Path(__file__).resolve().parents[1] / "charts" / "modelops" / "dashboards" / "modelops.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
MODEL = 'namespace="$namespace",model=~"$model"'
RATE = "[$__rate_interval]"


def rate(metric: str, selector: str = MODEL) -> str:
    return f"sum by (namespace, model) (rate({metric}{{{selector}}}{RATE}))"


def panel(title: str, unit: str, *queries: tuple[str, str], description: str = "") -> Timeseries:
    built = Timeseries().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12).description(description)
    for expr, legend in queries:
        built = built.with_target(Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE))
    return built


# (title, unit, queries, description) of every panel, in order; the tests run each query.
MODEL_PANELS = [
    ("Requests", "reqps", [(f"{rate('nv_inference_request_success')} + {rate('nv_inference_request_failure')}", "{{model}}")],
     "Inference requests per second, succeeded and failed."),
    ("Error ratio", "percentunit",
     [(f"{rate('nv_inference_request_failure')} / ({rate('nv_inference_request_success')} + {rate('nv_inference_request_failure')})",
       "{{model}}")],
     "Share of the requests that failed (ModelErrorRatioHigh)."),
    ("Latency p50 and p99", "s",
     [(f'max by (namespace, model) (nv_inference_request_summary_us{{{MODEL},quantile="0.5"}}) / 1e6', "{{model}} p50"),
      (f'max by (namespace, model) (nv_inference_request_summary_us{{{MODEL},quantile="0.99"}}) / 1e6', "{{model}} p99")],
     "Request latency, the highest of the model's pods (ModelLatencyP99High)."),
    ("Queue time per request", "s",
     [(f"{rate('nv_inference_queue_duration_us')} / 1e6 / {rate('nv_inference_request_success')}", "{{model}}")],
     "Time a request waited in Triton's queue before it ran."),
    ("Replicas", "short", [(f"count by (namespace, model) (nv_inference_count{{{MODEL}}})", "{{model}}")],
     "Triton pods serving the model (scraped by the PodMonitor)."),
    ("Version served", "short", [(f"count by (namespace, model, version) (nv_inference_count{{{MODEL}}})", "{{model}} v{{version}}")],
     "Pods per served version: two lines while a rollout or a canary runs."),
]
OPERATOR_PANELS = [
    ("Rollouts and rollbacks", "short",
     [("sum by (outcome) (increase(modelops_rollouts_total[1h]))", "rollouts {{outcome}}"),
      ("sum(increase(modelops_rollbacks_total[1h]))", "rollbacks")],
     "Rollouts started and succeeded, and rollbacks, per hour."),
    ("Compression duration", "s",
     [('histogram_quantile(0.5, sum by (le) (rate(modelops_phase_duration_seconds_bucket{stage="compress"}[1h])))', "p50"),
      ('histogram_quantile(0.99, sum by (le) (rate(modelops_phase_duration_seconds_bucket{stage="compress"}[1h])))', "p99")],
     "Compressing phase of the versions (the Job, its evaluation included)."),
    ("Time to ready per stage (p99)", "s",
     [("histogram_quantile(0.99, sum by (le, stage) (rate(modelops_phase_duration_seconds_bucket[1h])))", "{{stage}}")],
     "verify, compress, gate and serve (a rollout's start to all its pods serving)."),
    ("Reconciles and errors", "ops",
     [(f"sum by (kind, result) (rate(modelops_reconcile_total{RATE}))", "{{kind}} {{result}}"),
      # A kind with no error yet is a line at 0, not a missing one.
      (f"sum by (kind) (rate(modelops_reconcile_errors_total{RATE})) or 0 * sum by (kind) (rate(modelops_reconcile_total{RATE}))",
       "{{kind}} errors")],
     "Reconciles per second by kind and result, and the failed ones (OperatorReconcileErrors)."),
    ("Reconcile duration (p99)", "s",
     [(f"histogram_quantile(0.99, sum by (le, kind) (rate(modelops_reconcile_duration_seconds_bucket{RATE})))", "{{kind}}")],
     "Time one reconcile takes, by kind."),
    ("Work queue and leader", "short",
     [("sum(modelops_queue_depth)", "objects waiting"), ("sum(modelops_leader)", "leaders")],
     "Objects waiting to be reconciled, and the replicas that hold the leader Lease (OperatorNoLeader below 1)."),
]


def build() -> Dashboard:
    dashboard = (
        Dashboard("modelops: models")
        .uid("modelops-models")
        .tags(["modelops"])
        .refresh("30s")
        .time("now-3h", "now")
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(QueryVariable("namespace").label("Namespace").datasource(DATASOURCE)
                       .query("label_values(nv_inference_count, namespace)").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
        .with_variable(QueryVariable("model").label("Model").datasource(DATASOURCE).multi(True).include_all(True)
                       .query('label_values(nv_inference_count{namespace="$namespace"}, model)')
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
        .with_row(Row("Models"))
    )
    for title, unit, queries, description in MODEL_PANELS:
        dashboard = dashboard.with_panel(panel(title, unit, *queries, description=description))
    dashboard = dashboard.with_row(Row("Operator"))
    for title, unit, queries, description in OPERATOR_PANELS:
        dashboard = dashboard.with_panel(panel(title, unit, *queries, description=description))
    return dashboard


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())

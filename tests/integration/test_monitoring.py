"""The monitoring a platform team runs: the operator's live /metrics passes `promtool check
metrics`; `helm template` with `monitoring.enabled` renders the ServiceMonitor, PodMonitor and
PrometheusRule and the Grafana dashboard's ConfigMap (and none of them by default); every alert fires on one input and stays quiet
on another (`promtool test rules`, tests/integration/monitoring/alerts_test.yaml); every alert
has a runbook section in docs/runbooks.md that its runbook_url points to.

promtool comes from the pinned Prometheus module (`e2e/testbed/build.sh promtool`). The chart
with monitoring on passes kubeconform in strict mode, the monitoring kinds included, with
schemas made from prometheus-operator's CRDs (its Go module) and cached like the others.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import support
from e2e.testbed import schemas
from tests.integration.conftest import ROOT, apply_docs, digits_model_manifest, eventually

pytestmark = pytest.mark.integration

CHART = ROOT / "charts" / "modelops"
ALERTS_TEST = ROOT / "tests" / "integration" / "monitoring" / "alerts_test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# The Prometheus Operator whose CRDs (example/prometheus-operator-crd in its Go module, verified
# against the checksum database by `go mod download`) the monitoring kinds are validated against.
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
PROMETHEUS_OPERATOR_CRDS = ("servicemonitors", "podmonitors", "prometheusrules")


def built(*modules: str) -> Path:
    out = subprocess.run([str(ROOT / "e2e/testbed/build.sh"), *modules], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def promtool() -> Path:
    return built("promtool") / "promtool"


@pytest.fixture(scope="module")
def helm() -> Path:
    return built() / "helm"


def render(helm: Path, *flags: str) -> list[dict[str, Any]]:
    out = subprocess.run([str(helm), "template", "m", str(CHART), "--namespace", "modelops-system", *flags],
                         check=True, capture_output=True, text=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def rules(helm: Path) -> dict[str, Any]:
    (rule,) = [d for d in render(helm, "--set", "monitoring.enabled=true") if d["kind"] == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


def alerts(helm: Path) -> list[dict[str, Any]]:
    return [r for group in rules(helm)["groups"] for r in group["rules"] if "alert" in r]


def test_the_live_metrics_follow_the_conventions(testbed, namespace, storage, start_operator, promtool, tmp_path: Path) -> None:
    operator = start_operator()
    apply_docs(testbed, namespace, [digits_model_manifest(storage)])
    eventually(lambda: operator.metric("modelops_reconcile_total", kind="Model") >= 1, 60, "a Model reconciled")
    text = operator.metrics_text()
    for name in ("modelops_leader", "modelops_queue_depth", "modelops_reconcile_duration_seconds_bucket",
                 "modelops_phase_duration_seconds", "modelops_rollouts_past_deadline"):
        assert name in text, name
    assert operator.metric("modelops_leader") == 1
    checked = subprocess.run([str(promtool), "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_monitoring_is_off_by_default_and_one_value_turns_it_on(helm) -> None:
    assert not MONITORING_KINDS & {d["kind"] for d in render(helm)}
    docs = render(helm, "--set", "monitoring.enabled=true")
    assert sorted(d["kind"] for d in docs if d["kind"] in MONITORING_KINDS) == sorted(MONITORING_KINDS)
    (dashboard,) = [d for d in docs if d["kind"] == "ConfigMap" and "modelops.json" in d.get("data", {})]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["modelops.json"] == (CHART / "dashboards" / "modelops.json").read_text().rstrip("\n")
    docs = render(helm, "--set", "monitoring.enabled=true", "--set", "monitoring.dashboard.enabled=false")
    assert not [d for d in docs if d["kind"] == "ConfigMap" and "modelops.json" in d.get("data", {})]


def test_the_pod_monitor_selects_the_labels_the_operator_puts_on_triton_pods(helm) -> None:
    from modelops.core import naming

    (monitor,) = [d for d in render(helm, "--set", "monitoring.enabled=true", "--set", "watchNamespaces={a,b}")
                  if d["kind"] == "PodMonitor"]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    pod_labels = naming.server_labels("serve", "digits")
    assert wanted.items() <= pod_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_every_alert_fires_on_one_input_and_stays_quiet_on_another(helm, promtool, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules(helm)))
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    names = {a["alert"] for a in alerts(helm)}
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    assert names == {c["alertname"] for c in cases if c["exp_alerts"]}, "an alert with no firing case"
    assert names == {c["alertname"] for c in cases if not c["exp_alerts"]}, "an alert with no quiet case"
    checked = subprocess.run([str(promtool), "test", "rules", ALERTS_TEST.name], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_test_rules_fails_when_a_threshold_moves(helm, promtool, tmp_path: Path) -> None:
    """The firing cases hold the thresholds: with a 20 % error ratio the 10 % case no longer fires."""
    (rule,) = [d for d in render(helm, "--set", "monitoring.enabled=true", "--set", "monitoring.rules.errorRatio=0.2")
               if d["kind"] == "PrometheusRule"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    checked = subprocess.run([str(promtool), "test", "rules", ALERTS_TEST.name], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode != 0 and "ModelErrorRatioHigh" in checked.stdout + checked.stderr


def test_every_alert_has_a_runbook_section_its_url_points_to(helm) -> None:
    sections = {m.lower() for m in re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)}
    for alert in alerts(helm):
        anchor = alert["alert"].lower()
        assert anchor in sections, f"docs/runbooks.md has no section ## {alert['alert']}"
        assert alert["annotations"]["runbook_url"].endswith(f"docs/runbooks.md#{anchor}")
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}


def prometheus_operator_crds() -> list[Path]:
    env = {**os.environ, "GOMODCACHE": str(support.CACHE / "go" / "mod"), "GOFLAGS": "", "GOTOOLCHAIN": "local"}
    out = subprocess.run(["go", "mod", "download", "-json", PROMETHEUS_OPERATOR], check=True, capture_output=True, text=True,
                         env=env, timeout=600)
    folder = Path(json.loads(out.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    return [folder / f"monitoring.coreos.com_{name}.yaml" for name in PROMETHEUS_OPERATOR_CRDS]


def test_kubeconform_passes_the_monitoring_kinds_against_prometheus_operators_crds(testbed, helm, tmp_path: Path) -> None:
    openapi = json.loads(testbed.kubectl("get", "--raw", "/openapi/v2", timeout=120))
    template = schemas.write_schemas(openapi, [*sorted((ROOT / "crds").glob("*.yaml")), *prometheus_operator_crds()],
                                     support.CACHE / "kubeconform-schemas")
    command = [str(support.binaries() / "kubeconform"), "-schema-location", str(template), "-kubernetes-version", "1.34.4",
               "-strict", "-summary", "-verbose", "-output", "json"]
    good = render(helm, "--set", "monitoring.enabled=true")
    bad = [d for d in render(helm, "--set", "monitoring.enabled=true") if d["kind"] == "PodMonitor"]
    bad[0]["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"  # a typo strict mode refuses
    for name, docs, valid in (("good", good, True), ("bad", bad, False)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        result = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=300)
        report = json.loads(result.stdout)
        statuses = {(r["kind"], r["status"]) for r in report.get("resources", [])}
        if valid:
            assert result.returncode == 0, result.stdout + result.stderr
            assert {(kind, "statusValid") for kind in MONITORING_KINDS} <= statuses, statuses
            assert not {s for s in statuses if s[1] not in ("statusValid",)}, statuses
        else:
            assert result.returncode != 0 and ("PodMonitor", "statusInvalid") in statuses, result.stdout

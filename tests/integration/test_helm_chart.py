"""The Helm chart on the test bed: lint, the schema, what it renders, and a real install.

The install runs the operator as the chart deploys it (the node agent runs the operator
image built from this checkout's images/operator/Dockerfile), in a namespace that enforces the `restricted` Pod Security
Standard, with the chart's ServiceAccount and RBAC. A ModelVersion whose artifact is
missing must get its condition from that operator: proof that it runs and may do its job.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelops.core import naming
from modelops.settings import Settings
from tests.integration.conftest import LEADER_ELECTION_RULES, OPERATOR_RULES, ROOT, Storage, eventually

pytestmark = pytest.mark.integration

CHART = ROOT / "charts" / "modelops"
# `helm template` renders for a default Kubernetes version unless told; the chart needs 1.32+.
KUBE_VERSION = "--kube-version=1.34.0"
INSTALL_TIMEOUT_S = 300


def helm_ok(testbed: Any, *args: str, timeout: float = 120) -> str:
    result = testbed.helm(*args, timeout=timeout)
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def render(testbed: Any, *sets: str, **json_sets: Any) -> list[dict[str, Any]]:
    """`helm template` with `--set` for each of `sets` and `--set-json` for each keyword (dots as __)."""
    flags = [arg for value in sets for arg in ("--set", value)]
    flags += [arg for key, value in json_sets.items() for arg in ("--set-json", f"{key.replace('__', '.')}={json.dumps(value)}")]
    out = helm_ok(testbed, "template", "mo", str(CHART), "--namespace", "ops", KUBE_VERSION, *flags)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


# -- lint, schema, rendering ---------------------------------------------------------------


def test_the_chart_lints_with_every_optional_part_on(testbed) -> None:
    helm_ok(testbed, "lint", str(CHART), "--strict", KUBE_VERSION)
    helm_ok(testbed, "lint", str(CHART), "--strict", KUBE_VERSION, "--set", "watchNamespaces={team-a,team-b}",
            "--set", "serviceMonitor.enabled=true", "--set", "argocd.healthChecks.enabled=true")


@pytest.mark.parametrize(("value", "field"), [
    ("replicaCount=two", "/replicaCount"),
    ("replicaCount=11", "/replicaCount"),
    ("leaderElection.enabled=false,replicaCount=2", "/replicaCount"),
    ("leaderElection.leaseDurationSeconds=0", "/leaderElection/leaseDurationSeconds"),
    ("watchNamespaces=team-a", "/watchNamespaces"),
    ("operator.workers=many", "/operator/workers"),
    ("operator.logLevel=TRACE", "/operator/logLevel"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("serviceMonitor.enabled=yes-please", "/serviceMonitor/enabled"),
    ("watchNamespace={team-a}", "watchNamespace"),
    ("operator.endpoints.deniedCIDRs={pods}", "/operator/endpoints/deniedCIDRs/0"),
    ("operator.endpoints.allowed=minio.storage.svc", "/operator/endpoints/allowed"),
])
def test_the_schema_rejects_a_bad_value_and_names_it(testbed, value: str, field: str) -> None:
    result = testbed.helm("template", "mo", str(CHART), KUBE_VERSION, "--set", value)
    assert result.returncode != 0, f"--set {value} was accepted"
    assert "don't meet the specifications of the schema" in result.stderr and field in result.stderr, result.stderr


def test_cluster_wide_by_default_the_cluster_role_holds_exactly_the_operators_rules(testbed) -> None:
    docs = render(testbed)
    (role,) = of_kind(docs, "ClusterRole")
    assert grants(role["rules"]) == grants(OPERATOR_RULES)
    # The only namespaced grants, in the release namespace: the leader-election Lease, and the
    # operator's signing key (that one Secret).
    lease_role, key_role = of_kind(docs, "Role")
    assert lease_role["metadata"]["namespace"] == "ops" and grants(lease_role["rules"]) == grants(LEADER_ELECTION_RULES)
    assert key_role["metadata"]["namespace"] == "ops" and key_role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mo-modelops-signing-key"], "verbs": ["get"]}]
    assert [b["roleRef"]["name"] for b in of_kind(docs, "RoleBinding")] == [
        lease_role["metadata"]["name"], key_role["metadata"]["name"]]
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mo-modelops", "namespace": "ops"}]
    assert of_kind(docs, "ServiceMonitor") == [] and of_kind(docs, "ConfigMap") == []


def test_watching_namespaces_gives_a_role_in_each_and_only_discovery_cluster_wide(testbed) -> None:
    docs = render(testbed, "watchNamespaces={team-a,team-b}")
    (cluster_role,) = of_kind(docs, "ClusterRole")
    watching = [doc for doc in docs if not doc["metadata"]["name"].endswith(("-leader-election", "-signing-key"))]
    roles = {role["metadata"]["namespace"]: grants(role["rules"]) for role in of_kind(watching, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(watching, "RoleBinding")}
    assert sorted(roles) == sorted(bindings) == ["team-a", "team-b"]
    assert {r for _, r, _ in grants(cluster_role["rules"])} == {"customresourcedefinitions", "namespaces"}
    for namespace, granted in roles.items():
        assert granted | grants(cluster_role["rules"]) == grants(OPERATOR_RULES), namespace
        assert bindings[namespace]["subjects"][0]["namespace"] == "ops"


def test_the_deployment_runs_restricted_with_every_setting_from_values(testbed) -> None:
    docs = render(testbed, "watchNamespaces={team-a,team-b}", "operator.workers=8",
                  "image.tag=1.2.3", "triton.image=registry.local/triton:25.01", operator__retrySeconds=2.5)
    (deployment,) = of_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    from_pod = {var["name"]: var["valueFrom"]["fieldRef"]["fieldPath"] for var in container["env"] if "valueFrom" in var}
    assert from_pod == {"MODELOPS_LEADER_ELECTION_NAMESPACE": "metadata.namespace",
                        "MODELOPS_LEADER_ELECTION_IDENTITY": "metadata.name", "MODELOPS_POD_IP": "status.podIP"}
    env = {var["name"]: var["value"] for var in container["env"] if "value" in var}
    env |= {"MODELOPS_LEADER_ELECTION_NAMESPACE": "ops", "MODELOPS_LEADER_ELECTION_IDENTITY": "mo-modelops-0",
            "MODELOPS_POD_IP": "10.244.0.9"}
    settings = Settings.from_env(env)  # the operator accepts what the chart renders
    assert set(env) == {Settings.env_name(field) for field in Settings.model_fields}
    assert settings.leader_election and settings.leader_election_id == "mo-modelops"
    assert settings.namespaces == ("team-a", "team-b") and settings.workers == 8 and settings.retry_seconds == 2.5
    assert container["image"] == settings.operator_image == "ghcr.io/modelops/modelops-operator:1.2.3"
    assert settings.compressor_image == "ghcr.io/modelops/modelops-compressor:0.1.0"
    assert settings.triton_image == "registry.local/triton:25.01" and settings.bind_address == "0.0.0.0"

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": settings.metrics_port, "health": settings.health_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["replicas"] == 1
    # With leader election the new pod stands by before the old one stops.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert of_kind(docs, "PodDisruptionBudget") == []


def test_without_leader_election_one_replica_is_recreated(testbed) -> None:
    docs = render(testbed, "leaderElection.enabled=false")
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = {var["name"]: var.get("value") for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELOPS_LEADER_ELECTION"] == "false"
    assert [role["metadata"]["name"] for role in of_kind(docs, "Role")] == ["mo-modelops-signing-key"]


def test_two_replicas_get_a_disruption_budget(testbed) -> None:
    docs = render(testbed, "replicaCount=2")
    (budget,) = of_kind(docs, "PodDisruptionBudget")
    (deployment,) = of_kind(docs, "Deployment")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_optional_parts_render_when_enabled(testbed) -> None:
    docs = render(testbed, "serviceMonitor.enabled=true", "serviceMonitor.labels.release=prometheus",
                  "argocd.healthChecks.enabled=true", "argocd.healthChecks.namespace=argocd")
    (monitor,) = of_kind(docs, "ServiceMonitor")
    (service,) = of_kind(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"

    (health,) = of_kind(docs, "ConfigMap")
    assert health["metadata"]["namespace"] == "argocd"
    expected = {
        f"resource.customizations.health.modelops.dev_{kind}":
            (CHART / "argocd" / "modelops.dev" / kind / "health.lua").read_text().strip() + "\n"
        for kind in ("Model", "ModelVersion", "ModelDeployment")
    }
    assert health["data"] == expected


GOLDEN = ROOT / "tests" / "integration" / "golden"


def test_network_policies_are_off_by_default_and_render_as_the_golden_file(testbed) -> None:
    assert of_kind(render(testbed), "NetworkPolicy") == []
    values = CHART / "ci" / "networkpolicy-values.yaml"
    out = helm_ok(testbed, "template", "mo", str(CHART), "--namespace", "ops", KUBE_VERSION, "-f", str(values),
                  "--show-only", "templates/networkpolicy.yaml")
    # Regenerate after a deliberate change: the same command > tests/integration/golden/networkpolicies.yaml
    assert out == (GOLDEN / "networkpolicies.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(out) if d]
    operator, *tritons = docs
    assert operator["spec"]["policyTypes"] == ["Egress"] and operator["metadata"]["namespace"] == "ops"
    egress_ports = [{p["port"] for p in rule["ports"]} for rule in operator["spec"]["egress"]]
    # The API server, storage, Triton's metrics on the pods (the canary analysis, the autoscaler), DNS.
    assert egress_ports == [{443, 6443}, {443}, {8002}, {53}]
    labels = naming.server_labels("d", "m")
    assert operator["spec"]["egress"][2]["to"][0]["podSelector"]["matchLabels"].items() <= labels.items()
    assert [t["metadata"]["namespace"] for t in tritons] == ["team-a", "team-b"]
    for triton in tritons:
        clients, scraper = triton["spec"]["ingress"]
        assert {p["port"] for p in clients["ports"]} == {8000, 8001} and {p["port"] for p in scraper["ports"]} == {8002}
        # The policy selects exactly the pods the operator renders for Triton; the operator may scrape them.
        assert triton["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        assert scraper["from"][-1]["podSelector"]["matchLabels"] == operator["spec"]["podSelector"]["matchLabels"]

    # Given a Prometheus, the operator reaches it instead of the pods, and the pods only the scraper.
    out = helm_ok(testbed, "template", "mo", str(CHART), "--namespace", "ops", KUBE_VERSION, "-f", str(values),
                  "--set", "operator.prometheus.url=https://prometheus.monitoring:9090",
                  "--set", "networkPolicy.prometheus.cidrs={10.0.9.0/24}", "--set", "networkPolicy.prometheus.ports={9090}",
                  "--show-only", "templates/networkpolicy.yaml")
    operator, *tritons = [d for d in yaml.safe_load_all(out) if d]
    assert [{p["port"] for p in rule["ports"]} for rule in operator["spec"]["egress"]] == [{443, 6443}, {443}, {9090}, {53}]
    assert operator["spec"]["egress"][2]["to"] == [{"ipBlock": {"cidr": "10.0.9.0/24"}}]
    assert all(len(t["spec"]["ingress"][1]["from"]) == 1 for t in tritons)


def test_a_prometheus_for_the_analysis_is_an_operator_setting_with_its_ca(testbed) -> None:
    docs = render(testbed, "operator.prometheus.url=https://prometheus.monitoring:9090",
                  "operator.prometheus.caConfigMap.name=prometheus-ca")
    (deployment,) = of_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {var["name"]: var.get("value") for var in pod["containers"][0]["env"]}
    assert env["MODELOPS_PROMETHEUS_URL"] == "https://prometheus.monitoring:9090"
    assert env["MODELOPS_PROMETHEUS_CA_FILE"] == "/etc/modelops/prometheus-ca/ca.crt"
    assert env["MODELOPS_PROMETHEUS_INSECURE_SKIP_VERIFY"] == "false"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "prometheus-ca")
    volume = next(v for v in pod["volumes"] if v["name"] == "prometheus-ca")
    assert mount == {"name": "prometheus-ca", "mountPath": "/etc/modelops/prometheus-ca", "readOnly": True}
    assert volume["configMap"] == {"name": "prometheus-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    # Without one, the operator reads the pods and mounts nothing more.
    (plain,) = of_kind(render(testbed), "Deployment")
    env = {var["name"]: var.get("value") for var in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELOPS_PROMETHEUS_URL"] == "" and env["MODELOPS_PROMETHEUS_CA_FILE"] == ""
    assert [v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


def test_the_endpoint_policy_reaches_the_operator_as_its_settings(testbed) -> None:
    docs = render(testbed, "operator.endpoints.allowed={*.s3.amazonaws.com,10.20.0.0/16}",
                  "operator.endpoints.deniedCIDRs={10.244.0.0/16}")
    (deployment,) = of_kind(docs, "Deployment")
    env = {var["name"]: var.get("value") for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = Settings.from_env({k: v for k, v in env.items() if v is not None})
    assert settings.allowed_endpoints == ("*.s3.amazonaws.com", "10.20.0.0/16")
    assert settings.denied_cidrs == ("10.244.0.0/16",)
    (plain,) = of_kind(render(testbed), "Deployment")
    env = {var["name"]: var.get("value") for var in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELOPS_ALLOWED_ENDPOINTS"] == env["MODELOPS_DENIED_CIDRS"] == ""


# -- a real install ----------------------------------------------------------------------------


def can_i(testbed: Any, account: str, namespace: str, verb: str, resource: str, subresource: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={account}", "-n", namespace]
    if subresource:
        args.append(f"--subresource={subresource}")
    answer = testbed.kubectl(*args, check=False).strip().splitlines()[0]
    assert answer in ("yes", "no"), answer
    return answer == "yes"


def smoke_objects(storage: Storage, version: int = 1) -> list[dict[str, Any]]:
    """The sample Secret and Model, pointed at this test's bucket, and a version whose artifact is not there."""
    samples = ROOT / "config" / "samples"
    secret = yaml.safe_load((samples / "00-storage-credentials.yaml").read_text())
    secret["stringData"] = storage.secret(secret["metadata"]["name"])["stringData"]
    model = yaml.safe_load((samples / "01-model.yaml").read_text())
    model["spec"]["storage"].update(storage.model_storage(model["spec"]["storage"]["credentialsSecret"]["name"]))
    missing = {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": f"digits-v{version}"},
        "spec": {"model": model["metadata"]["name"], "version": version,
                 "artifact": {"uri": f"s3://{storage.bucket}/digits/{version}/model.onnx", "format": "onnx", "sha256": "ab" * 32}},
    }
    return [secret, model, missing]


# Short leases, so that the handover after a kill -9 takes seconds.
LEASE_DURATION_S, RETRY_PERIOD_S = 6, 1
LEASE_SETTINGS = ("--set", f"leaderElection.leaseDurationSeconds={LEASE_DURATION_S}",
                  "--set", "leaderElection.renewDeadlineSeconds=4", "--set", f"leaderElection.retryPeriodSeconds={RETRY_PERIOD_S}")


def lease_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def audit_entries_since(path: Path, offset: int) -> list[dict[str, Any]]:
    with path.open("rb") as handle:
        handle.seek(offset)
        return [json.loads(line) for line in handle.read().splitlines() if line.strip()]


def status_patches_by(path: Path, offset: int, user: str, namespace: str) -> list[dict[str, Any]]:
    return [
        e for e in audit_entries_since(path, offset)
        if e.get("stage") == "ResponseComplete" and e["user"]["username"] == user and e["verb"] == "patch"
        and (e.get("objectRef") or {}).get("namespace") == namespace
        and e["objectRef"].get("resource") == "modelversions" and e["objectRef"].get("subresource") == "status"
        and e.get("responseStatus", {}).get("code") == 200
    ]


def test_helm_install_runs_the_operator_with_least_privilege(testbed, namespace, storage) -> None:
    release = "mo-" + namespace.rsplit("-", 1)[-1]  # unique: cluster-scoped RBAC objects carry this name
    fullname = f"{release}-modelops"
    account = f"system:serviceaccount:{namespace}:{fullname}"
    # Pods that are not `restricted` would be refused here, and the install would never be ready.
    testbed.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    try:
        helm_ok(testbed, "install", release, str(CHART), "--namespace", namespace,
                "--set", f"watchNamespaces={{{namespace}}}", "--set", "operator.retrySeconds=2", "--set", "replicaCount=2",
                *LEASE_SETTINGS, "--wait", f"--timeout={INSTALL_TIMEOUT_S}s", timeout=INSTALL_TIMEOUT_S + 60)

        deployment = json.loads(testbed.kubectl("get", "deployment", fullname, "-n", namespace, "-o", "json"))
        # Two replicas, both Ready: the leader and a standby, which answers its probes too.
        assert deployment["status"].get("readyReplicas") == 2
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/modelops/modelops-operator:0.1.0"
        pods = json.loads(testbed.kubectl("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}",
                                          "-o", "json"))["items"]
        assert len(pods) == 2
        for candidate in pods:
            assert {c["type"]: c["status"] for c in candidate["status"]["conditions"]}["Ready"] == "True"
            # What users pull: the node agent ran the operator image that `make images` built.
            assert testbed.image_path(namespace, candidate["metadata"]["name"], "operator") == "image"
        lease = eventually(lambda: json.loads(testbed.kubectl("get", "lease", fullname, "-n", namespace, "-o", "json",
                                                              check=False) or "{}").get("spec"), 60, "the Lease")
        (pod,) = [p for p in pods if p["metadata"]["name"] == lease["holderIdentity"]]
        testbed.kubectl("get", "poddisruptionbudget", fullname, "-n", namespace)

        # What the operator needs, in the namespace it watches ...
        for verb, resource, sub in [
            ("get", "secrets", ""), ("create", "jobs.batch", ""), ("patch", "deployments.apps", ""),
            ("create", "services", ""), ("watch", "pods", ""), ("create", "events", ""),
            ("patch", "modelversions.modelops.dev", ""), ("patch", "modeldeployments.modelops.dev", "status"),
            ("list", "customresourcedefinitions.apiextensions.k8s.io", ""), ("update", "leases.coordination.k8s.io", ""),
        ]:
            assert can_i(testbed, account, namespace, verb, resource, sub), f"cannot {verb} {resource} {sub}"
        # ... and no more: no deletes, no listing Secrets, nothing outside that namespace.
        for verb, resource, where in [
            ("list", "secrets", namespace), ("delete", "secrets", namespace), ("delete", "jobs.batch", namespace),
            ("delete", "deployments.apps", namespace), ("create", "modelversions.modelops.dev", namespace),
            ("update", "models.modelops.dev", namespace), ("create", "pods", namespace),
            ("get", "secrets", "default"), ("list", "pods", "default"), ("create", "jobs.batch", "default"),
            ("create", "customresourcedefinitions.apiextensions.k8s.io", "default"),
            ("update", "leases.coordination.k8s.io", "default"), ("delete", "leases.coordination.k8s.io", namespace),
        ]:
            assert not can_i(testbed, account, where, verb, resource), f"may {verb} {resource} in {where}"

        # A smoke reconcile: the in-cluster operator reports the missing artifact.
        audit_log = Path(testbed.audit_log)
        offset = audit_log.stat().st_size
        testbed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(smoke_objects(storage)))

        def artifact_not_found() -> dict[str, Any] | None:
            mv = json.loads(testbed.kubectl("get", "modelversion", "digits-v1", "-n", namespace, "-o", "json"))
            conditions = (mv.get("status") or {}).get("conditions", [])
            return next((c for c in conditions if c["type"] == "Ready" and c["reason"] == "ArtifactNotFound"), None)

        ready = eventually(artifact_not_found, 180, "the operator to report the missing artifact")
        assert ready["status"] == "False" and f"s3://{storage.bucket}/digits/1/model.onnx" in ready["message"]
        eventually(lambda: status_patches_by(audit_log, offset, account, namespace), 30,
                   "the status write to be the chart's service account's")

        # Its metrics answer on the pod's metrics port.
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/metrics", timeout=10) as response:
            families = text_string_to_metric_families(response.read().decode())
        reconciles = sum(sample.value for family in families for sample in family.samples
                         if sample.name == "modelops_reconcile_total" and sample.labels.get("kind") == "ModelVersion")
        assert reconciles >= 1

        # kill -9 the leader: the standby takes the Lease once it has gone unrenewed for the lease
        # duration (within one retry period after), and reconciles; the killed pod restarts as a standby.
        last_renewal = lease_time(json.loads(testbed.kubectl("get", "lease", fullname, "-n", namespace, "-o", "json"))["spec"]["renewTime"])
        (leader,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == "operator"]
        os.killpg(int(leader["containerID"].removeprefix("modelops://")), signal.SIGKILL)
        (standby,) = [p["metadata"]["name"] for p in pods if p["metadata"]["name"] != pod["metadata"]["name"]]
        taken = eventually(lambda: (spec := json.loads(testbed.kubectl("get", "lease", fullname, "-n", namespace, "-o", "json"))["spec"])
                           .get("holderIdentity") == standby and spec, 60, "the standby to take the Lease")
        handover = (lease_time(taken["acquireTime"]) - last_renewal).total_seconds()
        print(f"\nLease {fullname}: holder {pod['metadata']['name']}, then after kill -9 {standby}, "
              f"{handover:.2f} s after the last renewal (lease {LEASE_DURATION_S} s, retry {RETRY_PERIOD_S} s)")
        assert LEASE_DURATION_S - RETRY_PERIOD_S <= handover <= LEASE_DURATION_S + 2 * RETRY_PERIOD_S
        testbed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(smoke_objects(storage, version=2)[-1]))
        eventually(lambda: "ArtifactNotFound" in testbed.kubectl(
            "get", "modelversion", "digits-v2", "-n", namespace, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].reason}"),
            120, "the new leader to reconcile a new version")
        eventually(lambda: sum(1 for p in json.loads(testbed.kubectl(
            "get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}", "-o", "json"))["items"]
            if {c["type"]: c["status"] for c in p["status"].get("conditions", [])}.get("Ready") == "True") == 2,
            120, "the killed leader to come back as a ready standby")
        assert json.loads(testbed.kubectl("get", "lease", fullname, "-n", namespace, "-o", "json"))["spec"]["holderIdentity"] == standby

        helm_ok(testbed, "uninstall", release, "--namespace", namespace, "--wait", f"--timeout={INSTALL_TIMEOUT_S}s",
                timeout=INSTALL_TIMEOUT_S + 60)
        gone = testbed.kubectl("get", "deployment", fullname, "-n", namespace, check=False)
        assert "NotFound" in gone, gone
        for kind in ("clusterrole", "clusterrolebinding"):
            assert "NotFound" in testbed.kubectl("get", kind, fullname, check=False), kind
        # Helm never deletes the CRDs it installed: that would delete every object of these kinds.
        testbed.kubectl("get", "crd", "modelversions.modelops.dev")
    finally:
        testbed.helm("uninstall", release, "--namespace", namespace, "--ignore-not-found", timeout=120)
        testbed.kubectl("delete", "clusterrole,clusterrolebinding", fullname, "--ignore-not-found", check=False)

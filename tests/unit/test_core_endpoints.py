"""Which storage endpoints and Prometheus addresses a tenant may point the operator at."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelops.__main__ import endpoint_policy
from modelops.core.endpoints import EndpointPolicy, HostPort, parse_networks
from modelops.settings import Settings, SettingsError

pytestmark = pytest.mark.unit

FIELD = "spec.storage.endpoint"
TESTBED_APISERVER = HostPort("10.244.0.1", 6443)
POLICY = EndpointPolicy(apiservers=(TESTBED_APISERVER, HostPort("10.96.0.1", 443)), own=("10.244.0.7",))


@pytest.mark.parametrize(
    ("url", "resolved", "says"),
    [
        ("https://kubernetes.default.svc", (), "the Kubernetes API server"),
        ("https://kubernetes.default.svc:443", (), "the Kubernetes API server"),
        ("https://kubernetes.default.svc.cluster.local.", (), "the Kubernetes API server"),
        ("https://KUBERNETES", (), "the Kubernetes API server"),
        ("https://10.96.0.1", (), "the Kubernetes API server"),
        ("https://10.244.0.1:6443", (), "the Kubernetes API server"),
        ("https://api.internal:6443", ("10.244.0.1",), "the Kubernetes API server"),
        ("http://169.254.169.254", (), "link-local"),
        ("http://metadata.google.internal", ("169.254.169.254",), "link-local"),
        ("http://[fe80::1]:9000", (), "link-local"),
        ("http://127.0.0.1:9000", (), "loopback"),
        ("http://localhost:9000", ("127.0.0.1", "::1"), "loopback"),
        ("http://10.244.0.7:8080", (), "operator's own pod"),
    ],
)
def test_addresses_of_the_cluster_itself_are_refused_naming_the_field(url: str, resolved: tuple[str, ...], says: str) -> None:
    problem = POLICY.problem(url, FIELD, resolved)
    assert problem is not None and problem.startswith(f"{FIELD}: ")
    assert says in problem
    assert "endpoints.allowed" in problem  # says how to allow it when it is meant


@pytest.mark.parametrize(
    ("url", "resolved"),
    [
        ("https://10.244.0.1:9000", ()),  # the test bed's MinIO: the API server's address, another port
        ("https://s3.eu-west-1.amazonaws.com", ("52.95.0.1",)),
        ("https://minio.storage.svc:9000", ("10.96.12.4",)),
        ("https://unresolvable.example", ()),  # nothing to check: the request fails by itself
    ],
)
def test_other_endpoints_are_allowed_by_default(url: str, resolved: tuple[str, ...]) -> None:
    assert POLICY.problem(url, FIELD, resolved) is None


def test_denied_cidrs_refuse_the_pod_network_by_resolved_address() -> None:
    policy = EndpointPolicy(denied=parse_networks(["10.244.0.0/16"]))
    problem = policy.problem("http://triton.ns.svc:8000", "spec.autoscaling.prometheusAddress", ["10.244.3.9"])
    assert problem is not None and "10.244.3.9, in 10.244.0.0/16" in problem
    assert problem.startswith("spec.autoscaling.prometheusAddress: ")


def test_an_allow_list_admits_only_what_it_lists_and_overrides_refusals() -> None:
    policy = EndpointPolicy(allowed=("*.s3.amazonaws.com", "10.244.0.0/24"), apiservers=(TESTBED_APISERVER,))
    assert policy.problem("https://bucket.s3.amazonaws.com", FIELD) is None
    assert policy.problem("https://10.244.0.1:6443", FIELD) is None  # listed, so meant
    assert policy.problem("https://minio.local", FIELD, ["10.244.0.5"]) is None  # by resolved address
    refused = policy.problem("https://storage.example.com", FIELD, ["203.0.113.9"])
    assert refused is not None and "not among the endpoints" in refused and "*.s3.amazonaws.com" in refused


def test_a_url_without_a_host_is_refused() -> None:
    assert POLICY.problem("https://", FIELD) == f"{FIELD}: 'https://' has no host"


@given(st.ip_addresses(network="169.254.0.0/16") | st.ip_addresses(network="fe80::/10"))
def test_every_link_local_address_is_refused(address: object) -> None:
    host = f"[{address}]" if ":" in str(address) else str(address)
    problem = POLICY.problem(f"http://{host}:80", FIELD)
    assert problem is not None and "link-local" in problem


def test_the_policy_is_built_from_settings_the_kubeconfig_and_the_in_cluster_service() -> None:
    settings = Settings.from_env({"MODELOPS_ALLOWED_ENDPOINTS": " *.example.com , 10.0.0.0/8 ",
                                  "MODELOPS_DENIED_CIDRS": "10.244.0.0/16", "MODELOPS_POD_IP": "10.244.1.5"})
    policy = endpoint_policy(settings, "https://10.244.0.1:6443", {"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                                                                    "KUBERNETES_SERVICE_PORT": "443"})
    assert policy.allowed == ("*.example.com", "10.0.0.0/8")
    assert [str(n) for n in policy.denied] == ["10.244.0.0/16"]
    assert policy.apiservers == (HostPort("10.244.0.1", 6443), HostPort("10.96.0.1", 443))
    assert policy.own == ("10.244.1.5",)


def test_a_denied_cidr_that_is_not_one_is_refused_at_start_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="MODELOPS_DENIED_CIDRS"):
        Settings.from_env({"MODELOPS_DENIED_CIDRS": "10.244.0.0/16,pods"})


def test_a_host_name_is_resolved_once_per_ttl_however_many_reconciles_ask() -> None:
    from modelops.handlers.reads import Resolutions

    asked: list[str] = []
    now = [0.0]
    resolutions = Resolutions(lambda url: asked.append(url) or ["10.0.0.5"], ttl=10, clock=lambda: now[0])
    assert [resolutions("https://minio.storage.svc:9000") for _ in range(50)] == [["10.0.0.5"]] * 50
    assert asked == ["https://minio.storage.svc:9000"]
    now[0] = 10.5  # a name may move: it is looked up again once the answer is older than the TTL
    resolutions("https://minio.storage.svc:9000")
    assert len(asked) == 2

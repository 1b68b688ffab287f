"""Settings come from MODELOPS_* variables, and a bad one is named."""

from __future__ import annotations

import pytest

from modelops import __version__
from modelops.settings import Settings, SettingsError
from modelops.tritonmetrics import PrometheusSource

pytestmark = pytest.mark.unit


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.namespaces == ()
    assert settings.operator_image == f"ghcr.io/modelops/modelops-operator:{__version__}"
    assert settings.compressor_image == f"ghcr.io/modelops/modelops-compressor:{__version__}"
    assert settings.triton_image == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert settings.job_backoff_limit == 3


def test_values_are_read_and_typed() -> None:
    settings = Settings.from_env(
        {"MODELOPS_NAMESPACES": "a, b,,", "MODELOPS_JOB_BACKOFF_LIMIT": "5", "MODELOPS_RESYNC_SECONDS": "2.5",
         "MODELOPS_COMPRESSOR_IMAGE": "local/compressor:dev", "UNRELATED": "x"}
    )
    assert settings.namespaces == ("a", "b")
    assert settings.job_backoff_limit == 5 and settings.resync_seconds == 2.5
    assert settings.compressor_image == "local/compressor:dev"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MODELOPS_JOB_BACKOFF_LIMIT": "many"}, "MODELOPS_JOB_BACKOFF_LIMIT"),
        ({"MODELOPS_METRICS_PORT": "70000"}, "MODELOPS_METRICS_PORT"),
        ({"MODELOPS_LOG_LEVEL": "LOUD"}, "MODELOPS_LOG_LEVEL"),
        ({"MODELOPS_RESYNC_SECONDS": "0"}, "MODELOPS_RESYNC_SECONDS"),
        ({"MODELOPS_PROMETHEUS_URL": "prometheus:9090"}, "MODELOPS_PROMETHEUS_URL"),
    ],
)
def test_errors_name_the_variable(env, named) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_a_prometheus_is_optional_and_given_by_url() -> None:
    assert PrometheusSource.of(Settings.from_env({})) is None  # the pods' own endpoints
    source = PrometheusSource.of(Settings.from_env({
        "MODELOPS_PROMETHEUS_URL": "https://prometheus.monitoring:9090/", "MODELOPS_PROMETHEUS_CA_FILE": "/etc/ca.crt",
        "MODELOPS_PROMETHEUS_INSECURE_SKIP_VERIFY": "false"}))
    assert source == PrometheusSource("https://prometheus.monitoring:9090", "/etc/ca.crt", False)

"""A Model's status from its versions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelops.api.model import StorageSpec
from modelops.core.conditions import find
from modelops.core.models import latest_ready, model_status, transport_condition, version_counts
from modelops.core.objects import VersionView

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, tzinfo=UTC)


def v(number: int, phase: str | None, name: str | None = None, created: str = "2025-01-01T00:00:00Z", deleting=False) -> VersionView:
    ready = phase == "Ready"
    return VersionView(name or f"m-v{number}", "m", number, phase, created, deleting,
                       f"s3://b/{number}" if ready else None, "ab" * 32 if ready else None)


def test_counts_by_phase() -> None:
    counts = version_counts([v(1, "Ready"), v(2, "Ready"), v(3, None), v(4, "Rejected"), v(5, "Compressing"),
                             v(6, "Failed", deleting=True), v(7, "Evaluating")])
    assert counts == {"total": 6, "pending": 1, "verifying": 0, "compressing": 1, "evaluating": 1,
                      "ready": 2, "rejected": 1, "failed": 0}


@pytest.mark.parametrize(
    ("versions", "latest"),
    [
        ([], None),
        ([v(1, "Ready"), v(3, "Ready"), v(4, "Compressing")], 3),
        ([v(2, "Rejected")], None),
        # A duplicate claim of a number does not count, even when Ready.
        ([v(1, "Ready"), v(5, "Pending", "owner", "2025-01-01T00:00:00Z"), v(5, "Ready", "dup", "2025-02-01T00:00:00Z")], 1),
    ],
)
def test_latest_ready(versions, latest) -> None:
    assert latest_ready(versions) == latest


@pytest.mark.parametrize(
    ("versions", "credentials_problem", "status", "reason"),
    [
        ([v(1, "Ready")], None, "True", "VersionReady"),
        ([v(1, "Compressing")], None, "False", "NoReadyVersion"),
        ([v(1, "Ready")], "Secret s3 does not exist", "False", "CredentialsNotFound"),
    ],
)
def test_ready_condition(versions, credentials_problem, status, reason) -> None:
    result = model_status(None, "m", versions, credentials_problem, 2, NOW)
    ready = find(result["conditions"], "Ready")
    assert (ready["status"], ready["reason"]) == (status, reason)
    assert result["observedGeneration"] == 2


def test_status_is_stable() -> None:
    first = model_status(None, "m", [v(1, "Ready")], None, 1, NOW)
    assert model_status(first, "m", [v(1, "Ready")], None, 1, NOW.replace(year=2026)) == first
    assert first["latestReadyVersion"] == 1


@pytest.mark.parametrize(
    ("storage", "status", "reason"),
    [
        ({"endpoint": "https://minio:9000"}, "True", "TLSVerified"),
        ({"endpoint": "https://minio:9000", "caBundle": {"secretRef": {"name": "ca"}}}, "True", "TLSVerified"),
        ({}, "True", "TLSVerified"),
        ({"endpoint": "https://minio:9000", "verifyTLS": False}, "False", "TLSVerificationDisabled"),
        ({"endpoint": "http://minio:9000", "insecure": True}, "False", "PlaintextEndpoint"),
        ({"endpoint": "http://minio:9000"}, "False", "InsecureEndpoint"),
    ],
)
def test_storage_transport_says_how_storage_is_reached(storage: dict, status: str, reason: str) -> None:
    cond = transport_condition(StorageSpec.model_validate({"bucket": "models", **storage}))
    assert (cond.type, cond.status, cond.reason) == ("StorageTransport", status, reason)
    if storage.get("endpoint"):
        assert storage["endpoint"] in cond.message or status == "True"
    first = model_status(None, "m", [], None, 1, NOW, transport=cond)
    assert [c["type"] for c in first["conditions"]] == ["Ready", "StorageTransport"]

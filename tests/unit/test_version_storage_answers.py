"""What the operator makes of a storage answer about a version's URIs: only an endpoint that
could not answer is retried; every answer storage gave is a permanent condition naming the field."""

from __future__ import annotations

import pytest

from modelops.handlers.versions import storage_problem
from modelops.storage import (
    AccessDenied,
    InvalidRequest,
    ObjectChanged,
    StorageError,
    StorageUnreachable,
    translate_error,
)

pytestmark = pytest.mark.unit

URI = "s3://models/../../etc/passwd"


def client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "HeadObject")


@pytest.mark.parametrize(
    ("answer", "phase", "reason", "retried"),
    [
        (client_error("400", 400), "Failed", "InvalidArtifactUri", False),
        (client_error("XMinioInvalidObjectName", 400), "Failed", "InvalidArtifactUri", False),
        (client_error("403", 403), "Failed", "AccessDenied", False),
        (client_error("SignatureDoesNotMatch", 403), "Failed", "AccessDenied", False),
        (client_error("SlowDown", 503), "Verifying", "StorageUnreachable", True),
        (client_error("InternalError", 500), "Verifying", "StorageUnreachable", True),
        (client_error("TooManyRequests", 429), "Verifying", "StorageUnreachable", True),
        (ConnectionRefusedError("refused"), "Verifying", "StorageUnreachable", True),
    ],
)
@pytest.mark.parametrize("field", ["spec.artifact.uri", "evaluation.datasetUri"])
def test_only_an_endpoint_that_could_not_answer_is_retried(answer, phase, reason, retried, field) -> None:
    state = storage_problem(translate_error(answer, URI), field, URI, retry=30.0)
    assert (state.phase, state.reason) == (phase, reason)
    assert (state.retry_after is not None) is retried
    if not retried:
        assert state.message.startswith(f"{field}:") and URI in state.message


@pytest.mark.parametrize("error", [AccessDenied("x"), InvalidRequest("x"), StorageError("tls")])
def test_permanent_answers_are_terminal(error) -> None:
    assert storage_problem(error, "spec.artifact.uri", URI, 30.0).phase == "Failed"


def test_a_replaced_object_is_transient() -> None:
    assert storage_problem(ObjectChanged("x"), "spec.artifact.uri", URI, 30.0).phase == "Verifying"
    assert isinstance(ObjectChanged("x"), StorageUnreachable)

"""Pure parts of the storage adapter: URIs, settings, error policy, streamed checksums."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from botocore import exceptions as bce

from modelops.storage import (
    AccessDenied,
    BucketNotFound,
    ChecksumMismatch,
    InvalidRequest,
    InvalidS3Uri,
    ObjectChanged,
    ObjectNotFound,
    ObjectStore,
    S3Location,
    StorageConfig,
    StorageError,
    StorageStalled,
    StorageUnreachable,
    TLSVerificationFailed,
    TooLarge,
    TransferTuning,
    _transfer,
    backoff_delay,
    parse_s3_uri,
    translate_error,
    validate_sha256,
    with_retries,
)

pytestmark = pytest.mark.unit

SMALL_PARTS = TransferTuning(part_size=1000, max_concurrency=3, stream_attempts=3)


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://models/digits/model.onnx", "models", "digits/model.onnx"),
        ("s3://my-bucket.v2/a", "my-bucket.v2", "a"),
        ("s3://abc/dir/with space/x.npz", "abc", "dir/with space/x.npz"),
    ],
)
def test_parse_s3_uri_splits_bucket_and_key(uri: str, bucket: str, key: str) -> None:
    location = parse_s3_uri(uri)
    assert location == S3Location(bucket, key)
    assert location.uri == uri


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("http://models/x", "must start with s3://"),
        ("s3://", "bucket"),
        ("s3://models", "key is missing"),
        ("s3://models/", "key is missing"),
        ("s3://Models/x", "not a valid bucket name"),
        ("s3://a/x", "not a valid bucket name"),
    ],
)
def test_parse_s3_uri_rejects_bad_uris_naming_them(uri: str, complaint: str) -> None:
    with pytest.raises(InvalidS3Uri) as info:
        parse_s3_uri(uri)
    assert complaint in str(info.value)
    assert repr(uri) in str(info.value)


def test_config_from_env_reads_every_setting() -> None:
    config = StorageConfig.from_env(
        {
            "MODELOPS_S3_ENDPOINT": "https://minio.storage:9000",
            "MODELOPS_S3_REGION": "eu-west-1",
            "MODELOPS_S3_VERIFY_TLS": "false",
            "MODELOPS_S3_CA_BUNDLE": "",
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "very-secret-value",
        }
    )
    assert config.endpoint_url == "https://minio.storage:9000"
    assert config.region == "eu-west-1"
    assert config.verify_tls is False
    assert config.ca_bundle is None
    assert config.access_key_id.get_secret_value() == "AKIDEXAMPLE"
    assert config.secret_access_key.get_secret_value() == "very-secret-value"
    assert "very-secret-value" not in repr(config) and "very-secret-value" not in str(config)


def test_config_defaults_with_empty_env() -> None:
    config = StorageConfig.from_env({})
    assert (config.endpoint_url, config.region, config.verify_tls) == (None, "us-east-1", True)
    assert config.tls_verify_argument() is True


def test_ca_bundle_takes_precedence_for_tls_verification() -> None:
    config = StorageConfig.from_env({"MODELOPS_S3_CA_BUNDLE": "/etc/ca/ca.pem", "MODELOPS_S3_VERIFY_TLS": "true"})
    assert config.tls_verify_argument() == "/etc/ca/ca.pem"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MODELOPS_S3_VERIFY_TLS": "sometimes"}, "MODELOPS_S3_VERIFY_TLS"),
        ({"MODELOPS_S3_ENDPOINT": "minio:9000"}, "MODELOPS_S3_ENDPOINT"),
    ],
)
def test_config_errors_name_the_environment_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ValueError) as info:
        StorageConfig.from_env(env)
    assert variable in str(info.value)


def test_validate_sha256_normalizes_and_names_field() -> None:
    assert validate_sha256("AB" * 32) == "ab" * 32
    with pytest.raises(ValueError, match="expected_sha256"):
        validate_sha256("abc", "expected_sha256")


def _client_error(code: str, status: int) -> bce.ClientError:
    return bce.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    ("exc", "expected", "transient"),
    [
        (_client_error("NoSuchKey", 404), ObjectNotFound, False),
        (_client_error("404", 404), ObjectNotFound, False),
        (_client_error("NoSuchBucket", 404), BucketNotFound, False),
        (_client_error("AccessDenied", 403), AccessDenied, False),
        (_client_error("InvalidAccessKeyId", 403), AccessDenied, False),
        (_client_error("PreconditionFailed", 412), ObjectChanged, True),
        (_client_error("SlowDown", 503), StorageUnreachable, True),
        (_client_error("InternalError", 500), StorageUnreachable, True),
        (_client_error("InvalidArgument", 400), InvalidRequest, False),
        (_client_error("400", 400), InvalidRequest, False),
        (_client_error("XMinioInvalidObjectName", 400), InvalidRequest, False),
        (_client_error("MethodNotAllowed", 405), InvalidRequest, False),
        (_client_error("InvalidRange", 416), InvalidRequest, False),
        (_client_error("Forbidden", 403), AccessDenied, False),
        (_client_error("TooManyRequests", 429), StorageUnreachable, True),
        (_client_error("ServiceUnavailable", 503), StorageUnreachable, True),
        (_client_error("GatewayTimeout", 504), StorageUnreachable, True),
        (_client_error("NotImplemented", 501), StorageUnreachable, True),
        (bce.ConnectTimeoutError(endpoint_url="http://x"), StorageUnreachable, True),
        (ConnectionResetError("reset by peer"), StorageUnreachable, True),
        (bce.EndpointConnectionError(endpoint_url="http://x"), StorageUnreachable, True),
        (bce.ReadTimeoutError(endpoint_url="http://x"), StorageStalled, True),
        (bce.SSLError(endpoint_url="http://x", error="bad cert"), StorageError, False),
        (bce.SSLError(endpoint_url="https://x", error="[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
         TLSVerificationFailed, False),
        (bce.NoCredentialsError(), AccessDenied, False),
    ],
)
def test_translate_error_policy(exc: Exception, expected: type, transient: bool) -> None:
    translated = translate_error(exc, "s3://b/k")
    assert type(translated) is expected
    assert translated.transient is transient
    assert "s3://b/k" in str(translated)


def test_backoff_grows_and_is_capped() -> None:
    tuning = TransferTuning(backoff_base_s=0.5, backoff_cap_s=3.0)
    assert [backoff_delay(n, tuning, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(3, tuning, rand=lambda: 0.25) == 0.5


def test_with_retries_retries_transient_then_succeeds() -> None:
    outcomes = [StorageUnreachable("blip"), StorageUnreachable("blip"), "done"]
    sleeps: list[float] = []

    def action() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert with_retries(action, SMALL_PARTS, sleeps.append) == "done"
    assert len(sleeps) == 2


def test_with_retries_gives_up_after_stream_attempts_and_never_retries_permanent() -> None:
    calls = []

    def always_down() -> None:
        calls.append(1)
        raise StorageUnreachable("down")

    with pytest.raises(StorageUnreachable):
        with_retries(always_down, SMALL_PARTS, lambda _: None)
    assert len(calls) == SMALL_PARTS.stream_attempts

    calls.clear()

    def denied() -> None:
        calls.append(1)
        raise AccessDenied("no")

    with pytest.raises(AccessDenied):
        with_retries(denied, SMALL_PARTS, lambda _: None)
    assert len(calls) == 1


def _fetch(payload: bytes, tmp_path: Path, read_range, tuning: TransferTuning = SMALL_PARTS) -> tuple[str, bytes]:
    target = tmp_path / "out.bin"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        digest, _ = _transfer(lambda start, end: io.BytesIO(read_range(start, end)), len(payload), fd, tuning, lambda _: None)
    finally:
        os.close(fd)
    return digest, target.read_bytes()


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 25_531])
def test_fetch_ranges_reassembles_and_hashes_in_order(tmp_path: Path, size: int) -> None:
    payload = os.urandom(size)
    requested: list[tuple[int, int]] = []

    def read_range(start: int, end: int) -> bytes:
        requested.append((start, end))
        return payload[start : end + 1]

    digest, written = _fetch(payload, tmp_path, read_range)
    assert written == payload
    assert digest == hashlib.sha256(payload).hexdigest()
    assert sorted(requested) == [(s, min(s + 1000, size) - 1) for s in range(0, size, 1000)]


def test_fetch_ranges_retries_a_short_read(tmp_path: Path) -> None:
    payload = os.urandom(4500)
    short_once = {2000}

    def read_range(start: int, end: int) -> bytes:
        if start in short_once:
            short_once.discard(start)
            return payload[start:end]  # one byte missing
        return payload[start : end + 1]

    digest, written = _fetch(payload, tmp_path, read_range)
    assert written == payload and digest == hashlib.sha256(payload).hexdigest()


def test_fetch_ranges_surfaces_a_permanent_error(tmp_path: Path) -> None:
    def read_range(start: int, end: int) -> bytes:
        raise AccessDenied("denied")

    with pytest.raises(AccessDenied):
        _fetch(os.urandom(3000), tmp_path, read_range)


def _store(fake_s3) -> ObjectStore:
    return ObjectStore(StorageConfig(), SMALL_PARTS, client=fake_s3, sleep=lambda _: None)


def test_download_verifies_digest_and_writes_atomically(tmp_path: Path, fake_s3) -> None:
    payload = os.urandom(7777)
    fake_s3.objects[("models", "m/model.onnx")] = (payload, {})
    store = _store(fake_s3)
    dest = tmp_path / "sub" / "model.onnx"
    result = store.download("s3://models/m/model.onnx", dest, hashlib.sha256(payload).hexdigest().upper())
    assert dest.read_bytes() == payload
    assert (result.size, result.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert sum(call.startswith("get m/model.onnx bytes=") for call in fake_s3.calls) == 8
    assert not (tmp_path / "sub" / "model.onnx.partial").exists()


def test_download_with_wrong_digest_raises_permanent_mismatch_and_leaves_nothing(tmp_path: Path, fake_s3) -> None:
    payload = b"not the model you expected"
    fake_s3.objects[("models", "m")] = (payload, {})
    wrong = "0" * 64
    dest = tmp_path / "model.onnx"
    with pytest.raises(ChecksumMismatch) as info:
        _store(fake_s3).download("s3://models/m", dest, wrong)
    assert info.value.transient is False
    assert wrong in str(info.value) and hashlib.sha256(payload).hexdigest() in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_download_of_missing_object_is_not_found(tmp_path: Path, fake_s3) -> None:
    with pytest.raises(ObjectNotFound, match="s3://models/absent"):
        _store(fake_s3).download("s3://models/absent", tmp_path / "x")


def test_upload_records_sha256_metadata_and_round_trips(tmp_path: Path, fake_s3) -> None:
    store = _store(fake_s3)
    source = tmp_path / "model.onnx"
    source.write_bytes(os.urandom(5000))
    uploaded = store.upload_file(source, "s3://out/p/model.onnx")
    info = store.head("s3://out/p/model.onnx")
    assert (info.size, info.sha256) == (5000, uploaded.sha256)
    assert uploaded.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()

    small = store.upload_bytes(b'{"outcome":"Passed"}', "s3://out/p/report.json")
    assert store.read_bytes("s3://out/p/report.json") == b'{"outcome":"Passed"}'
    assert store.head("s3://out/p/report.json").sha256 == small.sha256
    assert store.exists("s3://out/p/report.json") and not store.exists("s3://out/p/other.json")


def test_a_tls_failure_names_the_endpoint_and_never_the_credentials() -> None:
    exc = bce.SSLError(endpoint_url="https://minio:9000/b/k", error="[SSL: CERTIFICATE_VERIFY_FAILED] unable to get local issuer")
    translated = translate_error(exc, "s3://b/k", "https://minio:9000")
    assert isinstance(translated, TLSVerificationFailed) and not translated.transient
    assert "https://minio:9000" in str(translated) and "s3://b/k" in str(translated)


def test_an_object_above_the_limit_is_refused_before_any_read(tmp_path) -> None:
    class Client:
        gets = 0

        def head_object(self, **_):
            return {"ContentLength": 10_000, "ETag": '"e"'}

        def get_object(self, **_):
            Client.gets += 1
            raise AssertionError("read")

    store = ObjectStore(StorageConfig(), client=Client())
    with pytest.raises(TooLarge, match="10000 bytes, more than the limit of 9999"):
        store.download("s3://bucket/key", tmp_path / "out", max_bytes=9999)
    assert Client.gets == 0 and list(tmp_path.iterdir()) == []


def test_bucket_exists_is_a_head_bucket_and_a_404_means_missing(fake_s3) -> None:
    store = _store(fake_s3)
    fake_s3.buckets.add("models")
    assert store.bucket_exists("models") and not store.bucket_exists("typo")
    assert fake_s3.calls == ["head-bucket models", "head-bucket typo"]
    fake_s3.denied = True
    with pytest.raises(AccessDenied):  # not a verdict on the bucket: the caller decides
        store.bucket_exists("models")

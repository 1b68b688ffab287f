"""The storage adapter and the compressor CLI against a real MinIO server (from the test bed)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from e2e import support
from modelops.contract import exitcodes
from modelops.storage import (
    AccessDenied,
    ChecksumMismatch,
    InvalidRequest,
    ObjectNotFound,
    ObjectStore,
    StorageConfig,
    StorageUnreachable,
    TransferTuning,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Small parts so that a few MiB already exercise multipart uploads and concurrent ranged reads.
TUNING = TransferTuning(part_size=5 * 1024 * 1024, max_concurrency=4)


@pytest.fixture(scope="module")
def minio_store(testbed) -> ObjectStore:
    return ObjectStore(StorageConfig.from_env(testbed.storage_env()), TUNING)


@pytest.fixture(scope="module")
def bucket(minio_store) -> str:
    name = f"storage-it-{uuid.uuid4().hex[:8]}"
    minio_store.client.create_bucket(Bucket=name)
    return name


def test_multipart_round_trip_verifies_sha256(minio_store, bucket, tmp_path) -> None:
    payload = os.urandom(23 * 1024 * 1024 + 17)
    source = tmp_path / "artifact.bin"
    source.write_bytes(payload)
    uri = f"s3://{bucket}/artifacts/artifact.bin"
    uploaded = minio_store.upload_file(source, uri)
    digest = hashlib.sha256(payload).hexdigest()
    assert (uploaded.sha256, uploaded.size) == (digest, len(payload))
    info = minio_store.head(uri)
    assert (info.size, info.sha256) == (len(payload), digest)
    assert info.etag.endswith("-5")  # five multipart parts

    fetched = minio_store.download(uri, tmp_path / "copy.bin", expected_sha256=digest)
    assert fetched.sha256 == digest
    assert (tmp_path / "copy.bin").read_bytes() == payload


def test_digest_mismatch_is_permanent_and_leaves_no_file(minio_store, bucket, tmp_path) -> None:
    uri = f"s3://{bucket}/artifacts/small.bin"
    minio_store.upload_bytes(b"genuine bytes", uri)
    with pytest.raises(ChecksumMismatch) as info:
        minio_store.download(uri, tmp_path / "small.bin", expected_sha256="0" * 64)
    assert not info.value.transient
    assert hashlib.sha256(b"genuine bytes").hexdigest() in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_objects_and_wrong_credentials(testbed, minio_store, bucket) -> None:
    assert not minio_store.exists(f"s3://{bucket}/absent")
    with pytest.raises(ObjectNotFound):
        minio_store.head(f"s3://{bucket}/absent")
    minio_store.upload_bytes(b"x", f"s3://{bucket}/present")
    wrong = ObjectStore(StorageConfig.from_env({**testbed.storage_env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret"}), TUNING)
    with pytest.raises(AccessDenied) as info:
        wrong.read_bytes(f"s3://{bucket}/present")
    assert "wrong-secret" not in str(info.value)


@pytest.mark.parametrize("key", ["../../etc/passwd", "a/../../b"])
def test_a_key_that_minio_refuses_is_permanent_not_retried(testbed, bucket, key) -> None:
    attempts: list[float] = []
    store = ObjectStore(StorageConfig.from_env(testbed.storage_env()), TUNING, sleep=attempts.append)
    with pytest.raises(InvalidRequest) as info:
        store.head(f"s3://{bucket}/{key}")
    assert not info.value.transient and "400" in str(info.value)
    assert attempts == [], "a refused request is never retried"


def test_closed_port_is_transient() -> None:
    store = ObjectStore(
        StorageConfig(endpoint_url="http://127.0.0.1:1", access_key_id="id", secret_access_key="secret"),
        TransferTuning(max_attempts=2, stream_attempts=1, connect_timeout_s=1),
        sleep=lambda _: None,
    )
    with pytest.raises(StorageUnreachable):
        store.head("s3://any-bucket/key")


@pytest.fixture(scope="module")
def digits():
    """The digits artifacts as files (the integration conftest's `digits` holds bytes of three)."""
    return support.digits_model()


def _compress(testbed, tmp_path, *args: str) -> tuple[int, dict]:
    log = tmp_path / "termination-log"
    env = {**os.environ, **testbed.storage_env(), "MODELOPS_TERMINATION_LOG": str(log), "PYTHONPATH": str(ROOT / "operator")}
    done = subprocess.run(
        [sys.executable, "-m", "modelops.compress", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert testbed.s3_secret_key not in done.stdout + done.stderr
    return done.returncode, json.loads(log.read_text())


def test_compressor_cli_end_to_end(testbed, minio_store, bucket, digits, tmp_path) -> None:
    for path in (digits.onnx, digits.eval_npz):
        minio_store.upload_file(path, f"s3://{bucket}/digits/{path.name}")
    sha = hashlib.sha256(digits.onnx.read_bytes()).hexdigest()
    prefix = f"s3://{bucket}/modelops-cache/it-int8/"
    common = ["--source-uri", f"s3://{bucket}/digits/model.onnx", "--source-format", "onnx", "--output-prefix", prefix]
    evaluation = json.dumps(
        {"datasetUri": f"s3://{bucket}/digits/eval.npz", "metric": "top1-accuracy", "threshold": 0.5}
    )

    code, message = _compress(
        testbed,
        tmp_path,
        *common,
        "--source-sha256",
        sha,
        "--recipe-json",
        '{"quantization": "int8-weight-only"}',
        "--eval-json",
        evaluation,
    )
    assert code == exitcodes.SUCCESS, message
    assert message["outcome"] == "Passed" and message["bytesAfter"] <= 0.3 * message["bytesBefore"]
    artifact = minio_store.head(message["artifact"]["uri"])
    assert (artifact.size, artifact.sha256) == (message["artifact"]["bytes"], message["artifact"]["sha256"])
    report = json.loads(minio_store.read_bytes(prefix + "report.json"))
    assert report["metric"] == message["metric"]

    code, message = _compress(testbed, tmp_path, *common, "--source-sha256", "e" * 64, "--recipe-json", "{}")
    assert code == exitcodes.BAD_ARTIFACT and message["reason"] == "ChecksumMismatch"


def test_a_stalled_download_is_detected_and_retried(minio_store, bucket, tmp_path, testbed) -> None:
    """MinIO frozen (SIGSTOP) mid-download, right after answering the third part's headers: no
    byte arrives, the stall detector gives up on the parts in flight and retries them, and
    once MinIO runs again (SIGCONT, 3.5 s later) the download completes, verified."""
    import signal
    import threading

    from e2e.testbed import cluster

    payload = os.urandom(64 * 1024 * 1024)
    source = tmp_path / "big.bin"
    source.write_bytes(payload)
    uri = f"s3://{bucket}/stall/big.bin"
    minio_store.upload_file(source, uri)
    state = cluster.read_state(cluster.Layout.from_env())
    assert state is not None
    minio_pid = state["pids"]["minio"]
    # botocore's own retries off, so that each stall reaches the download's retry and count.
    tuning = TransferTuning(part_size=8 * 1024 * 1024, max_concurrency=2, max_attempts=1, stream_attempts=8,
                            stall_timeout_s=1.0, backoff_base_s=0.5, backoff_cap_s=1.0, progress_interval_s=0.5)
    real = ObjectStore(StorageConfig.from_env(testbed.storage_env()), tuning).client
    thawed = threading.Event()
    calls = []

    class FreezingClient:
        def __getattr__(self, name):
            return getattr(real, name)

        def get_object(self, **kwargs):
            response = real.get_object(**kwargs)
            calls.append(kwargs["Range"])
            if len(calls) == 3:  # the headers are in, the body (8 MiB) is not: freeze here
                os.kill(minio_pid, signal.SIGSTOP)
                threading.Timer(3.5, lambda: (os.kill(minio_pid, signal.SIGCONT), thawed.set())).start()
            return response

    store = ObjectStore(StorageConfig.from_env(testbed.storage_env()), tuning, client=FreezingClient())
    try:
        result = store.download(uri, tmp_path / "out.bin", expected_sha256=hashlib.sha256(payload).hexdigest())
    finally:
        thawed.wait(10)
        os.kill(minio_pid, signal.SIGCONT)
    assert thawed.is_set(), "MinIO was frozen during the download"
    assert (tmp_path / "out.bin").read_bytes() == payload
    print(f"\nstalled download: {result.stats.describe()}")
    assert result.stats.stalls >= 1 and result.stats.retries >= 1, result.stats
    assert result.stats.fetched_bytes == len(payload)  # every part counted once, however often it was tried

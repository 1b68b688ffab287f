"""Downloads: parts pinned to the ETag, resume without fetching finished parts again, the stall
detector instead of a total timeout, and progress in the log (an in-memory S3 client)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from pathlib import Path

import pytest

from modelops import transfer
from modelops.storage import ChecksumMismatch, ObjectStore, StorageConfig, StorageUnreachable, TransferTuning

pytestmark = pytest.mark.unit

PART = 1000
PAYLOAD = os.urandom(10 * PART + 123)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
URI = "s3://models/big.bin"


def _tuning(**changes) -> TransferTuning:
    fields = {"part_size": PART, "max_concurrency": 3, "stream_attempts": 3, "stall_timeout_s": 0.4, "progress_interval_s": 0.0}
    return TransferTuning(**{**fields, **changes})


class FlakyS3:
    """The fake client's objects, with bodies that can break off or hang at chosen parts."""

    def __init__(self, fake_s3, breaks: dict[int, int] | None = None, hangs: dict[int, int] | None = None) -> None:
        self.fake = fake_s3
        self.breaks = dict(breaks or {})  # part start -> how many more times it breaks off
        self.hangs = dict(hangs or {})  # part start -> how many more times it hangs
        self.gets: list[int] = []
        self.if_match: set[str | None] = set()
        self.lock = threading.Lock()

    def head_object(self, **kwargs):
        return self.fake.head_object(**kwargs)

    def get_object(self, Bucket, Key, Range=None, IfMatch=None):
        response = self.fake.get_object(Bucket=Bucket, Key=Key, Range=Range, IfMatch=IfMatch)
        start = int(Range.split("=")[1].split("-")[0])
        with self.lock:
            self.gets.append(start)
            self.if_match.add(IfMatch)
            if self.breaks.get(start, 0) > 0:
                self.breaks[start] -= 1
                return {"Body": Broken(response["Body"].read())}
            if self.hangs.get(start, 0) > 0:
                self.hangs[start] -= 1
                return {"Body": Hanging(response["Body"].read())}
        return response


class Broken(io.BytesIO):
    """Gives half the part, then the connection drops."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data[: len(data) // 2])
        self._sent = False

    def read(self, n: int = -1) -> bytes:
        if self._sent:
            raise ConnectionResetError("connection reset by peer")
        self._sent = True
        return super().read(n)


class Hanging:
    """Gives the first bytes, then waits for bytes that never come, until closed."""

    def __init__(self, data: bytes) -> None:
        self._first = data[:10]
        self._closed = threading.Event()

    def read(self, n: int) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        assert self._closed.wait(30), "the stall detector never closed the hanging body"
        raise ValueError("I/O operation on closed file")

    def close(self) -> None:
        self._closed.set()


def _store(client, **tuning) -> ObjectStore:
    return ObjectStore(StorageConfig(), _tuning(**tuning), client=client, sleep=lambda _: None)


@pytest.fixture
def fake(fake_s3):
    fake_s3.objects[("models", "big.bin")] = (PAYLOAD, {})
    return fake_s3


def test_parts_cover_the_object_exactly() -> None:
    parts = transfer.plan_parts(2 * PART + 1, PART)
    assert [(p.start, p.end) for p in parts] == [(0, 999), (1000, 1999), (2000, 2000)]
    assert transfer.plan_parts(0, PART) == []


def test_every_part_is_pinned_to_the_etag(tmp_path: Path, fake) -> None:
    client = FlakyS3(fake)
    result = _store(client).download(URI, tmp_path / "big.bin", expected_sha256=DIGEST)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD and result.sha256 == DIGEST
    assert client.if_match == {result.etag} and result.etag
    assert sorted(client.gets) == list(range(0, len(PAYLOAD), PART))
    assert not (tmp_path / "big.bin.partial").exists() and not (tmp_path / "big.bin.partial.parts").exists()


def test_a_dropped_connection_refetches_only_its_part(tmp_path: Path, fake) -> None:
    client = FlakyS3(fake, breaks={3000: 1})
    result = _store(client).download(URI, tmp_path / "big.bin", expected_sha256=DIGEST)
    assert result.sha256 == DIGEST
    assert client.gets.count(3000) == 2 and len(client.gets) == len(range(0, len(PAYLOAD), PART)) + 1
    assert result.stats.retries == 1


def test_a_later_download_resumes_without_fetching_finished_parts(tmp_path: Path, fake) -> None:
    # Part 5000 keeps breaking: the first download gives up, leaving the partial file and its journal.
    client = FlakyS3(fake, breaks={5000: 3})
    with pytest.raises(StorageUnreachable):
        _store(client).download(URI, tmp_path / "big.bin", expected_sha256=DIGEST)
    assert (tmp_path / "big.bin.partial").exists() and (tmp_path / "big.bin.partial.parts").exists()
    assert not (tmp_path / "big.bin").exists()
    fetched_before = {start for start in client.gets if start != 5000}
    client.gets.clear()
    result = _store(client).download(URI, tmp_path / "big.bin", expected_sha256=DIGEST)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD
    assert 5000 in client.gets
    assert not set(client.gets) & fetched_before - {5000}, "a finished part was fetched again"
    assert result.stats.resumed_parts == len(fetched_before) > 0


def test_a_journal_of_another_object_is_discarded(tmp_path: Path, fake) -> None:
    client = FlakyS3(fake, breaks={5000: 3})
    with pytest.raises(StorageUnreachable):
        _store(client).download(URI, tmp_path / "big.bin")
    changed = PAYLOAD[::-1]
    fake.objects[("models", "big.bin")] = (changed, {})  # replaced: a new ETag
    client.gets.clear()
    result = _store(client).download(URI, tmp_path / "big.bin", expected_sha256=hashlib.sha256(changed).hexdigest())
    assert (tmp_path / "big.bin").read_bytes() == changed and result.stats.resumed_parts == 0
    assert sorted(client.gets) == list(range(0, len(PAYLOAD), PART))


def test_a_corrupt_resumed_part_is_fetched_again_not_failed(tmp_path: Path, fake) -> None:
    client = FlakyS3(fake, breaks={5000: 3})
    with pytest.raises(StorageUnreachable):
        _store(client).download(URI, tmp_path / "big.bin", expected_sha256=DIGEST)
    with open(tmp_path / "big.bin.partial", "r+b") as partial:  # a finished part rots on disk
        partial.write(b"\xff" * 10)
    result = _store(client).download(URI, tmp_path / "big.bin", expected_sha256=DIGEST)
    assert result.sha256 == DIGEST and (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_a_wrong_object_still_fails_and_leaves_nothing(tmp_path: Path, fake) -> None:
    with pytest.raises(ChecksumMismatch):
        _store(FlakyS3(fake)).download(URI, tmp_path / "big.bin", expected_sha256="ab" * 32)
    assert list(tmp_path.iterdir()) == []


def test_a_stalled_part_is_closed_and_retried(tmp_path: Path, fake) -> None:
    client = FlakyS3(fake, hangs={2000: 1})
    result = _store(client).download(URI, tmp_path / "big.bin", expected_sha256=DIGEST)
    assert result.sha256 == DIGEST
    assert result.stats.stalls == 1 and client.gets.count(2000) == 2


def test_a_part_that_stalls_every_time_fails_as_transient(tmp_path: Path, fake) -> None:
    client = FlakyS3(fake, hangs={2000: 5})
    with pytest.raises(StorageUnreachable, match="no byte for"):
        _store(client, stream_attempts=2).download(URI, tmp_path / "big.bin", expected_sha256=DIGEST)


def test_progress_and_the_outcome_go_to_the_log(tmp_path: Path, fake, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="modelops.transfer"):
        result = _store(FlakyS3(fake)).download(URI, tmp_path / "big.bin", expected_sha256=DIGEST)
    lines = [r.getMessage() for r in caplog.records if r.name == "modelops.transfer"]
    assert any("%)" in line and URI in line for line in lines), lines
    assert lines[-1].startswith(f"{URI}: done, {len(PAYLOAD)} bytes in")
    assert result.stats.describe().startswith(f"{len(PAYLOAD)} bytes in")


def test_the_fetch_container_resumes_after_a_restart_and_reports_it(tmp_path: Path, fake) -> None:
    from modelops.contract.exitcodes import ExitCode
    from modelops.fetch import CONFIG_ENV, TERMINATION_LOG_ENV, main

    client = FlakyS3(fake, breaks={5000: 3})
    log = tmp_path / "termination-log"
    env = {CONFIG_ENV: 'name: "big"\n', TERMINATION_LOG_ENV: str(log)}
    argv = ["--uri", URI, "--sha256", DIGEST, "--model-name", "big", "--version", "1", "--backend", "python",
            "--repository", str(tmp_path / "models")]
    assert main(argv, env, store_factory=lambda _: _store(client)) == ExitCode.TRANSIENT
    assert log.read_text().startswith("StorageUnreachable: ")
    # Only this artifact's download folder stays, with its partial file: nothing Triton would load.
    left = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert left == [f".staging-download-{DIGEST[:16]}"]
    fetched_before = {start for start in client.gets if start != 5000}
    client.gets.clear()
    assert main(argv, env, store_factory=lambda _: _store(client)) == ExitCode.SUCCESS
    assert (tmp_path / "models/big/1/model.onnx").read_bytes() == PAYLOAD
    assert 5000 in client.gets and not set(client.gets) & fetched_before, "a finished part was fetched again"
    assert f"{len(fetched_before)} of 11 parts resumed" in log.read_text(), log.read_text()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["big"]

"""The node cache agent (`python -m modelops.nodecache`) against the test bed's real MinIO: a
file set filled and verified, the agent killed (SIGKILL) mid-download and restarted (no partial
entry is ever visible, the download resumes from its journal), and eviction under a budget
smaller than two models (the least recently used goes, a pinned one never)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelops.api.version import file_set_digest
from modelops.nodecache.layout import Phase, Reason
from modelops.nodecache.store import Store
from modelops.storage import ObjectStore, StorageConfig, TransferTuning

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20
PART = 8 * MiB


@pytest.fixture(scope="module")
def minio(testbed) -> ObjectStore:
    return ObjectStore(StorageConfig.from_env(testbed.storage_env()), TransferTuning(part_size=PART, max_concurrency=4))


@pytest.fixture(scope="module")
def bucket(minio) -> str:
    name = f"nodecache-{uuid.uuid4().hex[:8]}"
    minio.client.create_bucket(Bucket=name)
    return name


class AgentProcess:
    """One agent process on a cache root, with its log."""

    def __init__(self, testbed, root: Path, budget: int, log: Path) -> None:
        self.testbed, self.root, self.budget, self.log = testbed, root, budget, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, **self.testbed.storage_env(), "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT}"}
        command = [sys.executable, "-m", "modelops.nodecache", "--root", str(self.root), "--budget", str(self.budget),
                   "--interval", "0.2", "--retry", "0.5", "--part-size", str(PART), "--max-concurrency", "2"]
        with self.log.open("a") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def request(self, name: str, body: dict) -> None:
        folder = self.root / "requests"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{name}.json.tmp"
        tmp.write_text(json.dumps(body))
        tmp.rename(folder / f"{name}.json")

    def status(self, name: str) -> dict | None:
        try:
            return json.loads((self.root / "status" / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def answered_at(self, name: str) -> int:
        return (self.root / "status" / f"{name}.json").stat().st_mtime_ns

    def wait_for(self, name: str, accept: Callable[[dict], bool], timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(name)
            if status is not None and accept(status):
                return status
            assert self.process is not None and self.process.poll() is None, f"the agent exited: {self.log.read_text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting on {name}: {self.status(name)}; {self.log.read_text()[-3000:]}")


@pytest.fixture
def agent_factory(testbed, tmp_path) -> Iterator[Callable[[int], AgentProcess]]:
    made: list[AgentProcess] = []

    def make(budget: int) -> AgentProcess:
        agent = AgentProcess(testbed, tmp_path / "cache", budget, tmp_path / "agent.log")
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()


def _upload(minio: ObjectStore, tmp_path: Path, uri: str, data: bytes) -> str:
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    minio.upload_file(source, uri)
    source.unlink()
    return hashlib.sha256(data).hexdigest()


class VisibilityWatch:
    """Samples the cache as a reader would, all along: an entry's name must stand for its full
    size and, hashed the first time it is seen (a partial file has its full size from the start,
    so the size alone could not tell), for its bytes; a set's manifest must come only with every
    file in."""

    def __init__(self, root: Path, sizes: dict[str, int], set_digest: str) -> None:
        self.root, self.sizes, self.set_digest = root, sizes, set_digest
        self.problems: list[str] = []
        self.samples = 0
        self._hashed: set[int] = set()  # inodes already hashed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> VisibilityWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            entries = self.root / "sha256"
            for digest, size in self.sizes.items():
                try:
                    seen = (entries / digest).stat().st_size
                except FileNotFoundError:
                    continue
                if seen != size:
                    self.problems.append(f"{digest[:12]} visible with {seen} of {size} bytes")
                self._hash_once(entries / digest, digest)
            if (self.root / "sets" / f"{self.set_digest}.json").exists():
                missing = [d[:12] for d in self.sizes if not (entries / d).exists()]
                if missing:
                    self.problems.append(f"the manifest is visible without {missing}")
            self.samples += 1
            self._stop.wait(0.005)

    def _hash_once(self, path: Path, digest: str) -> None:
        try:
            inode = path.stat().st_ino
            if inode in self._hashed:
                return
            self._hashed.add(inode)
            with path.open("rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").hexdigest()
        except FileNotFoundError:
            return
        if actual != digest:
            self.problems.append(f"{digest[:12]} visible with other bytes (sha256 {actual[:12]})")


def test_a_file_set_is_filled_and_a_killed_download_resumes_with_no_partial_visible(
    minio, bucket, tmp_path, agent_factory
) -> None:
    graph, small, big = os.urandom(MiB + 7), os.urandom(3 * MiB), os.urandom(256 * MiB + 11)
    prefix = f"s3://{bucket}/encoder/1/"
    files = {"model.onnx": graph, "weights/small.bin": small, "weights/big.bin": big}
    digests = {path: _upload(minio, tmp_path, prefix + path, data) for path, data in files.items()}
    set_digest = file_set_digest("model.onnx", list(digests.items()))
    sizes = {digests[p]: len(d) for p, d in files.items()}
    big_digest = digests["weights/big.bin"]
    partial_journal = tmp_path / "cache" / "sha256" / f"{big_digest}.partial.parts"

    agent = agent_factory(1024 * MiB)
    agent.request("encoder-1", {"uri": prefix, "entrypoint": "model.onnx",
                                "files": [{"path": p, "sha256": d} for p, d in digests.items()]})
    with VisibilityWatch(tmp_path / "cache", sizes, set_digest) as watch:
        agent.start()
        deadline = time.monotonic() + 120
        parts_at_kill = 0
        while time.monotonic() < deadline and parts_at_kill < 4:
            try:
                parts_at_kill = len(partial_journal.read_text().splitlines()) - 1
            except FileNotFoundError:
                pass
            time.sleep(0.002)
        agent.kill()
        assert parts_at_kill >= 4, f"the big file's download never got going: {agent.log.read_text()[-2000:]}"
        assert not (tmp_path / "cache" / "sha256" / big_digest).exists(), "the download finished before the kill"
        assert Store(tmp_path / "cache", 1024 * MiB).manifest(set_digest, touch=False) is None
        parts_at_kill = len(partial_journal.read_text().splitlines()) - 1  # the journal as the kill left it
        assert agent.status("encoder-1")["phase"] == Phase.FILLING

        agent.start()
        status = agent.wait_for("encoder-1", lambda s: s["phase"] != Phase.FILLING)
    assert (status["phase"], status["reason"], status["digest"]) == (Phase.READY, Reason.FILLED, set_digest), status
    print(f"\nresumed fill: {status['message']}; {watch.samples} samples of the cache, killed at {parts_at_kill} parts")
    assert watch.problems == [] and watch.samples > 100
    assert len(watch._hashed) == len(sizes)  # every entry was seen, and hashed, as it appeared
    transfer = status["transfer"]
    assert transfer["resumedParts"] >= parts_at_kill
    assert transfer["bytes"] == len(big) and transfer["fetchedBytes"] <= len(big) - (parts_at_kill - 1) * PART
    assert "rebuilt" in agent.log.read_text() and f"partials kept ['{big_digest}']" in agent.log.read_text()

    store = Store(tmp_path / "cache", 1024 * MiB)
    manifest = store.manifest(set_digest)
    assert manifest is not None
    for digest in sizes:
        assert store.verify(digest), digest
    view = store.make_view(manifest, tmp_path / "repository" / "encoder" / "1")
    assert hashlib.sha256((view / "weights" / "big.bin").read_bytes()).hexdigest() == big_digest
    assert sorted(p.name for p in (tmp_path / "cache" / "sha256").iterdir() if "partial" in p.name) == []


def test_a_budget_below_two_models_evicts_the_least_recently_used_never_a_pinned_one(
    minio, bucket, tmp_path, agent_factory
) -> None:
    models = {name: os.urandom(12 * MiB) for name in ("a", "b", "c")}
    requests = {}
    for name, data in models.items():
        uri = f"s3://{bucket}/lru/{name}/model.onnx"
        requests[name] = {"uri": uri, "sha256": _upload(minio, tmp_path, uri, data)}
    agent = agent_factory(20 * MiB)  # one model fits, two do not
    agent.start()
    store = Store(tmp_path / "cache", 20 * MiB)

    agent.request("a", requests["a"])
    agent.wait_for("a", lambda s: s["phase"] == Phase.READY)
    agent.request("b", requests["b"])
    agent.wait_for("b", lambda s: s["phase"] == Phase.READY)
    evicted = agent.wait_for("a", lambda s: s["phase"] != Phase.READY)
    assert (evicted["phase"], evicted["reason"]) == (Phase.EVICTED, Reason.EVICTED)
    assert store.lookup(requests["a"]["sha256"], touch=False) is None

    store.pin("serving.pod-b", [requests["b"]["sha256"]])  # a pod serves b
    agent.request("c", requests["c"])
    full = agent.wait_for("c", lambda s: s["phase"] != Phase.FILLING and s["reason"] == Reason.CACHE_FULL)
    assert full["phase"] == Phase.PENDING and "short" in full["message"]
    first_answer = agent.answered_at("c")
    agent.wait_for("c", lambda s: agent.answered_at("c") > first_answer)  # tried again after --retry
    assert agent.status("c")["reason"] == Reason.CACHE_FULL
    assert store.lookup(requests["b"]["sha256"], touch=False) is not None
    assert agent.status("b")["phase"] == Phase.READY

    store.unpin("serving.pod-b")
    assert agent.wait_for("c", lambda s: s["phase"] == Phase.READY)["reason"] == Reason.FILLED
    assert agent.wait_for("b", lambda s: s["phase"] != Phase.READY)["phase"] == Phase.EVICTED
    assert [e.digest for e in store.entries()] == [requests["c"]["sha256"]]

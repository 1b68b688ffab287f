"""The node cache's store on tmp dirs (verified visibility, corrupt entries refused and removed,
pins never evicted, LRU order across a restart, file-set views) and its agent's spool against
an in-memory S3 client."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from modelops.api.version import file_set_digest
from modelops.nodecache import layout
from modelops.nodecache.__main__ import parse_bytes
from modelops.nodecache.agent import Agent
from modelops.nodecache.layout import CacheFile, Entry, Manifest, Phase, Reason
from modelops.nodecache.store import CacheFull, Store
from modelops.storage import ChecksumMismatch, ObjectStore, StorageConfig, StorageUnreachable, TransferTuning

pytestmark = pytest.mark.unit

TUNING = TransferTuning(part_size=1000, max_concurrency=2, stream_attempts=1, progress_interval_s=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> float:
        self.now += 10
        return self.now


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_local(store: Store, data: bytes) -> str:
    """An entry filled from bytes, as a verified download writes it."""
    digest = sha(data)

    def download(dest: Path) -> None:
        dest.write_bytes(data)

    store.fill(digest, len(data), download)
    return digest


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_entry_is_visible_only_after_a_verified_download(tmp_path, fake_s3, clock) -> None:
    fake_s3.objects[("models", "a.bin")] = (os.urandom(5500), {})
    data = fake_s3.objects[("models", "a.bin")][0]
    store = Store(tmp_path, budget=10**6, clock=clock)
    objects = ObjectStore(StorageConfig(), TUNING, client=fake_s3)
    seen_during: list[object] = []

    def download(dest: Path):
        seen_during.append(store.lookup(sha(data)))  # before the bytes are in: not visible
        return objects.download("s3://models/a.bin", dest, expected_sha256=sha(data))

    store.fill(sha(data), len(data), download)
    assert seen_during == [None]
    path = store.lookup(sha(data))
    assert path == tmp_path / "sha256" / sha(data) and path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o444
    assert sorted(p.name for p in (tmp_path / "sha256").iterdir()) == [sha(data), sha(data) + ".meta"]


def test_a_mismatching_download_leaves_no_entry(tmp_path, fake_s3) -> None:
    fake_s3.objects[("models", "a.bin")] = (b"the real bytes", {})
    store = Store(tmp_path, budget=10**6)
    objects = ObjectStore(StorageConfig(), TUNING, client=fake_s3)
    wrong = sha(b"other bytes")
    with pytest.raises(ChecksumMismatch):
        store.fill(wrong, 14, lambda dest: objects.download("s3://models/a.bin", dest, expected_sha256=wrong))
    assert store.lookup(wrong) is None
    assert list((tmp_path / "sha256").iterdir()) == []  # no entry, no partial, no record


@pytest.mark.parametrize("damage", ["truncate", "append", "no-record"])
def test_a_corrupt_entry_is_refused_and_removed(tmp_path, damage) -> None:
    store = Store(tmp_path, budget=10**6)
    digest = put_local(store, b"x" * 100)
    path = store.entry_path(digest)
    path.chmod(0o644)
    if damage == "truncate":
        os.truncate(path, 50)
    elif damage == "append":
        with open(path, "ab") as handle:
            handle.write(b"y")
    else:
        (tmp_path / "sha256" / f"{digest}.meta").unlink()
    assert store.lookup(digest) is None
    assert not path.exists()
    assert store.entries() == []


def test_verify_rehashes_and_removes_an_entry_with_the_right_size_and_wrong_bytes(tmp_path) -> None:
    store = Store(tmp_path, budget=10**6)
    digest = put_local(store, b"a" * 64)
    assert store.verify(digest)
    path = store.entry_path(digest)
    path.chmod(0o644)
    path.write_bytes(b"b" * 64)
    assert store.lookup(digest) == path  # the size matches: the cheap check cannot tell
    assert not store.verify(digest)
    assert store.lookup(digest) is None and not path.exists()


def test_eviction_takes_the_least_recently_used_and_never_a_pinned_entry(tmp_path, clock) -> None:
    store = Store(tmp_path, budget=300, clock=clock)
    digests = []
    for byte in b"abc":
        clock.tick()
        digests.append(put_local(store, bytes([byte]) * 100))
    a, b, c = digests
    clock.tick()
    store.lookup(a)  # a is now the most recently used; b the least
    assert store.reserve(100) == [b]
    store.pin("serving.pod-1", [c])
    clock.tick()
    store.lookup(c)
    # c is pinned; d arrives; a is the least recently used of the rest
    clock.tick()
    d = put_local(store, b"d" * 100)
    assert store.reserve(100, keep=[d]) == [a]
    assert {e.digest for e in store.entries()} == {c, d}
    with pytest.raises(CacheFull, match="short"):
        store.reserve(250, keep=[d])  # c pinned, d the fill's own: nothing may go
    assert {e.digest for e in store.entries()} == {c, d}
    store.unpin("serving.pod-1")
    assert store.reserve(250) == [c, d]


def test_a_pinned_set_pins_its_files(tmp_path, clock) -> None:
    store = Store(tmp_path, budget=100, clock=clock)
    graph, data = put_local(store, b"g" * 40), put_local(store, b"d" * 60)
    manifest = Manifest("model.onnx", (CacheFile("model.onnx", graph, 40), CacheFile("w/data.bin", data, 60)))
    store.store_manifest(manifest)
    store.pin("serving.pod-2", [manifest.digest])
    assert store.pinned() == {manifest.digest, graph, data}
    with pytest.raises(CacheFull):
        store.reserve(1)
    store.unpin("serving.pod-2")
    assert sorted(store.reserve(1)) == sorted([graph])  # the older one, and enough
    assert store.manifest(manifest.digest) is None  # the set is no longer whole: its manifest went
    assert not (tmp_path / "sets" / f"{manifest.digest}.json").exists()


def test_plan_eviction_is_lru_with_ties_by_digest() -> None:
    entries = [Entry("b" * 64, 10, 5.0), Entry("a" * 64, 10, 5.0), Entry("c" * 64, 10, 1.0)]
    assert layout.plan_eviction(entries, set(), budget=30).evict == ()
    assert layout.plan_eviction(entries, set(), budget=15).evict == ("c" * 64, "a" * 64)
    plan = layout.plan_eviction(entries, {"c" * 64, "a" * 64}, budget=5)
    assert plan.evict == ("b" * 64,) and plan.shortfall == 15


def test_restart_rebuilds_the_index_keeps_lru_order_and_sorts_out_partials(tmp_path, clock) -> None:
    store = Store(tmp_path, budget=300, clock=clock)
    old, new = put_local(store, b"o" * 100), None
    clock.tick()
    new = put_local(store, b"n" * 100)
    entries = tmp_path / "sha256"
    wanted, unwanted = "1" * 64, "2" * 64
    for digest in (wanted, unwanted):
        (entries / f"{digest}.partial").write_bytes(b"half")
        (entries / f"{digest}.partial.parts").write_text("{}\n0\n")
        (entries / f"{digest}.meta").write_text('{"size": 8}\n')
    (entries / "stray").write_text("stray")
    (entries / f"{'4' * 64}.meta").write_text('{"size": 1}\n')  # a record without entry or partial

    restarted = Store(tmp_path, budget=100, clock=clock)
    report = restarted.rebuild(wanted={wanted})
    assert (report.entries, report.bytes) == (2, 200)
    assert report.partials_kept == [wanted] and report.partials_discarded == [unwanted]
    assert sorted(p.name for p in entries.iterdir()) == sorted(
        [old, f"{old}.meta", new, f"{new}.meta", f"{wanted}.partial", f"{wanted}.partial.parts", f"{wanted}.meta"]
    )
    assert restarted.trim() == [old]  # the last use survived the restart


def test_restart_removes_a_corrupt_entry_and_the_sets_that_need_it(tmp_path) -> None:
    store = Store(tmp_path, budget=10**6)
    good, bad = put_local(store, b"g" * 10), put_local(store, b"b" * 10)
    manifest = Manifest(None, (CacheFile("good", good, 10), CacheFile("bad", bad, 10)))
    store.store_manifest(manifest)
    store.entry_path(bad).chmod(0o644)
    os.truncate(store.entry_path(bad), 3)
    report = Store(tmp_path, budget=10**6).rebuild(wanted=set())
    assert report.corrupt_removed == [bad] and report.sets == 0
    assert store.lookup(good) is not None and store.manifest(manifest.digest) is None
    assert list((tmp_path / "sets").iterdir()) == []


def test_a_manifest_stored_under_another_sets_digest_is_refused(tmp_path) -> None:
    store = Store(tmp_path, budget=10**6)
    digest = put_local(store, b"z")
    manifest = Manifest(None, (CacheFile("z", digest, 1),))
    (tmp_path / "sets" / f"{'5' * 64}.json").write_text(manifest.render())
    assert store.manifest("5" * 64) is None
    assert not (tmp_path / "sets" / f"{'5' * 64}.json").exists()
    assert manifest.digest == file_set_digest(None, [("z", digest)])


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_a_file_set_view_links_into_the_store_without_copying(tmp_path, mode) -> None:
    store = Store(tmp_path / "cache", budget=10**6)
    graph, data = put_local(store, b"graph"), put_local(store, b"weights")
    manifest = Manifest("graph.onnx", (CacheFile("graph.onnx", graph, 5), CacheFile("w/0.bin", data, 7)))
    view = store.make_view(manifest, tmp_path / "repo" / "encoder" / "1", mode, target_root=tmp_path / "cache",
                           rename={"graph.onnx": "model.onnx"})  # the graph under the backend's file name
    assert sorted(str(p.relative_to(view)) for p in view.rglob("*")) == ["model.onnx", "w", "w/0.bin"]
    assert (view / "model.onnx").read_bytes() == b"graph" and (view / "w" / "0.bin").read_bytes() == b"weights"
    if mode == "hardlink":
        assert (view / "w" / "0.bin").stat().st_ino == store.entry_path(data).stat().st_ino
    else:
        assert os.readlink(view / "w" / "0.bin") == str(tmp_path / "cache" / "sha256" / data)
    assert not any(p.name.endswith(".tmp") for p in view.parent.iterdir())


def test_requests_are_parsed_with_the_field_named() -> None:
    one = layout.parse_request(json.dumps({"uri": "s3://models/a/model.onnx", "sha256": "a" * 64}))
    assert (one.files, one.digest, one.folder) == ((("model.onnx", "a" * 64),), "a" * 64, "s3://models/a/")
    files = [{"path": "model.onnx", "sha256": "a" * 64}, {"path": "w/0.bin", "sha256": "b" * 64}]
    fs = layout.parse_request(json.dumps({"uri": "s3://models/a/", "entrypoint": "model.onnx", "files": files}))
    assert fs.digest == file_set_digest("model.onnx", [("model.onnx", "a" * 64), ("w/0.bin", "b" * 64)])
    assert fs.file_uri("w/0.bin") == "s3://models/a/w/0.bin"
    for body, field in [
        ({"uri": "s3://models/a/", "files": [{"path": "../x", "sha256": "a" * 64}]}, "files[0].path"),
        ({"uri": "s3://models/a/", "files": [{"path": "x", "sha256": "A" * 64}]}, "files[0].sha256"),
        ({"uri": "s3://models/a/", "files": files * 2}, "listed twice"),
        ({"uri": "s3://models/a/", "entrypoint": "g.onnx", "files": files}, "entrypoint"),
        ({"uri": "s3://models/a", "sha256": "x"}, "sha256"),
        ({"uri": "http://m/a", "sha256": "a" * 64}, "uri"),
    ]:
        with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
            layout.parse_request(json.dumps(body))


def test_claims_and_sizes() -> None:
    assert layout.validate_claim("serving.5f0c-9a") == "serving.5f0c-9a"
    for bad in ("../x", "A", "", "x/y"):
        with pytest.raises(ValueError):
            layout.validate_claim(bad)
    assert (parse_bytes("200Gi"), parse_bytes("500M"), parse_bytes("12")) == (200 * 2**30, 500 * 10**6, 12)
    with pytest.raises(ValueError):
        parse_bytes("lots")


# ------------------------------------------------------------------------- the agent


def _agent(tmp_path, fake_s3, budget=10**6, clock=None) -> Agent:
    return Agent(Store(tmp_path, budget, clock=clock or Clock()), ObjectStore(StorageConfig(), TUNING, client=fake_s3),
                 retry_s=5, clock=clock or Clock())


def _request(tmp_path: Path, name: str, body: dict) -> None:
    (tmp_path / "requests").mkdir(exist_ok=True)
    (tmp_path / "requests" / f"{name}.json").write_text(json.dumps(body))


def _status(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "status" / f"{name}.json").read_text())


def test_the_agent_fills_a_file_set_and_answers_in_the_spool(tmp_path, fake_s3) -> None:
    graph, data = os.urandom(1500), os.urandom(4200)
    fake_s3.objects[("models", "enc/1/model.onnx")] = (graph, {})
    fake_s3.objects[("models", "enc/1/w/0.bin")] = (data, {})
    files = [{"path": "model.onnx", "sha256": sha(graph)}, {"path": "w/0.bin", "sha256": sha(data)}]
    _request(tmp_path, "enc-1", {"uri": "s3://models/enc/1/", "entrypoint": "model.onnx", "files": files})
    agent = _agent(tmp_path, fake_s3)
    agent.start()
    agent.scan()
    status = _status(tmp_path, "enc-1")
    set_digest = file_set_digest("model.onnx", [("model.onnx", sha(graph)), ("w/0.bin", sha(data))])
    assert (status["phase"], status["reason"], status["digest"]) == (Phase.READY, Reason.FILLED, set_digest)
    assert status["transfer"]["fetchedBytes"] == len(graph) + len(data)
    manifest = agent.store.manifest(set_digest)
    assert manifest is not None and {f.path: f.size for f in manifest.files} == {"model.onnx": 1500, "w/0.bin": 4200}
    gets = len([c for c in fake_s3.calls if c.startswith("get")])
    agent.scan()  # answered and unchanged: nothing fetched again
    assert len([c for c in fake_s3.calls if c.startswith("get")]) == gets


def test_a_tampered_file_fails_the_request_naming_the_file(tmp_path, fake_s3) -> None:
    fake_s3.objects[("models", "s/model.onnx")] = (b"graph", {})
    fake_s3.objects[("models", "s/w.bin")] = (b"tampered", {})
    files = [{"path": "model.onnx", "sha256": sha(b"graph")}, {"path": "w.bin", "sha256": sha(b"genuine")}]
    _request(tmp_path, "s", {"uri": "s3://models/s/", "entrypoint": "model.onnx", "files": files})
    agent = _agent(tmp_path, fake_s3)
    agent.scan()
    status = _status(tmp_path, "s")
    assert (status["phase"], status["reason"]) == (Phase.FAILED, "ChecksumMismatch")
    assert "'w.bin' (files[1])" in status["message"]
    assert agent.store.manifest(status["digest"]) is None


def test_a_transient_failure_is_pending_and_retried(tmp_path, fake_s3, monkeypatch) -> None:
    fake_s3.objects[("models", "a.bin")] = (b"bytes", {})
    _request(tmp_path, "a", {"uri": "s3://models/a.bin", "sha256": sha(b"bytes")})
    clock = Clock()
    agent = _agent(tmp_path, fake_s3, clock=clock)

    def unreachable(*_a, **_k):
        raise StorageUnreachable("storage unreachable for s3://m/a.bin")

    monkeypatch.setattr(agent.objects, "head", unreachable)
    agent.scan()
    assert (_status(tmp_path, "a")["phase"], _status(tmp_path, "a")["reason"]) == (Phase.PENDING, "StorageUnreachable")
    monkeypatch.undo()
    status_file = tmp_path / "status" / "a.json"
    os.utime(status_file, (clock.now, clock.now))
    os.utime(tmp_path / "requests" / "a.json", (clock.now - 100, clock.now - 100))  # older than its answer
    agent.scan()  # before retry_s: not yet
    assert _status(tmp_path, "a")["phase"] == Phase.PENDING
    clock.now += 6
    agent.scan()
    assert _status(tmp_path, "a")["phase"] == Phase.READY


def test_requests_beyond_the_budget_evict_the_oldest_and_say_so(tmp_path, fake_s3) -> None:
    clock = Clock()
    for name in ("a", "b"):
        fake_s3.objects[("models", f"{name}.bin")] = (name.encode() * 600, {})
    agent = _agent(tmp_path, fake_s3, budget=1000, clock=clock)
    agent.store._clock = clock
    _request(tmp_path, "a", {"uri": "s3://models/a.bin", "sha256": sha(b"a" * 600)})
    agent.scan()
    clock.tick()
    _request(tmp_path, "b", {"uri": "s3://models/b.bin", "sha256": sha(b"b" * 600)})
    os.utime(tmp_path / "requests" / "b.json", (clock.now, clock.now))
    agent.scan()
    assert _status(tmp_path, "b")["phase"] == Phase.READY
    assert (_status(tmp_path, "a")["phase"], _status(tmp_path, "a")["reason"]) == (Phase.EVICTED, Reason.EVICTED)
    agent.scan()  # not filled again: the two do not evict each other in turn
    assert _status(tmp_path, "b")["phase"] == Phase.READY and _status(tmp_path, "a")["phase"] == Phase.EVICTED
    (tmp_path / "requests" / "a.json").unlink()
    agent.scan()
    assert not (tmp_path / "status" / "a.json").exists()


def test_a_bad_request_fails_with_its_field(tmp_path, fake_s3) -> None:
    _request(tmp_path, "bad", {"uri": "s3://models/x/", "files": [{"path": "/abs", "sha256": "a" * 64}]})
    _agent(tmp_path, fake_s3).scan()
    status = _status(tmp_path, "bad")
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.INVALID_REQUEST)
    assert "files[0].path" in status["message"]


def test_the_agent_refuses_bad_settings_with_exit_2(tmp_path, capsys) -> None:
    from modelops.nodecache.__main__ import main

    assert main(["--root", str(tmp_path), "--budget", "lots", "--once"], environ={}) == 2
    assert "InvalidArguments: 'lots' is not a size" in capsys.readouterr().err
    assert main(["--root", str(tmp_path), "--budget", "1Mi", "--once"], environ={"MODELOPS_S3_ENDPOINT": "ftp://x"}) == 2
    assert "MODELOPS_S3_ENDPOINT" in capsys.readouterr().err

"""Serving from the node cache, without a cluster: what the operator renders, what the agent
reads of a pod and pins for it, how a pod's fetch waits for the cache and links from it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from modelops import fetch
from modelops.api.deployment import ModelDeploymentSpec
from modelops.core.objects import VersionView
from modelops.core.render import DeploymentInputs, render_deployment, render_node_cache_volume
from modelops.nodecache import layout
from modelops.nodecache.agent import Agent
from modelops.nodecache.layout import FillRequest, Phase, Reason
from modelops.nodecache.pods import is_pod_claim, pod_artifact
from modelops.nodecache.reader import CacheReader
from modelops.nodecache.store import Store
from modelops.serving.triton import CONFIG_ENV
from modelops.settings import Settings
from modelops.storage import ObjectStore, StorageConfig, TransferTuning
from tests.unit.test_core_render import MD_OWNER, model_spec

pytestmark = pytest.mark.unit

CACHED = Settings(node_cache_claim="modelops-nodecache", node_cache_path="/var/lib/modelops/cache", node_cache_wait_seconds=45)
UID = "5f0c2a4e-1b2c-4d3e-8f90-0123456789ab"
GRAPH, DATA = b"graph" * 300, b"weights" * 700
ENDPOINT = model_spec().storage.endpoint  # the agent's storage is the Model's


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_set_version() -> VersionView:
    files = ({"path": "model.onnx", "sha256": sha(GRAPH), "bytes": len(GRAPH)},
             {"path": "model.onnx.data", "sha256": sha(DATA), "bytes": len(DATA)})
    return VersionView(name="digits-v1", model="digits", version=1, phase="Ready", compressed_uri="s3://models/c/1/model.onnx",
                       compressed_sha256=sha(GRAPH), compressed_format="onnx", compressed_files=files)


def rendered(settings: Settings, version: VersionView | None = None) -> dict:
    return render_deployment(DeploymentInputs(
        name="digits", namespace="ns", owner=MD_OWNER, spec=ModelDeploymentSpec.model_validate({"model": "digits"}),
        model_name="digits", model=model_spec(), version=version or file_set_version(), settings=settings,
    ))


def pod_of(deployment: dict, uid: str = UID, phase: str = "Pending") -> dict:
    """A pod as the ReplicaSet makes it from the template."""
    template = deployment["spec"]["template"]
    return {"metadata": {**template["metadata"], "namespace": "ns", "name": f"digits-{uid[:5]}", "uid": uid},
            "spec": template["spec"], "status": {"phase": phase}}


# ------------------------------------------------------------------------- the operator's side


def test_pods_mount_the_claim_read_only_only_where_the_cache_is_on() -> None:
    plain = rendered(Settings())["spec"]["template"]["spec"]
    assert all("persistentVolumeClaim" not in v for v in plain["volumes"])
    assert "MODELOPS_NODECACHE_MOUNT" not in {e["name"] for e in plain["initContainers"][0]["env"]}

    spec = rendered(CACHED)["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "node-cache")
    assert volume == {"name": "node-cache", "persistentVolumeClaim": {"claimName": "modelops-nodecache", "readOnly": True}}
    fetch_container, server = spec["initContainers"][0], spec["containers"][0]
    for container in (fetch_container, server):  # the server follows the links into the cache
        assert {"name": "node-cache", "mountPath": "/cache", "readOnly": True} in container["volumeMounts"]
    env = {e["name"]: e for e in fetch_container["env"]}
    assert env["MODELOPS_NODECACHE_MOUNT"]["value"] == "/cache" and env["MODELOPS_NODECACHE_WAIT_SECONDS"]["value"] == "45"
    assert env["MODELOPS_POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert "hostPath" not in json.dumps(spec)  # Pod Security restricted forbids it


def test_each_namespace_gets_a_local_volume_bound_to_its_claim() -> None:
    volume, claim = render_node_cache_volume("serving-a", CACHED)
    assert volume["metadata"]["name"] == "modelops-nodecache-serving-a" and "namespace" not in volume["metadata"]
    assert volume["spec"]["local"] == {"path": "/var/lib/modelops/cache"}
    assert volume["spec"]["claimRef"]["namespace"] == "serving-a" and volume["spec"]["claimRef"]["name"] == "modelops-nodecache"
    assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Retain"  # deleting a claim never deletes the cache
    assert claim["metadata"] == {"name": "modelops-nodecache", "namespace": "serving-a", "labels": volume["metadata"]["labels"]}
    assert claim["spec"]["volumeName"] == volume["metadata"]["name"] and claim["spec"]["storageClassName"] == ""
    assert claim["spec"]["accessModes"] == volume["spec"]["accessModes"] == ["ReadOnlyMany"]


# ------------------------------------------------------------------------- the agent's side


def test_the_agent_reads_a_pods_artifact_from_its_fetch_container() -> None:
    pod = pod_of(rendered(CACHED))
    artifact = pod_artifact(pod)
    assert artifact is not None and artifact.name == f"pod-{UID}" and artifact.claim == f"ns.{UID}" and is_pod_claim(artifact.claim)
    assert artifact.request == FillRequest("s3://models/c/1/", (("model.onnx", sha(GRAPH)), ("model.onnx.data", sha(DATA))),
                                           "model.onnx", is_set=True, endpoint=ENDPOINT)
    assert layout.parse_request(artifact.request.document()) == artifact.request  # the spool file says the same
    single = pod_artifact(pod_of(rendered(CACHED, VersionView(
        name="digits-v2", model="digits", version=2, phase="Ready", compressed_uri="s3://models/c/2/model.onnx",
        compressed_sha256=sha(GRAPH), compressed_format="onnx"))))
    assert single is not None and single.request.digest == sha(GRAPH) and not single.request.is_set
    for gone in (pod_of(rendered(CACHED), phase="Succeeded"), {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "now"}}):
        assert pod_artifact(gone) is None
    assert pod_artifact(pod_of(rendered(Settings()))) is None  # a pod without the cache: nothing to fill for it


def _agent(root: Path, fake_s3, pods) -> Agent:
    objects = ObjectStore(StorageConfig(endpoint_url=ENDPOINT), TransferTuning(part_size=1000, max_concurrency=2, progress_interval_s=0.0), client=fake_s3)
    return Agent(Store(root, 10**6), objects, retry_s=5, pods=pods)


def test_the_agent_fills_and_pins_for_live_pods_and_unpins_the_gone(tmp_path, fake_s3) -> None:
    fake_s3.objects[("models", "c/1/model.onnx")] = (GRAPH, {})
    fake_s3.objects[("models", "c/1/model.onnx.data")] = (DATA, {})
    other_uid = UID.replace("5f0c", "6a1d")
    pods = [pod_of(rendered(CACHED)), pod_of(rendered(CACHED), uid=other_uid)]
    listed: list = [pods]
    agent = _agent(tmp_path, fake_s3, lambda: listed[0])
    agent.start()
    agent.scan()
    answer = json.loads((tmp_path / "status" / f"pod-{UID}.json").read_text())
    assert (answer["phase"], answer["reason"]) == (Phase.READY, Reason.FILLED), answer
    assert set(agent.store.pins()) == {f"ns.{UID}", f"ns.{other_uid}"}
    assert CacheReader(tmp_path).find(pod_artifact(pods[0]).request) is not None
    gets = [c for c in fake_s3.calls if c.startswith("get")]

    listed[0] = [pods[0]]  # the other pod is gone
    agent.scan()
    assert set(agent.store.pins()) == {f"ns.{UID}"} and not (tmp_path / "requests" / f"pod-{other_uid}.json").exists()
    assert [c for c in fake_s3.calls if c.startswith("get")] == gets  # nothing fetched twice

    def unreachable() -> list:
        raise ConnectionError("apiserver away")

    agent._pods = unreachable
    agent.scan()  # a failed list keeps the pins
    assert set(agent.store.pins()) == {f"ns.{UID}"}


def test_the_agent_fills_only_from_its_own_endpoint(tmp_path, fake_s3) -> None:
    deployment = rendered(CACHED)
    fetch_container = deployment["spec"]["template"]["spec"]["initContainers"][0]
    endpoint = next(e for e in fetch_container["env"] if e["name"] == "MODELOPS_S3_ENDPOINT")
    endpoint["value"] = "https://elsewhere.example:9000"  # another Model's storage
    agent = _agent(tmp_path, fake_s3, lambda: [pod_of(deployment)])
    agent.scan()
    answer = json.loads((tmp_path / "status" / f"pod-{UID}.json").read_text())
    assert (answer["phase"], answer["reason"]) == (Phase.FAILED, Reason.OTHER_STORAGE), answer
    assert "elsewhere.example" in answer["message"] and not [c for c in fake_s3.calls if c.startswith("get")]


# ------------------------------------------------------------------------- the pod's fetch


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def heartbeat(root: Path, at: float) -> None:
    (root / layout.HEARTBEAT).write_text("{}")
    os.utime(root / layout.HEARTBEAT, (at, at))


def test_the_reader_waits_only_while_waiting_can_help(tmp_path) -> None:
    clock = Clock()
    reader = CacheReader(tmp_path, clock=clock)
    wanted = FillRequest("s3://models/c/2/model.onnx", (("model.onnx", sha(GRAPH)),), None, is_set=False)
    hit, why = reader.wait(wanted, "pod-x", 300, sleep=clock.sleep)
    assert hit is None and "no node cache agent" in why and clock.now == 1_000_000.0  # no agent: no wait

    heartbeat(tmp_path, clock.now)
    hit, why = reader.wait(wanted, "pod-x", 300, agent_timeout_s=30, sleep=lambda s: (clock.sleep(s), heartbeat(tmp_path, clock.now)))
    assert hit is None and "has not taken this pod's request" in why and 30 < clock.now - 1_000_000.0 < 32

    (tmp_path / "status").mkdir(exist_ok=True)
    (tmp_path / "status" / "pod-x.json").write_text(json.dumps({"phase": "Failed", "reason": "ChecksumMismatch", "message": "file 'w'"}))
    heartbeat(tmp_path, clock.now)
    hit, why = reader.wait(wanted, "pod-x", 300, sleep=clock.sleep)
    assert hit is None and "Failed ChecksumMismatch" in why

    Store(tmp_path, 10**6).fill(sha(GRAPH), len(GRAPH), lambda dest: dest.write_bytes(GRAPH))
    hit, _ = reader.wait(wanted, "pod-x", 300, sleep=clock.sleep)
    assert hit is not None and hit.files == (("model.onnx", tmp_path / "sha256" / sha(GRAPH)),)


class NoDownloads:
    """Storage that must not be read: a warm start downloads nothing."""

    def __init__(self, config) -> None:
        pass

    def download(self, *args, **kwargs):
        raise AssertionError(f"downloaded {args[0]}")


def test_a_fetch_links_a_cached_file_set_and_downloads_nothing(tmp_path) -> None:
    cache, repository = tmp_path / "cache", tmp_path / "models"
    store = Store(cache, 10**6)
    for data in (GRAPH, DATA):
        store.fill(sha(data), len(data), lambda dest, data=data: dest.write_bytes(data))
    wanted = pod_artifact(pod_of(rendered(CACHED))).request
    store.store_manifest(wanted.manifest({sha(GRAPH): len(GRAPH), sha(DATA): len(DATA)}))
    heartbeat(cache, __import__("time").time())
    container = rendered(CACHED)["spec"]["template"]["spec"]["initContainers"][0]
    args = [a if a != "/models" else str(repository) for a in container["args"]]
    env = {CONFIG_ENV: "name: \"digits\"", fetch.NODE_CACHE_ENV: str(cache), fetch.POD_UID_ENV: UID,
           fetch.TERMINATION_LOG_ENV: str(tmp_path / "termination-log")}
    assert fetch.main(args, env, store_factory=NoDownloads) == 0
    version = repository / "digits" / "1"
    graph = next(p for p in version.iterdir() if p.suffix == ".onnx")
    assert graph.is_symlink() and os.readlink(graph) == str(cache / "sha256" / sha(GRAPH)) and graph.read_bytes() == GRAPH
    assert (version / "model.onnx.data").is_symlink() and (version / "model.onnx.data").read_bytes() == DATA
    message = (tmp_path / "termination-log").read_text()
    assert "from the node cache" in message and "0 bytes downloaded" in message, message

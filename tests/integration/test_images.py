"""The images `make images` builds, and the test bed running them as a node would.

scripts/run-tests.sh builds the operator image (images/build.sh operator, cached by its
inputs) before pytest starts; build/images/operator.json names it and its directory.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, eventually

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/modelops/modelops-operator:0.1.0"
# What Pod Security "restricted" (enforced on the test namespaces) asks of a pod and a container.
POD_RESTRICTED = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def allow_root(testbed: Any, namespace: str) -> None:
    """Let this namespace run root pods: the tests of runAsUser 0 need one."""
    testbed.kubectl("label", "--overwrite", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")


def operator_image() -> Path:
    record = ROOT / "build" / "images" / "operator.json"
    assert record.is_file(), "the operator image is not built: scripts/run-tests.sh builds it (images/build.sh operator)"
    entry = json.loads(record.read_text())
    assert entry["image"] == IMAGE
    directory = Path(entry["dir"])
    assert (directory / ".complete").is_file(), f"{directory} is an unfinished build"
    return directory


def test_the_operator_image_has_its_lock_and_no_torch_compiler_or_pip() -> None:
    directory = operator_image()
    rootfs = directory / "rootfs"
    site = rootfs / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    listed = {p.name.lower() for p in site.iterdir()}
    print("site-packages of", IMAGE, sorted(listed))
    for wanted in ("kopf", "kubernetes", "pydantic", "boto3", "prometheus_client", "yaml"):
        assert wanted in listed, f"{wanted} is missing from the operator image"
    # No torch, nor anything only the compressor needs, nor CUDA.
    unwanted = {n for n in listed if n.split("-")[0] in {"torch", "torchao", "functorch", "torchgen", "triton", "onnx", "onnxruntime"}
                or n.startswith("nvidia")}
    assert not unwanted, f"the operator image carries {sorted(unwanted)}"
    # Exactly the lock's packages: the same names and versions.
    lock = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1].split()[0]
            for line in (ROOT / "requirements" / "operator.lock").read_text().splitlines() if "==" in line and not line.startswith(" ")}
    installed = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
                 for line in (directory / "packages.txt").read_text().splitlines()}
    assert installed == lock
    # The final stage has no compiler, no pip and no pip cache.
    for tool in ("gcc", "cc", "c++", "x86_64-linux-gnu-gcc-12", "make"):
        assert not (rootfs / "usr" / "bin" / tool).exists(), f"/usr/bin/{tool} is in the operator image"
    assert not (site / "pip").exists() and not (rootfs / "opt" / "venv" / "bin" / "pip").exists()
    assert not (rootfs / "root" / ".cache" / "pip").exists()
    config = json.loads((directory / "config.json").read_text())
    uid, _, gid = config["User"].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    assert config["Entrypoint"] == ["python", "-m", "modelops"] and config["WorkingDir"] == "/app"


PROBE = textwrap.dedent("""
    import errno, json, os, socket, sys
    facts = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()), "cwd": os.getcwd(),
             "prefix": sys.prefix, "hostname": socket.gethostname(), "pythonpath": os.environ.get("PYTHONPATH"),
             "greeting": os.environ.get("GREETING"), "config": open("/config/greeting").read()}
    facts["os"] = dict(l.split("=", 1) for l in open("/etc/os-release").read().split()  if "=" in l).get("VERSION_CODENAME")
    try:
        open("/written-to-root", "w")
        facts["root"] = "writable"
    except OSError as err:
        facts["root"] = errno.errorcode[err.errno]
    with open("/scratch/out", "w") as out:
        out.write("ok")
    facts["scratch"] = oct(os.stat("/scratch").st_mode & 0o7777)
    facts["no_new_privs"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]
    try:
        import torch  # noqa: F401
        facts["torch"] = True
    except ModuleNotFoundError:
        facts["torch"] = False
    open("/dev/termination-log", "w").write(json.dumps(facts))
""")


def run_to_completion(testbed: Any, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    testbed.apply(namespace, [pod])
    name = pod["metadata"]["name"]
    testbed.kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", f"pod/{name}", "-n", namespace, "--timeout=120s")
    return testbed.get(namespace, "pod", name)["status"]["containerStatuses"][0]["state"]["terminated"]


def test_a_pod_of_the_built_image_runs_in_its_root_as_its_security_context_says(testbed, namespace) -> None:
    operator_image()
    testbed.apply(namespace, [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "greeting"}, "data": {"greeting": "hello"}}])
    terminated = run_to_completion(testbed, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "facts"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {**POD_RESTRICTED, "runAsUser": 1234, "runAsGroup": 2345, "fsGroup": 3456},
            "containers": [{
                "name": "main", "image": IMAGE, "command": ["python", "-c", PROBE],
                "env": [{"name": "GREETING", "value": "from the pod"}],
                "securityContext": {**CONTAINER_RESTRICTED, "readOnlyRootFilesystem": True},
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}, {"name": "config", "mountPath": "/config"}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "config", "configMap": {"name": "greeting"}}],
        },
    })
    facts = json.loads(terminated["message"])
    assert facts == {
        "uid": 1234, "gid": 2345, "groups": [2345, 3456], "cwd": "/app", "prefix": "/opt/venv", "hostname": "facts",
        "pythonpath": "/app/operator", "greeting": "from the pod", "config": "hello", "os": "bookworm",
        "root": "EROFS", "scratch": "0o2777", "no_new_privs": "1", "torch": False,
    }
    assert testbed.image_path(namespace, "facts", "main") == "image"


def test_the_image_user_runs_where_the_pod_names_none_and_writes_stay_in_the_container(testbed, namespace) -> None:
    rootfs = operator_image() / "rootfs"
    who = "import os; open('/dev/termination-log', 'w').write(f'{os.getuid()}:{os.getgid()}')"
    terminated = run_to_completion(testbed, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "image-user"},
        "spec": {"restartPolicy": "Never", "securityContext": POD_RESTRICTED, "containers": [{
            "name": "main", "image": IMAGE, "command": ["python", "-c", who], "securityContext": CONTAINER_RESTRICTED}]},
    })
    assert terminated["message"] == "65532:65532"
    allow_root(testbed, namespace)
    # runAsUser alone keeps the image's group; a writable root takes the write in the
    # container's own layer, never in the image that every pod shares.
    terminated = run_to_completion(testbed, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root-user"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": IMAGE, "command": ["python", "-c", f"open('/app/touched', 'w').write('x'); {who}"],
            "securityContext": {"runAsUser": 0},
        }]},
    })
    assert terminated["message"] == "0:65532"
    assert not (rootfs / "app" / "touched").exists()


def test_run_as_non_root_refuses_a_root_user(testbed, namespace) -> None:
    operator_image()
    allow_root(testbed, namespace)  # so that the node, not admission, refuses it
    testbed.apply(namespace, [{
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"},
        "spec": {"restartPolicy": "Never", "securityContext": {"runAsNonRoot": True, "runAsUser": 0},
                 "containers": [{"name": "main", "image": IMAGE, "command": ["python", "-c", "pass"]}]},
    }])

    def refused() -> dict[str, Any] | None:
        statuses = testbed.get(namespace, "pod", "root")["status"].get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return waiting if waiting.get("reason") == "CreateContainerConfigError" else None

    waiting = eventually(refused, 60, "the pod to be refused")
    assert "runAsNonRoot and image will run as root" in waiting["message"]


def test_an_image_tag_not_built_here_runs_in_the_development_virtualenv(testbed, namespace) -> None:
    terminated = run_to_completion(testbed, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dev"},
        "spec": {"restartPolicy": "Never", "securityContext": {**POD_RESTRICTED, "runAsUser": 65532}, "containers": [{
            "name": "main", "image": "ghcr.io/modelops/modelops-operator:0.0.0-dev", "securityContext": CONTAINER_RESTRICTED,
            "command": ["python", "-c", "import sys; open('/dev/termination-log', 'w').write(sys.prefix)"]}]},
    })
    assert terminated["message"] == str(Path(testbed.python).parent.parent)
    assert testbed.image_path(namespace, "dev", "main") == "venv"

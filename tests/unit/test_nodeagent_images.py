"""How the test bed's node agent picks an image's runtime and the user a container runs as."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e.nodeagent.images import ContainerConfigError, container_argv, identity, resolve_image
from e2e.nodeagent.sandbox import path_in_root

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "ghcr.io/modelops/modelops-operator:0.1.0"


def built_checkout(tmp_path: Path, image: str = IMAGE, complete: bool = True) -> Path:
    """A checkout whose build/images names an image directory, as images/build.sh leaves it."""
    directory = tmp_path / "cache" / "operator-0123456789abcdef"
    (directory / "rootfs").mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({
        "User": "65532:65532", "Entrypoint": ["python", "-m", "modelops"], "Cmd": ["--verbose"],
        "WorkingDir": "/app", "Env": ["PATH=/opt/venv/bin:/usr/bin:/bin", "PYTHONPATH=/app/operator", "EQ=a=b"],
    }))
    if complete:
        (directory / ".complete").touch()
    checkout = tmp_path / "checkout"
    (checkout / "build" / "images").mkdir(parents=True)
    (checkout / "build" / "images" / "operator.json").write_text(json.dumps({"image": image, "key": "0123456789abcdef", "dir": str(directory)}))
    (checkout / "images" / "operator").mkdir(parents=True)
    (checkout / "images" / "operator" / "Dockerfile").write_text((ROOT / "images" / "operator" / "Dockerfile").read_text())
    return checkout


def test_a_built_image_runs_from_its_root_filesystem_with_its_config(tmp_path):
    runtime = resolve_image(IMAGE, built_checkout(tmp_path))
    assert runtime.kind == "image"
    assert runtime.rootfs == tmp_path / "cache" / "operator-0123456789abcdef" / "rootfs"
    assert (runtime.entrypoint, runtime.cmd, runtime.workdir, runtime.user) == (["python", "-m", "modelops"], ["--verbose"], "/app", "65532:65532")
    assert runtime.env == {"PATH": "/opt/venv/bin:/usr/bin:/bin", "PYTHONPATH": "/app/operator", "EQ": "a=b"}
    assert container_argv({"args": ["--once"]}, runtime) == ["python", "-m", "modelops", "--once"]
    assert "built by make images (key 0123456789abcdef)" in runtime.describe("operator", IMAGE)


@pytest.mark.parametrize("image, complete", [
    ("ghcr.io/modelops/modelops-operator:9.9.9", True),  # another tag than the one built
    (IMAGE, False),  # a build that did not finish
])
def test_an_image_not_built_here_runs_in_the_development_virtualenv(tmp_path, image, complete):
    checkout = built_checkout(tmp_path, complete=complete)
    runtime = resolve_image(image, checkout)
    assert runtime.kind == "project" and runtime.rootfs is None
    assert runtime.entrypoint == ["python", "-m", "modelops"]
    assert "development virtualenv" in runtime.describe("operator", image)


POD_RESTRICTED = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 3000,
                                      "supplementalGroups": [4000]}}


@pytest.mark.parametrize("pod, container, image_user, expected", [
    # The image's USER when nothing overrides it.
    ({}, {}, "65532:65532", (65532, 65532, (65532,), False, False)),
    ({}, {}, "65532", (65532, 0, (0,), False, False)),
    ({}, {}, "", (0, 0, (0,), False, False)),
    # The pod's securityContext over the image, the container's over the pod's.
    (POD_RESTRICTED, {}, "65532:65532", (1000, 2000, (2000, 4000, 3000), False, False)),
    (POD_RESTRICTED, {"securityContext": {"runAsUser": 7, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}},
     "65532:65532", (7, 2000, (2000, 4000, 3000), True, True)),
    # A user name is fine where runAsUser names the uid.
    ({"securityContext": {"runAsUser": 5}}, {}, "nobody", (5, 0, (0,), False, False)),
])
def test_identity_follows_the_kubelets_order(pod, container, image_user, expected):
    who = identity(pod, container, image_user)
    assert (who.uid, who.gid, who.groups, who.read_only_root, who.no_new_privileges) == expected


@pytest.mark.parametrize("pod, container, image_user, message", [
    ({"securityContext": {"runAsNonRoot": True}}, {}, "0:0", "runAsNonRoot and image will run as root"),
    ({"securityContext": {"runAsNonRoot": True}}, {}, "", "runAsNonRoot and image will run as root"),
    ({}, {"securityContext": {"runAsNonRoot": True, "runAsUser": 0}}, "65532:65532", "runAsNonRoot and image will run as root"),
    ({}, {}, "app", "image user 'app' is not numeric; set securityContext.runAsUser"),
])
def test_identity_refuses_what_the_kubelet_refuses(pod, container, image_user, message):
    with pytest.raises(ContainerConfigError, match=message):
        identity(pod, container, image_user)


def test_mount_paths_follow_the_images_symlinks_inside_the_image(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "run").mkdir(parents=True)
    (rootfs / "var").mkdir()
    (rootfs / "var" / "run").symlink_to("/run")  # Debian's
    (rootfs / "opt").mkdir()
    (rootfs / "opt" / "up").symlink_to("../../../../etc")  # climbs no higher than the image root
    (rootfs / "loop").symlink_to("loop")
    assert path_in_root(rootfs, "/var/run/secrets/kubernetes.io/serviceaccount") == "/run/secrets/kubernetes.io/serviceaccount"
    assert path_in_root(rootfs, "/opt/up/passwd") == "/etc/passwd"
    assert path_in_root(rootfs, "/models/../models/./x") == "/models/x"
    with pytest.raises(Exception, match="too many symbolic links"):
        path_in_root(rootfs, "/loop/x")

"""Which container images the node agent can run, and how.

There is no container engine on the test bed. The agent runs three kinds of images:

- an image that `make images` built for this checkout (build/images/<name>.json names it
  and its directory under the image cache): the container runs inside that image's
  unpacked root filesystem, with the image's entrypoint, cmd, env, working directory and
  user (see sandbox.image_launch_script);
- the project's other images (ghcr.io/modelops/modelops-<component>, a tag not built
  here): the same command, args and env, in the project's Python environment, with the
  checkout mounted read-only at the images' WORKDIR (/app) and /app/operator on
  PYTHONPATH. The default entrypoint and cmd are read from images/<component>/Dockerfile,
  so a pod that relies on the image's ENTRYPOINT behaves as it would on a real node;
- the NVIDIA Triton image (nvcr.io/nvidia/tritonserver): its `tritonserver` command runs
  the real binary shipped in the nvidia-pytriton wheel (python backend only).

Anything else cannot run here, and the pod says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_REPOSITORY = re.compile(r"^(?:ghcr\.io/)?modelops/modelops-(?P<component>[a-z0-9-]+)$")
TRITON_REPOSITORY = "nvcr.io/nvidia/tritonserver"
# Where a project image has the project (the Dockerfiles' WORKDIR). The agent bind-mounts the
# checkout there, read-only, so the code stays visible whatever volumes the pod mounts (an
# emptyDir over /tmp would otherwise hide a checkout under /tmp).
PROJECT_MOUNT = "/app"


class UnrunnableImage(Exception):
    """The image is neither one of the project's images nor Triton."""


@dataclass(frozen=True)
class ImageRuntime:
    kind: str  # "image" (a built image's root filesystem), "project" (the dev venv) or "triton"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    rootfs: Path | None = None
    key: str = ""  # the built image's cache key

    def describe(self, container: str, image: str) -> str:
        """What the pod's Pulled event says about how this container runs."""
        if self.kind == "image":
            return f'Container {container}: image "{image}" built by make images (key {self.key}), running in its root filesystem'
        if self.kind == "project":
            return f'Container {container}: image "{image}" is not built here, running in the development virtualenv'
        return f'Container {container}: image "{image}", running the tritonserver of the nvidia-pytriton wheel'


class ContainerConfigError(Exception):
    """The container's securityContext cannot be honoured with this image (CreateContainerConfigError)."""


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    read_only_root: bool
    no_new_privileges: bool


def identity(pod_spec: dict, container: dict, image_user: str) -> Identity:
    """The user a container runs as, as the kubelet decides it: the container's
    securityContext, then the pod's, then the image's USER; runAsNonRoot refuses uid 0."""
    pod_sc = pod_spec.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    user, _, group = image_user.partition(":")
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    if uid is None:
        if user and not user.isdigit():
            raise ContainerConfigError(f"image user {user!r} is not numeric; set securityContext.runAsUser")
        uid = int(user) if user else 0
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if gid is None:
        gid = int(group) if group.isdigit() else 0
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid == 0:
        raise ContainerConfigError("container has runAsNonRoot and image will run as root")
    groups = [gid, *(pod_sc.get("supplementalGroups") or [])]
    if pod_sc.get("fsGroup") is not None:
        groups.append(pod_sc["fsGroup"])
    return Identity(
        uid=int(uid), gid=int(gid), groups=tuple(dict.fromkeys(int(g) for g in groups)),
        read_only_root=bool(sc.get("readOnlyRootFilesystem")),
        no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
    )


def built_images(project_root: Path) -> dict[str, Path]:
    """The images `make images` built for this checkout: reference -> image directory."""
    found = {}
    for record in sorted((project_root / "build" / "images").glob("*.json")):
        try:
            entry = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        directory = Path(entry["dir"])
        if (directory / ".complete").is_file():
            found[entry["image"]] = directory
    return found


def built_runtime(directory: Path) -> ImageRuntime:
    config = json.loads((directory / "config.json").read_text())
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return ImageRuntime(
        kind="image", entrypoint=list(config.get("Entrypoint") or []), cmd=list(config.get("Cmd") or []),
        workdir=config.get("WorkingDir") or "/", env=env, user=config.get("User") or "",
        rootfs=directory / "rootfs", key=directory.name.rsplit("-", 1)[-1],
    )


def repository_of(image: str) -> str:
    """The image reference without its tag or digest."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > last_slash else name


def _dockerfile_instruction(text: str, instruction: str) -> list[str] | str | None:
    """The last value of an instruction: a list for the JSON (exec) form, else the raw string."""
    value = None
    for line in text.splitlines():
        match = re.match(rf"^\s*{instruction}\s+(.*)$", line, re.IGNORECASE)
        if match:
            raw = match.group(1).strip()
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
    return value


def resolve_image(image: str, project_root: Path) -> ImageRuntime:
    built = built_images(project_root)
    if image in built:
        return built_runtime(built[image])
    repository = repository_of(image)
    if repository == TRITON_REPOSITORY:
        return ImageRuntime(kind="triton", entrypoint=["tritonserver"])
    match = PROJECT_REPOSITORY.match(repository)
    if match:
        dockerfile = project_root / "images" / match.group("component") / "Dockerfile"
        if not dockerfile.is_file():
            raise UnrunnableImage(
                f"image {image!r} names the project component {match.group('component')!r}, "
                f"but {dockerfile.relative_to(project_root)} does not exist"
            )
        text = dockerfile.read_text()
        entrypoint = _dockerfile_instruction(text, "ENTRYPOINT") or []
        cmd = _dockerfile_instruction(text, "CMD") or []
        if isinstance(entrypoint, str) or isinstance(cmd, str):
            raise UnrunnableImage(f"{dockerfile} must use the exec (JSON) form for ENTRYPOINT and CMD")
        # The image has the project at its WORKDIR; the agent mounts the checkout there.
        return ImageRuntime(kind="project", entrypoint=entrypoint, cmd=cmd, workdir=PROJECT_MOUNT)
    raise UnrunnableImage(
        f"image {image!r} cannot run on this test bed node: it runs only the project's images "
        f"(ghcr.io/modelops/modelops-<component>) and {TRITON_REPOSITORY}"
    )


def container_argv(container: dict, runtime: ImageRuntime) -> list[str]:
    """Kubernetes' rule: command replaces ENTRYPOINT, args replace CMD."""
    command = container.get("command") or []
    args = container.get("args") or []
    if command:
        return [*command, *args]
    if args:
        return [*runtime.entrypoint, *args]
    return [*runtime.entrypoint, *runtime.cmd]

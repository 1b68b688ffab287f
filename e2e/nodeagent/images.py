"""Which container images the node agent can run, and how.

There is no container engine on the test bed. The agent runs two kinds of images as
local processes instead:

- the project's own images (ghcr.io/modelops/modelops-<component>): the same command,
  args and env, in the project's Python environment, with the checkout mounted read-only
  at the images' WORKDIR (/app) and /app/operator on PYTHONPATH. The default entrypoint
  and cmd are read from images/<component>/Dockerfile, so a pod that relies on the image's
  ENTRYPOINT behaves as it would on a real node;
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
    kind: str  # "project" or "triton"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    workdir: str = "/"


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

"""Run the real tritonserver from the nvidia-pytriton wheel as a local process.

The Triton container's command (``tritonserver --model-repository=/models ...``) is turned into
the wheel's binary with the environment it needs on a machine without the NGC image:

* ``LD_LIBRARY_PATH``: the wheel's bundled libraries (``nvidia_pytriton.libs``) and the
  directory of the interpreter's libpython, which the python backend stub links;
* ``--backend-directory``: a backend folder assembled under a cache directory: the wheel's
  backends, linked, plus the python backend stub built for this interpreter's version
  (the wheel keeps one stub per Python version in ``python_backend_stubs/<X.Y>/``);
* ``PATH`` starting with this environment's ``bin``: the stub embeds Python, ignores
  ``PYTHONPATH``/``PYTHONHOME``, and takes its prefix (so the venv's site-packages with numpy
  and onnxruntime) from the ``python3`` it finds first on ``PATH``.

The shared environment is never modified. Standard library only, so any harness can import it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"
BACKEND_DIRECTORY_FLAG = "--backend-directory"


class TritonUnavailable(RuntimeError):
    """The nvidia-pytriton wheel, or the stub for this Python, is not installed."""


def wheel_root() -> Path:
    """The wheel's ``pytriton/tritonserver`` folder."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonUnavailable("the nvidia-pytriton wheel is not installed in this interpreter's environment")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise TritonUnavailable(f"{root}/bin/tritonserver is missing; reinstall nvidia-pytriton")
    return root


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def backend_directory(cache_dir: Path) -> Path:
    """Return (building once) a backend folder: the wheel's backends plus this Python's stub."""
    root = wheel_root()
    stub = root / "python_backend_stubs" / _python_tag() / STUB_NAME
    if not stub.is_file():
        raise TritonUnavailable(f"the wheel has no python backend stub for Python {_python_tag()} ({stub})")
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    target = Path(cache_dir) / f"triton-backends-py{_python_tag()}-{digest}"
    if (target / "python" / STUB_NAME).is_file():
        return target
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".triton-backends-", dir=cache_dir))
    try:
        for backend in sorted((root / "backends").iterdir()):
            (staging / backend.name).mkdir()
            for item in backend.iterdir():
                (staging / backend.name / item.name).symlink_to(item.resolve())
        # The stub is copied, not linked: the python backend looks for it in its own folder.
        shutil.copy2(stub, staging / "python" / STUB_NAME)
        try:
            os.replace(staging, target)
        except OSError:
            # Another caller finished first; its folder is equivalent.
            if not (target / "python" / STUB_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _has_flag(argv: list[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def triton_command(argv: list[str], cache_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Map a Triton container command to the local binary's argv and the env to add.

    The returned env values replace variables of the same name in the pod's environment.
    """
    if not argv or Path(argv[0]).name != "tritonserver":
        raise ValueError(f"argv[0] must be tritonserver, got {argv[:1]!r}")
    root = wheel_root()
    real_argv = [str(root / "bin" / "tritonserver"), *argv[1:]]
    if not _has_flag(real_argv, BACKEND_DIRECTORY_FLAG):
        real_argv.append(f"{BACKEND_DIRECTORY_FLAG}={backend_directory(cache_dir)}")
    site_packages = root.parent.parent
    library_dirs = [str(site_packages / "nvidia_pytriton.libs")]
    libpython_dir = sysconfig.get_config_var("LIBDIR")
    if libpython_dir and sysconfig.get_config_var("Py_ENABLE_SHARED"):
        library_dirs.append(libpython_dir)
    search_path = os.environ.get("PATH", os.defpath)
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join(library_dirs),
        "PATH": os.pathsep.join([str(Path(sys.prefix) / "bin"), search_path]),
    }
    return real_argv, env


@dataclass(frozen=True)
class LocalServer:
    http_url: str  # host:port, as tritonclient takes it
    grpc_url: str
    pid: int
    ready_s: float  # seconds from start until /v2/health/ready answered 200


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, held open together so none is handed out twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def serve_locally(repository: Path, cache_dir: Path, log: Path, ready_timeout_s: float,
                  extra_env: dict[str, str] | None = None) -> Iterator[LocalServer]:
    """Run the wheel's tritonserver on free 127.0.0.1 ports until it is ready; always stop it.

    Raises RuntimeError, with the end of the server's log, if it exits or is not ready in time.
    """
    http_port, grpc_port, metrics_port = free_ports(3)
    argv, env_additions = triton_command([
        "tritonserver", f"--model-repository={repository}",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
        "--exit-timeout-secs=10",
    ], cache_dir)
    env = {**os.environ, **env_additions, **(extra_env or {})}
    with log.open("wb") as log_file:
        process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() - started > ready_timeout_s:
                raise RuntimeError(f"tritonserver not ready within {ready_timeout_s:.0f} s:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)  # polling the readiness endpoint; the server offers nothing to watch
        yield LocalServer(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process.pid, time.monotonic() - started)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


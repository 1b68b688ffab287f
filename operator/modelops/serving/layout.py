"""Write one model into a Triton model repository.

Layout: <repo>/<model>/config.pbtxt and <repo>/<model>/<version>/<artifact>, plus model.py for
the python backend. The model folder is assembled beside its final place and renamed into it,
so a repository never holds a half-written model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from modelops.api.deployment import Backend
from modelops.serving.config import (
    PYTHON_BACKEND_FILE,
    artifact_filename,
    backend_of,
    validate_model_name,
    validate_version,
)

STAGING_PREFIX = ".staging-"

Placement = Literal["copy", "move", "link"]
_PLACE: dict[str, Callable[[str, Path], object]] = {"copy": shutil.copyfile, "move": shutil.move, "link": os.symlink}


def python_backend_model_source() -> str:
    """The model.py that runs an ONNX file with onnxruntime inside Triton's python backend."""
    return resources.files("modelops.serving.python_backend").joinpath("model.py").read_text(encoding="utf-8")


def layout_model_repository(
    repo_dir: str | os.PathLike[str],
    model_name: str,
    version: int,
    backend: str,
    artifact_path: str | os.PathLike[str] | None,
    config_text: str,
    *,
    place: Placement = "copy",
    data_files: Sequence[tuple[str, Path]] = (),
) -> Path:
    """Place the artifact and its config into the repository and return the model folder.

    An existing folder for the same model is replaced as a whole. `place` says how each file
    gets there: copied; moved (the fetcher downloads into the repository's filesystem, so this
    is a cheap rename); or linked, a symbolic link to it (the node cache's entries, mounted
    read-only in the pod). `data_files` are (relative path, file) pairs placed the same way in the version folder: an ONNX graph's external data, or
    with no artifact a directory served as uploaded.
    """
    validate_model_name(model_name)
    validate_version(version)
    backend = backend_of(backend)
    repo = Path(repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    final = repo / model_name
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{model_name}-", dir=repo))
    try:
        (staging / "config.pbtxt").write_text(config_text, encoding="utf-8")
        version_dir = staging / str(version)
        version_dir.mkdir()
        put = _PLACE[place]
        if artifact_path is not None:
            put(os.fspath(artifact_path), version_dir / artifact_filename(backend))
        for relative, source in data_files:
            target = version_dir / relative
            if not target.resolve().is_relative_to(version_dir.resolve()):
                raise ValueError(f"{relative!r} leaves the version folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            put(os.fspath(source), target)
        if backend == Backend.PYTHON:
            (version_dir / PYTHON_BACKEND_FILE).write_text(python_backend_model_source(), encoding="utf-8")
        staging.chmod(0o755)
        _replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _replace_dir(source: Path, destination: Path) -> None:
    """Rename source onto destination; a directory cannot be renamed over a non-empty one."""
    if not destination.exists():
        os.replace(source, destination)
        return
    retired = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}retired-", dir=destination.parent))
    os.replace(destination, retired / destination.name)
    os.replace(source, destination)
    shutil.rmtree(retired, ignore_errors=True)

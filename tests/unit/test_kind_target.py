"""TESTBED=kind make cluster-up says clearly what is missing where no container engine runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

UP = Path(__file__).resolve().parents[2] / "e2e" / "testbed" / "kind" / "up.sh"


def run(path: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "MODELOPS_CACHE": str(tmp_path)}
    return subprocess.run(["bash", str(UP)], capture_output=True, text=True, env=env, timeout=30)


def tool(folder: Path, name: str, script: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\n{script}\n")
    (folder / name).chmod(0o755)


def test_without_kind_it_exits_2_and_names_what_is_missing(tmp_path: Path) -> None:
    result = run("/usr/bin:/bin", tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "kind is not installed" in result.stderr and "make cluster-up" in result.stderr


def test_with_kind_but_no_docker_engine_it_says_so(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    tool(bin_dir, "kind", "echo kind should not be called >&2; exit 99")
    assert "docker is not installed" in run(f"{bin_dir}:/usr/bin:/bin", tmp_path).stderr
    tool(bin_dir, "docker", "echo 'Cannot connect to the Docker daemon' >&2; exit 1")
    result = run(f"{bin_dir}:/usr/bin:/bin", tmp_path)
    assert result.returncode == 2
    assert "no engine answers" in result.stderr and "kind should not be called" not in result.stderr

"""e2e/testbed/build.sh serialises concurrent callers: the second waits, then reuses the first's build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD = REPO_ROOT / "e2e" / "testbed" / "build.sh"

# A stand-in for the Go toolchain: records each build and writes the binary that `-o` names,
# slowly enough that two unserialised callers would both find a module unbuilt.
FAKE_GO = """#!/bin/sh
if [ "$1" = version ]; then echo "go version go0.0-fake linux/amd64"; exit 0; fi
echo "start $(basename "$PWD")" >>"$FAKE_GO_LOG"
sleep 0.3
while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
case "$out" in */) touch "${out}binary" ;; *) touch "$out" ;; esac
echo "end $(basename "$PWD")" >>"$FAKE_GO_LOG"
"""


def test_two_concurrent_builds_build_each_module_once_and_print_the_same_directory(tmp_path):
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    (fake_bin / "go").write_text(FAKE_GO)
    (fake_bin / "go").chmod(0o755)
    log = tmp_path / "go.log"
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
           "MODELOPS_CACHE": str(tmp_path / "cache"), "FAKE_GO_LOG": str(log)}
    callers = [subprocess.Popen([str(BUILD)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    results = [caller.communicate(timeout=60) for caller in callers]
    assert [caller.returncode for caller in callers] == [0, 0], [err for _, err in results]
    printed = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(printed) == 1, printed
    linked = Path(printed.pop())
    assert (linked / ".complete").is_file() and (linked / "etcd").exists()
    lines = log.read_text().splitlines()
    modules = sorted(line.split()[1] for line in lines if line.startswith("start"))
    assert modules == sorted(["etcd", "kubernetes", "helm", "minio", "kubeconform", "kwok"]), lines
    # Never two builds at once: every start is followed by its own end.
    assert all(lines[i].split()[0] == "start" and lines[i + 1] == "end" + lines[i][5:]
               for i in range(0, len(lines), 2)), lines

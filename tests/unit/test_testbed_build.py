"""e2e/testbed/build.sh serialises concurrent callers: the second waits, then reuses the first's build;
a long build of one module (the on-demand Prometheus) holds up no caller that needs the others."""

from __future__ import annotations

import os
import subprocess
import time
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
# The on-demand module builds until the test releases it.
if [ "$(basename "$PWD")" = prometheus ]; then until [ -e "$FAKE_GO_RELEASE" ]; do sleep 0.05; done; fi
while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
case "$out" in */) touch "${out}binary" ;; *) touch "$out" ;; esac
echo "end $(basename "$PWD")" >>"$FAKE_GO_LOG"
"""


def _fake_go_env(tmp_path: Path) -> dict[str, str]:
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    (fake_bin / "go").write_text(FAKE_GO)
    (fake_bin / "go").chmod(0o755)
    return {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
            "MODELOPS_CACHE": str(tmp_path / "cache"), "FAKE_GO_LOG": str(tmp_path / "go.log"),
            "FAKE_GO_RELEASE": str(tmp_path / "release")}


def test_two_concurrent_builds_build_each_module_once_and_print_the_same_directory(tmp_path):
    env = _fake_go_env(tmp_path)
    log = Path(env["FAKE_GO_LOG"])
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


def test_a_running_on_demand_build_does_not_hold_up_the_default_modules(tmp_path):
    env = _fake_go_env(tmp_path)
    prometheus = subprocess.Popen([str(BUILD), "prometheus"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    log = Path(env["FAKE_GO_LOG"])
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and "start prometheus" in log.read_text()):
            assert prometheus.poll() is None and time.monotonic() < deadline, "the Prometheus build never started"
            time.sleep(0.05)
        # The default build finishes while Prometheus's is still running (it waits for the release).
        default = subprocess.run([str(BUILD)], env=env, capture_output=True, text=True, timeout=60)
        assert default.returncode == 0, default.stderr
        assert prometheus.poll() is None
    finally:
        Path(env["FAKE_GO_RELEASE"]).touch()
        out, err = prometheus.communicate(timeout=60)
    assert prometheus.returncode == 0, err
    assert Path(out.strip().splitlines()[-1], "prometheus").exists()

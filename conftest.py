"""Shared pytest wiring: the local test bed, a namespace per test, and failure dumps.

Tests marked `integration` or `e2e` use the `testbed` fixture, an e2e.support.Testbed (the
helpers themselves live in e2e/support.py). It reuses a running test bed (from `make
cluster-up`) or brings one up for the session and tears it down at the end. When a test that
used a namespace fails, the namespace's objects, events and pod logs are written under
.testbed-artifacts/<test>/ and the path is printed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from pathlib import Path

import pytest

from e2e import support
from e2e.support import Testbed

REPO_ROOT = Path(__file__).resolve().parent
ARTIFACTS = REPO_ROOT / ".testbed-artifacts"


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    bed, reused = support.bring_up()
    yield bed
    if not reused and not os.environ.get("MODELOPS_KEEP_TESTBED"):
        support.bring_down()


@pytest.fixture(scope="session")
def kube_api(testbed: Testbed):
    from kubernetes import config

    return config.new_client_from_config(config_file=testbed.kubeconfig)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _dump_namespace(testbed: Testbed, namespace: str, test_name: str) -> Path:
    target = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    target.mkdir(parents=True, exist_ok=True)
    kinds = "all,events,configmaps,jobs,leases,endpointslices"
    custom = testbed.kubectl("api-resources", "--api-group=modelops.dev", "-o", "name", check=False).split()
    kinds += "".join(f",{k}" for k in custom if "." in k)
    (target / "objects.yaml").write_text(testbed.kubectl("get", kinds, "-n", namespace, "-o", "yaml", check=False))
    (target / "events.txt").write_text(
        testbed.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False))
    pods = json.loads(testbed.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False) or "{}")
    for pod in pods.get("items", []):
        uid = pod["metadata"]["uid"]
        for log in Path(testbed.state_dir, "nodes").glob(f"*/pods/{uid}/*.log"):
            (target / f"{pod['metadata']['name']}.{log.name}").write_text(log.read_text(errors="replace"))
    return target


@pytest.fixture
def namespace(request, testbed: Testbed) -> str:
    """A fresh namespace for one test; dumped on failure, deleted afterwards."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{secrets.token_hex(3)}"
    testbed.create_namespace(name)
    yield name
    failed = any(getattr(getattr(request.node, f"report_{w}", None), "failed", False) for w in ("setup", "call"))
    if failed:
        path = _dump_namespace(testbed, name, request.node.nodeid)
        print(f"\n[testbed] namespace {name} dumped to {path}", file=sys.stderr)
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_collection_modifyitems(config, items):
    """Tests under tests/integration and e2e/ need the test bed; mark them so -m selects them."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO_ROOT).parts
        if parts[:2] == ("tests", "integration") and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
        if parts[:1] == ("e2e",) and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)

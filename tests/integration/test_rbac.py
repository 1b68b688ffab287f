"""The chart's RBAC, as the API server sees it: every row of the can-i tables in
docs/install.md, for the cluster-wide and the namespaced mode, asked with
`kubectl auth can-i --as=system:serviceaccount:…` after installing exactly the RBAC objects
the chart renders (its ServiceAccount, Roles, ClusterRoles and bindings)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.integration.conftest import ROOT
from tests.integration.test_helm_chart import CHART, KUBE_VERSION, can_i, helm_ok

pytestmark = pytest.mark.integration

DOCS = ROOT / "docs" / "install.md"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def can_i_table(mode: str) -> list[tuple[str, str, str, bool]]:
    """(verb, resource, namespace role, allowed) rows of the docs' table for `mode`."""
    block = DOCS.read_text().split(f"<!-- can-i {mode} -->", 1)[1].split("<!-- /can-i -->", 1)[0]
    rows = re.findall(r"^\| (\S+) \| (\S+) \| (watched|other|release) \| (yes|no) \|$", block, re.MULTILINE)
    assert len(rows) >= 10, f"the {mode} table in docs/install.md has too few rows: {rows}"
    return [(verb, resource, where, allowed == "yes") for verb, resource, where, allowed in rows]


@pytest.fixture
def namespaces(testbed) -> Iterator[dict[str, str]]:
    suffix = secrets.token_hex(3)
    names = {role: f"rbac-{role}-{suffix}" for role in ("release", "watched", "other")}
    for name in names.values():
        testbed.create_namespace(name)
    yield names
    for name in names.values():
        testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def install_rbac(testbed: Any, release: str, namespace: str, *sets: str) -> list[dict[str, Any]]:
    flags = [arg for value in sets for arg in ("--set", value)]
    out = helm_ok(testbed, "template", release, str(CHART), "--namespace", namespace, KUBE_VERSION, *flags)
    docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] in RBAC_KINDS]
    testbed.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    return docs


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_the_can_i_tables_in_the_docs_hold(testbed, namespaces: dict[str, str], mode: str) -> None:
    release = "rb" + secrets.token_hex(3)
    sets = ["leaderElection.enabled=true"]
    if mode == "namespaced":
        sets.append(f"watchNamespaces={{{namespaces['watched']}}}")
    docs = install_rbac(testbed, release, namespaces["release"], *sets)
    account = f"system:serviceaccount:{namespaces['release']}:{release}-modelops"
    try:
        wrong = []
        rows = can_i_table(mode)
        for verb, resource, where, allowed in rows:
            name, _, sub = resource.partition("/")
            if can_i(testbed, account, namespaces[where], verb, name, sub) != allowed:
                wrong.append(f"{verb} {resource} in {where}: expected {'yes' if allowed else 'no'}")
        assert not wrong, "docs/install.md says otherwise than the API server:\n" + "\n".join(wrong)
        assert {allowed for *_, allowed in rows} == {True, False}
    finally:
        cluster_scoped = [d for d in docs if d["kind"].startswith("Cluster")]
        testbed.kubectl("delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(cluster_scoped), check=False)

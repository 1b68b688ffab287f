"""The chart's values are documented, typed and complete, and its RBAC is the operator's own.

Pure file checks (no helm, no cluster): every value has a `# --` comment in values.yaml and
a row in README.md; values.schema.json describes every default with the right type and
rejects unknown keys; the Deployment sets every MODELOPS_* setting; the rules in the
templates are exactly OPERATOR_RULES, the rules the integration tests grant the operator.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops.settings import Settings
from tests.integration.conftest import LEADER_ELECTION_RULES, NODE_CACHE_RULES, OPERATOR_RULES

pytestmark = pytest.mark.unit

CHART = Path(__file__).resolve().parents[2] / "charts" / "modelops"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][A-Za-z0-9]*):")
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def documented_paths(text: str) -> set[str]:
    """Dotted paths of the keys in values.yaml whose comment block starts with `# --`."""
    documented, stack, comment = set(), [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = KEY_LINE.match(line)
        if match:
            indent = len(match["indent"])
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, match["key"])]
            if comment and comment[0].startswith("# --"):
                documented.add(".".join(k for _, k in stack))
        comment = []
    return documented


def leaf_paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths |= leaf_paths(value, path + ".") if isinstance(value, dict) and value else {path}
    return paths


def readme_value_keys() -> set[str]:
    section = (CHART / "README.md").read_text().split("## Values", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE))


def test_every_value_is_documented_in_values_yaml() -> None:
    documented = documented_paths((CHART / "values.yaml").read_text())
    undocumented = sorted(
        leaf for leaf in leaf_paths(values())
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    )
    assert not undocumented, f"values without a `# --` comment: {undocumented}"


def test_the_readme_table_lists_exactly_the_documented_values() -> None:
    documented = documented_paths((CHART / "values.yaml").read_text())
    table = readme_value_keys()
    assert sorted(documented - table) == [], "documented values missing from the README table"
    assert sorted(table - documented) == [], "README rows for values that values.yaml does not have"


def _check_against_schema(tree: dict[str, Any], node: dict[str, Any], prefix: str, problems: list[str]) -> None:
    properties = node.get("properties", {})
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if key not in properties:
            problems.append(f"{path}: not in the schema")
            continue
        child = properties[key]
        actual = JSON_TYPES[type(value)]
        declared = child["type"] if isinstance(child["type"], list) else [child["type"]]
        allowed = set(declared) | ({"integer"} if "number" in declared else set())
        if actual not in allowed:
            problems.append(f"{path}: default is {actual}, schema says {child['type']}")
        if isinstance(value, dict) and "properties" in child:
            _check_against_schema(value, child, path + ".", problems)


def test_the_schema_describes_every_default_with_its_type() -> None:
    problems: list[str] = []
    _check_against_schema(values(), schema(), "", problems)
    assert problems == []


def test_the_schema_rejects_unknown_keys_and_describes_nothing_that_does_not_exist() -> None:
    spec = schema()
    assert spec["additionalProperties"] is False
    assert set(spec["properties"]) - {"global"} == set(values())

    def closed(node: dict[str, Any], path: str) -> list[str]:
        open_objects = [] if node.get("additionalProperties") is False else [path or "(top)"]
        for key, child in node.get("properties", {}).items():
            if "properties" in child:
                open_objects += closed(child, f"{path}.{key}".lstrip("."))
        return open_objects

    assert closed(spec, "") == [], "objects with named properties must set additionalProperties: false"


def test_every_value_and_schema_property_has_a_description() -> None:
    def missing(node: dict[str, Any], path: str) -> list[str]:
        out = []
        for key, child in node.get("properties", {}).items():
            here = f"{path}.{key}".lstrip(".")
            if not child.get("description"):
                out.append(here)
            out += missing(child, here)
        return out

    assert missing(schema(), "") == []


def test_the_deployment_sets_every_operator_setting() -> None:
    template = (CHART / "templates" / "deployment.yaml").read_text()
    set_names = set(re.findall(r"- name: (MODELOPS_[A-Z_]+)", template))
    expected = {Settings.env_name(field) for field in Settings.model_fields}
    assert sorted(expected - set_names) == [], "MODELOPS_* settings the chart does not set"
    assert sorted(set_names - expected) == [], "the chart sets MODELOPS_* variables the operator does not read"


def _defined_rules(name: str) -> list[dict[str, Any]]:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    body = re.search(r'\{\{- define "' + re.escape(name) + r'" -\}\}\n(.*?)\{\{- end \}\}', helpers, re.DOTALL)
    assert body, f"_helpers.tpl does not define {name}"
    return yaml.safe_load(body.group(1))


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_the_chart_grants_exactly_the_operators_rules() -> None:
    namespaced = _grants(_defined_rules("modelops.namespacedRules"))
    cluster = _grants(_defined_rules("modelops.clusterRules"))
    assert namespaced | cluster == _grants(OPERATOR_RULES)
    assert not namespaced & cluster


def test_what_stays_cluster_wide_is_read_only_discovery() -> None:
    cluster = _grants(_defined_rules("modelops.clusterRules"))
    assert {verb for _, _, verb in cluster} == {"list", "watch"}
    assert {resource for _, resource, _ in cluster} == {"customresourcedefinitions", "namespaces"}


def test_the_node_cache_adds_its_volume_and_claim_and_nothing_else() -> None:
    volumes = _grants(_defined_rules("modelops.nodeCacheClusterRules"))
    claims = _grants(_defined_rules("modelops.nodeCacheRules"))
    assert volumes | claims == _grants(NODE_CACHE_RULES)
    assert {r for _, r, _ in volumes} == {"persistentvolumes"} and {r for _, r, _ in claims} == {"persistentvolumeclaims"}
    assert not {g for g in volumes | claims if g[2] in ("delete", "deletecollection", "update", "list", "*")}


def test_nothing_the_operator_may_do_deletes_or_lists_secrets() -> None:
    grants = _grants(_defined_rules("modelops.namespacedRules"))
    assert not {g for g in grants if g[2] in ("delete", "deletecollection", "update", "*")}
    assert {verb for _, resource, verb in grants if resource == "secrets"} == {"get"}


def test_leader_election_may_touch_only_leases_in_the_release_namespace() -> None:
    assert _grants(_defined_rules("modelops.leaderElectionRules")) == _grants(LEADER_ELECTION_RULES)
    rbac = (CHART / "templates" / "rbac.yaml").read_text()
    block = rbac[rbac.index("modelops.leaderElectionRules") - 400:]
    assert "kind: Role\n" in block and "namespace: {{ .Release.Namespace }}" in block


def test_the_readme_values_table_is_generated_from_the_values_comments() -> None:
    script = CHART.parents[1] / "scripts" / "chart-values-table.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_values_table_follows_a_changed_comment() -> None:
    spec = importlib.util.spec_from_file_location("chart_values_table", CHART.parents[1] / "scripts" / "chart-values-table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (CHART / "values.yaml").read_text().replace("# -- Objects reconciled at the same time (each waits on the API server in a thread of its own).",
                                                        "# -- Reconciles running in parallel.")
    table = module.table(text, schema())
    assert "| `operator.workers` | int | `16` | Reconciles running in parallel. |" in table
    assert "| `leaderElection.leaseDurationSeconds` | number | `15` |" in table


def test_decimal_settings_accept_the_strings_helm_set_makes_of_them() -> None:
    """`helm --set x=0.5` passes "0.5" (a string): the schema takes a positive decimal string
    where it takes a number, and refuses anything else."""
    pattern = re.compile(schema()["properties"]["operator"]["properties"]["retrySeconds"]["pattern"])
    assert all(pattern.match(v) for v in ("0.5", "15", "2.25", "10.0", ".5"))
    assert not any(pattern.match(v) for v in ("0", "0.0", "-1", "1e3", "abc", "1.", ""))

#!/usr/bin/env python3
"""Write the kustomize manifests under config/ from the Helm chart, so the two never drift.

    scripts/render-manifests.py --helm <helm binary>           # make manifests
    scripts/render-manifests.py --helm <helm binary> --check   # exit 1 if config/ is stale

The chart is the one definition of the operator's objects. This renders it with `helm
template` and writes what `kubectl apply -k` needs:

- config/crd/: the CRDs (crds/*.yaml) and their kustomization;
- config/default/: the operator (ServiceAccount, RBAC, Deployment, Service, ...) as the chart
  renders it with default values, without Helm's own labels, in the namespace
  modelops-system, which it creates;
- config/namespaced/: an overlay of config/default for namespaced mode: the operator watches
  only the namespace modelops-workloads (which must exist), with a Role there instead of
  cluster-wide rules, exactly as the chart renders `watchNamespaces: [modelops-workloads]`.

tests/integration/test_manifests.py renders both ways and fails on any difference.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "modelops"
RELEASE = "modelops"
NAMESPACE = "modelops-system"
WATCHED = "modelops-workloads"
KUBE_VERSION = "1.34.0"
# Labels that only say Helm rendered the object; the rest of the chart's labels are kept.
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
HEADER = "# Generated from charts/modelops by `make manifests` (scripts/render-manifests.py). Do not edit.\n"


def helm_template(helm: str, *flags: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, f"--kube-version={KUBE_VERSION}", *flags],
        check=True, capture_output=True, text=True,
    ).stdout
    # A private key made at render time has no place in committed manifests: the signing key's
    # Secret is created by hand there (docs/security.md).
    return [doc for doc in yaml.safe_load_all(out) if doc and doc.get("kind") != "Secret"]


def without_helm_labels(doc: dict[str, Any]) -> dict[str, Any]:
    def strip(metadata: dict[str, Any] | None) -> None:
        labels = (metadata or {}).get("labels")
        if labels:
            for key in HELM_LABELS:
                labels.pop(key, None)
    strip(doc.get("metadata"))
    strip(((doc.get("spec") or {}).get("template") or {}).get("metadata"))
    return doc


def dump(docs: list[dict[str, Any]]) -> str:
    return HEADER + yaml.safe_dump_all(docs, sort_keys=False, width=120)


def key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], (doc["metadata"].get("namespace") or ""), doc["metadata"]["name"]


def namespaced_overlay(default: list[dict[str, Any]], namespaced: list[dict[str, Any]]) -> dict[str, str]:
    """Files of an overlay that turns the default render into the namespaced one."""
    before = {key(d): d for d in default}
    after = {key(d): d for d in namespaced}
    added = [d for k, d in after.items() if k not in before]
    removed = [k for k in before if k not in after]
    patches = []
    for k, doc in after.items():
        old = before.get(k)
        if old is None or old == doc:
            continue
        if doc["kind"] == "Deployment":
            # Only the environment differs: a strategic merge patch of the changed variables (merged by name).
            patch = _deployment_env_patch(old, doc)
        elif doc["kind"] == "ClusterRole":
            # A ClusterRole's rules have no merge key: the patch replaces them whole.
            patch = {"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": {"name": doc["metadata"]["name"]},
                     "rules": doc["rules"]}
        else:
            raise SystemExit(f"namespaced mode changes {k}, which the overlay generator does not handle")
        patches.append(patch)
    if removed:
        raise SystemExit(f"namespaced mode removes {removed}, which the overlay generator does not handle")
    files = {"watched-namespace-rbac.yaml": dump(added)}
    for patch in patches:
        files[f"patch-{patch['kind'].lower()}.yaml"] = dump([patch])
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../default", "watched-namespace-rbac.yaml"],
        "patches": [{"path": f"patch-{p['kind'].lower()}.yaml"} for p in patches],
    }
    files["kustomization.yaml"] = dump([kustomization])
    return files


def _deployment_env_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    old_spec, new_spec = old["spec"]["template"]["spec"], new["spec"]["template"]["spec"]
    old_rest = {**old, "spec": {**old["spec"], "template": {**old["spec"]["template"], "spec": {
        **old_spec, "containers": [{**c, "env": None} for c in old_spec["containers"]]}}}}
    new_rest = {**new, "spec": {**new["spec"], "template": {**new["spec"]["template"], "spec": {
        **new_spec, "containers": [{**c, "env": None} for c in new_spec["containers"]]}}}}
    if old_rest != new_rest:
        raise SystemExit("namespaced mode changes the Deployment beyond its environment; extend the overlay generator")
    containers = []
    for old_c, new_c in zip(old_spec["containers"], new_spec["containers"], strict=True):
        previous = {e["name"]: e for e in old_c.get("env") or []}
        changed = [e for e in new_c.get("env") or [] if previous.get(e["name"]) != e]
        if changed:
            containers.append({"name": new_c["name"], "env": changed})
    metadata = {"name": new["metadata"]["name"], "namespace": new["metadata"]["namespace"]}
    return {"apiVersion": new["apiVersion"], "kind": "Deployment", "metadata": metadata,
            "spec": {"template": {"spec": {"containers": containers}}}}


def render(helm: str) -> dict[str, str]:
    """Relative path under config/ to file text."""
    default = [without_helm_labels(d) for d in helm_template(helm)]
    namespaced = [without_helm_labels(d) for d in helm_template(helm, "--set", f"watchNamespaces={{{WATCHED}}}")]
    files: dict[str, str] = {}
    crds = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    for name in crds:
        files[f"crd/{name}"] = (ROOT / "crds" / name).read_text(encoding="utf-8")
    files["crd/kustomization.yaml"] = dump([{
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": crds}])
    files["default/namespace.yaml"] = dump([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    files["default/operator.yaml"] = dump(default)
    files["default/kustomization.yaml"] = dump([{
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../crd", "namespace.yaml", "operator.yaml"],
    }])
    for name, text in namespaced_overlay(default, namespaced).items():
        files[f"namespaced/{name}"] = text
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helm", required=True, help="the helm binary")
    parser.add_argument("--check", action="store_true", help="fail if config/ differs from what the chart renders")
    args = parser.parse_args()
    files = render(args.helm)
    config = ROOT / "config"
    managed = {p.relative_to(config).as_posix() for d in ("crd", "default", "namespaced") for p in (config / d).glob("*")}
    if args.check:
        stale = sorted(n for n, t in files.items() if not (config / n).exists() or (config / n).read_text() != t)
        stale += sorted(managed - set(files))
        if stale:
            print(f"config/ is stale ({', '.join(stale)}): run `make manifests`", file=sys.stderr)
            return 1
        return 0
    for name in managed - set(files):
        (config / name).unlink()
    for name, text in files.items():
        (config / name).parent.mkdir(parents=True, exist_ok=True)
        (config / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

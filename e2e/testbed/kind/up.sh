#!/usr/bin/env bash
# TESTBED=kind make cluster-up: a kind cluster with MinIO inside it, where docker and kind work.
# Prints the kubeconfig path. Where no container engine runs (as on the project's own build
# machines), it says so and exits 2 without changing anything.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="${KIND_CLUSTER_NAME:-modelops}"
kubeconfig="${MODELOPS_CACHE:-$HOME/.cache/modelops}/kind-$name.kubeconfig"

fail() { echo "[kind] $*" >&2; exit 2; }
command -v kind >/dev/null 2>&1 || fail "kind is not installed (https://kind.sigs.k8s.io); TESTBED=kind needs kind and a running docker engine. Without them, use the local test bed: make cluster-up"
command -v docker >/dev/null 2>&1 || fail "docker is not installed; TESTBED=kind needs a running docker engine. Without one, use the local test bed: make cluster-up"
docker info >/dev/null 2>&1 || fail "docker is installed but no engine answers (docker info failed); start it, or use the local test bed: make cluster-up"

mkdir -p "$(dirname "$kubeconfig")"
if ! kind get clusters 2>/dev/null | grep -qx "$name"; then
  kind create cluster --name "$name" --config "$here/cluster.yaml" --kubeconfig "$kubeconfig" --wait 120s >&2
else
  kind export kubeconfig --name "$name" --kubeconfig "$kubeconfig" >&2
fi
kubectl --kubeconfig "$kubeconfig" apply -f "$here/minio.yaml" >&2
kubectl --kubeconfig "$kubeconfig" -n modelops-storage rollout status deployment/minio --timeout=180s >&2
echo "$kubeconfig"

#!/usr/bin/env bash
# Build (once) the test bed's upstream binaries from pinned Go modules and print
# the directory that holds them: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, helm, minio, kubeconform and kwok (fake nodes for the scale benchmark).
# `build.sh prometheus` (or `build.sh kube-router`) builds (once) and prints the directory of an
# on-demand module instead: Prometheus, which only the on-demand Prometheus canary test needs, and
# kube-router, which only the NetworkPolicy tests need, so that a cold `make test` pays for neither.
# `build.sh argocd-lua` builds the Go test of the chart's Argo CD health checks in Argo CD's own
# Lua VM (a test binary, `go test -c`; see docs/testbed.md).
#
# Each go.mod under e2e/testbed/go pins one upstream release. Each module's output is
# keyed by its go.mod, go.sum, build recipe and the Go toolchain, so a warm machine
# reuses it, a changed pin rebuilds only that module, and adding a module builds only
# the new one. The printed directory links every module's binaries together. Go's
# module and build caches live beside it, outside the checkout. A lock per module output
# (and one for the linked directory) serialises concurrent callers (two test runs on one
# machine): the second waits for the first's build of that module, then reuses it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MODELOPS_CACHE:-$HOME/.cache/modelops}"
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS="-mod=readonly -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

mkdir -p "$cache/bin"

log() { echo "[build] $*" >&2; }
go_version="$(go version)"
kube_version="v1.34.4"
ldflags="-s -w"
# Stamp the Kubernetes version as the upstream release build does, so that discovery,
# kubectl version and helm's kubeVersion checks see v1.34.4 rather than v0.0.0.
kube_ldflags="$ldflags -X k8s.io/component-base/version.gitVersion=$kube_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$kube_version \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=34"
# As helm's own Makefile does: its default Kubernetes version follows the client-go it is built with.
helm_ldflags="$ldflags -X helm.sh/helm/v3/internal/version.version=v3.19.5 \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=34 \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=34"

# One recipe per module: MODULE|LDFLAGS|OUTPUT NAME (empty: one binary per package)|PACKAGES|BUILD TAGS
recipes=(
  "etcd|$ldflags|etcd|go.etcd.io/etcd/server/v3"
  "kubernetes|$kube_ldflags||k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
  "helm|$helm_ldflags|helm|helm.sh/helm/v3/cmd/helm"
  "minio|$ldflags|minio|github.com/minio/minio"
  "kubeconform|$ldflags|kubeconform|github.com/yannh/kubeconform/cmd/kubeconform"
  "kwok|$ldflags|kwok|sigs.k8s.io/kwok/cmd/kwok"
)
# Built only when named. Prometheus with Kubernetes service discovery only (its other
# discovery plugins pull in every cloud's SDK) and without the embedded web UI; kube-router,
# whose network policy controller enforces NetworkPolicies for the on-demand policy tests.
on_demand=(
  "prometheus|$ldflags|prometheus|github.com/prometheus/prometheus/cmd/prometheus|remove_all_sd,enable_kubernetes_sd"
  "kube-router|$ldflags|kube-router|github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
  # A NAME ending in .test is the module's own Go test, compiled with `go test -c`.
  "argocd-lua|$ldflags|argocd-lua.test|."
  # promtool (check metrics, test rules) from the same pinned module: go/promtool links to go/prometheus.
  "promtool|$ldflags|promtool|github.com/prometheus/prometheus/cmd/promtool|remove_all_sd"
)

# build_module RECIPE: builds into its own keyed directory (once) and prints that directory.
build_module() {
  local module flags name packages tags key out
  IFS='|' read -r module flags name packages tags <<<"$1"
  # The module's own Go sources (a test) are part of the key; the others have none.
  key="$( (echo "$go_version"; echo "$1"; cat "$here/go/$module/go.mod" "$here/go/$module/go.sum"
           find "$here/go/$module" -name '*.go' -exec cat {} +) | sha256sum | cut -c1-16)"
  out="$cache/bin/$module-$key"
  # One lock per module output: a second caller waits for this module's build and reuses it,
  # while a build of another module (an on-demand Prometheus) holds up nobody.
  (
    flock 9
    if [[ ! -f "$out/.complete" ]]; then
      log "go build in $module: $packages (cold builds take minutes on 2 cores)"
      rm -rf "$out" && mkdir -p "$out"
      # shellcheck disable=SC2086 # packages is a word list
      if [[ "$name" == *.test ]]; then
        (cd "$here/go/$module" && go test -c -trimpath -tags "$tags" -ldflags "$flags" -o "$out/$name" $packages)
      else
        (cd "$here/go/$module" && go build -trimpath -tags "$tags" -ldflags "$flags" -o "$out/$name" $packages)
      fi
      touch "$out/.complete"
    fi
  ) 9>"$out.lock"
  echo "$out"
}

if [[ $# -gt 0 ]]; then
  for wanted in "$@"; do
    found=""
    for recipe in "${on_demand[@]}"; do
      [[ "${recipe%%|*}" == "$wanted" ]] && found="$recipe"
    done
    [[ -n "$found" ]] || { log "no on-demand module $wanted (there are: ${on_demand[*]%%|*})"; exit 2; }
    build_module "$found"
  done
  exit 0
fi

module_dirs=()
for recipe in "${recipes[@]}"; do
  module_dirs+=("$(build_module "$recipe")")
done

# The set of module outputs names the linked directory, so callers see one stable path.
set_key="$(printf '%s\n' "${module_dirs[@]}" | sha256sum | cut -c1-16)"
linked="$cache/bin/set-$set_key"
(
  flock 9
  if [[ ! -f "$linked/.complete" ]]; then
    rm -rf "$linked" && mkdir -p "$linked"
    for dir in "${module_dirs[@]}"; do
      for binary in "$dir"/*; do ln -s "$binary" "$linked/$(basename "$binary")"; done
    done
    touch "$linked/.complete"
    log "ready: $linked"
  fi
) 9>"$linked.lock"
echo "$linked"

#!/usr/bin/env bash
# Build (once) the test bed's upstream binaries from pinned Go modules and print
# the directory that holds them: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, helm and minio.
#
# Each go.mod under e2e/testbed/go pins one upstream release. The output directory
# is keyed by those files and the Go toolchain, so a warm machine reuses it and a
# changed pin rebuilds. Go's module and build caches live beside it, outside the checkout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MODELOPS_CACHE:-$HOME/.cache/modelops}"
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS="-mod=readonly -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

kube_version="v1.34.4"

key="$( (go version; cat "$here/build.sh"; cat "$here"/go/*/go.mod "$here"/go/*/go.sum) | sha256sum | cut -c1-16)"
out="$cache/bin/$key"
if [[ -f "$out/.complete" ]]; then
  echo "$out"
  exit 0
fi

log() { echo "[build] $*" >&2; }
mkdir -p "$out"
ldflags="-s -w"
# Stamp the Kubernetes version as the upstream release build does, so that discovery,
# kubectl version and helm's kubeVersion checks see v1.34.4 rather than v0.0.0.
kube_ldflags="$ldflags -X k8s.io/component-base/version.gitVersion=$kube_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$kube_version \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=34"

# build MODULE_DIR LDFLAGS OUTPUT PACKAGE...: OUTPUT is a file for one package, a directory for several.
build() {
  local module="$1" flags="$2" output="$3"; shift 3
  log "go build in $module: $* (cold builds take minutes on 2 cores)"
  (cd "$here/go/$module" && go build -trimpath -ldflags "$flags" -o "$output" "$@")
}

build etcd "$ldflags" "$out/etcd" go.etcd.io/etcd/server/v3
build kubernetes "$kube_ldflags" "$out/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
# As helm's own Makefile does: its default Kubernetes version follows the client-go it is built with.
helm_ldflags="$ldflags -X helm.sh/helm/v3/internal/version.version=v3.19.5 \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=34 \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=34"
build helm "$helm_ldflags" "$out/helm" helm.sh/helm/v3/cmd/helm
build minio "$ldflags" "$out/minio" github.com/minio/minio
touch "$out/.complete"
log "ready: $out"
echo "$out"

#!/usr/bin/env bash
# Build (once) the project's images with buildah, without a container engine, and print
# the directory of each: `images/build.sh operator compressor`.
#
# - The base is a build argument of each Dockerfile (BASE_IMAGE). Users build on a pinned
#   python:3.11-slim. Here no registry can be pulled, so this script makes the base itself:
#   a Debian bookworm root filesystem from debootstrap with Debian's python3.11, imported
#   into buildah as localhost/modelops-base:<key>.
# - Each image is keyed by its inputs (its Dockerfile, its lock file, the project source
#   it copies, the base's key and buildah's version), like the Go binaries of
#   e2e/testbed/build.sh: a warm machine reuses it, a changed input rebuilds it.
# - Each image's directory, $MODELOPS_CACHE/images/<name>-<key>/, holds its unpacked
#   root filesystem (rootfs/, what the test bed's node agent runs), its OCI config
#   (config.json), its history and size (inspect.json) and its Python package list
#   (packages.txt). build/images/<name>.json in the checkout names the image and that
#   directory, so the node agent of this checkout's test bed runs this checkout's image.
# - buildah keeps its storage under $MODELOPS_CACHE/images/storage (chroot isolation,
#   overlay storage, vfs where overlay cannot mount). Locks serialise concurrent callers:
#   one for the base, one per image, so two builds of one image never run at once.
# - Each checkout registers itself under $MODELOPS_CACHE/images/checkouts/. Old builds are
#   evicted (images/evict.sh) beyond the newest six, except one that a registered checkout's
#   build/images/<name>.json names or a running pod's overlay uses.
set -Eeuo pipefail  # -E: the ERR trap below fires inside functions too

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MODELOPS_CACHE:-$HOME/.cache/modelops}"
images="$cache/images"
mkdir -p "$images/checkouts" "$root/build/images"
# This checkout is registered, so that another checkout's build never evicts the image it names.
ln -sfn "$root/build/images" "$images/checkouts/$(printf '%s' "$root" | sha256sum | cut -c1-16)"
log() { echo "[images] $*" >&2; }
# A failing step names itself, instead of ending the build without a word.
trap 'log "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

if [[ $# -eq 0 ]]; then
  set -- operator compressor
fi
for name in "$@"; do
  [[ -f "$root/images/$name/Dockerfile" ]] || { log "no such image: images/$name/Dockerfile"; exit 2; }
done

# ---------------------------------------------------------------- tools
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [[ ${#need[@]} -gt 0 ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${need[*]} from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
  else
    log "make images needs ${need[*]} (Debian: apt-get install ${need[*]}) and root"
    exit 1
  fi
fi
[[ $(id -u) -eq 0 ]] || { log "buildah with chroot isolation and debootstrap need root here"; exit 1; }

# One lock for the base, one per image: `make test` (the operator image) need not wait for
# `make images` building the compressor. buildah's storage has locks of its own.
exec 9>"$images/.lock-base"
flock 9

storage=(--root "$images/storage" --runroot "/run/modelops-buildah")
driver="${MODELOPS_BUILDAH_DRIVER:-}"
if [[ -z "$driver" ]]; then
  driver=overlay
  if ! buildah "${storage[@]}" --storage-driver overlay images >/dev/null 2>&1; then
    driver=vfs
  fi
fi
bh() { buildah "${storage[@]}" --storage-driver "$driver" "$@"; }
buildah_version="$(buildah --version)"

# ---------------------------------------------------------------- the base
# Debian's python3.11 and its venv module (the builder stage makes a virtualenv; python3-distutils
# provides the python3.11-distutils it needs, which debootstrap does not resolve), the CA
# bundle (TLS to the apiserver and object storage) and nothing else.
suite=bookworm
mirror="${MODELOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base_packages="python3.11,python3.11-venv,python3-distutils,ca-certificates"
base_key="$( (echo "$suite $base_packages"; sed -n '/^# --* the base/,/^# --* images/p' "${BASH_SOURCE[0]}") | sha256sum | cut -c1-16)"
base_image="localhost/modelops-base:$base_key"
base_dir="$images/base-$base_key"

if ! bh inspect --type image "$base_image" >/dev/null 2>&1; then
  if [[ ! -f "$base_dir/.complete" ]]; then
    log "debootstrap $suite ($base_packages) into $base_dir (first run only; minutes)"
    started=$SECONDS
    rm -rf "$base_dir" && mkdir -p "$base_dir"
    debootstrap --variant=minbase --include="$base_packages" "$suite" "$base_dir/rootfs" "$mirror" >"$base_dir/debootstrap.log" 2>&1 \
      || { log "debootstrap failed; see $base_dir/debootstrap.log"; exit 1; }
    # What an image need not carry: downloaded packages, package lists, logs, man pages,
    # translations (the images run in C.UTF-8).
    rm -rf "$base_dir"/rootfs/var/cache/apt/archives/*.deb "$base_dir"/rootfs/var/lib/apt/lists/* \
      "$base_dir"/rootfs/var/log/* "$base_dir"/rootfs/usr/share/man/* "$base_dir"/rootfs/usr/share/doc/* "$base_dir"/rootfs/usr/share/locale/* \
      "$base_dir"/rootfs/var/cache/debconf/*-old
    tar --numeric-owner -C "$base_dir/rootfs" -cf "$base_dir/rootfs.tar" .
    rm -rf "$base_dir/rootfs"
    echo $((SECONDS - started)) >"$base_dir/seconds"
    touch "$base_dir/.complete"
  fi
  log "importing the base as $base_image"
  ctr="$(bh from --quiet scratch)"
  mnt="$(bh mount "$ctr")"
  tar --numeric-owner -C "$mnt" -xf "$base_dir/rootfs.tar"
  bh umount "$ctr" >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd '["python3"]' --label "org.opencontainers.image.description=Debian $suite with Debian's python3.11" "$ctr"
  bh commit --quiet --rm "$ctr" "$base_image" >/dev/null
fi

# ---------------------------------------------------------------- images
# (The base's key is the text from the base's header to the line above, with its packages.)
flock -u 9
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$root/operator/modelops/__init__.py")"

# The inputs of one image: what its Dockerfile copies, and how it is built.
inputs() {
  local name=$1
  echo "$buildah_version $base_key $version $driver"
  cat "$root/images/$name/Dockerfile" "$root/requirements/$name.lock" "$root/.dockerignore"
  (cd "$root" && find operator/modelops -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
}

# The host's pip configuration and CA bundle, for the build steps only (buildah mounts them
# into RUN, never into a layer): where PyPI is reached through a mirror or a TLS proxy, the
# builder stage reaches it the same way the host does.
build_mounts=()
for file in /etc/pip.conf /etc/ssl/certs/ca-certificates.crt; do
  [[ -f "$file" ]] && build_mounts+=(--volume "$file:$file:ro")
done

build_image() {
  local name=$1 key dir ref started ctr mnt
  exec 8>"$images/.lock-$name"
  flock 8
  key="$(inputs "$name" | sha256sum | cut -c1-16)"
  dir="$images/$name-$key"
  ref="ghcr.io/modelops/modelops-$name:$version"
  if [[ ! -f "$dir/.complete" ]] || ! bh inspect --type image "localhost/modelops-$name:$key" >/dev/null 2>&1; then
    log "buildah bud images/$name/Dockerfile (BASE_IMAGE=$base_image)"
    started=$SECONDS
    rm -rf "$dir" && mkdir -p "$dir"
    bh bud --isolation chroot --layers --quiet "${build_mounts[@]}" \
      --build-arg "BASE_IMAGE=$base_image" \
      -f "$root/images/$name/Dockerfile" -t "localhost/modelops-$name:$key" -t "$ref" "$root" >"$dir/build.log" 2>&1 \
      || { tail -30 "$dir/build.log" >&2; log "build failed; see $dir/build.log"; exit 1; }
    echo $((SECONDS - started)) >"$dir/build-seconds"
    # The unpacked root filesystem, for the node agent, and what describes the image.
    ctr="$(bh from --quiet "localhost/modelops-$name:$key")"
    mnt="$(bh mount "$ctr")"
    mkdir -p "$dir/rootfs"
    tar --numeric-owner -C "$mnt" -cf - . | tar --numeric-owner -C "$dir/rootfs" -xf -
    bh umount "$ctr" >/dev/null
    bh rm "$ctr" >/dev/null
    bh inspect --type image "localhost/modelops-$name:$key" >"$dir/inspect.json"
    python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["OCIv1"]["config"], indent=2))' \
      "$dir/inspect.json" >"$dir/config.json"
    bh images --format '{{.Size}}' "localhost/modelops-$name:$key" | sed -n 1p >"$dir/size"  # sed reads to the end: head's early exit would SIGPIPE buildah, which pipefail turns into a failed build
    chroot "$dir/rootfs" /opt/venv/bin/python -c \
      'import importlib.metadata as m; print("\n".join(sorted(d.metadata["Name"] + "==" + d.version for d in m.distributions())))' \
      >"$dir/packages.txt"
    touch "$dir/.complete"
    log "built $ref in $(cat "$dir/build-seconds")s ($(cat "$dir/size")): $dir"
  else
    bh tag "localhost/modelops-$name:$key" "$ref"
    touch "$dir"  # used again: the newest builds are the ones eviction keeps
  fi
  # This checkout's image of that name: what the node agent of its test bed runs.
  printf '{"image": "%s", "key": "%s", "dir": "%s"}\n' "$ref" "$key" "$dir" >"$root/build/images/$name.json.tmp"
  mv "$root/build/images/$name.json.tmp" "$root/build/images/$name.json"
  # Older builds of this image: the newest six stay, and so does any build that a registered
  # checkout (worktree, branch) names or a running pod uses, however old (images/evict.sh).
  local old
  for old in $("$root/images/evict.sh" "$images" "$name" 6); do
    bh rmi --force "localhost/modelops-$name:$old" >/dev/null 2>&1 || true
  done
  flock -u 8
  echo "$dir"
}

for name in "$@"; do
  build_image "$name"
done

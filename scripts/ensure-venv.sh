#!/usr/bin/env bash
# Create (once) and print the path of the project's Python environment.
#
# The environment lives outside the checkout, keyed by the lock file and the
# interpreter, so that fresh clones (CI) reuse it and a changed lock builds a new one.
# The project itself is not installed into it: callers put operator/ on PYTHONPATH,
# which keeps one cached environment valid for every checkout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MODELOPS_CACHE:-$HOME/.cache/modelops}"
python="${PYTHON:-python3}"
uv_version="0.13.9"

py_tag="$("$python" -c 'import sys; print("py%d%d" % sys.version_info[:2])')"
lock="$root/requirements/lock.txt"
# Comments in the lock (which extra pulled a package in) do not change the environment.
key="$(grep -v "^[[:space:]]*#" "$lock" | sha256sum | cut -c1-16)"
venv="$cache/venv/$py_tag-$key"

if [[ -f "$venv/.complete" ]]; then
  echo "$venv"
  exit 0
fi

log() { echo "[venv] $*" >&2; }

# uv resolves and installs the ~4 GB of wheels (torch pulls CUDA runtimes from PyPI)
# in parallel; pip takes several times longer.
uv_home="$cache/tools/uv-$uv_version"
if [[ ! -x "$uv_home/bin/uv" ]]; then
  log "installing uv $uv_version into $uv_home"
  rm -rf "$uv_home"
  "$python" -m venv "$uv_home"
  "$uv_home/bin/pip" install --quiet "uv==$uv_version"
fi
export UV_CACHE_DIR="$cache/uv-cache"
export UV_LINK_MODE=copy

log "building $venv from requirements/lock.txt (first run only; several minutes)"
rm -rf "$venv.tmp"
"$uv_home/bin/uv" venv --quiet --python "$python" "$venv.tmp"
VIRTUAL_ENV="$venv.tmp" "$uv_home/bin/uv" pip install --quiet --python "$venv.tmp/bin/python" -r "$lock"
# A venv records its own path in scripts; build in place under the final name.
rm -rf "$venv"
mv "$venv.tmp" "$venv"
# Rewrite the shebangs and activate scripts that still name the temporary path.
grep -rlI --null "$venv.tmp" "$venv/bin" | xargs -0 -r sed -i "s#$venv.tmp#$venv#g"
touch "$venv/.complete"
log "ready: $venv"
echo "$venv"

#!/usr/bin/env bash
# Install (once) the AWS CLI that docs/quickstart.md uploads with, and print its bin directory.
# It lives in a small environment of its own under the cache, so the project's environment
# (and its lock) stays as it is and the test never depends on what the host has on PATH.
set -euo pipefail

cache="${MODELOPS_CACHE:-$HOME/.cache/modelops}"
python="${PYTHON:-python3}"
version="1.45.11"
home="$cache/tools/awscli-$version"

if [[ ! -f "$home/.complete" ]]; then
  echo "[awscli] installing awscli $version into $home" >&2
  rm -rf "$home"
  "$python" -m venv "$home"
  "$home/bin/pip" install --quiet --disable-pip-version-check "awscli==$version"
  touch "$home/.complete"
fi
echo "$home/bin"

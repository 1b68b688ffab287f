#!/usr/bin/env bash
# Evict old builds of one image from the image cache, keeping what is in use:
# `images/evict.sh IMAGES_DIR NAME [KEEP]` removes IMAGES_DIR/NAME-<key>/ beyond the newest
# KEEP (default 6) and prints each evicted key, for images/build.sh to remove from buildah.
#
# A build stays, however old, while
# - a registered checkout's build/images/NAME.json names it (images/build.sh registers each
#   checkout under IMAGES_DIR/checkouts/; a registration whose checkout is gone is dropped), or
# - a running pod's overlay has its rootfs as a lower directory (any process's mountinfo names it).
# The caller holds the image's lock (IMAGES_DIR/.lock-NAME), so no build of NAME runs meanwhile.
set -euo pipefail

images=$1 name=$2 keep=${3:-6}

in_use=()
for link in "$images"/checkouts/*; do
  [[ -L "$link" ]] || continue
  if [[ ! -d "$link" ]]; then
    rm -f "$link"  # that checkout (or its build/images) is gone
    continue
  fi
  record="$link/$name.json"
  [[ -f "$record" ]] && in_use+=("$(sed -n 's/.*"dir": "\([^"]*\)".*/\1/p' "$record")")
done

# ls -t: newest first (by the directory's modification time).
# shellcheck disable=SC2012 # names are NAME-<hex key>
for old in $(ls -1dt "$images/$name"-*/ 2>/dev/null | tail -n +"$((keep + 1))"); do
  old="${old%/}"
  for dir in "${in_use[@]}"; do
    [[ "$dir" == "$old" ]] && continue 2
  done
  if grep -qsF "lowerdir=$old/rootfs" /proc/[0-9]*/mountinfo; then
    continue
  fi
  rm -rf "$old"
  echo "${old##*-}"
done

#!/usr/bin/env bash
# Mutation proofs of the fault suite: `make test-mutations`, or this script with patch files.
#
# Each tests/mutations/*.patch breaks the one property that one fault test claims to guard;
# its first line names that test (`# <pytest node id> must fail: why`), its second the
# failure expected (`# expect: ...`). For each patch, a copy of this working tree (tracked and
# untracked files, not ignored ones) is laid out at one fixed place, the patch is applied
# with `git apply`, and only the named test runs there, on the test bed of
# MODELOPS_TESTBED_INDEX. The test must FAIL; a mutated test that passes means the test
# does not guard what it claims, and the run exits non-zero. The unmutated tests are
# `make test-faults`' job: nothing unmutated runs here.
#
# Where the mutated code runs: the operator is a process that the tests start from the
# copy's source (`python -m modelops`, PYTHONPATH=<copy>/operator); compressor pods run in
# the development virtualenv with the copy mounted at /app (the test bed belongs to the
# copy, so its node agents mount the copy). The fetch init container runs in the operator
# image that build/images/operator.json of the copy names. A patch that touches code the
# pods run from that image (POD_SIDE below) gets a mutated image: this tree's image (built
# by images/build.sh) with what its Dockerfile COPYs to /app/operator/modelops taken from
# the mutated copy instead, so the init container runs the mutated code; the test's pod
# events name the image key, which the table checks. (A second images/build.sh would do the
# same, but the image cache keeps only the two newest builds across all checkouts, so a
# build per mutation would evict other checkouts' images.) The other patches run this
# tree's unmutated image.
#
# The copy sits at one fixed path per test bed index, so the test bed that the first patch
# brings up for it is reused by the others; it is brought down at the end unless
# MODELOPS_KEEP_TESTBED is set. Logs: build/mutations/<patch>.log.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
index="${MODELOPS_TESTBED_INDEX:-0}"
export MODELOPS_TESTBED_INDEX="$index"
work="${MODELOPS_MUTATION_DIR:-${TMPDIR:-/tmp}/modelops-mutations-$index}"
tree="$work/tree"
logs="$root/build/mutations"
# Files whose code runs inside pods from the operator image (the fetch init container).
POD_SIDE='^operator/modelops/(fetch\.py|storage\.py|serving/|api/|compress/exitcodes\.py|__init__\.py)'

# One function, read whole before it runs: editing this file during a run cannot change it.
main() {
if [[ $# -gt 0 ]]; then
  patches=("$@")
else
  patches=("$root"/tests/mutations/*.patch)
fi
[[ -f "${patches[0]}" ]] || { echo "mutation-proofs: no patches" >&2; exit 2; }

venv="$(scripts/ensure-venv.sh)" || exit 1
binaries="$(e2e/testbed/build.sh)" || exit 1
export MODELOPS_BINARIES="$binaries"
# The unmutated operator image, for the patches that leave the pods' code alone.
images/build.sh operator >/dev/null || exit 1
mkdir -p "$work" "$logs"

# This working tree as a commit object (nothing is written to any branch or index).
snapshot_index="$work/index"
rm -f "$snapshot_index"
GIT_INDEX_FILE="$snapshot_index" git read-tree HEAD
GIT_INDEX_FILE="$snapshot_index" git add -A
snapshot="$(git commit-tree "$(GIT_INDEX_FILE="$snapshot_index" git write-tree)" -p HEAD -m "the working tree under mutation proofs")"
rm -f "$snapshot_index"

lay_out_copy() {
  mkdir -p "$tree"
  # Everything but the copy's build/ (its image record) is laid out anew.
  find "$tree" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
  git archive "$snapshot" | tar -x -C "$tree"
}

# This tree's operator image, whose record the copies take.
base_image_dir="$(sed -n 's/.*"dir": "\([^"]*\)".*/\1/p' build/images/operator.json)"
[[ -f "$base_image_dir/.complete" ]] || { echo "mutation-proofs: no operator image at $base_image_dir" >&2; exit 1; }

# The operator image with the copy's operator/modelops at /app/operator/modelops (hard links
# for the rest of the root filesystem; the node agent mounts it read-only under an overlay).
mutated_image() {
  local key=$1 dir="$work/images/operator-$1"
  rm -rf "$dir" && mkdir -p "$dir"
  cp -al "$base_image_dir/rootfs" "$dir/rootfs"
  cp "$base_image_dir/config.json" "$dir/config.json"
  rm -rf "$dir/rootfs/app/operator/modelops"
  cp -r "$tree/operator/modelops" "$dir/rootfs/app/operator/modelops"
  find "$dir/rootfs/app/operator/modelops" -name __pycache__ -prune -exec rm -rf {} +
  touch "$dir/.complete"
  sed "s|\"key\": \"[^\"]*\", \"dir\": \"[^\"]*\"|\"key\": \"$key\", \"dir\": \"$dir\"|" build/images/operator.json \
    >"$tree/build/images/operator.json"
}

rows=()
broken=0
for patch in "${patches[@]}"; do
  patch="$(realpath "$patch")"
  name="$(basename "$patch" .patch)"
  header="$(sed -n '1s/^# //p' "$patch")"
  test_id="${header%% must fail:*}"
  expect="$(sed -n '2s/^# expect: //p' "$patch")"
  log="$logs/$name.log"
  started=$SECONDS
  lay_out_copy
  if ! (cd "$tree" && git apply "$patch"); then
    rows+=("$name"$'\t'"$test_id"$'\t'"$expect"$'\t'"PATCH DOES NOT APPLY"$'\t'0$'\t')
    broken=1
    continue
  fi
  mkdir -p "$tree/build/images"
  if git apply --numstat "$patch" | cut -f3 | grep -Eq "$POD_SIDE"; then
    image="m$(sha256sum "$patch" | cut -c1-15)"
    mutated_image "$image"
  else
    image="$(sed -n 's/.*"key": "\([^"]*\)".*/\1/p' build/images/operator.json)"
    cp build/images/operator.json "$tree/build/images/operator.json"
  fi
  : >"$log"
  echo "mutation-proofs: $name -> $test_id (operator image key: $image)" | tee -a "$log"
  junit="$work/junit.xml"
  rm -f "$junit"
  (cd "$tree" && MODELOPS_KEEP_TESTBED=1 PYTHONPATH="$tree/operator:$tree" \
    "$venv/bin/python" -m pytest -p no:cacheprovider -q --junitxml="$junit" "$test_id") >>"$log" 2>&1
  status=$?
  seconds=$((SECONDS - started))
  # Required: every selected test fails in its call, none errs in setup or teardown (a test
  # bed that did not come up proves nothing). tests/failed/errors from the JUnit report.
  read -r tests failed errors < <("$venv/bin/python" -c '
import sys, xml.etree.ElementTree as ET
try:
    suite = ET.parse(sys.argv[1]).getroot().find("testsuite")
    print(suite.get("tests"), suite.get("failures"), suite.get("errors"))
except (OSError, ET.ParseError, AttributeError):
    print(0, 0, 0)' "$junit")
  if [[ $status -eq 1 && $tests -gt 0 && $failed -eq $tests && $errors -eq 0 ]]; then
    result="FAILED as required"
  elif [[ $status -eq 0 ]]; then
    result="PASSED = proof broken"; broken=1
  else
    result="INCONCLUSIVE ($failed of $tests failed, $errors errors, pytest exit $status)"; broken=1
  fi
  failure="$(grep -m1 -E '^E +' "$log" | sed -E 's/^E +//' | cut -c1-200)"
  # A mutated image must have been what the pods ran: their Pulled events name its key.
  if [[ $image == m* && $result == FAILED* ]] && ! grep -rqs "(key $image)" "$tree/.testbed-artifacts"; then
    result="INCONCLUSIVE (no pod ran the mutated image $image)"; broken=1
  fi
  if [[ -d "$tree/.testbed-artifacts" ]]; then
    rm -rf "$logs/$name-artifacts" && cp -r "$tree/.testbed-artifacts" "$logs/$name-artifacts"
  fi
  rows+=("$name"$'\t'"$test_id"$'\t'"$expect"$'\t'"$result"$'\t'"$seconds"$'\t'"$failure")
  echo "mutation-proofs: $name: $result in ${seconds}s${failure:+: $failure}"
done

if [[ -z "${MODELOPS_KEEP_TESTBED:-}" ]]; then
  (cd "$tree" && "$venv/bin/python" -m e2e.testbed.cluster down) >/dev/null 2>&1 || true
  rm -rf "$work"
fi

echo
printf '| %s | %s | %s | %s | %s | %s |\n' patch test "expected failure" result seconds "first assertion"
printf '| --- | --- | --- | --- | --- | --- |\n'
for row in "${rows[@]}"; do
  IFS=$'\t' read -r name test_id expect result seconds failure <<<"$row"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "${test_id#tests/integration/test_faults.py::}" "$expect" "$result" \
    "$seconds" "${failure//|/\\|}"
done
exit $broken
}

main "$@"

#!/usr/bin/env bash
# Run the test suite in the project's environment. Extra arguments go to pytest.
#
# pytest exits 5 when it collected no tests: a broken selection, not a pass and not a
# failing test. It is reported as such and fails the run.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$(scripts/ensure-venv.sh)" || exit 1
# The test bed's binaries take minutes to build cold; build them before pytest starts
# so that no test's timeout pays for it. A unit-only run (-m unit, with or without paths)
# needs none.
unit_only=0
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  [[ "${args[i]}" == "-m" && "${args[i + 1]}" == "unit" ]] && unit_only=1
done
if [[ $unit_only -eq 0 ]]; then
  binaries="$(e2e/testbed/build.sh)" || exit 1
  export MODELOPS_BINARIES="$binaries"
  # The operator image, from images/operator/Dockerfile (cached by its inputs). The node
  # agents run it wherever a pod names it: the Helm-installed operator and the Triton
  # pods' fetch init container. The compressor image is built by `make images` only.
  # A record of another image (the compressor, from `make images`) may name a build of older
  # source; the tests would run it. Drop it: those pods run in the development virtualenv.
  find build/images -name '*.json' ! -name operator.json -delete 2>/dev/null || true
  operator_image_dir="$(images/build.sh operator)" || exit 1
  echo "run-tests: the operator and the fetch init container run from the built operator image" \
    "$(sed -n 's/.*"image": "\([^"]*\)".*/\1/p' build/images/operator.json) ($operator_image_dir)"
fi
export PYTHONPATH="$root/operator:$root"

# Lint and type checks first (configuration in pyproject.toml). A finding fails the run,
# after pytest has run too, so that one report shows everything.
checks=0
"$venv/bin/ruff" check --no-cache --output-format concise . || checks=1
"$venv/bin/mypy" || checks=1

"$venv/bin/python" -m pytest "$@"
status=$?
if [[ $status -eq 5 ]]; then
  echo "run-tests: pytest collected no tests; the selection is broken, so this run fails" >&2
  exit 1
fi
if [[ $checks -ne 0 ]]; then
  echo "run-tests: ruff or mypy reported findings (above), so this run fails" >&2
  [[ $status -eq 0 ]] && status=1
fi
exit $status

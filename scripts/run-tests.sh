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
# so that no test's timeout pays for it. A unit-only run needs none.
if [[ "$*" != "-m unit" ]]; then
  binaries="$(e2e/testbed/build.sh)" || exit 1
  export MODELOPS_BINARIES="$binaries"
fi
export PYTHONPATH="$root/operator:$root"

"$venv/bin/python" -m pytest "$@"
status=$?
if [[ $status -eq 5 ]]; then
  echo "run-tests: pytest collected no tests; the selection is broken, so this run fails" >&2
  exit 1
fi
exit $status

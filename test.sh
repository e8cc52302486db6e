#!/usr/bin/env bash
# Create the environment (if needed) and run the test suite. Extra arguments go to pytest.
# Usage: ./test.sh [--fast] [pytest args]
#   --fast  leaves out the tests marked slow (torchrun, Ray, a browser, the real data, timed or long trainings):
#           the same as `python -m pytest -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")"
select=()
if [ "${1:-}" = "--fast" ]; then
  shift
  select=(-m "not slow")
fi
source scripts/env.sh test,pretrained,serve,ray
# Two workers on two cores: one thread each (torch with 2 threads on a shared core collapses, 110 -> 615 ms a step).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Tests skipped for a missing tool (chromium, the smp extra) are named at the end, with the command that enables them.
python -m pytest -q -n 2 --dist loadfile ${select[@]+"${select[@]}"} "$@"

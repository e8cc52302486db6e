#!/usr/bin/env bash
# Create the environment (if needed) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh test,pretrained,serve,ray
# Two workers on two cores: one thread each (torch with 2 threads on a shared core collapses, 110 -> 615 ms a step).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -q -n 2 --dist loadfile "$@"

#!/usr/bin/env bash
# Create the environment (if needed) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh test,pretrained,serve
python -m pytest -q -n 2 --dist loadfile "$@"

#!/usr/bin/env bash
# Tests of the smp extra in an environment whose torch has a matching torchvision (.venv-smp): torch 2.14.1 +
# torchvision 0.29.1 + masksmith[smp], installed the way a user installs the extra. It is a second environment only
# because the light CPU torch of .venv (requirements/cpu.txt) has no torchvision built for it on this machine.
# Usage: ./test-smp.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
venv="${MASKSMITH_SMP_VENV:-.venv-smp}"
stamp="$venv/.installed-smp"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Reinstall only when the dependencies changed since the last install (as scripts/env.sh does).
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements/smp.txt -nt "$stamp" ]; then
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  # The torch/torchvision pair first, alone: the large wheels resolve once and the install below keeps them.
  "${pip[@]}" -r requirements/smp.txt
  "${pip[@]}" -r requirements/smp.txt -e ".[smp,pretrained,test]"
  touch "$stamp"
fi
exec "$venv/bin/python" -m pytest -q tests/models/test_smp.py tests/models/test_encoders_reference.py "$@"

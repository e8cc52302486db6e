#!/usr/bin/env bash
# Tests of the smp extra in their own environment (.venv-smp): torch 2.14.1 + torchvision + smp.
# The default environment (.venv, scripts/env.sh) pins the light torch 2.13.0 without torchvision;
# installing the extra there would replace it, so the extra gets this separate venv.
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
  # torch first, alone: the large wheels resolve once and the later installs keep them.
  "${pip[@]}" $(grep -E '^(torch|torchvision)==' requirements/smp.txt)
  # masksmith's own dependencies and test tools, read from pyproject.toml without its torch pin.
  deps=$("$venv/bin/python" - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + project["optional-dependencies"]["test"]
print("\n".join(d for d in deps if re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].strip().lower() != "torch"))
PY
)
  mapfile -t deps_array <<<"$deps"
  "${pip[@]}" -r requirements/smp.txt "${deps_array[@]}"
  "${pip[@]}" --no-deps -e .
  touch "$stamp"
fi
exec "$venv/bin/python" -m pytest -q tests/models/test_smp.py tests/models/test_encoders_reference.py "$@"

# Sourced by demo.sh and test.sh: create .venv with the pinned CPU torch and masksmith, then activate it.
# Usage: source scripts/env.sh [EXTRAS]   (EXTRAS: optional-dependency groups such as "test,pretrained")
extra="${1:-}"
venv="${MASKSMITH_VENV:-.venv}"
stamp="$venv/.installed${extra:+-$extra}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Reinstall only when the project's dependencies changed since the last install.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".${extra:+[$extra]}"
  touch "$stamp"
fi
source "$venv/bin/activate"

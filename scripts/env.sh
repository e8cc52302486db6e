# Sourced by demo.sh and test.sh: create .venv with the light CPU torch and masksmith, then activate it.
# Usage: source scripts/env.sh [EXTRAS]   (EXTRAS: optional-dependency groups such as "test,pretrained")
# The wheel of torch is chosen here (requirements/cpu.txt), not by the package, which accepts a range.
extra="${1:-}"
venv="${MASKSMITH_VENV:-.venv}"
stamp="$venv/.installed${extra:+-$extra}"
# Two commands started at once (two benchmarks, say) would both create or update the environment and break
# each other's pip install: one at a time, and the second finds the first one's work done.
(
  flock 9
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  # Reinstall only when the project's dependencies changed since the last install.
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements/cpu.txt -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements/cpu.txt -e ".${extra:+[$extra]}"
    touch "$stamp"
  fi
) 9>"$venv.lock"
source "$venv/bin/activate"

#!/usr/bin/env bash
# One accuracy experiment from a fresh clone: creates the environment, then runs benchmarks/experiments.py.
# Usage: benchmarks/run.sh clothing-tutorial|clothing-unet|clothing-lite0|clothing-smp|membrane|membrane-lite0|membrane-cv|membrane-auto|clothing-auto|labelme [--minutes M]
#        benchmarks/run.sh label-loop [--minutes M] [--dry]  (one round of corrections: top-ranked vs random images; benchmarks/label_loop.py)
# clothing-smp needs the smp extra: its environment is .venv-smp (made by ./test-smp.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = clothing-smp ]; then
  [ -x .venv-smp/bin/python ] || ./test-smp.sh --collect-only -q >/dev/null
  exec .venv-smp/bin/python benchmarks/experiments.py "$@"
fi
source scripts/env.sh pretrained  # (an explicit EXTRA: source would pass on "$@")
if [ "${1:-}" = label-loop ]; then
  shift
  exec python benchmarks/label_loop.py "$@"
fi
exec python benchmarks/experiments.py "$@"

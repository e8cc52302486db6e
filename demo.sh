#!/usr/bin/env bash
# The masksmith demo: create an environment, train on the shipped EM-membrane slice, evaluate, predict.
# Usage: ./demo.sh            (about 4 minutes on 2 CPU cores, environment included)
set -euo pipefail
cd "$(dirname "$0")"
# serve: so `masksmith serve demo-output/run/model.msb` works after the demo.
source scripts/env.sh pretrained,serve

OUT=demo-output
rm -rf "$OUT"
echo "== train (time budget: ${DEMO_MINUTES:-2.5} minutes)"
masksmith train examples/membrane --foreground 0 --size 256 --batch-size 4 --epochs 60 -m base_channels=16 \
  --max-time "${DEMO_MINUTES:-2.5}" --early-stopping 0 --out "$OUT/run"
echo "== evaluate (validation split recorded at training, original 512x512 resolution)"
masksmith evaluate "$OUT/run/model.msb" examples/membrane --out "$OUT/evaluate"
echo "== predict (unlabelled test slices)"
masksmith predict "$OUT/run/model.msb" examples/membrane/test --out "$OUT/predictions" --overlay
cat <<MSG

Outputs:
  run folder   $OUT/run          (model.msb, config.yaml, metrics.csv, curves.png, checkpoints/)
  evaluation   $OUT/evaluate     (metrics.json, per_class.csv, confusion.png, gallery.png, report.md)
  predictions  $OUT/predictions  (palette PNG masks; overlays/)
MSG

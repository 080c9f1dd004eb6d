#!/usr/bin/env bash
# Remakes the bundled default weights from nothing, offline, on CPU (about 15 minutes on 2 cores):
# synthetic world -> small CLIP from scratch -> stage 1 (text encoder) -> stage 2 (Combiner),
# once for the FashionIQ-layout world and once for the CIRR-layout world.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORLD=${WORLD:-data/world}
RUNS=${RUNS:-runs/default}

$PY -m cir_demo synth --out "$WORLD" --seed 0 --size default --overwrite --no-progress
$PY -m cir_demo train clip-pretrain --data "$WORLD/fashioniq" "$WORLD/cirr" --out "$RUNS/clip" \
    --epochs 20 --batch-size 128 --lr 1e-3 --validate-every 2 --seed 0 --no-progress
for ds in fashioniq cirr; do
  $PY -m cir_demo train stage1 --data "$WORLD/$ds" --clip "$RUNS/clip/best.safetensors" --out "$RUNS/$ds-stage1" \
      --encoder text --epochs 20 --batch-size 128 --lr 5e-5 --seed 0 --no-progress
  $PY -m cir_demo train stage2 --data "$WORLD/$ds" --clip "$RUNS/$ds-stage1/best.safetensors" \
      --out "$RUNS/$ds-stage2" --epochs 100 --batch-size 256 --lr 2e-4 --seed 0 --no-progress
  $PY -c "import sys; from cir_demo.model.checkpoint import bundle_checkpoint as b; b(*sys.argv[1:4])" \
      "$RUNS/$ds-stage1/best.safetensors" "$RUNS/$ds-stage2/best.safetensors" "weights/$ds.safetensors"
done
ls -l weights/*.safetensors

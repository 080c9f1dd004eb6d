#!/usr/bin/env bash
# Remakes the bundled default weights from nothing, offline, on CPU (see weights/README.md for the
# time on 2 cores): synthetic world -> small CLIP from scratch -> stage 1 (text encoder) ->
# stage 2 (Combiner), once for the FashionIQ-layout world and once for the CIRR-layout world.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORLD=${WORLD:-data/world}
RUNS=${RUNS:-runs/default}
OUT=${OUT:-weights}

$PY -m cir_demo synth --out "$WORLD" --seed 0 --size default --overwrite --no-progress
# A small CLIP whose image tower keeps where things are (a conv grid, cir_demo/model/grid_tower.py);
# its token table keeps only the ~190 BPE tokens the captions use. Batches of whole image sets with
# one swapped-word caption per image as an extra negative, and linear heads that must read the
# generator's attributes off the image embedding. Stage 1 inserts unknown tokens into half its
# captions, so words the model never read ("same but", "please") are ignored rather than derailing
# the query.
$PY -m cir_demo train clip-pretrain --model cir-tiny-grid --data "$WORLD/fashioniq" "$WORLD/cirr" --out "$RUNS/clip" \
    --trim-vocabulary --group-batches --hard-negatives 4 --attribute-loss 1.0 --epochs 15 --batch-size 32 --lr 5e-4 \
    --schedule cosine --validate-every 5 --seed 0 --no-progress --overwrite
# Stage 1 runs near the pre-training's learning rate (4e-4 against 5e-4): this CLIP was trained from
# scratch, not by OpenAI, and at 5e-5 its text encoder underfitted (CIRR stage-1 training loss 4.7
# against 0.75 at 4e-4).
# CIRR layout: both stages also score each query against the other images of its reference's image
# set (the look-alikes Recall_subset ranks among).
for ds in fashioniq cirr; do
  extra=()
  [ "$ds" = cirr ] && extra=(--set-negatives)
  $PY -m cir_demo train stage1 --data "$WORLD/$ds" --clip "$RUNS/clip/best.safetensors" --out "$RUNS/$ds-stage1" \
      --encoder text --unknown-words 0.5 --epochs 20 --batch-size 128 --lr 4e-4 --schedule cosine --seed 0 \
      "${extra[@]}" --no-progress --overwrite
  $PY -m cir_demo train stage2 --data "$WORLD/$ds" --clip "$RUNS/$ds-stage1/best.safetensors" \
      --out "$RUNS/$ds-stage2" --epochs 100 --batch-size 256 --lr 2e-4 --schedule cosine --seed 0 "${extra[@]}" \
      --no-progress --overwrite
  $PY -c "import sys; from cir_demo.model.checkpoint import bundle_checkpoint as b; b(*sys.argv[1:4])" \
      "$RUNS/$ds-stage1/best.safetensors" "$RUNS/$ds-stage2/best.safetensors" "$OUT/$ds.safetensors"
done
ls -l "$OUT"/*.safetensors

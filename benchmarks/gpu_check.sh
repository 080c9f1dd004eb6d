#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (run from the repo root):
# CUDA-only tests (graph replay == eager on cuda:0, and on cuda:1 when there are two GPUs; lazy
# capture), then the serving benchmark on CUDA (RN50x4, 10k / 100k galleries).
set -uo pipefail
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv
$PY -m pytest -q tests/test_text_tower.py tests/test_engine.py -k cuda -p no:cacheprovider -rs
$PY -m cir_demo bench --device cuda --model RN50x4 --sizes 10000 100000 --queries 200 --index-images 2048 \
    --batch-size 256 --num-workers 8 | tee "${OUT:-.}/bench_cuda.jsonl"

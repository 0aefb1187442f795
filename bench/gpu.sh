#!/usr/bin/env bash
# Prepared GPU benchmark (issue 4): Stable Diffusion 1.5's architecture with random weights (cost
# does not depend on weight values, so no download), 512², every method. Under 5 minutes on one
# H100/H200: most of it is building the random 1.07 B-parameter model once per command.
# Writes JSON under OUTPUT_DIR and prints each table. Usage: bench/gpu.sh [OUTPUT_DIR]
# COMPILE=1 also measures torch.compile (adds minutes of compilation).
set -euo pipefail
out="${1:-bench/results}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
export HF_HUB_OFFLINE=1
common=(--model sd15-random --device cuda --resolution 512 --warmup-steps 2 --steps-timed 10)

python -m mimicshield env
# 1. Every method side by side, bf16 networks (fp32 perturbation), batch 1 and 4.
python -m mimicshield bench "${common[@]}" --dtype bf16 --batch-size 1,4 \
  --output "$out/gpu-sd15-512-bf16-$stamp.json"
# 2. The same for the main methods in fp32, and in bf16 with channels_last.
python -m mimicshield bench "${common[@]}" --dtype fp32 --methods sds-,advdm,photoguard,mist \
  --output "$out/gpu-sd15-512-fp32-$stamp.json"
python -m mimicshield bench "${common[@]}" --dtype bf16 --batch-size 1,4 --channels-last \
  --methods sds-,advdm,photoguard,mist --output "$out/gpu-sd15-512-bf16-nhwc-$stamp.json"
# 3. The memory planner's constants as CUDA max-allocated (compare with runtime/memory.py's).
python bench/calibrate_memory.py --device cuda --resolutions 256,512 \
  --output "$out/gpu-memory-calibration-$stamp.json"
if [ "${COMPILE:-0}" = 1 ]; then
  python -m mimicshield bench "${common[@]}" --dtype bf16 --compile --channels-last \
    --methods sds-,advdm --warmup-steps 3 --output "$out/gpu-sd15-512-bf16-compile-$stamp.json"
fi

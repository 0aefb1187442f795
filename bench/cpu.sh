#!/usr/bin/env bash
# CPU cost of a default protection at Stable Diffusion 1.5 size (issue 4, deliverable 3).
# SD-1.5 architecture with random weights (cost does not depend on weight values), 512², batch 1,
# SDS− and PhotoGuard, fp32 then bf16; 1 warm-up + 1 FLOP-counted + 2 timed steps per method.
# About 10 minutes on a 2-core machine. Usage: bench/cpu.sh [OUTPUT_DIR]
set -euo pipefail
out="${1:-bench/results}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
HF_HUB_OFFLINE=1 python -m mimicshield bench --model sd15-random --device cpu \
  --methods sds-,photoguard --resolution 512 --dtype fp32,bf16 --steps-timed 2 \
  --output "$out/cpu-sd15-512-$stamp.json"

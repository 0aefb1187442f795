#!/usr/bin/env bash
# CPU cost of a default protection at Stable Diffusion 1.5 size (issue 4, deliverable 3).
# SD-1.5 architecture with random weights (cost does not depend on weight values), 512², batch 1,
# SDS− and PhotoGuard, fp32 and bf16, first in the contiguous (NCHW) layout and then in
# channels_last (NHWC, the CPU default of `protect`); 1 warm-up + 1 FLOP-counted + 2 timed steps
# per method. About 15 minutes on an idle 2-core machine. Usage: bench/cpu.sh [OUTPUT_DIR]
set -euo pipefail
out="${1:-bench/results}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
for layout in contiguous channels-last; do
  switch=()
  if [ "$layout" = channels-last ]; then switch=(--channels-last); fi
  HF_HUB_OFFLINE=1 python -m mimicshield bench --model sd15-random --device cpu \
    --methods sds-,photoguard --resolution 512 --dtype fp32,bf16 --steps-timed 2 "${switch[@]}" \
    --output "$out/cpu-sd15-512-$layout-$stamp.json"
done

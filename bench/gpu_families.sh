#!/usr/bin/env bash
# Prepared GPU benchmark: one protection step of each model family at its native resolution
# (SD 1.5 512²; SDXL, SD3-medium, SD3.5-medium, SD3.5-large, FLUX.1-dev 1024²), full-size
# architectures with random weights built on the GPU in bf16 (cost does not depend on weight
# values, so no download and no network). Times the encoder fwd+bwd, the denoiser fwd, a whole
# SDS step and a whole AdvDM step (median of 5 after one warm-up) with torch.cuda's peak
# allocation for each; the meta-device counts (parameters, FLOPs, saved activations) come with
# every row. FLUX.1-dev's AdvDM step should need ≈ 55 GB (counted: 22 GiB of VAE + transformer
# weights, 26 GiB of saved activations), so an 80 GB card suffices. Expected well under 5
# minutes on one H100/H200 (not yet run). Writes JSON under OUTPUT_DIR and prints the table.
# Usage: bench/gpu_families.sh [OUTPUT_DIR]
set -euo pipefail
out="${1:-bench/results}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python bench/families.py --time --device cuda --dtype bf16 --repeats 5 \
  --families sd15,sdxl,sd3-medium,sd35-medium,sd35-large,flux-dev \
  --steps encoder,denoiser,sds,advdm --output "$out/families-cuda-bf16-$stamp.json"

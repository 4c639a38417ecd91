#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (driver + NVRTC; no CUDA toolkit needed at build time): build with burn's
# CUDA backend and print inference latency, forward + backward (whole model and per part) and training steps
# (fixed weights, GradNorm) for a preset, each line as soon as it is measured.
#
#   model/benches/gpu.sh [PRESET] [ITERS]
set -euo pipefail
preset="${1:-reference}"
iters="${2:-5}"
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
cargo bench -p mtmed3d-model --features cuda --bench reference_step -- --device cuda --preset "$preset" --iters "$iters"

#!/usr/bin/env bash
# The CPU 3D convolution kernels against PyTorch's (oneDNN) on the reference preset's hot layer shapes:
# forward, input gradient, weight gradient; median seconds of each side, then ratios (ours / PyTorch;
# < 1: ours is faster). Same machine, same thread count, one after the other.
#
#   model/benches/conv3d.sh [THREADS (default: all cores)] [ITERS (default 3)]
#
# Needs python3 with torch (CPU wheels: pip install torch --index-url https://download.pytorch.org/whl/cpu).
set -euo pipefail
threads="${1:-$(nproc)}"
iters="${2:-3}"
cd "$(dirname "$0")/../.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cargo bench -q -p mtmed3d-model --bench conv3d --no-run
RAYON_NUM_THREADS="$threads" cargo bench -q -p mtmed3d-model --bench conv3d -- \
    --threads "$threads" --iters "$iters" --json | tee "$out/ours.jsonl"
OMP_NUM_THREADS="$threads" python3 model/benches/conv3d_torch.py --threads "$threads" --iters "$iters" \
    --shapes "$out/ours.jsonl" \
    | tee "$out/torch.jsonl"

python3 - "$out/ours.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
torch = {r["shape"]: r for r in (json.loads(l) for l in open(sys.argv[2]) if l.startswith("{"))}
print(f"\n{ours[0]['threads']} threads; seconds (ours / PyTorch) and ratio")
print(f"{'shape':<28}{'forward':>22}{'input grad':>22}{'weight grad':>22}")
for r in ours:
    t = torch[r["shape"]]
    cells = []
    for k in ("forward", "input_grad", "weight_grad"):
        cells.append(f"{r[k]:>7.3f}/{t[k]:<7.3f}{r[k] / t[k]:>6.2f}x")
    print(f"{r['shape']:<28}" + "".join(f"{c:>22}" for c in cells))
PY

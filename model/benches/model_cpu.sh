#!/usr/bin/env bash
# burn (flex) against PyTorch + MONAI on the CPU: the `reference` preset at 1×4×96³, forward + backward of
# the whole model and of each part, run one after the other on the same machine at the same thread count.
# Prints both tables as they are measured, then the ratios (burn seconds / PyTorch seconds; < 1: burn is
# faster).
#
#   model/benches/model_cpu.sh [THREADS (default: all cores)] [ITERS (default 2)] [ONLY (default fwd_bwd,parts)]
#
# Needs python3 with torch and monai==1.3.0 (CPU wheels: pip install torch --index-url
# https://download.pytorch.org/whl/cpu; pip install monai==1.3.0 einops).
set -euo pipefail
threads="${1:-$(nproc)}"
iters="${2:-2}"
only="${3:-fwd_bwd,parts}"
cd "$(dirname "$0")/../.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cargo bench -q -p mtmed3d-model --bench reference_step --no-run
echo "== burn, $threads threads"
RAYON_NUM_THREADS="$threads" cargo bench -q -p mtmed3d-model --bench reference_step -- \
    --preset reference --threads "$threads" --iters "$iters" --only "$only" --json | tee "$out/burn.jsonl"
echo "== PyTorch, $threads threads"
OMP_NUM_THREADS="$threads" python3 -W ignore model/benches/pytorch_reference.py \
    --threads "$threads" --iters "$iters" --only "${only//,gradnorm/}" --json | tee "$out/torch.jsonl"

python3 - "$out/burn.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys
def load(path):
    rows = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows[r["measurement"]] = r
    return rows
burn, torch = load(sys.argv[1]), load(sys.argv[2])
first = next(iter(torch.values()), {})
print(f"\nreference preset, 1x4x96^3, {first.get('threads', '?')} threads; median seconds")
print(f"{'measurement':<28}{'burn':>10}{'PyTorch':>10}{'ratio':>8}")
for name, b in burn.items():
    t = torch.get(name)
    if t:
        print(f"{name:<28}{b['seconds']:>10.3f}{t['seconds']:>10.3f}{b['seconds'] / t['seconds']:>8.2f}")
PY

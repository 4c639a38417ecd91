#!/usr/bin/env bash
# burn (flex) against PyTorch + MONAI on the CPU: the `reference` preset at 1×4×96³, forward + backward of
# the whole model and of each part, run one after the other on the same machine at the same thread count.
# Prints the tables as they are measured, then the ratios (burn seconds / PyTorch seconds; < 1: burn is
# faster).
#
# burn runs on the system allocator, as the `mtmed3d` binary does by default; BURN_FEATURES=jemalloc
# runs it on jemalloc kept from returning memory (model/src/allocator.rs). PyTorch runs twice: as
# installed (glibc malloc), and with that jemalloc and its settings preloaded, when a
# libjemalloc.so.2 is found (Debian: apt install libjemalloc2; JEMALLOC_LIB=path names another).
# The allocator alone moves PyTorch's time by 40 %, so both comparisons are printed.
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

features="${BURN_FEATURES:+--features $BURN_FEATURES}"
cargo bench -q -p mtmed3d-model $features --bench reference_step --no-run
echo "== burn, $threads threads"
RAYON_NUM_THREADS="$threads" cargo bench -q -p mtmed3d-model $features --bench reference_step -- \
    --preset reference --threads "$threads" --iters "$iters" --only "$only" --json | tee "$out/burn.jsonl"
echo "== PyTorch, $threads threads"
OMP_NUM_THREADS="$threads" python3 -W ignore model/benches/pytorch_reference.py \
    --threads "$threads" --iters "$iters" --only "${only//,gradnorm/}" --json | tee "$out/torch.jsonl"
jemalloc="${JEMALLOC_LIB:-$(ls /usr/lib/*/libjemalloc.so.2 /usr/lib/libjemalloc.so.2 2>/dev/null | head -1 || true)}"
if [ -n "$jemalloc" ] && [ -e "$jemalloc" ]; then
  conf="$(sed -n 's/^pub const MALLOC_CONF: &str = "\(.*\)";$/\1/p' model/src/allocator.rs)"
  echo "== PyTorch, $threads threads, $jemalloc with $conf"
  MALLOC_CONF="$conf" LD_PRELOAD="$jemalloc" OMP_NUM_THREADS="$threads" python3 -W ignore \
      model/benches/pytorch_reference.py --threads "$threads" --iters "$iters" --only "${only//,gradnorm/}" \
      --json | tee "$out/torch-jemalloc.jsonl"
else
  echo "== no libjemalloc.so.2 found: PyTorch on jemalloc not measured" >&2
  : > "$out/torch-jemalloc.jsonl"
fi

python3 - "$out/burn.jsonl" "$out/torch.jsonl" "$out/torch-jemalloc.jsonl" <<'PY'
import json, sys
def load(path):
    rows = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows[r["measurement"]] = r
    return rows
burn, torch, torch_je = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
first = next(iter(torch.values()), {})
print(f"\nreference preset, 1x4x96^3, {first.get('threads', '?')} threads; median seconds")
print(f"burn on {next(iter(burn.values()), {}).get('allocator', 'the system allocator')}; PyTorch as installed (glibc) and on jemalloc")
print(f"{'measurement':<28}{'burn':>10}{'PyTorch':>10}{'ratio':>8}{'PyTorch je':>12}{'ratio':>8}")
for name, b in burn.items():
    t = torch.get(name)
    if not t:
        continue
    row = f"{name:<28}{b['seconds']:>10.3f}{t['seconds']:>10.3f}{b['seconds'] / t['seconds']:>8.2f}"
    if name in torch_je:
        tj = torch_je[name]["seconds"]
        row += f"{tj:>12.3f}{b['seconds'] / tj:>8.2f}"
    print(row)
PY

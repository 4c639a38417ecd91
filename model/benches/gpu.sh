#!/usr/bin/env bash
# The model and the pipelines on an NVIDIA GPU, in one table:
#   1. burn (CUDA backend) timing of the `reference` preset at 1×4×96³: inference latency, forward +
#      backward (whole model and per part), a training step with fixed task weights and one with a
#      GradNorm update; every time synchronised with the device before the clock stops;
#   2. the same measurements of the PyTorch + MONAI peer (model/benches/pytorch_reference.py) on the
#      same GPU, and the ratios;
#   3. configs/brats-train.yaml and configs/brats-test.yaml on BraTS-sized (240×240×155) phantom
#      cases: training steps of the reference preset on the GPU, then whole-volume inference,
#      each with its wall time.
#
#   model/benches/gpu.sh [BIN_DIR] [ITERS] [ONLY (default inference,fwd_bwd,parts,step,gradnorm)]
#
# BIN_DIR holds `mtmed3d` and `reference_step` built with `--features cuda` (a GPU machine needs no
# Rust: build elsewhere, copy the two files). Without BIN_DIR both are built here with cargo.
# The driver and NVRTC are needed at run time, no CUDA toolkit at build time. Results and logs go
# to $GPU_OUT (default: a temporary folder); GPU_SECTIONS (default "burn torch pipelines") picks sections, GPU_EPOCHS (default 2) the training epochs.
set -uo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
bin="${1:-}"
iters="${2:-10}"
only="${3:-inference,fwd_bwd,parts,step,gradnorm}"
out="${GPU_OUT:-$(mktemp -d)}"
mkdir -p "$out"
if [ -z "$bin" ]; then
    bin="$out/bin"
    mkdir -p "$bin"
    cargo build --release --features mtmed3d/cuda,mtmed3d-model/cuda -p mtmed3d -p mtmed3d-model \
        --bin mtmed3d --bench reference_step --message-format=json-render-diagnostics \
        | python3 -c 'import json,sys,shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("mtmed3d", "reference_step"):
        shutil.copy(m["executable"], sys.argv[1])' "$bin" || exit 1
fi
bin="$(cd "$bin" && pwd)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

sections="${GPU_SECTIONS:-burn torch pipelines}"
has() { [[ " $sections " == *" $1 "* ]]; }

has burn && echo "== 1. burn, CUDA backend" && timeout 150 "$bin/reference_step" --device cuda --preset reference --iters "$iters" --only "$only" --json \
    | tee "$out/burn.jsonl"
has torch && echo "== 2. PyTorch + MONAI, CUDA" && PYTHONUNBUFFERED=1 timeout 100 python3 -W ignore model/benches/pytorch_reference.py --device cuda \
    --iters "$iters" --only "${only//,gradnorm/}" --json | tee "$out/torch.jsonl"

has pipelines && echo "== 3. BraTS-sized pipelines on the GPU" && (
    work="$(mktemp -d)"
    cd "$work" || exit 1
    ln -s "$root/configs" configs   # the pipelines name each other and their data relative to here
    "$bin/mtmed3d" phantom --out data/BraTS2018 --cases 8 --seed 11 --shape 240,240,155 2>&1 | tail -n 1
    start=$(date +%s%N)
    timeout 200 "$bin/mtmed3d" run configs/brats-train.yaml \
        --set epochs="${GPU_EPOCHS:-2}" --set sinks.train.validate_every=1 2>&1 | tail -n 20
    echo "train_seconds $(( ($(date +%s%N) - start) / 1000000 ))e-3" | tee -a "$out/pipelines.txt"
    start=$(date +%s%N)
    timeout 120 "$bin/mtmed3d" run configs/brats-test.yaml \
        --set stages.infer.checkpoint=runs/brats/fold0/last.ckpt --set stages.infer.overlap=0.25 2>&1 | tail -n 14
    echo "test_seconds $(( ($(date +%s%N) - start) / 1000000 ))e-3" | tee -a "$out/pipelines.txt"
    cp runs/brats/fold0/history.jsonl "$out/history.jsonl" 2>/dev/null
    cp runs/brats/fold0/metrics.json "$out/metrics.json" 2>/dev/null
)

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    rows = {}
    try:
        for line in open(os.path.join(out, name)):
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                if "measurement" in r:
                    rows[r["measurement"]] = r
    except FileNotFoundError:
        pass
    return rows
burn, torch = load("burn.jsonl"), load("torch.jsonl")
gpu = open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(os.path.join(out, "gpu.txt")) else "?"
print(f"\n{gpu}\nreference preset, 1x4x96^3; median seconds (synchronised)")
print(f"{'measurement':<34}{'burn':>10}{'PyTorch':>10}{'ratio':>8}")
for name in list(burn) + [n for n in torch if n not in burn]:
    b, t = burn.get(name), torch.get(name)
    bs = f"{b['seconds']:>10.4f}" if b else f"{'-':>10}"
    ts = f"{t['seconds']:>10.4f}" if t else f"{'-':>10}"
    ratio = f"{b['seconds'] / t['seconds']:>8.2f}" if b and t else f"{'-':>8}"
    print(f"{name:<34}{bs}{ts}{ratio}")
try:
    for line in open(os.path.join(out, "pipelines.txt")):
        k, v = line.split()
        print(f"{k:<34}{float(v):>10.1f}")
except FileNotFoundError:
    pass
PY

#!/usr/bin/env bash
# Dice + HD95 of three regions on 240x240x155 label maps: mtmed3d against MONAI's
# definitions in scipy + numpy, same machine, same run, same files.
#
#   bash benches/metrics.sh [CASES]      (default 3 phantom cases)
#
# Both sides time the metrics on decoded arrays (file reading excluded), five rounds, median.
# Reported: seconds per case on one core (both pinned to CPU 0 with taskset), mtmed3d on
# every core, the ratios, and the largest difference between the two sides' values.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
cases="${1:-3}"
work="${BENCH_DIR:-${TMPDIR:-/tmp}/mtmed3d-bench-metrics}"
rm -rf "$work" && mkdir -p "$work"
python3 -c "import nibabel, numpy, scipy" 2>/dev/null || python3 -m pip install --quiet nibabel numpy scipy
cargo bench -p mtmed3d-stages --bench metrics --quiet -- "$work" "$cases" > "$work/rust-all.json"
RAYON_NUM_THREADS=1 taskset -c 0 cargo bench -p mtmed3d-stages --bench metrics --quiet -- "$work" "$cases" > "$work/rust-one.json"
taskset -c 0 python3 "$repo/benches/metrics.py" "$work" > "$work/python.json"
python3 - "$work" "$(nproc)" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
r1 = json.load(open(f"{work}/rust-one.json"))
rn = json.load(open(f"{work}/rust-all.json"))
p1 = json.load(open(f"{work}/python.json"))
diff = max(abs(a - b) for c in p1["values"] for k in ("dice", "hd95")
           for a, b in zip(p1["values"][c][k], r1["values"][c][k]))
print("Dice + HD95 of WT, TC, ET per 240x240x155 case (seconds, median of 5 rounds)")
print(f"  scipy + numpy, 1 core : {p1['seconds_per_case']:.3f}")
print(f"  mtmed3d, 1 core       : {r1['seconds_per_case']:.3f}   ({p1['seconds_per_case'] / r1['seconds_per_case']:.1f}x faster)")
print(f"  mtmed3d, {n} cores       : {rn['seconds_per_case']:.3f}   ({p1['seconds_per_case'] / rn['seconds_per_case']:.1f}x faster than scipy on 1 core)")
print(f"  largest difference between the two sides' values: {diff:.2e}")
PY

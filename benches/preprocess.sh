#!/usr/bin/env bash
# Preprocessing throughput, mtmed3d against nibabel + numpy, same machine, same run.
#
#   bash benches/preprocess.sh [CASES]      (default 6 BraTS-sized phantom cases; REPEATS=3)
#
# Both sides decode the four modalities and the label of each case (.nii.gz), reorient to
# RAS, z-score each channel over nonzero voxels, crop to the image's nonzero box + 8 voxels,
# and take the whole-tumour box. Reported: seconds per case on one core (both pinned to
# CPU 0 with taskset) and mtmed3d's on every core, and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
cases="${1:-6}"
work="${BENCH_DIR:-${TMPDIR:-/tmp}/mtmed3d-bench}"
mkdir -p "$work"
cargo build --release --quiet
bin="$(realpath "${CARGO_TARGET_DIR:-target}/release/mtmed3d")"
"$bin" phantom --out "$work/data/phantom" --cases "$cases" --seed 1 >/dev/null 2>&1
python3 -c "import nibabel, numpy" 2>/dev/null || python3 -m pip install --quiet nibabel numpy

rust_per_case() {
  local pin="$1" summary="$work/summary-$RANDOM.json"
  (cd "$work" && RUST_LOG=error $pin "$bin" run "$repo/benches/preprocess.yaml" --summary "$summary" >/dev/null 2>&1)
  python3 -c "import json,sys; s=json.load(open('$summary')); assert s['done']==$cases, s; print(s['wall_s']/s['done'])"
}
python_per_case() {
  (cd "$work" && taskset -c 0 python3 "$repo/benches/preprocess.py" data/phantom) |
    python3 -c "import json,sys; print(json.load(sys.stdin)['seconds_per_case'])"
}

# Alternate the three runs `repeats` times and compare medians: on a shared or virtual
# machine, memory and CPU speed drift between runs; alternating spreads that over all sides.
repeats="${REPEATS:-3}"
one=() all=() py=()
for _ in $(seq "$repeats"); do
  one+=("$(rust_per_case "taskset -c 0")")
  all+=("$(rust_per_case "")")
  py+=("$(python_per_case)")
done
python3 - "$(nproc)" "${one[*]}" "${all[*]}" "${py[*]}" <<'PY'
import statistics, sys
n = int(sys.argv[1])
one, all_, py = ([float(v) for v in a.split()] for a in sys.argv[2:])
r1, rn, p1 = (statistics.median(v) for v in (one, all_, py))
fmt = lambda v: " ".join(f"{x:.3f}" for x in v)
print(f"seconds per BraTS-sized case (240x240x155, 4 modalities + label, .nii.gz), median of {len(one)}")
print(f"  nibabel + numpy, 1 core : {p1:.3f}   (runs: {fmt(py)})")
print(f"  mtmed3d, 1 core         : {r1:.3f}   ({p1 / r1:.2f}x faster; runs: {fmt(one)})")
print(f"  mtmed3d, {n} cores         : {rn:.3f}   ({p1 / rn:.2f}x faster than nibabel on 1 core; runs: {fmt(all_)})")
PY

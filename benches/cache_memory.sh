#!/usr/bin/env bash
# Peak memory of preprocessing into a zarr store does not grow with the number of cases:
# max RSS (/usr/bin/time -v) of configs/brats-cache.yaml over 10 and over 40 BraTS-sized
# phantom cases. Exits 1 if the 40-case peak is more than 10% above the 10-case peak.
#
#   bash benches/cache_memory.sh [SMALL] [LARGE]     (defaults 10 and 40)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
small="${1:-10}"
large="${2:-40}"
work="${BENCH_DIR:-${TMPDIR:-/tmp}/mtmed3d-bench-memory}"
mkdir -p "$work"
# MTMED3D_BIN: an already built binary (skips the release build).
if [ -z "${MTMED3D_BIN:-}" ]; then
  cargo build --release --quiet
fi
bin="$(realpath "${MTMED3D_BIN:-${CARGO_TARGET_DIR:-target}/release/mtmed3d}")"

peak_kb() { # CASES
  "$bin" phantom --out "$work/data$1" --cases "$1" --seed 1 >/dev/null 2>&1
  rm -rf "$work/store$1.zarr"
  local log="$work/time$1.txt"
  if ! (cd "$work" && RUST_LOG=error /usr/bin/time -v "$bin" run "$repo/configs/brats-cache.yaml" \
     --set "source.brats.root=data$1" --set "sinks.zarr_write.path=store$1.zarr" >/dev/null 2>"$log"); then
    echo "the run over $1 cases failed:" >&2; cat "$log" >&2; exit 1
  fi
  awk '/Maximum resident set size/ {print $6}' "$log"
}

a=$(peak_kb "$small")
b=$(peak_kb "$large")
rm -rf "$work"/store*.zarr
python3 - "$small" "$a" "$large" "$b" <<'PY'
import sys
s, a, l, b = map(int, sys.argv[1:])
print(f"peak RSS preprocessing {s} cases: {a / 1024:.0f} MiB; {l} cases: {b / 1024:.0f} MiB ({b / a:.3f}x)")
sys.exit(0 if b <= 1.10 * a else 1)
PY

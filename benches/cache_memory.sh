#!/usr/bin/env bash
# Peak memory of preprocessing into a zarr store does not grow with the number of cases:
# max RSS (/usr/bin/time -v) of configs/brats-cache.yaml over 10 and over 40 BraTS-sized
# phantom cases. The config bounds the volumes in flight by `max_in_flight_bytes`; the peak
# still varies from run to run with what the decoders and writers hold besides, so the two
# sizes alternate REPEATS times (default 3) and the medians are compared. Exits 1 if the
# 40-case median is more than 10% above the 10-case median.
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

repeats="${REPEATS:-3}"

peak() { # CASES -> "peak_kb:peak_in_flight:peak_in_flight_MiB"
  rm -rf "$work/store$1.zarr"
  local log="$work/time$1.txt"
  if ! (cd "$work" && RUST_LOG=error /usr/bin/time -v "$bin" run "$repo/configs/brats-cache.yaml" \
     --set "source.brats.root=data$1" --set "sinks.zarr_write.path=store$1.zarr" \
     --summary "summary$1.json" >/dev/null 2>"$log"); then
    echo "the run over $1 cases failed:" >&2; cat "$log" >&2; exit 1
  fi
  echo "$(awk '/Maximum resident set size/ {print $6}' "$log"):$(python3 -c "import json; s = json.load(open('$work/summary$1.json')); print(f\"{s['peak_in_flight']}:{(s.get('peak_in_flight_bytes') or 0) / 2**20:.0f}\")")"
}

for n in "$small" "$large"; do
  "$bin" phantom --out "$work/data$n" --cases "$n" --seed 1 >/dev/null 2>&1
done
a="" b=""
for _ in $(seq "$repeats"); do
  a="$a $(peak "$small")"
  b="$b $(peak "$large")"
done
rm -rf "$work"/store*.zarr
python3 - "$small" "$a" "$large" "$b" <<'PY'
import statistics, sys
s, a, l, b = sys.argv[1:]
def parse(runs):
    pairs = [r.split(":") for r in runs.split()]
    return [int(kb) / 1024 for kb, _, _ in pairs], [f"{f} cases, {mib} MiB" for _, f, mib in pairs]
(ma, fa), (mb, fb) = parse(a), parse(b)
for n, m, f in ((s, ma, fa), (l, mb, fb)):
    runs = ", ".join(f"{x:.0f} MiB ({y} of volumes in flight)" for x, y in zip(m, f))
    print(f"peak RSS preprocessing {n} cases: median {statistics.median(m):.0f} MiB; runs {runs}")
ratio = statistics.median(mb) / statistics.median(ma)
print(f"median {l} cases / median {s} cases: {ratio:.3f}x")
sys.exit(0 if ratio <= 1.10 else 1)
PY

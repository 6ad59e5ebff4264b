#!/usr/bin/env bash
# The criterion run, then a table of medians from ${CARGO_TARGET_DIR:-target}/criterion.
#
#   scripts/bench.sh                 all benches
#   scripts/bench.sh --bench route   one bench file (any cargo bench arguments pass through)
#   QUICK=1 scripts/bench.sh         shorter measurement (1 s warm-up, 3 s per bench)
set -euo pipefail
cd "$(dirname "$0")/.."

extra=()
[ "${QUICK:-0}" = 1 ] && extra=(-- --warm-up-time 1 --measurement-time 3)
cargo bench "$@" "${extra[@]}"

echo
criterion=${CARGO_TARGET_DIR:-target}/criterion
echo "medians ($criterion/*/new/estimates.json):"
python3 - "$criterion" <<'PY'
import json, pathlib, sys
rows = []
root = pathlib.Path(sys.argv[1])
for est in sorted(root.glob("**/new/estimates.json")):
    bench = est.parent.parent.relative_to(root).as_posix()
    median = json.loads(est.read_text())["median"]["point_estimate"]  # ns
    rows.append((bench, median))
def fmt(ns):
    return f"{ns/1e6:.2f} ms" if ns >= 1e6 else f"{ns/1e3:.2f} µs" if ns >= 1e3 else f"{ns:.1f} ns"
w = max((len(b) for b, _ in rows), default=10)
for bench, ns in rows:
    print(f"  {bench:<{w}}  {fmt(ns):>10}")
PY

#!/usr/bin/env bash
# Nightly perf and correctness run (docs/nightly.md): run the default matrix, compare it
# against the last accepted baseline, fail on regressions, and promote the run to baseline
# when it passes.
#
# Environment (all optional):
#   NIGHTLY_DIR      where results, baseline and reports live (absolute; default /var/lib/pinstorm-nightly)
#   NIGHTLY_SCENARIO scenario file or preset (default: default)
#   NIGHTLY_REPEAT   runs per night (default 1; 3 lets Welch's t-test judge small changes)
#   NIGHTLY_GATES    gate file (default: configs/nightly/gates.toml next to this script)
#   PINSTORM         the pinstorm binary (default: target/release/pinstorm, built if missing)
#
# Exit status: 0 passed (or first night: baseline made), 4 a gate was crossed or judged
# nothing (its metric was not measured on both nights), 5 a latency gate could not judge
# because a night's machine was disturbed (the baseline stays; rerun when it is quiet),
# other: error.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${NIGHTLY_DIR:-/var/lib/pinstorm-nightly}"
scenario="${NIGHTLY_SCENARIO:-default}"
repeat="${NIGHTLY_REPEAT:-1}"
gates="${NIGHTLY_GATES:-$here/configs/nightly/gates.toml}"
pinstorm="${PINSTORM:-$here/target/release/pinstorm}"
case "$dir" in /*) ;; *) echo "NIGHTLY_DIR must be absolute: $dir" >&2; exit 2 ;; esac
if [ ! -x "$pinstorm" ]; then
    (cd "$here" && cargo build --release)
fi

night="$(date -u +%Y%m%dT%H%M%SZ)"
tonight="$dir/nights/$night"
mkdir -p "$tonight" "$dir/baseline"

for i in $(seq 1 "$repeat"); do
    echo "== run $i of $repeat: $scenario"
    status=0
    "$pinstorm" --results "$tonight/results" --label nightly --quiet run "$scenario" >"$tonight/run-$i.txt" || status=$?
    # 3: a cell differs from the expectations (reported by the gates through `differs`
    # and `refused`); anything else but 0 is an error.
    if [ "$status" != 0 ] && [ "$status" != 3 ]; then
        echo "run $i failed with status $status (see $tonight/run-$i.txt)" >&2
        exit "$status"
    fi
done

if [ -z "$(find "$dir/baseline" -name result.json -print -quit)" ]; then
    echo "== first night: $tonight becomes the baseline"
    cp -r "$tonight/results/." "$dir/baseline/"
    exit 0
fi

echo "== compare against the baseline"
status=0
"$pinstorm" compare "$dir/baseline" "$tonight/results" --gates "$gates" \
    --markdown-out "$tonight/compare.md" --json-out "$tonight/compare.json" \
    | tee "$tonight/compare.txt" || status=$?
"$pinstorm" --quiet report "$dir/baseline" "$tonight/results" --out "$tonight/report.html" \
    --title "pinstorm nightly $night" || true
"$pinstorm" export junit "$tonight/results" --out "$tonight/junit.xml" || true

if [ "$status" = 0 ]; then
    echo "== passed: tonight becomes the baseline"
    rm -rf "$dir/baseline.old"
    mv "$dir/baseline" "$dir/baseline.old"
    mkdir -p "$dir/baseline"
    cp -r "$tonight/results/." "$dir/baseline/"
    rm -rf "$dir/baseline.old"
fi
exit "$status"

#!/usr/bin/env bash
# Regenerate results/reference/: one lab matrix (Debian 6.1, 6.12 and sid; the lab's default
# scenario and the DAX and RDMA presets) with this machine's paths stripped, its HTML
# report and its plots. The README shows three of the plots.
#
# Needs what `pinstorm lab` needs (root, scripts/lab-setup.sh); takes 20-40 minutes under
# TCG. Usage: sudo bash scripts/reference-results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=$repo/results/reference
work=$(mktemp -d /var/tmp/pinstorm-reference.XXXXXX)
trap 'rm -rf "$work"' EXIT
cache=${PINSTORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pinstorm}

cargo build --release --all-features
bin=${CARGO_TARGET_DIR:-$repo/target}/release/pinstorm

# Exit 3 (a fact differs from the expectations) is a result like any other here.
"$bin" --results "$work/results" lab --cache "$cache" --fresh --devdax-namespace \
    --kernels deb:6.1,deb:6.12,deb:sid lab dax-vs-pin rdma-vs-layout || [ $? -eq 3 ]

rm -rf "$out"
mkdir -p "$out"
python3 scripts/strip-paths.py "$work/results" "$out/runs" \
    RESULTS="$work/results" CACHE="$cache" PINSTORM="$bin" REPO="$repo" HOME="$HOME"
# From inside $out with a relative path: the report names each result file as it was given.
(cd "$out" && "$bin" report runs --out "$out/report.html" && "$bin" plot runs --formats png --out "$out/plots")
# The report and the plots are made from the stripped results: check them too.
for p in "$work" "$cache" "$bin" "$repo" "$HOME"; do
    if grep -rqF "$p" "$out"; then
        echo "reference-results.sh: $p is still named under $out" >&2
        exit 1
    fi
done
echo "results/reference regenerated: $(find "$out/runs" -name result.json | wc -l) results"

#!/bin/sh
# make bench: measure on throw-away tokens, print the table and keep a copy
# in $BUILD/bench/results-<timestamp>.txt so runs can be compared.
set -eu
BUILD=${BUILD:-build}
work=$(mktemp -d /tmp/custos-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
KMSCTL="$BUILD/bin/kmsctl" sh deploy/dev-hsm.sh "$work/hsm" eu-west >/dev/null
export SOFTHSM2_CONF="$work/hsm/softhsm2.conf"
export CUSTOS_BENCH_HSM_DIR="$work/hsm"
export CUSTOS_LOG_LEVEL=warn
out="$BUILD/bench/results-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
    echo "# $(date -u) $(uname -m) $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo -)"
    "$BUILD/bench/bench_p11" "${BENCH_SECONDS:-2}" "${BENCH_RUNS:-5}"
} | tee "$out"
echo "saved to $out"

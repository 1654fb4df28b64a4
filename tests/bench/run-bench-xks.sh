#!/bin/sh
# The XKS rows of make bench alone (run-bench.sh stages 1 and 2b), for a
# machine too busy for the whole benchmark: the raw PKCS#11 AES-GCM
# baseline (bench_p11) and, in the same run, XksEncrypt/XksDecrypt peak and
# at 1,800 calls/s (bench_xks.py). The figures go to stdout and to
# $BUILD/bench/results-xks-<time>.txt.
#   BUILD=build sh tests/bench/run-bench-xks.sh
set -eu
BUILD=${BUILD:-build}
top=$(pwd)
work=$(mktemp -d /tmp/custos-bench-xks.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
BUILD="$BUILD" KMSCTL="$BUILD/bin/kmsctl" sh deploy/dev-setup.sh "$work" 0 >/dev/null
export SOFTHSM2_CONF="$work/hsm/softhsm2.conf"
export CUSTOS_BENCH_HSM_DIR="$work/hsm"
export CUSTOS_LOG_LEVEL=warn
mkdir -p "$BUILD/bench"
secs=${BENCH_SECONDS:-2}
runs=${BENCH_RUNS:-5}
out="$BUILD/bench/results-xks-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
    echo "# $(date -u) $(uname -m) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD 2>/dev/null || echo -)"
    "$BUILD/bench/bench_p11" "$secs" "$runs" | tee "$work/p11.txt"
    raw1=$(awk '$1 == "raw" && $2 == 1 {print $3}' "$work/p11.txt")
    echo
    /usr/bin/python3 tests/bench/bench_xks.py "$work" "$top/$BUILD" "$raw1"
} | tee "$out"
echo "saved to $out"

#!/bin/sh
# Metadata encryption benchmark, in one run on throw-away tokens:
#   1. the EncryptFields core (kms_field_seal, 8 fields) through pkcs11/
#      against a bare PKCS#11 loop making the same calls (bench_fields_p11)
#   2. over HTTP with wrk: EncryptFields with 8 fields per call against 8
#      separate Encrypt calls, DecryptFields against 8 Decrypts, audit on/off
# The table goes to stdout and to $BUILD/bench/fields-<time>.txt.
# BENCH_QUICK=1 makes a few-second smoke run.
set -eu
BUILD=${BUILD:-build}
top=$(pwd)
work=$(mktemp -d /tmp/custos-bench-fields.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
BUILD="$BUILD" KMSCTL="$BUILD/bin/kmsctl" sh deploy/dev-setup.sh "$work" 0 >/dev/null
export SOFTHSM2_CONF="$work/hsm/softhsm2.conf"
export CUSTOS_BENCH_HSM_DIR="$work/hsm"
export CUSTOS_LOG_LEVEL=warn
mkdir -p "$work/py" "$BUILD/bench"
protoc --python_out="$work/py" -Iproto proto/key.proto proto/fields.proto
quick=
if [ -n "${BENCH_QUICK:-}" ]; then quick=--quick; secs=1; runs=1; else secs=${BENCH_SECONDS:-2}; runs=${BENCH_RUNS:-3}; fi
out="$BUILD/bench/fields-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
    echo "# $(date -u) $(uname -m) $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo -)"
    "$BUILD/bench/bench_fields_p11" "$secs" "$runs"
    echo
    /usr/bin/python3 tests/bench/bench_fields.py "$work" "$top/$BUILD" $quick
} | tee "$out"
echo "saved to $out"

#!/bin/sh
# make soak-http: kmsd under ~70 % of its measured peak for SOAK_SECONDS
# (default 600) with 1 % hostile requests, on throw-away tokens made here
# (tests/bench/soak.py says what is measured and asserted). The table goes
# to stdout and to $BUILD/bench/soak-<UTC time>.txt; the exit status is
# soak.py's (non-zero when any check failed).
#
#   SOAK_SECONDS SOAK_RATE (req/s; default 70 % of the peak) SOAK_CONNS (16)
#   SOAK_PEAK_SECONDS (10) SOAK_HOSTILE (per mille, 10) SOAK_SAMPLE_S (10)
#   SOAK_WARMUP_S (min(60, SOAK_SECONDS / 5)) SOAK_RSS_BOUND_MIB (16)
set -eu
BUILD=${BUILD:-build}
case "$BUILD" in /*) ;; *) BUILD="$(pwd)/$BUILD" ;; esac
[ -x "$BUILD/tools/loadgen" ] || { echo "run-soak: $BUILD/tools/loadgen not built (make all)" >&2; exit 2; }
work=$(mktemp -d /tmp/custos-soak.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
BUILD="$BUILD" KMSCTL="$BUILD/bin/kmsctl" sh deploy/dev-setup.sh "$work" 0 >/dev/null
mkdir -p "$work/py" "$BUILD/bench"
protoc --python_out="$work/py" -Iproto proto/key.proto proto/audit.proto
out="$BUILD/bench/soak-$(date -u +%Y%m%dT%H%M%SZ).txt"
rc=0
/usr/bin/python3 tests/bench/soak.py "$work" "$BUILD" >"$out" 2>&1 || rc=$?
cat "$out"
[ $rc -eq 0 ] || tail -n 20 "$work/kmsd-soak.log" >&2
echo "saved to $out"
exit $rc

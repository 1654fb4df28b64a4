#!/bin/sh
# kill -9 of kmsd at random instants while keys are created, rotated and
# imported (BYOK), CUSTOS_KEY_CRASH_ROUNDS times (8 in make check; more for
# a soak): after the restarts (reconcile at start), every acknowledged
# operation is visible, no half-created version remains, every active
# version has its HSM object, and the token holds no key or wrapping key
# the store does not name. The template scan closes it.
set -eu
. tests/e2e/lib.sh
rounds=${CUSTOS_KEY_CRASH_ROUNDS:-8}
e2e_setup keycrash
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto
export PYTHONPATH="$E2E_DIR/py"
e2e_start
trap 'kill -9 $E2E_PID 2>/dev/null || true' EXIT
: >"$E2E_DIR/acked.jsonl"
i=0
while [ $i -lt "$rounds" ]; do
    i=$((i + 1))
    /usr/bin/python3 tests/e2e/key_crash.py load "$E2E_DIR" "$E2E_PORT" "$E2E_PID" "$i"
    wait "$E2E_PID" 2>/dev/null || true
    E2E_PID=
    e2e_start
done
echo "ok - kmsd restarted after $rounds kill -9 during key creation, rotation and import"
/usr/bin/python3 tests/e2e/key_crash.py verify "$E2E_DIR" "$E2E_PORT" "$E2E_PID"
e2e_scan_tokens
e2e_stop
trap - EXIT

#!/bin/sh
# Crash states between the store and the token, made by hand while kmsd is
# down, then reconciled at the next start: half-created keys and versions
# whose HSM object is complete are finished (never destroyed: they may have
# been acknowledged), those without a complete object vanish with it, a
# destroyed key's leftover object goes, live keys survive.
set -eu
. tests/e2e/lib.sh
e2e_setup reconcile
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto
export PYTHONPATH="$E2E_DIR/py"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
/usr/bin/python3 tests/e2e/reconcile_test.py "$E2E_DIR" "$E2E_PORT" create
e2e_stop
/usr/bin/python3 tests/e2e/reconcile_test.py "$E2E_DIR" "$E2E_PORT" crash
e2e_start
/usr/bin/python3 tests/e2e/reconcile_test.py "$E2E_DIR" "$E2E_PORT" verify
e2e_scan_tokens
e2e_stop
trap - EXIT

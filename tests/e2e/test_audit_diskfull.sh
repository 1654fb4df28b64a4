#!/bin/sh
# The audit log cannot be written (a file-size limit on kmsd, as on a full
# disk): key operations fail closed with "unavailable" and nothing is
# acknowledged; when space returns the log recovers by itself, and every
# acknowledged operation has its event.
set -eu
. tests/e2e/lib.sh
e2e_setup diskfull
rm -f "$E2E_DIR/kmsd.json"
CUSTOS_DEV_HEAD_MS=100 BUILD="$BUILD_DIR" KMSCTL="$KMSCTL" \
    sh deploy/dev-setup.sh "$E2E_DIR" "$E2E_PORT" >/dev/null
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
key=$(CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/demo-admin.key" "$KMSCTL" key create --region eu-west -q)
/usr/bin/python3 tests/e2e/audit_diskfull.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" "$key"
e2e_stop
trap - EXIT

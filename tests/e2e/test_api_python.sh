#!/bin/sh
# Every KeyService RPC and every refusal, through raw HTTP and Python's own
# protobuf implementation (generated from proto/ by protoc): a third party
# needs nothing but the .proto and an HTTP client.
set -eu
. tests/e2e/lib.sh
e2e_setup api
CUSTOS_DEV_DAY_SECONDS=1 CUSTOS_DEV_MIN_DAYS=0 CUSTOS_DEV_SWEEP_S=1 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
PYTHONPATH="$E2E_DIR/py" /usr/bin/python3 tests/e2e/api_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID"
e2e_scan_tokens
e2e_stop
trap - EXIT
# Nothing secret in the operational log.
for f in "$E2E_DIR"/credentials/*.key; do
    if grep -qF "$(cat "$f")" "$E2E_DIR/kmsd.log"; then
        echo "not ok - an API key appears in the kmsd log"; exit 1
    fi
done
if grep -q 'plaintext-sentinel' "$E2E_DIR/kmsd.log"; then
    echo "not ok - plaintext appears in the kmsd log"; exit 1
fi
echo "ok - no credential or plaintext in the operational log"

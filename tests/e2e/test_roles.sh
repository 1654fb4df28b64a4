#!/bin/sh
# Every route of every service as every role (tests/e2e/roles_test.py):
# the status docs/policy.md's role table promises, never a 5xx, and every
# refusal audited with its rule.
set -eu
. tests/e2e/lib.sh
e2e_setup roles
CUSTOS_DEV_HEAD_MS=100 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto proto/escrow.proto \
    proto/fields.proto proto/links.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
/usr/bin/python3 tests/e2e/roles_test.py "$E2E_DIR" "$E2E_PORT"
e2e_stop
trap - EXIT

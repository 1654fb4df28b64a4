#!/bin/sh
# Every kmsctl command against a live kmsd (tests/e2e/kmsctl_cli.sh).
set -eu
. tests/e2e/lib.sh
e2e_setup kmsctl
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
KMSCTL="$KMSCTL" CUSTOS_ADDR="http://127.0.0.1:$E2E_PORT" \
    ADMIN_KEY_FILE="$E2E_DIR/credentials/demo-admin.key" \
    BROKER_KEY_FILE="$E2E_DIR/credentials/demo-broker.key" \
    WORK_DIR="$E2E_DIR/cli" sh tests/e2e/kmsctl_cli.sh
e2e_scan_tokens
e2e_stop
trap - EXIT

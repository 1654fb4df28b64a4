#!/bin/sh
# Concurrent ExecuteRecovery of one destroyed key (docs/escrow-recovery.md):
# the same RESTORE recovery sent 3 times at once, and two different approved
# RESTORE recoveries of one key executed at once, for AES_256 and EC_P256
# keys. Exactly one execute wins; the key comes back with every version's
# objects in the token, old ciphertexts decrypt and old signatures verify.
# (Before executions of one key were serialized, a loser that passed the
# early state check unwrapped under the winner's CKA_ID and its rollback
# destroyed the winner's objects: the key was ENABLED with nothing behind it.)
set -eu
. tests/e2e/lib.sh
e2e_setup recovery_race
CUSTOS_DEV_DAY_SECONDS=1 CUSTOS_DEV_MIN_DAYS=0 CUSTOS_DEV_SWEEP_S=1 CUSTOS_DEV_HEAD_MS=100 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto proto/escrow.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
failed=0
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
/usr/bin/python3 tests/e2e/recovery_race.py "$E2E_DIR" "$E2E_PORT" 2 || failed=$((failed + 1))
e2e_stop
trap - EXIT
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$E2E_DIR/kmsd.log"; then
    echo "not ok - kmsd ran clean under the sanitizers"
    failed=$((failed + 1))
fi
[ $failed -eq 0 ] || { echo "$failed checks failed"; exit 1; }
echo "ok - kmsd ran clean"

#!/bin/sh
# At most 8 open recoveries per key (escrow.proto, docs/escrow-recovery.md),
# also under concurrency: the count and the insert are one store write
# transaction. Rounds of 40 concurrent RequestRecovery on a fresh key: exactly
# 8 succeed, 32 get 429 resource_exhausted, ListRecoveries shows 8 open;
# 7 made one by one, then 2 at once: one of the two succeeds. (A count read
# before the insert let 9 or more through in every round.)
set -eu
. tests/e2e/lib.sh
e2e_setup recovery_limit
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto proto/escrow.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
failed=0
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
/usr/bin/python3 tests/e2e/recovery_limit.py "$E2E_DIR" "$E2E_PORT" race 8 40 || failed=$((failed + 1))
/usr/bin/python3 tests/e2e/recovery_limit.py "$E2E_DIR" "$E2E_PORT" pair 8 || failed=$((failed + 1))
e2e_stop
trap - EXIT
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$E2E_DIR/kmsd.log"; then
    echo "not ok - kmsd ran clean under the sanitizers"
    failed=$((failed + 1))
fi
[ $failed -eq 0 ] || { echo "$failed checks failed"; exit 1; }

#!/bin/sh
# The rollback alarm. An auditor verified the log up to a head; the operator
# then restores an older copy of the region's audit files (kmsd stopped), as
# a real rollback would. The auditor's next visit must raise the documented
# alarm, not a usage error: failed_precondition from the API (ExportAuditLog
# and GetSignedTreeHead with a known size), exit 5 and an ALARM line naming
# failed_precondition from `kmsctl audit export/head --known-state`.
set -eu
. tests/e2e/lib.sh
CUSTOS_DEV_HEAD_MS=200 e2e_setup rollback
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
W="$E2E_DIR/t"
mkdir -p "$W"
K="$KMSCTL"
CRED="$E2E_DIR/credentials"
failed=0
pass() { echo "ok - $1"; }
flunk() {
    echo "not ok - $1"
    failed=$((failed + 1))
    [ $# -lt 2 ] || sed 's/^/#   /' "$2"
}
# The newest head of eu-west: its tree size (kmsctl audit head --json).
head_size() {
    CUSTOS_API_KEY_FILE="$CRED/auditor.key" "$K" audit head --region eu-west --json |
        sed -n 's/^ *"tree_size": \([0-9]*\).*/\1/p'
}
# Wait until a head covers at least $1 events.
wait_head() {
    i=0
    while [ "$(head_size)" -lt "$1" ]; do
        i=$((i + 1))
        [ $i -lt 100 ] || { echo "no head of $1 events" >&2; return 1; }
        sleep 0.1
    done
}

e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
for i in 1 2 3; do CUSTOS_API_KEY_FILE="$CRED/demo-admin.key" "$K" key list -q >/dev/null; done
e2e_stop
cp -a "$E2E_DIR/audit" "$W/audit.old"

e2e_start
for i in $(seq 1 40); do CUSTOS_API_KEY_FILE="$CRED/demo-admin.key" "$K" key list -q >/dev/null; done
wait_head 40
export CUSTOS_API_KEY_FILE="$CRED/auditor.key"
"$K" audit keys --out-dir "$W/keys" >/dev/null
"$K" audit export --region eu-west --out "$W/b1.bin" >/dev/null
if "$K" audit verify --keys "$W/keys" --state "$W/state" "$W/b1.bin" >"$W/out" 2>&1; then
    pass "the auditor verifies the log and keeps its head"
else
    flunk "the auditor verifies the log and keeps its head" "$W/out"
fi
known=$(awk '$1 == "head" && $2 == "eu-west" && $3 > m { m = $3 } END { print m + 0 }' "$W/state")
e2e_stop

# The rollback: an older copy of the region's files, restored while kmsd is
# stopped.
rm -rf "$E2E_DIR/audit"
cp -a "$W/audit.old" "$E2E_DIR/audit"
e2e_start

rc=0
"$K" audit export --region eu-west --known-state "$W/state" --out "$W/b2.bin" >"$W/out" 2>&1 || rc=$?
if [ $rc -eq 5 ] && grep -q "^kmsctl: failed_precondition: the log of region eu-west is shorter than a head you already hold" "$W/out" &&
    grep -q "ALARM: the log of region eu-west is shorter than the head you hold (tree_size $known): it was rolled back or forked" "$W/out" &&
    ! grep -q "invalid_argument" "$W/out" && [ ! -e "$W/b2.bin" ]; then
    pass "kmsctl audit export --known-state: exit 5, failed_precondition and the ALARM line"
else
    flunk "kmsctl audit export --known-state: exit 5, failed_precondition and the ALARM line (exit $rc)" "$W/out"
fi
rc=0
"$K" audit export --region eu-west --known-head "$W/b1.bin" --out "$W/b3.bin" >"$W/out" 2>&1 || rc=$?
if [ $rc -eq 5 ] && grep -q "failed_precondition" "$W/out" && grep -q "ALARM" "$W/out"; then
    pass "kmsctl audit export --known-head: exit 5 and the ALARM"
else
    flunk "kmsctl audit export --known-head: exit 5 and the ALARM (exit $rc)" "$W/out"
fi
rc=0
"$K" audit head --region eu-west --known-state "$W/state" >"$W/out" 2>&1 || rc=$?
if [ $rc -eq 5 ] && grep -q "failed_precondition" "$W/out" && grep -q "ALARM" "$W/out"; then
    pass "kmsctl audit head --known-state: exit 5 and the ALARM"
else
    flunk "kmsctl audit head --known-state: exit 5 and the ALARM (exit $rc)" "$W/out"
fi
rc=0
CUSTOS_API_KEY_FILE="$CRED/demo-broker.key" "$K" audit export --region eu-west \
    --known-state "$W/state" --out "$W/b4.bin" >"$W/out" 2>&1 || rc=$?
if [ $rc -eq 1 ] && grep -q "permission_denied" "$W/out" && ! grep -q "ALARM" "$W/out"; then
    pass "another refusal with --known-state stays exit 1, no ALARM"
else
    flunk "another refusal with --known-state stays exit 1, no ALARM (exit $rc)" "$W/out"
fi
/usr/bin/python3 tests/e2e/audit_rollback.py "$E2E_DIR" "$E2E_PORT" "$known" || failed=$((failed + 1))
e2e_stop
trap - EXIT
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$E2E_DIR/kmsd.log"; then
    flunk "kmsd ran clean under the sanitizers"
fi
[ $failed -eq 0 ] || { echo "$failed checks failed"; exit 1; }

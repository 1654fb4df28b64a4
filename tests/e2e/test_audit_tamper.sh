#!/bin/sh
# A region whose newest signed head was edited on disk is not served: at
# start kmsd verifies the head it resumes from (its signature under the
# region's audit key, its root and size against the events). Each edit —
# the signature, the root hash, the tree size — re-framed so that the
# record's check bytes match (an edit, not a torn write), and the signature
# flipped in place (check bytes wrong, but a whole head of this log: edited,
# not torn): kmsd starts, the
# log names the file and what failed, /readyz is 503 and names the region,
# /readyz/ tells the regions apart, requests for eu-west keys get
# `unavailable`, us-east still serves. The file restored: served again.
set -eu
. tests/e2e/lib.sh
CUSTOS_DEV_HEAD_MS=200 e2e_setup tamper
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
W="$E2E_DIR/t"
mkdir -p "$W"
failed=0
pass() { echo "ok - $1"; }
flunk() { echo "not ok - $1"; failed=$((failed + 1)); }
tp() { /usr/bin/python3 tests/e2e/audit_tamper.py "$@" || failed=$((failed + 1)); }

e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
set -- $(/usr/bin/python3 tests/e2e/audit_tamper.py keys "$E2E_DIR" "$E2E_PORT")
EU=$1 US=$2
e2e_stop
HEADS="$E2E_DIR/audit/eu-west.heads"
cp "$HEADS" "$W/eu-west.heads.good"

for what in sig root size sig-inplace; do
    cp "$W/eu-west.heads.good" "$HEADS"
    /usr/bin/python3 tests/e2e/audit_tamper.py edit "$HEADS" "$what"
    cp "$HEADS" "$W/eu-west.heads.$what"
    lines=$(wc -l <"$E2E_DIR/kmsd.log")
    e2e_start
    tail -n +"$((lines + 1))" "$E2E_DIR/kmsd.log" >"$W/log.$what"
    case $what in
    sig) want="eu-west.heads: the newest signed head (record .* does not verify: its signature is invalid under audit key" ;;
    root) want="eu-west.heads: head [0-9]* (size [0-9]*) does not match the events: the log was altered" ;;
    size) want="eu-west.heads: head [0-9]* (size [0-9]*) does not match the events: the log was altered" ;;
    sig-inplace) want="eu-west.heads: the last record (head [0-9]* at offset [0-9]*) is a whole head of this log but its check bytes do not match: it was edited, not torn" ;;
    esac
    if grep "region eu-west is NOT SERVED" "$W/log.$what" | grep -q "$want"; then
        pass "$what: the log says region eu-west is NOT SERVED, naming the file and what failed"
    else
        flunk "$what: the log says region eu-west is NOT SERVED, naming the file and what failed"
        sed 's/^/#   /' "$W/log.$what"
    fi
    tp refused "$E2E_DIR" "$E2E_PORT" "$EU" "$US" "$what"
    e2e_stop
    if cmp -s "$HEADS" "$W/eu-west.heads.$what"; then
        pass "$what: the edited heads file is left as it was, for the operator"
    else
        flunk "$what: the edited heads file is left as it was, for the operator"
    fi
done

tp noleak "$E2E_DIR/audit/us-east.events" "$EU"

# A torn last head (a crash while it was appended) is still cut off: that
# is recovery, not an alarm.
cp "$W/eu-west.heads.good" "$HEADS"
/usr/bin/python3 tests/e2e/audit_tamper.py edit "$HEADS" torn
lines=$(wc -l <"$E2E_DIR/kmsd.log")
e2e_start
if tail -n +"$((lines + 1))" "$E2E_DIR/kmsd.log" | grep -q "torn tail of eu-west.heads truncated"; then
    pass "torn: a head cut short is truncated as a torn tail and logged"
else
    flunk "torn: a head cut short is truncated as a torn tail and logged"
fi
tp served "$E2E_DIR" "$E2E_PORT" "$EU" "$US"
e2e_stop

cp "$W/eu-west.heads.good" "$HEADS"
e2e_start
tp served "$E2E_DIR" "$E2E_PORT" "$EU" "$US"
e2e_stop
trap - EXIT
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$E2E_DIR/kmsd.log"; then
    flunk "kmsd ran clean under the sanitizers"
fi
[ $failed -eq 0 ] || { echo "$failed checks failed"; exit 1; }

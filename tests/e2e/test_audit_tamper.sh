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
# A byte flipped in the middle of eu-west.events (signed heads cover it)
# is refused the same way; with it, requests that name no key are judged
# by their audit region too (docs/audit.md, "Which log"): a caller homed in
# eu-west is refused `unavailable` and its request is logged nowhere but
# the operational log; a failed authentication goes to the first served
# region (us-east); nothing of eu-west reaches a reply or us-east's log.
set -eu
. tests/e2e/lib.sh
CUSTOS_DEV_HEAD_MS=200 e2e_setup tamper
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto proto/escrow.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
W="$E2E_DIR/t"
mkdir -p "$W"
failed=0
pass() { echo "ok - $1"; }
flunk() { echo "not ok - $1"; failed=$((failed + 1)); }
tp() { /usr/bin/python3 tests/e2e/audit_tamper.py "$@" || failed=$((failed + 1)); }

/usr/bin/python3 tests/e2e/audit_tamper.py usadmins "$E2E_DIR"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
set -- $(/usr/bin/python3 tests/e2e/audit_tamper.py keys "$E2E_DIR" "$E2E_PORT")
EU=$1 US=$2 BANK=$3 REC=$4
e2e_stop
HEADS="$E2E_DIR/audit/eu-west.heads"
EVENTS="$E2E_DIR/audit/eu-west.events"
cp "$HEADS" "$W/eu-west.heads.good"
cp "$EVENTS" "$W/eu-west.events.good"

for what in sig root size sig-inplace events-middle; do
    cp "$W/eu-west.heads.good" "$HEADS"
    cp "$W/eu-west.events.good" "$EVENTS"
    if [ "$what" = events-middle ]; then
        /usr/bin/python3 tests/e2e/audit_tamper.py edit "$EVENTS" middle
    else
        /usr/bin/python3 tests/e2e/audit_tamper.py edit "$HEADS" "$what"
    fi
    cp "$HEADS" "$W/eu-west.heads.$what"
    cp "$EVENTS" "$W/eu-west.events.$what"
    lines=$(wc -l <"$E2E_DIR/kmsd.log")
    e2e_start
    tail -n +"$((lines + 1))" "$E2E_DIR/kmsd.log" >"$W/log.$what"
    case $what in
    sig) want="eu-west.heads: the newest signed head (record .* does not verify: its signature is invalid under audit key" ;;
    root) want="eu-west.heads: head [0-9]* (size [0-9]*) does not match the events: the log was altered" ;;
    size) want="eu-west.heads: head [0-9]* (size [0-9]*) does not match the events: the log was altered" ;;
    sig-inplace) want="eu-west.heads: the last record (head [0-9]* at offset [0-9]*) is a whole head of this log but its check bytes do not match: it was edited, not torn" ;;
    events-middle) want="eu-west.events: record [0-9]* at offset [0-9]* is damaged and signed heads cover it" ;;
    esac
    if grep "region eu-west is NOT SERVED" "$W/log.$what" | grep -q "$want"; then
        pass "$what: the log says region eu-west is NOT SERVED, naming the file and what failed"
    else
        flunk "$what: the log says region eu-west is NOT SERVED, naming the file and what failed"
        sed 's/^/#   /' "$W/log.$what"
    fi
    tp refused "$E2E_DIR" "$E2E_PORT" "$EU" "$US" "$what"
    if [ "$what" = events-middle ]; then
        tp homes "$E2E_DIR" "$E2E_PORT" "$EU" "$US" "$BANK" "$REC"
    fi
    e2e_stop
    if cmp -s "$HEADS" "$W/eu-west.heads.$what" && cmp -s "$EVENTS" "$W/eu-west.events.$what"; then
        pass "$what: the edited files are left as they were, for the operator (nothing appended)"
    else
        flunk "$what: the edited files are left as they were, for the operator (nothing appended)"
    fi
    if [ "$what" = events-middle ]; then
        tail -n +"$((lines + 1))" "$E2E_DIR/kmsd.log" >"$W/log.$what"
        tp homelog "$E2E_DIR/audit/us-east.events"
        # Not audited anywhere: the operational log is their only record.
        for r in "ListKeys by demo-admin" "ListRecoveries by bank-admin" \
                 "Encrypt by demo-broker (would have been malformed)"; do
            if grep -F "$r" "$W/log.$what" | grep -q "NOT AUDITED: its audit region eu-west is not served"; then
                pass "homes: the operational log records the refused $r as not audited"
            else
                flunk "homes: the operational log records the refused $r as not audited"
            fi
        done
    fi
done

tp noleak "$E2E_DIR/audit/us-east.events" "$EU"

# A torn last head (a crash while it was appended) is still cut off: that
# is recovery, not an alarm.
cp "$W/eu-west.heads.good" "$HEADS"
cp "$W/eu-west.events.good" "$EVENTS"
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

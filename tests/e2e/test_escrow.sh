#!/bin/sh
# Escrow at birth and M-of-N recovery (docs/escrow-recovery.md), end to end:
# the full flow, every refusal with the tokens' objects counted, expiry and
# the time lock (after policy reloads), and the audit trail of every step.
set -eu
. tests/e2e/lib.sh
e2e_setup escrow
CUSTOS_DEV_DAY_SECONDS=1 CUSTOS_DEV_MIN_DAYS=0 CUSTOS_DEV_SWEEP_S=1 CUSTOS_DEV_HEAD_MS=100 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto proto/escrow.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
/usr/bin/python3 tests/e2e/escrow_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" main

quorum() { # quorum TTL TIME_LOCK [PATTERN]: set the bank tenant's recovery timing,
           # SIGHUP, wait for PATTERN (default: the policy loaded) in the log
    /usr/bin/python3 - "$E2E_DIR/policy.json" "$1" "$2" <<'PYEOF'
import json, sys
p = json.load(open(sys.argv[1]))
for t in p["tenants"]:
    if t["id"] == "bank":
        t["quorum"]["request_ttl_s"] = int(sys.argv[2])
        t["quorum"]["time_lock_s"] = int(sys.argv[3])
json.dump(p, open(sys.argv[1], "w"), indent=2)
PYEOF
    pat=${3:-loaded .*policy.json}
    before=$(grep -c "$pat" "$E2E_DIR/kmsd.log" || true)
    kill -HUP "$E2E_PID"
    i=0
    while [ "$(grep -c "$pat" "$E2E_DIR/kmsd.log" || true)" -le "$before" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "not ok - no '$pat' after SIGHUP"; exit 1; }
        sleep 0.1
    done
}
quorum 3 0
/usr/bin/python3 tests/e2e/escrow_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" timing
quorum 7200 3600
/usr/bin/python3 tests/e2e/escrow_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" timelock

# A time lock not below the request's lifetime is refused, and kmsd keeps
# the policy it has.
quorum 60 60 'quorum.time_lock_s: must be below request_ttl_s'
echo "ok - a time lock >= request_ttl_s is refused at reload, naming the field"
e2e_stop
trap - EXIT
# API keys (one line) and private keys (their first base64 line).
for f in "$E2E_DIR"/credentials/*.key "$E2E_DIR"/credentials/*.pem; do
    case $f in *.key) secret=$(cat "$f") ;; *) secret=$(sed -n 2p "$f") ;; esac
    [ -n "$secret" ] || { echo "not ok - empty credential file $f"; exit 1; }
    if grep -qF "$secret" "$E2E_DIR/kmsd.log"; then
        echo "not ok - a credential appears in the kmsd log ($f)"; exit 1
    fi
done
echo "ok - no credential or officer key in the operational log"

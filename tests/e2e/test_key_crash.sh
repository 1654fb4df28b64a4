#!/bin/sh
# kill -9 of kmsd at random instants while keys are created, rotated and
# imported (BYOK), created and rotated with escrow at birth (tenant "bank"),
# and Encrypts append to the audit log, CUSTOS_KEY_CRASH_ROUNDS times (8 in
# make check; more for a soak). After every restart (reconcile at start):
# every acknowledged operation is visible and has exactly one audit event,
# no half-created key or version remains, every active version has its HSM
# object, the token holds no key or wrapping key the store does not name
# and no extractable key, escrow blobs and escrow-tenant versions match,
# and the signed root is the root of the events. At the end: every
# acknowledged key over HTTP, `kmsctl audit verify` offline, the template
# scan.
set -eu
. tests/e2e/lib.sh
rounds=${CUSTOS_KEY_CRASH_ROUNDS:-8}
e2e_setup keycrash
rm -f "$E2E_DIR/kmsd.json"
CUSTOS_DEV_HEAD_MS=200 BUILD="$BUILD_DIR" KMSCTL="$KMSCTL" \
    sh deploy/dev-setup.sh "$E2E_DIR" "$E2E_PORT" >/dev/null
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
export KMSCTL
e2e_start
trap 'kill -9 $E2E_PID 2>/dev/null || true' EXIT
CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/demo-admin.key" "$KMSCTL" key create --region eu-west -q \
    >"$E2E_DIR/enc.key"
: >"$E2E_DIR/acked.jsonl"
i=0
bad=0
while [ $i -lt "$rounds" ]; do
    i=$((i + 1))
    /usr/bin/python3 tests/e2e/key_crash.py load "$E2E_DIR" "$E2E_PORT" "$E2E_PID" "$i"
    wait "$E2E_PID" 2>/dev/null || true
    E2E_PID=
    e2e_start
    if ! /usr/bin/python3 tests/e2e/key_crash.py verify "$E2E_DIR" "$E2E_PORT" "$E2E_PID" "$i" \
            >"$E2E_DIR/verify-$i.out" 2>&1; then
        echo "# round $i:"; grep -v '^ok ' "$E2E_DIR/verify-$i.out"
        bad=$((bad + 1))
    fi
done
[ $bad -eq 0 ] &&
    echo "ok - $rounds kill -9 during key creation, rotation, import, escrow and audit append: every restart verified" ||
    { echo "not ok - $bad of $rounds restarts failed verification"; exit 1; }
tail -n 1 "$E2E_DIR/verify-$rounds.out" | sed 's/^/# last round: /'
/usr/bin/python3 tests/e2e/key_crash.py verify "$E2E_DIR" "$E2E_PORT" "$E2E_PID" 0
grep -c '"op": "create".*bank-admin' "$E2E_DIR/acked.jsonl" | sed 's/^/# escrowed keys acknowledged: /'
grep -c '"op": "encrypt"' "$E2E_DIR/acked.jsonl" | sed 's/^/# Encrypts acknowledged: /'
e2e_scan_tokens
e2e_stop
trap - EXIT

#!/bin/sh
# fsync/fdatasync failures of the audit log (tests/fsfault/fs_fault.c,
# preloaded into kmsd), under load (audit_eio.py): one EIO on the events
# file, one ENOSPC on it, one EIO on the heads file. Each time the requests
# of the failed batch are refused (503), none is acknowledged without its
# event, the log recovers by cutting back to its durable size through a new
# descriptor (never by syncing the failed one again) and says so in an
# AuditLogRecovered event; acknowledged requests == their events on disk.
# After a restart the log verifies offline. Last, on a copy, a durable event
# changed on disk before the recovery: the read-back sees it, the log stays
# failed.
set -eu
. tests/e2e/lib.sh
e2e_setup eio
fsfault="$BUILD_DIR/lib/fs_fault.so"
[ -f "$fsfault" ] || { echo "not ok 1 - $fsfault not built"; exit 1; }
rm -f "$E2E_DIR/kmsd.json"
CUSTOS_DEV_HEAD_MS=100 BUILD="$BUILD_DIR" KMSCTL="$KMSCTL" \
    sh deploy/dev-setup.sh "$E2E_DIR" "$E2E_PORT" >/dev/null
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
export CUSTOS_FSFAULT_CONTROL="$E2E_DIR/fs.ctl"
: >"$CUSTOS_FSFAULT_CONTROL"
# Only kmsd gets the interposer. Under AddressSanitizer it cannot be first
# in the library list; the sanitizer is told not to insist.
real_kmsd=$KMSD
KMSD="$E2E_DIR/kmsd-fsfault"
printf '#!/bin/sh\nASAN_OPTIONS="${ASAN_OPTIONS:-}${ASAN_OPTIONS:+:}verify_asan_link_order=0" LD_PRELOAD="%s" exec "%s" "$@"\n' \
    "$fsfault" "$real_kmsd" >"$KMSD"
chmod +x "$KMSD"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
key=$(CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/demo-admin.key" "$KMSCTL" key create --region eu-west -q)
/usr/bin/python3 tests/e2e/audit_eio.py "$E2E_DIR" "$E2E_PORT" "$key"
e2e_stop

# A restart rescans every record: nothing to cut, and the log verifies.
e2e_start
if grep -q "torn tail" "$E2E_DIR/kmsd.log"; then
    echo "not ok 90 - the restart found a torn tail the recovery should have cut"; exit 1
fi
echo "ok 90 - the restart finds no torn tail: recovery left the files at their durable sizes"
export CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/auditor.key"
"$KMSCTL" audit keys --out-dir "$E2E_DIR/keys" >/dev/null
# The whole log, page by page as docs/audit.md tells auditors (10,000
# entries per export, each page --known-head of the one before; the load
# above writes more than one page's worth).
start=0 pages="" npages=0 prev=""
while :; do
    out="$E2E_DIR/eio-$start.bin"
    summary=$("$KMSCTL" audit export --region eu-west --out "$out" --proofs --start "$start" \
        ${prev:+--known-head "$prev"})
    prev=$out
    pages="$pages $out" npages=$((npages + 1))
    next=$(printf '%s\n' "$summary" | sed -n 's/.*continue with --start \([0-9]*\)$/\1/p')
    [ -n "$next" ] || break
    start=$next
done
unset CUSTOS_API_KEY_FILE
e2e_stop
trap - EXIT
if "$KMSCTL" audit verify --keys="$E2E_DIR/keys" $pages >"$E2E_DIR/verify.out" 2>&1; then
    echo "ok 91 - kmsctl audit verify accepts the log after the failed syncs ($npages bundles)"
else
    cat "$E2E_DIR/verify.out"; echo "not ok 91 - kmsctl audit verify"; exit 1
fi

# The read-back: damage the last durable event while the log is failed.
e2e_start
trap 'kill -9 $E2E_PID 2>/dev/null || true' EXIT
rc=0
/usr/bin/python3 tests/e2e/audit_eio.py "$E2E_DIR" "$E2E_PORT" "$key" damage || rc=1
kill -9 "$E2E_PID"
wait "$E2E_PID" 2>/dev/null || true
trap - EXIT
exit $rc

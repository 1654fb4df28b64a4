#!/bin/sh
# SIGTERM under load, three times: kmsd stops accepting, finishes the
# requests in flight, flushes the audit log, signs a final head and exits 0;
# with kmsd stopped, every acknowledged request has its event on disk and
# the last head covers them all. Then the log verifies through kmsd.
set -eu
. tests/e2e/lib.sh
e2e_setup shutdown
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
e2e_start
trap 'kill -9 $E2E_PID 2>/dev/null || true' EXIT
key=$(CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/demo-admin.key" "$KMSCTL" key create --region eu-west -q)
: >"$E2E_DIR/acked.txt"
fail=0
for round in 1 2 3; do
    /usr/bin/python3 tests/e2e/shutdown_test.py load "$E2E_DIR" "$E2E_PORT" "$E2E_PID" "$key" "$round"
    rc=0
    wait "$E2E_PID" || rc=$?
    E2E_PID=
    if [ $rc -eq 0 ]; then echo "ok ${round}0 - kmsd exited 0 after SIGTERM under load"
    else echo "not ok ${round}0 - kmsd exited $rc after SIGTERM"; fail=1; fi
    n=$(grep -c '"drained: no request in flight"' "$E2E_DIR/kmsd.log" || true)
    if [ "$n" -eq "$round" ]; then echo "ok ${round}1 - the log says every in-flight request finished"
    else echo "not ok ${round}1 - drained $n times in $round rounds"; fail=1; fi
    /usr/bin/python3 tests/e2e/shutdown_test.py files "$E2E_DIR" "$round" || fail=1
    e2e_start
done
# Through kmsd as an auditor sees it, checked by the offline verifier.
export CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/auditor.key"
if "$KMSCTL" audit keys --out-dir "$E2E_DIR/keys" >/dev/null 2>&1 &&
    "$KMSCTL" audit export --region eu-west --out "$E2E_DIR/all-eu.bin" >/dev/null 2>&1 &&
    "$KMSCTL" audit verify --keys="$E2E_DIR/keys" "$E2E_DIR/all-eu.bin" >"$E2E_DIR/verify.out" 2>&1; then
    echo "ok 90 - kmsctl audit verify accepts the log after three graceful stops"
else
    echo "not ok 90 - export or kmsctl audit verify failed:"; cat "$E2E_DIR/verify.out" 2>/dev/null; fail=1
fi
e2e_stop
trap - EXIT
exit $fail

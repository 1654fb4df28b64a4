#!/bin/sh
# SIGTERM under load, three times (the second with a thread per connection,
# the others with the epoll pool): kmsd stops accepting, finishes the
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
    else
        echo "not ok ${round}0 - kmsd exited $rc after SIGTERM"; fail=1
        # What ended it (a sanitizer report, libmicrohttpd giving up) is
        # the end of its log: CI keeps only this output.
        tail -n 40 "$E2E_DIR/kmsd.log" | sed 's/^/# /'
    fi
    n=$(grep -c '"drained: no request in flight"' "$E2E_DIR/kmsd.log" || true)
    if [ "$n" -eq "$round" ]; then echo "ok ${round}1 - the log says every in-flight request finished"
    else echo "not ok ${round}1 - drained $n times in $round rounds"; fail=1; fi
    /usr/bin/python3 tests/e2e/shutdown_test.py files "$E2E_DIR" "$round" || fail=1
    # Round 2 runs a thread per connection, rounds 1 and 3 the default epoll
    # pool (requests suspended while their events commit): both drain.
    model=pool
    [ "$round" -eq 1 ] && model=per-connection
    /usr/bin/python3 -c 'import json,sys; p=sys.argv[1]; c=json.load(open(p)); c.setdefault("limits", {})["thread_model"]=sys.argv[2]; json.dump(c, open(p, "w"), indent=2)' "$E2E_DIR/kmsd.json" "$model"
    e2e_start
done
# Through kmsd as an auditor sees it, checked by the offline verifier. An
# export carries at most 10,000 entries, and three rounds on a fast machine
# write more: export consecutive ranges with inclusion proofs, verify each
# against the signed head, and check that together they cover the whole log.
export CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/auditor.key"
bundles=""
start=0
chunk=${CUSTOS_EXPORT_CHUNK:-10000} # 1..10000 (smaller to exercise several ranges)
ok=1
"$KMSCTL" audit keys --out-dir "$E2E_DIR/keys" >/dev/null 2>&1 || ok=0
while [ $ok -eq 1 ]; do
    b="$E2E_DIR/eu-$start.bin"
    # Later ranges carry a consistency proof from the first bundle's head (the
    # exports are themselves audited, so the head may move between them).
    known=""
    [ "$start" -eq 0 ] || known="--known-head=$E2E_DIR/eu-0.bin"
    # shellcheck disable=SC2086
    "$KMSCTL" audit export --region eu-west --out "$b" --start "$start" --count "$chunk" --proofs $known \
        >/dev/null 2>&1 || { ok=0; break; }
    bundles="$bundles $b"
    start=$((start + chunk))
    size=$("$KMSCTL" audit head --region eu-west --json 2>/dev/null |
        sed -n 's/^ *"tree_size": \([0-9]*\).*/\1/p')
    [ "$start" -lt "${size:-0}" ] || break
done
# shellcheck disable=SC2086
if [ $ok -eq 1 ] &&
    "$KMSCTL" audit verify --partial --keys="$E2E_DIR/keys" $bundles >"$E2E_DIR/verify.out" 2>&1 &&
    /usr/bin/python3 - "$E2E_DIR/verify.out" <<'PYEOF'
import re, sys
out = open(sys.argv[1]).read()
# The first bundle's head is the log as the three stops left it (plus this
# export's own event): the ranges must cover all of it without a gap.
size = int(re.search(r"head tree_size (\d+)", out).group(1))
covered = sorted(tuple(map(int, m)) for m in
                 re.findall(r"^\S+\.bin: .* entries (\d+)\.\.(\d+) ", out, re.M))
ok = covered and covered[0][0] == 0 and covered[-1][1] >= size - 1 and \
    all(b[0] == a[1] + 1 for a, b in zip(covered, covered[1:]))
sys.exit(0 if ok else 1)
PYEOF
then
    echo "ok 90 - kmsctl audit verify accepts the log after three graceful stops"
else
    echo "not ok 90 - export or kmsctl audit verify failed:"; cat "$E2E_DIR/verify.out" 2>/dev/null; fail=1
fi
e2e_stop
trap - EXIT
exit $fail

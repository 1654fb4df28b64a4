#!/bin/sh
# kill -9 of kmsd under concurrent load, CUSTOS_CRASH_ROUNDS times (50 in
# make check, more in make soak): after every restart, every operation that
# was answered success has exactly one audit event, sequence numbers have no
# gap, and the signed head's root is the root of the events on disk.
set -eu
. tests/e2e/lib.sh
rounds=${CUSTOS_CRASH_ROUNDS:-50}
e2e_setup crash
rm -f "$E2E_DIR/kmsd.json"
CUSTOS_DEV_HEAD_MS=100 BUILD="$BUILD_DIR" KMSCTL="$KMSCTL" \
    sh deploy/dev-setup.sh "$E2E_DIR" "$E2E_PORT" >/dev/null
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
e2e_start
trap 'kill -9 $E2E_PID 2>/dev/null || true' EXIT
key=$(CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/demo-admin.key" "$KMSCTL" key create --region eu-west -q)
: >"$E2E_DIR/acked.txt"
i=0
while [ $i -lt "$rounds" ]; do
    i=$((i + 1))
    /usr/bin/python3 tests/e2e/audit_crash.py load "$E2E_DIR" "$E2E_PORT" "$E2E_PID" "$key" "$i"
    wait "$E2E_PID" 2>/dev/null || true
    E2E_PID=
    e2e_start
    if [ $i -eq 1 ]; then # an early head, for the proofs below
        sleep 0.3
        CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/auditor.key" "$KMSCTL" audit export \
            --region eu-west --out "$E2E_DIR/p0.bin" --proofs --count 1 >/dev/null
    fi
done
echo "ok 1 - kmsd restarted after $rounds kill -9 under load"
/usr/bin/python3 tests/e2e/audit_crash.py verify "$E2E_DIR" "$E2E_PORT" "$E2E_PID" "$key" 0
# The tree keeps only whole 256-event blocks in memory and reads older
# leaves back from the events file: proofs that reach into old blocks (an
# inclusion proof deep in the log, a consistency proof from the early,
# unaligned head) must still verify offline.
export CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/auditor.key"
"$KMSCTL" audit keys --out-dir "$E2E_DIR/keys" >/dev/null
"$KMSCTL" audit export --region eu-west --out "$E2E_DIR/deep.bin" --start 300 --count 200 \
    --proofs --known-head "$E2E_DIR/p0.bin" >/dev/null
if "$KMSCTL" audit verify --partial --keys="$E2E_DIR/keys" "$E2E_DIR/p0.bin" "$E2E_DIR/deep.bin" \
        >"$E2E_DIR/verify.out" 2>&1 && grep -q "consistent with tree_size" "$E2E_DIR/verify.out"; then
    echo "ok 15 - inclusion and consistency proofs into old blocks (read back from disk) verify"
else
    cat "$E2E_DIR/verify.out"; echo "not ok 15 - proofs into old blocks"; exit 1
fi
unset CUSTOS_API_KEY_FILE
e2e_stop

# A torn tail (a crash in the middle of a record) is cut off at start, and
# the fact is itself an audit event.
size=$(stat -c %s "$E2E_DIR/audit/eu-west.events")
printf '\000\000\001\000torn' >>"$E2E_DIR/audit/eu-west.events"
e2e_start
grep -q "torn tail of eu-west.events truncated at offset $size" "$E2E_DIR/kmsd.log" &&
    echo "ok 7 - a torn tail is truncated at the last whole record and logged" ||
    { echo "not ok 7 - torn tail not reported"; exit 1; }
/usr/bin/python3 tests/e2e/audit_crash.py recovered "$E2E_DIR" "$E2E_PORT" "$E2E_PID" "$key" "$size"
e2e_stop

# A power cut can leave a whole unsynced batch as zeros, several records
# long: beyond the last signed head it is cut off like a torn tail.
size=$(stat -c %s "$E2E_DIR/audit/eu-west.events")
head -c 300 /dev/zero >>"$E2E_DIR/audit/eu-west.events"
e2e_start
grep -q "torn tail of eu-west.events truncated at offset $size" "$E2E_DIR/kmsd.log" &&
    [ "$(stat -c %s "$E2E_DIR/audit/eu-west.events")" -gt "$size" ] &&
    echo "ok 14 - zeros after the last signed head are cut off, and kmsd serves on" ||
    { echo "not ok 11 - zero-filled tail not recovered"; exit 1; }
e2e_stop

# Damage inside signed history is not a crash: that region is not served
# (the others are), the record is named, and nothing on disk changes.
ev="$E2E_DIR/audit/eu-west.events"
printf 'X' | dd of="$ev" bs=1 seek=100 conv=notrunc 2>/dev/null
damaged=$(sha256sum "$ev" | cut -d' ' -f1)
e2e_start
grep -q 'region eu-west is NOT SERVED' "$E2E_DIR/kmsd.log" &&
    grep -q 'is damaged and signed heads cover it' "$E2E_DIR/kmsd.log" &&
    [ "$(sha256sum "$ev" | cut -d' ' -f1)" = "$damaged" ] &&
    echo "ok 9 - damage inside signed history: region refused and named, file untouched" ||
    { echo "not ok 9 - damaged record: wrong message or the file was changed"; exit 1; }
/usr/bin/python3 tests/e2e/audit_crash.py refused "$E2E_DIR" "$E2E_PORT" "$E2E_PID" "$key" 0
e2e_stop
# The same with an impossible length in the first record.
printf '\377' | dd of="$ev" bs=1 seek=0 conv=notrunc 2>/dev/null
size=$(stat -c %s "$ev")
e2e_start
[ "$(stat -c %s "$ev")" = "$size" ] &&
    echo "ok 13 - an impossible length in the first record truncates nothing" ||
    { echo "not ok 13 - the events file was truncated"; exit 1; }
e2e_stop
trap - EXIT

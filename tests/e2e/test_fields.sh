#!/bin/sh
# FieldService end to end: field-level encryption and blind indexes with a
# METADATA_AES_HMAC key, through raw HTTP and Python's own protobuf, then
# kmsctl fields; a restart (indexes and deterministic ciphertexts are
# stable, reconcile removes both HSM objects of half-made and destroyed
# metadata versions); and no value in any file kmsd wrote.
set -eu
. tests/e2e/lib.sh
e2e_setup fields
CUSTOS_DEV_DAY_SECONDS=1 CUSTOS_DEV_MIN_DAYS=0 CUSTOS_DEV_SWEEP_S=1 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/fields.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py"
PY="/usr/bin/python3 tests/e2e/fields_test.py"

e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
$PY "$E2E_DIR" "$E2E_PORT" "$E2E_PID" main

# ---- kmsctl fields ---------------------------------------------------------
n=0
ok() { n=$((n + 1)); echo "ok $n - kmsctl: $1"; }
fail() { n=$((n + 1)); echo "not ok $n - kmsctl: $1"; exit 1; }
cred="$E2E_DIR/credentials"
K=$(CUSTOS_API_KEY_FILE="$cred/demo-admin.key" "$KMSCTL" key create --region eu-west \
    --spec metadata -q) || fail "key create --spec metadata"
CUSTOS_API_KEY_FILE="$cred/demo-admin.key" "$KMSCTL" key describe "$K" | grep -q 'spec: METADATA_AES_HMAC' \
    && ok "key create --spec metadata makes a METADATA_AES_HMAC key" || fail "spec shown"
export CUSTOS_API_KEY_FILE="$cred/demo-broker.key"
in="$E2E_DIR/fields-in.json"
printf '{"to": "+1 415 555 0123", "from": "+14155550123", "note": "hello \\u00e9"}\n' >"$in"
"$KMSCTL" fields encrypt --key-id "$K" --context conv=42 --deterministic to,from \
    --canon to=e164 --in "$in" --out "$E2E_DIR/fields.ct.json" || fail "fields encrypt"
"$KMSCTL" fields encrypt --key-id "$K" --context conv=42 --deterministic to --deterministic from \
    --canon to=e164 --in "$in" >"$E2E_DIR/fields.ct2.json" || fail "fields encrypt again"
/usr/bin/python3 - "$E2E_DIR" <<'EOF' && ok "fields encrypt: JSON out, deterministic fields repeat, canonicalised 'to' equals 'from'" || fail "encrypt output"
import base64, json, sys
d = sys.argv[1]
a, b = (json.load(open(f"{d}/{f}")) for f in ("fields.ct.json", "fields.ct2.json"))
fa, fb = a["fields"], b["fields"]
assert a["key_version"] == 1 and set(fa) == {"to", "from", "note"}
assert fa["to"] == fb["to"] and fa["from"] == fb["from"] and fa["note"] != fb["note"]
assert base64.b64decode(fa["to"])[0] == 0xF1
# "to" was canonicalised to "+14155550123", like "from"; different names, though:
assert fa["to"] != fa["from"]
EOF
"$KMSCTL" fields decrypt --context conv=42 --in "$E2E_DIR/fields.ct.json" \
    --out "$E2E_DIR/fields.pt.json" || fail "fields decrypt"
/usr/bin/python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))
assert p == {"to": "+14155550123", "from": "+14155550123", "note": "hello \u00e9"}, p
' "$E2E_DIR/fields.pt.json" && ok "fields decrypt returns the values (the key id comes from the input)" \
    || fail "decrypt output"
[ "$(stat -c %a "$E2E_DIR/fields.pt.json")" = 600 ] && ok "the plaintext file is mode 0600" \
    || fail "plaintext file mode"
rc=0
"$KMSCTL" fields decrypt --context conv=43 --in "$E2E_DIR/fields.ct.json" >/dev/null 2>"$E2E_DIR/err" || rc=$?
[ $rc -eq 1 ] && grep -q 'invalid_argument' "$E2E_DIR/err" && ok "a wrong context: exit 1 (refused)" \
    || fail "wrong context rc=$rc"
printf '+1 (415) 555-0123\n+14155550123\r\n\ntel:+1-415-555-0123\n' >"$E2E_DIR/values.txt"
"$KMSCTL" fields blind-index --key-id "$K" --field to --canon e164 --in "$E2E_DIR/values.txt" \
    >"$E2E_DIR/idx.json" || fail "blind-index"
/usr/bin/python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
v = j["versions"]
assert j["length_bits"] == 128 and len(v) == 1 and v[0]["key_version"] == 1
assert len(v[0]["indexes"]) == 3 and len(set(v[0]["indexes"])) == 1 and len(v[0]["indexes"][0]) == 32
' "$E2E_DIR/idx.json" && ok "blind-index: three spellings (empty line skipped), one 128-bit index" \
    || fail "blind-index output"
CUSTOS_API_KEY_FILE="$cred/demo-admin.key" "$KMSCTL" key rotate "$K" >/dev/null
echo '+14155550123' | "$KMSCTL" fields blind-index --key-id "$K" --field to --canon e164 \
    --bits 64 --all-versions >"$E2E_DIR/idx2.json" || fail "blind-index --all-versions"
/usr/bin/python3 -c '
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
v = b["versions"]
assert [x["key_version"] for x in v] == [2, 1] and b["length_bits"] == 64
assert v[1]["indexes"][0] == a["versions"][0]["indexes"][0][:16]
' "$E2E_DIR/idx.json" "$E2E_DIR/idx2.json" && ok "--all-versions after rotation: v2 then v1, v1 unchanged" \
    || fail "all-versions output"
for bad in "fields" "fields nope" "fields encrypt" "fields blind-index --key-id $K --field to" \
           "fields encrypt --key-id $K --bits 8" "fields decrypt extra-arg" \
           "key create --region eu-west --spec rsa" "key list --spec metadata"; do
    rc=0
    # shellcheck disable=SC2086
    "$KMSCTL" $bad </dev/null >/dev/null 2>&1 || rc=$?
    [ $rc -eq 2 ] || fail "'kmsctl $bad' should exit 2, got $rc"
done
ok "usage errors exit 2"
rc=0
"$KMSCTL" fields encrypt --key-id "$K" --deterministic tp --in "$in" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] && ok "--deterministic naming a field the input lacks: exit 2" || fail "typo rc=$rc"
rc=0
"$KMSCTL" fields encrypt --key-id "$K" --in /nonexistent >/dev/null 2>&1 || rc=$?
[ $rc -eq 4 ] && ok "a missing input file: exit 4" || fail "missing file rc=$rc"
rc=0
"$KMSCTL" --addr http://127.0.0.1:1 fields encrypt --key-id "$K" --in "$in" >/dev/null 2>&1 || rc=$?
[ $rc -eq 3 ] && ok "no server: exit 3" || fail "transport rc=$rc"
"$KMSCTL" fields --help | grep -q 'blind-index' && ok "--help" || fail "--help"
unset CUSTOS_API_KEY_FILE

# ---- restart: crash states, reconcile, stable outputs ---------------------------
e2e_stop
$PY "$E2E_DIR" "$E2E_PORT" 0 crash
e2e_start
$PY "$E2E_DIR" "$E2E_PORT" "$E2E_PID" after
e2e_scan_tokens
e2e_stop
trap - EXIT

# Values never reach a file kmsd writes (log, store, audit, token files);
# the test's own inputs and outputs above are left out.
leak=$(grep -rlaF -e '+19995550100' -e '4155550123' "$E2E_DIR" \
       --exclude='fields-*.json' --exclude='fields.*.json' --exclude='values.txt' \
       --exclude='idx*.json' --exclude-dir=py 2>/dev/null || true)
if [ -n "$leak" ]; then
    echo "not ok - a field value appears in: $leak"
    exit 1
fi
echo "ok - no field value in any file kmsd wrote (log, store, audit, tokens)"

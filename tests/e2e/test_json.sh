#!/bin/sh
# Twirp's JSON encoding end to end, with nothing but the stock curl command
# line against a real kmsd: CreateKey, Encrypt, Decrypt, GenerateDataKey and
# DecryptDataKey in application/json (both field name spellings, bytes as
# base64, replies in JSON with Content-Type application/json), a ciphertext
# made over JSON decrypting over protobuf (kmsctl) and the reverse, one call
# of each other service (FieldService, EscrowService, AuditService), the
# refusals (bad credential 401, policy 403, malformed JSON naming the field,
# a body over the limit, an unknown Content-Type) as Twirp JSON errors, and
# the audit log (exported over JSON too) holding exactly one event per JSON
# request, with the same fields as the event of the same call over protobuf.
# A key description that is not UTF-8, planted in the store while kmsd is
# stopped, is rendered with U+FFFD by JSON DescribeKey, ListKeys and
# RotateKey (200, the rotation audited ok), and returned as stored over
# protobuf.
#
# Credentials and plaintexts never go on curl's command line: the
# Authorization header is read from a file (-H @file) and bodies from stdin.
#
# Prints "ok N - ..." per check; exits 1 if any check failed.
set -eu
. tests/e2e/lib.sh
CUSTOS_DEV_HEAD_MS=200 e2e_setup json
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/audit.proto
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT

W="$E2E_DIR/t"
mkdir -p "$W"
CRED="$E2E_DIR/credentials"
URL="http://127.0.0.1:$E2E_PORT/twirp/custos.v1"
n=0
failed=0
: >"$W/requests.txt" # request-id operation outcome principal, one line per JSON call

pass() { n=$((n + 1)); echo "ok $n - $1"; }
flunk() {
    n=$((n + 1))
    echo "not ok $n - $1"
    failed=$((failed + 1))
    for f in "$W/body" "$W/headers"; do [ ! -f "$f" ] || sed 's/^/#   /' "$f"; done
}

# The Authorization header of a principal, in a 0600 file (printf is a
# shell builtin: the key is never in any process's argv).
for p in demo-admin demo-broker auditor officer-1; do
    (umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$CRED/$p.key")" >"$W/$p.auth")
done
(umask 077 && printf 'Authorization: Bearer ck_%s\n' "0000000000000000" >"$W/bogus.auth")

# jcall WHO Service/Method BODY [CONTENT-TYPE]: BODY is the JSON text, or
# @FILE; it reaches curl on stdin through printf, a shell builtin. The
# status in $status, the reply in $W/body, the headers in $W/headers; the
# call is listed in $W/requests.txt for the audit check (principal "-":
# refused before authentication, or by it, so the event names nobody).
jcall() {
    case $3 in
    @*) src=${3#@} ;;
    *) printf '%s' "$3" >"$W/req.json" && src="$W/req.json" ;;
    esac
    status=$(curl -sS -o "$W/body" -D "$W/headers" -w '%{http_code}' -X POST \
        -H @"$W/$1.auth" -H "Content-Type: ${4:-application/json}" --data-binary @- \
        "$URL.$2" <"$src")
    rm -f "$W/req.json"
    rid=$(sed -n 's/^[Xx]-[Rr]equest-[Ii]d: *\([0-9a-f]*\).*/\1/p' "$W/headers")
    outcome=ok
    [ "$status" = 200 ] || outcome=$(jget 'd["code"]')
    principal=$1
    case "$1:$outcome" in
    bogus:* | *:bad_route) principal=- ;;
    esac
    [ "$status" != 400 ] || ! grep -q 'larger than' "$W/body" || principal=-
    echo "$rid ${2#*/} $outcome $principal" >>"$W/requests.txt"
}

# jget EXPR: a Python expression over the reply d (parsed JSON); a tuple
# prints space-separated.
jget() {
    /usr/bin/python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
v = eval(sys.argv[2])
print(" ".join(str(x) for x in v) if isinstance(v, tuple) else v)' "$W/body" "$1"
}

ctype_json() { grep -qi '^content-type: application/json' "$W/headers"; }

# ---- the key operations in JSON ----------------------------------------------------

jcall demo-admin KeyService/CreateKey "$(printf '%s' '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT","description":"json"}')"
if [ "$status" = 200 ] && ctype_json &&
    [ "$(jget 'd["key"]["spec"], d["key"]["state"], d["key"]["region"]')" = "AES_256 ENABLED eu-west" ] &&
    [ "$(jget 'type(d["key"]["created_at"]).__name__, d["key"]["current_version"]')" = "str 1" ]
then
    kid=$(jget 'd["key"]["key_id"]')
    pass "CreateKey in JSON: 200, application/json, enums by name, int64 as a string"
else
    flunk "CreateKey in JSON"
    kid=none
fi
# Every field is listed under its proto name, defaults included (Twirp v7).
if [ "$(jget '",".join(d["key"].keys())')" = \
    "key_id,tenant,region,spec,usage,origin,state,description,created_at,deletion_at,current_version,versions,rotation_period_s,next_rotation_at" ]
then
    pass "replies use the original field names and list every field"
else
    flunk "replies use the original field names and list every field"
fi

PT="plaintext-sentinel-json-$(openssl rand -hex 8)"
pt64=$(printf '%s' "$PT" | base64 -w0)
jcall demo-broker KeyService/Encrypt "$(printf '{"keyId":"%s","plaintext":"%s","encryptionContext":{"conversation":"c-1"}}' "$kid" "$pt64")"
ct64=
if [ "$status" = 200 ] && ctype_json && [ "$(jget 'd["key_id"], d["key_version"]')" = "$kid 1" ]; then
    ct64=$(jget 'd["ciphertext"]')
    pass "Encrypt in JSON (lowerCamelCase names, plaintext in base64)"
else
    flunk "Encrypt in JSON"
fi
jcall demo-broker KeyService/Decrypt "$(printf '{"ciphertext":"%s","encryption_context":{"conversation":"c-1"}}' "$ct64")"
if [ "$status" = 200 ] && [ "$(jget 'd["plaintext"]')" = "$pt64" ]; then
    pass "Decrypt in JSON (original names) gives the plaintext back"
else
    flunk "Decrypt in JSON"
fi
jcall demo-broker KeyService/Decrypt "$(printf '{"ciphertext":"%s","encryption_context":{"conversation":"c-2"}}' "$ct64")"
if [ "$status" = 400 ] && [ "$(jget 'd["code"]')" = "invalid_argument" ]; then
    pass "Decrypt in JSON under another encryption context is refused as over protobuf"
else
    flunk "Decrypt in JSON under another encryption context: $status"
fi
# The ciphertext is the same blob whatever the encoding: URL-safe base64
# without padding is accepted, and kmsctl (protobuf) decrypts a JSON one.
ctu=$(printf '%s' "$ct64" | tr '+/' '-_' | tr -d '=')
jcall demo-broker KeyService/Decrypt "$(printf '{"ciphertext":"%s","encryptionContext":{"conversation":"c-1"}}' "$ctu")"
if [ "$status" = 200 ] && [ "$(jget 'd["plaintext"]')" = "$pt64" ]; then
    pass "URL-safe, unpadded base64 is accepted"
else
    flunk "URL-safe, unpadded base64"
fi
jcall demo-broker KeyService/Encrypt "$(printf '{"key_id":"%s","plaintext":"%s"}' "$kid" "$pt64")"
printf '%s' "$(jget 'd["ciphertext"]')" | base64 -d >"$W/ct.bin"
if "$KMSCTL" decrypt --in "$W/ct.bin" --out "$W/pt.bin" --api-key-file="$CRED/demo-broker.key" \
    >"$W/body" 2>&1 && [ "$(cat "$W/pt.bin")" = "$PT" ]; then
    pass "a ciphertext made over JSON decrypts over protobuf (kmsctl)"
else
    flunk "a ciphertext made over JSON decrypts over protobuf (kmsctl)"
fi
printf '%s' "$PT" >"$W/pt.txt"
"$KMSCTL" encrypt --key-id "$kid" --in "$W/pt.txt" --out "$W/ct2.bin" \
    --api-key-file="$CRED/demo-broker.key" --correlation-id json-e2e-protobuf-encrypt >/dev/null
jcall demo-broker KeyService/Decrypt "$(printf '{"ciphertext":"%s"}' "$(base64 -w0 "$W/ct2.bin")")"
if [ "$status" = 200 ] && [ "$(jget 'd["plaintext"]')" = "$pt64" ]; then
    pass "a ciphertext made over protobuf (kmsctl) decrypts over JSON"
else
    flunk "a ciphertext made over protobuf decrypts over JSON"
fi

jcall demo-broker KeyService/GenerateDataKey "$(printf '{"key_id":"%s","number_of_bytes":"32","encryption_context":{"file":"f-1"}}' "$kid")"
dk=
blob=
if [ "$status" = 200 ] && [ "$(jget 'len(__import__("base64").b64decode(d["plaintext"]))')" = 32 ]; then
    dk=$(jget 'd["plaintext"]')
    blob=$(jget 'd["ciphertext_blob"]')
    pass "GenerateDataKey in JSON: a 32-byte data key and its blob"
else
    flunk "GenerateDataKey in JSON"
fi
jcall demo-broker KeyService/DecryptDataKey "$(printf '{"ciphertextBlob":"%s","encryptionContext":{"file":"f-1"},"keyId":"%s"}' "$blob" "$kid")"
if [ "$status" = 200 ] && [ -n "$dk" ] && [ "$(jget 'd["plaintext"]')" = "$dk" ]; then
    pass "DecryptDataKey in JSON returns the same data key"
else
    flunk "DecryptDataKey in JSON"
fi

# ---- the other services --------------------------------------------------------------

jcall demo-admin KeyService/CreateKey '{"region":"eu-west","spec":"METADATA_AES_HMAC"}'
mid=$(jget 'd["key"]["key_id"]' 2>/dev/null || echo none)
msisdn64=$(printf '+14155550123' | base64 -w0)
jcall demo-broker FieldService/EncryptFields "$(printf '{"keyId":"%s","encryptionContext":{"conv":"42"},"fields":[{"name":"msisdn","value":"%s","mode":"FIELD_MODE_DETERMINISTIC","canonicalizer":"CANONICALIZER_E164","indexLengthBits":64}]}' "$mid" "$msisdn64")"
fct=
if [ "$status" = 200 ] && [ "$(jget 'len(d["fields"]), len(d["fields"][0]["blind_index"])')" = "1 12" ]; then
    fct=$(jget 'd["fields"][0]["ciphertext"]')
    pass "FieldService EncryptFields in JSON (enums by name, a blind index of 64 bits)"
else
    flunk "FieldService EncryptFields in JSON: $status"
fi
jcall demo-broker FieldService/DecryptFields "$(printf '{"key_id":"%s","encryption_context":{"conv":"42"},"fields":[{"name":"msisdn","ciphertext":"%s"}]}' "$mid" "$fct")"
if [ "$status" = 200 ] &&
    [ "$(jget 'd["fields"][0]["value"], d["fields"][0]["mode"]')" = "$msisdn64 FIELD_MODE_DETERMINISTIC" ]
then
    pass "FieldService DecryptFields in JSON gives the value back"
else
    flunk "FieldService DecryptFields in JSON: $status"
fi
jcall officer-1 EscrowService/ListRecoveries '{"openOnly":true}'
if [ "$status" = 200 ] && [ "$(jget 'd')" = "{'recoveries': []}" ]; then
    pass "EscrowService ListRecoveries in JSON: an empty list is []"
else
    flunk "EscrowService ListRecoveries in JSON: $status"
fi
jcall auditor AuditService/GetSignedTreeHead '{"region":"eu-west"}'
if [ "$status" = 200 ] && [ "$(jget 'type(d["head"]["tree_size"]).__name__, d["head"]["region"]')" = "str eu-west" ]; then
    pass "AuditService GetSignedTreeHead in JSON (uint64 as a string)"
else
    flunk "AuditService GetSignedTreeHead in JSON: $status"
fi

# ---- refusals: the Twirp JSON errors, audited ---------------------------------------

jcall bogus KeyService/Encrypt "$(printf '{"key_id":"%s","plaintext":"%s"}' "$kid" "$pt64")"
if [ "$status" = 401 ] && [ "$(jget 'd["code"]')" = unauthenticated ] && ctype_json; then
    pass "a bad credential: 401 unauthenticated"
else
    flunk "a bad credential: $status"
fi
jcall demo-broker KeyService/CreateKey "$(printf '%s' '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}')"
if [ "$status" = 403 ] && [ "$(jget 'd["code"]')" = permission_denied ]; then
    pass "a policy refusal: 403 permission_denied"
else
    flunk "a policy refusal: $status"
fi
jcall demo-broker KeyService/Encrypt "$(printf '{"key_id":"%s","plaintext":5}' "$kid")"
if [ "$status" = 400 ] && [ "$(jget 'd["code"]')" = malformed ] &&
    jget 'd["msg"]' | grep -q 'EncryptRequest message: field "plaintext": expected a base64 string'
then
    pass "a JSON body of the wrong type: 400 malformed, naming the field"
else
    flunk "a JSON body of the wrong type: $status"
fi
jcall demo-broker KeyService/Encrypt "$(printf '{"key_id":"%s","plaintext":"%s"} trailing' "$kid" "$pt64")"
if [ "$status" = 400 ] && [ "$(jget 'd["code"]')" = malformed ]; then
    pass "a JSON body with trailing bytes: 400 malformed"
else
    flunk "a JSON body with trailing bytes: $status"
fi
jcall demo-broker KeyService/Encrypt "$(printf '{"key_id":"%s","plaintext":"%s","colour":"red"}' "$kid" "$pt64")"
if [ "$status" = 400 ] && jget 'd["msg"]' | grep -q 'field "colour": no such field'; then
    pass "an unknown field: 400 malformed, naming it"
else
    flunk "an unknown field: $status"
fi
jcall demo-broker KeyService/Encrypt "$(printf '{"key_id":"%s","keyId":"%s"}' "$kid" "$kid")"
if [ "$status" = 400 ] && jget 'd["msg"]' | grep -q 'field "key_id": given twice'; then
    pass "one field under both spellings: 400 malformed"
else
    flunk "one field under both spellings: $status"
fi
# A "\u0000" reaches the decoder wherever it is, a map key included
# (jansson alone refuses a NUL in an object key as not JSON): the same
# invalid_argument naming the field as over protobuf (docs/api.md).
for where in key value; do
    if [ $where = key ]; then ctx='{"a\u0000b":"v"}'; else ctx='{"a":"v\u0000w"}'; fi
    jcall demo-broker KeyService/Encrypt "$(printf '{"key_id":"%s","plaintext":"eA==","encryption_context":%s}' "$kid" "$ctx")"
    if [ "$status" = 400 ] && [ "$(jget 'd["code"]')" = invalid_argument ] &&
        [ "$(jget 'd["msg"]')" = "field \"encryption_context\" (a map $where) contains a NUL byte" ]; then
        pass "a \\u0000 in a JSON map $where: 400 invalid_argument naming the map"
    else
        flunk "a \\u0000 in a JSON map $where: $status $(cat "$W/body")"
    fi
done
# An enum number its enum does not define is passed to the decoder, which
# refuses it as over protobuf (origin 7 used to make an HSM key).
jcall demo-admin KeyService/ListKeys '{"page_size":1000}'
nkeys=$(jget 'len(d["keys"])')
jcall demo-admin KeyService/CreateKey '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT","origin":7}'
if [ "$status" = 400 ] && [ "$(jget 'd["code"]')" = invalid_argument ] &&
    [ "$(jget 'd["msg"]')" = 'field "origin" is not a defined KeyOrigin value' ]; then
    pass "CreateKey in JSON with origin 7: 400 invalid_argument naming the field"
else
    flunk "CreateKey in JSON with origin 7: $status $(cat "$W/body")"
fi
jcall demo-admin KeyService/ListKeys '{"page_size":1000}'
if [ "$(jget 'len(d["keys"])')" = "$nkeys" ]; then
    pass "... and no key was created"
else
    flunk "a key was created by the refused CreateKey"
fi
# The handler's own validation applies to JSON requests unchanged.
jcall demo-broker KeyService/GenerateDataKey "$(printf '{"key_id":"%s"}' "$kid")"
jcall demo-broker KeyService/GenerateDataKey "$(printf '{"key_id":"%s","number_of_bytes":8}' "$kid")"
if [ "$status" = 400 ] && [ "$(jget 'd["code"]')" = invalid_argument ]; then
    pass "the handler's validation applies to JSON requests (number_of_bytes 8)"
else
    flunk "the handler's validation applies to JSON requests: $status"
fi
max=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["limits"]["max_body_bytes"])' \
    "$E2E_DIR/kmsd.json")
/usr/bin/python3 -c 'import sys; n=int(sys.argv[1]); h="{\"key_id\":\""; sys.stdout.write(h + "a"*(n + 1 - len(h) - 2) + "\"}")' \
    "$max" >"$W/big.json"
jcall demo-broker KeyService/Encrypt @"$W/big.json"
if [ "$(wc -c <"$W/big.json")" -eq $((max + 1)) ] && [ "$status" = 400 ] &&
    jget 'd["msg"]' | grep -q "request body larger than $max bytes"; then
    pass "a JSON body one byte over the limit ($max): refused"
else
    flunk "a JSON body one byte over the limit: $status"
fi
jcall demo-broker KeyService/Encrypt "$(printf '{"key_id":"%s"}' "$kid")" text/plain
if [ "$status" = 404 ] && [ "$(jget 'd["code"]')" = bad_route ] &&
    jget 'd["msg"]' | grep -q 'application/protobuf or application/json'; then
    pass "any other Content-Type is still refused (404 bad_route)"
else
    flunk "any other Content-Type: $status"
fi
jcall demo-broker KeyService/Encrypt "$(printf '{"key_id":"%s","plaintext":"%s"}' "$kid" "$pt64")" "application/json; charset=utf-8"
if [ "$status" = 200 ] && ctype_json; then
    pass "application/json; charset=utf-8 is accepted"
else
    flunk "application/json; charset=utf-8: $status"
fi

# The curl example of README.md, run as it stands there (credentials
# directory and key id of this installation).
mkdir -p "$W/readme"
sed -n '/<!-- json-example-begin -->/,/<!-- json-example-end -->/p' README.md |
    sed '/^```/d; /^<!--/d' | sed "s|var/dev/credentials|$CRED|" >"$W/readme/example.sh"
if (cd "$W/readme" && id=$kid sh ./example.sh) >"$W/body" 2>&1 &&
    [ "$(jget 'd["key_id"], d["key_version"], len(d["ciphertext"]) > 40')" = "$kid 1 True" ]; then
    pass "the curl example of README.md encrypts as written"
else
    flunk "the curl example of README.md encrypts as written"
fi
# The examples show the start of a real blob: format 2 (c5 02), region
# eu-west (07 "eu-west"): "xQIHZXUtd2Vzd", the 13 base64 characters those
# 10 bytes fix (they showed
# "AQEH...", which is no Custos blob).
shown=$(sed -n 's/.*{"ciphertext":"\([A-Za-z0-9+\/]*\)\.\.\.".*/\1/p' README.md docs/api.md | sort -u)
case $ct64 in
"$shown"*)
    [ -n "$shown" ] && [ "$(sed -n 's/.*{"ciphertext":"\([A-Za-z0-9+\/]*\)\.\.\.".*/\1/p' README.md docs/api.md | wc -l)" -eq 2 ] &&
        pass "README.md and docs/api.md show the start of a real ciphertext ($shown...)" ||
        flunk "the JSON examples' ciphertext: '$shown'" ;;
*) flunk "the JSON examples show '$shown...', a real ciphertext starts ${ct64%"${ct64#??????????????}"}" ;;
esac

# ---- a stored string that is not UTF-8 ------------------------------------------------

# A reply is rendered as JSON after the handler has committed its change: a
# description stored before kmsd refused non-UTF-8 ones (planted here in
# the store while kmsd is stopped) is rendered with U+FFFD and never fails
# the call. Before, DescribeKey answered 500, and RotateKey 500 and an
# audit event "internal" although the new version was made.
BAD=ff20c328206a736f6e20eda080206f6c6420f09f94 # "\xff \xc3( json \xed\xa0\x80 old \xf0\x9f\x94"
e2e_stop
if /usr/bin/python3 - "$E2E_DIR/kmsd.db" "$kid" "$BAD" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
# CAST keeps the bytes: a TEXT value that is not UTF-8, as an older kmsd
# could store it.
n = db.execute("UPDATE keys SET description = CAST(? AS TEXT) WHERE key_id = ?",
               (bytes.fromhex(sys.argv[3]), sys.argv[2])).rowcount
db.commit()
d = db.execute("SELECT CAST(description AS BLOB) FROM keys WHERE key_id = ?", (sys.argv[2],)).fetchone()[0]
sys.exit(0 if n == 1 and d == bytes.fromhex(sys.argv[3]) else 1)
EOF
then
    pass "a description that is not UTF-8 planted in the store"
else
    flunk "planting a description that is not UTF-8 in the store"
fi
e2e_start
# What the client must see: each ill-formed subpart as one U+FFFD.
fixed="bytes.fromhex('$BAD').decode('utf-8', 'replace')"
jcall demo-admin KeyService/DescribeKey "$(printf '{"key_id":"%s"}' "$kid")"
if [ "$status" = 200 ] && ctype_json && [ "$(jget "d['key']['description'] == $fixed")" = True ] &&
    [ "$(jget "d['key']['description'].count(chr(0xfffd))")" = 6 ]; then
    pass "DescribeKey in JSON of a key whose description is not UTF-8: 200, U+FFFD in its place"
else
    flunk "DescribeKey in JSON of a key whose description is not UTF-8: $status"
fi
v0=$(jget 'd["key"]["current_version"]' 2>/dev/null || echo 0)
jcall demo-admin KeyService/ListKeys '{"page_size":1000}'
if [ "$status" = 200 ] &&
    [ "$(jget "[k['description'] for k in d['keys'] if k['key_id'] == '$kid'] == [$fixed]")" = True ]; then
    pass "ListKeys in JSON (the description in a repeated message): 200, U+FFFD"
else
    flunk "ListKeys in JSON with a description that is not UTF-8: $status"
fi
jcall demo-admin KeyService/RotateKey "$(printf '{"key_id":"%s"}' "$kid")"
rot_rid=$rid
if [ "$status" = 200 ] && [ "$(jget 'd["key"]["current_version"]')" = $((v0 + 1)) ] &&
    [ "$(jget "d['key']['description'] == $fixed")" = True ]; then
    pass "RotateKey in JSON of that key: 200 with the new version"
else
    flunk "RotateKey in JSON of a key whose description is not UTF-8: $status"
fi
# The protobuf encoding returns the bytes as stored (a string field's bytes
# are on the wire verbatim).
/usr/bin/python3 -c 'import sys; k = sys.argv[1].encode(); sys.stdout.buffer.write(b"\x0a" + bytes([len(k)]) + k)' \
    "$kid" >"$W/describe.pb"
status=$(curl -sS -o "$W/body.pb" -D "$W/headers" -w '%{http_code}' -X POST -H @"$W/demo-admin.auth" \
    -H "Content-Type: application/protobuf" --data-binary @"$W/describe.pb" "$URL.KeyService/DescribeKey")
rid=$(sed -n 's/^[Xx]-[Rr]equest-[Ii]d: *\([0-9a-f]*\).*/\1/p' "$W/headers")
echo "$rid DescribeKey ok demo-admin" >>"$W/requests.txt"
if [ "$status" = 200 ] && /usr/bin/python3 -c 'import sys
b = open(sys.argv[1], "rb").read(); bad = bytes.fromhex(sys.argv[2])
sys.exit(0 if bad in b and "\ufffd".encode() not in b else 1)' "$W/body.pb" "$BAD"; then
    pass "DescribeKey over protobuf still returns the description's bytes as stored"
else
    flunk "DescribeKey over protobuf of a key whose description is not UTF-8: $status"
fi

# ---- the audit log, exported over JSON -------------------------------------------------

# The auditor's export is itself a JSON call; an event that is durable is in
# the export once a head covers it (heads every 200 ms here).
i=0
while :; do
    jcall auditor AuditService/ExportAuditLog '{"region":"eu-west","count":10000}'
    rc=0
    PYTHONPATH="$E2E_DIR/py" /usr/bin/python3 - "$W/body" "$W/requests.txt" "$rot_rid" >"$W/audit.out" 2>&1 <<'EOF' || rc=$?
import base64, json, sys
import audit_pb2 as apb
d = json.load(open(sys.argv[1]))
events = [apb.AuditEvent.FromString(base64.b64decode(e["event"])) for e in d["entries"]]
by_rid = {}
for ev in events:
    by_rid.setdefault(ev.request_id, []).append(ev)
reqs = [l.split() for l in open(sys.argv[2]) if l.strip()]
# The export being made is the last line; it is in a later head.
reqs = reqs[:-1]
missing = [r for r in reqs if r[0] not in by_rid]
if missing:
    print(f"{len(missing)} requests not exported yet")
    sys.exit(3)
bad = []
for r in reqs:
    rid, op, outcome = r[0], r[1], r[2]
    principal = r[3]
    evs = by_rid[rid]
    if len(evs) != 1:
        bad.append(f"{rid} {op}: {len(evs)} events")
        continue
    ev = evs[0]
    if principal == "-":
        principal = ev.principal = ""
    if (ev.operation, ev.outcome, ev.principal) != (op, outcome, principal):
        bad.append(f"{rid}: event {ev.operation}/{ev.outcome}/{ev.principal!r}, "
                   f"want {op}/{outcome}/{principal!r}")
# The same call over protobuf (kmsctl) and over JSON: the same fields filled.
pb = [ev for ev in events if ev.correlation_id == "json-e2e-protobuf-encrypt"]
js = [by_rid[r[0]][0] for r in reqs if r[1] == "Encrypt" and r[2] == "ok"]
if len(pb) != 1 or not js:
    bad.append(f"{len(pb)} protobuf Encrypt events, {len(js)} JSON ones")
else:
    for f in ("principal", "role", "tenant", "operation", "key_id", "key_version", "region",
              "token", "outcome", "rule", "policy_sha256"):
        for ev in js:
            if getattr(ev, f) != getattr(pb[0], f):
                bad.append(f"Encrypt over JSON: {f} {getattr(ev, f)!r}, "
                           f"over protobuf {getattr(pb[0], f)!r}")
# The RotateKey of the key whose description is not UTF-8 made its version:
# its event says ok (a restore replays only ok events).
rot = by_rid.get(sys.argv[3], [])
if [(ev.operation, ev.outcome) for ev in rot] != [("RotateKey", "ok")]:
    bad.append(f"the RotateKey of the non-UTF-8 key: events {[(ev.operation, ev.outcome) for ev in rot]}")
if bad:
    print("\n".join(bad))
    sys.exit(1)
print(f"{len(reqs)} JSON requests: one event each")
EOF
    [ $rc -eq 3 ] && [ $i -lt 50 ] || break
    i=$((i + 1))
    sleep 0.2
done
if [ $rc -eq 0 ]; then
    pass "every JSON request (successes and refusals) has exactly one audit event, as over protobuf; the RotateKey of the non-UTF-8 key is audited ok"
else
    cp "$W/audit.out" "$W/body"
    flunk "every JSON request has exactly one audit event"
fi

# Nothing secret in the operational log or the audit files.
if grep -rqF -e "$PT" -e "$pt64" -e "$dk" "$E2E_DIR/kmsd.log" "$E2E_DIR/audit/" ||
    grep -rqF "$(cat "$CRED/demo-broker.key")" "$E2E_DIR/kmsd.log" "$E2E_DIR/audit/"; then
    flunk "no plaintext, data key or credential in the logs"
else
    pass "no plaintext, data key or credential in the logs"
fi

e2e_stop
trap - EXIT
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$E2E_DIR/kmsd.log"; then
    flunk "kmsd ran clean under the sanitizers"
fi
[ $failed -eq 0 ] || { echo "$failed of $n checks failed"; exit 1; }

#!/bin/sh
# One PostgreSQL database per region ("store": {"backend": "postgresql",
# "regions": {...}}, docs/configuration.md) end to end, on the scratch
# cluster tests/run-tests.sh started ($CUSTOS_TEST_PG_DIR):
#   - configurations that would break residency are refused at start
#     (a region without a database, a database for a region no token
#     serves, two regions naming one database, regions and conninfo both);
#   - kmsd serving eu-west and us-east: CreateKey in both, Encrypt/Decrypt,
#     RotateKey, DisableKey, ScheduleKeyDeletion, ListKeys (one page and
#     page by page) through the API; each key's rows are in its region's
#     database and not in the other (psql);
#   - us-east's database refusing connections (ALLOW_CONNECTIONS false and
#     its sessions ended): us-east requests answered 503 unavailable, and
#     eu-west keeps serving (CreateKey, Encrypt, Decrypt, DescribeKey);
#     back again: us-east serves again by itself.
# Prints "ok N - ..." per check; exits 1 if any check failed.
set -eu
. tests/e2e/lib.sh
if [ -z "${CUSTOS_TEST_PG_DIR:-}" ]; then
    echo "ok 1 - skipped: no PostgreSQL test cluster (PostgreSQL not installed)"
    exit 0
fi
PGDIR=$CUSTOS_TEST_PG_DIR
e2e_setup pgregions
W="$E2E_DIR/t"
mkdir -p "$W"
CRED="$E2E_DIR/credentials"
n=0
failed=0
pass() { n=$((n + 1)); echo "ok $n - $1"; }
flunk() {
    n=$((n + 1))
    echo "not ok $n - $1"
    failed=$((failed + 1))
    [ ! -f "$W/body" ] || sed 's/^/#   /' "$W/body"
}

e2e_pg_client "$W"
EU_DB=custos_e2e_eu_$$
US_DB=custos_e2e_us_$$
"$pgbin/createdb" "$EU_DB"
"$pgbin/createdb" "$US_DB"
psql_in() { "$pgbin/psql" -X -qAt -d "$1" -c "$2"; }
# us-east's database away (new connections refused, open ones ended), or back.
us_db() {
    psql_in postgres "ALTER DATABASE $US_DB ALLOW_CONNECTIONS $1" >/dev/null
    [ "$1" = true ] || psql_in postgres "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$US_DB'" >/dev/null
}

cleanup() {
    e2e_stop >/dev/null 2>&1 || true
    psql_in postgres "ALTER DATABASE $US_DB ALLOW_CONNECTIONS true" >/dev/null 2>&1 || true
    "$pgbin/dropdb" --if-exists --force "$EU_DB" >/dev/null 2>&1 || true
    "$pgbin/dropdb" --if-exists --force "$US_DB" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# cfg NAME VARIANT: a kmsd config whose store is one database per region.
cfg() {
    /usr/bin/python3 - "$E2E_DIR" "$1" "$2" "$PGHOST" "$PGPORT" "$PGDIR/password" "$EU_DB" "$US_DB" <<'PY'
import json, sys
d, name, variant, host, pgport, pw, eu, us = sys.argv[1:9]
c = json.load(open(f"{d}/kmsd.json"))
def db(n):
    return {"conninfo": f"host={host} port={pgport} user=custos dbname={n}",
            "password": f"file:{pw}"}
regions = {"eu-west": db(eu), "us-east": db(us)}
if variant == "missing":
    del regions["us-east"]
elif variant == "unknown":
    regions["ap-south"] = db("custos_ap")
elif variant == "same":
    # The same database spelled another way: still one database.
    regions["us-east"] = {"conninfo": f"dbname={eu} user=custos port={pgport} host={host}",
                          "password": f"file:{pw}"}
store = {"backend": "postgresql", "regions": regions}
if variant == "both":
    store["conninfo"] = db(eu)["conninfo"]
c["store"] = store
# Nodes share one SoftHSMv2 token directory: one module call at a time
# per process (docs/pkcs11.md, "pkcs11.serialize_calls").
c["pkcs11"]["serialize_calls"] = True
c.setdefault("health", {})["cache_ms"] = 0
json.dump(c, open(f"{d}/kmsd-{name}.json", "w"), indent=2)
PY
}

# ---- refused configurations -------------------------------------------------------------
for v in missing:"has no database" unknown:"no token serves" same:"same database\|names the database" both:"not both"; do
    variant=${v%%:*}
    want=${v#*:}
    cfg "$variant" "$variant"
    if "$KMSD" --config "$E2E_DIR/kmsd-$variant.json" --check-config >"$W/check.out" 2>&1; then
        flunk "store.regions ($variant) accepted"
    elif grep -q "$want" "$W/check.out"; then
        pass "store.regions ($variant) refused"
    else
        sed 's/^/#   /' "$W/check.out"
        flunk "store.regions ($variant): refused without the reason"
    fi
done

# ---- a node serving two regions, each in its own database ---------------------------------
cfg ok ok
e2e_start "$E2E_DIR/kmsd-ok.json"
for p in demo-admin demo-broker demo-broker-us; do
    (umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$CRED/$p.key")" >"$W/$p.auth")
done
# call WHO Service/Method JSON: $status, reply in $W/body; never hangs.
call() {
    printf '%s' "$3" >"$W/req.json"
    status=$(curl -sS --max-time 60 -o "$W/body" -w '%{http_code}' -X POST -H @"$W/$1.auth" \
        -H "Content-Type: application/json" --data-binary @"$W/req.json" \
        "http://127.0.0.1:$E2E_PORT/twirp/custos.v1.$2") || status=timeout
}
jget() {
    /usr/bin/python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
print(eval(sys.argv[2]))' "$W/body" "$1"
}
PT64=$(printf 'regions-plaintext-%s' "$(openssl rand -hex 4)" | base64 -w0)
create() { # REGION -> $kid
    kid=none
    call demo-admin KeyService/CreateKey "$(printf '{"region":"%s","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}' "$1")"
    [ "$status" != 200 ] || kid=$(jget 'd["key"]["key_id"]')
}
roundtrip() { # WHO KEY_ID -> true when Encrypt then Decrypt give PT64 back
    call "$1" KeyService/Encrypt "$(printf '{"key_id":"%s","plaintext":"%s"}' "$2" "$PT64")"
    [ "$status" = 200 ] || return 1
    ct=$(jget 'd["ciphertext"]')
    call "$1" KeyService/Decrypt "$(printf '{"ciphertext":"%s"}' "$ct")"
    [ "$status" = 200 ] && [ "$(jget 'd["plaintext"]')" = "$PT64" ]
}
unavailable() { [ "$status" = 503 ] && [ "$(jget 'd["code"]')" = unavailable ]; }

create eu-west
eu=$kid
create us-east
us=$kid
create eu-west
eu2=$kid
if [ "$eu" != none ] && [ "$us" != none ] && [ "$eu2" != none ]; then
    pass "CreateKey in eu-west and in us-east"
else
    flunk "CreateKey in both regions ($status)"
fi
roundtrip demo-broker "$eu" && roundtrip demo-broker-us "$us" &&
    pass "Encrypt and Decrypt with each region's key" || flunk "Encrypt/Decrypt ($status)"
call demo-admin KeyService/RotateKey "$(printf '{"key_id":"%s"}' "$us")"
[ "$status" = 200 ] && roundtrip demo-broker-us "$us" && pass "RotateKey (us-east)" || flunk "RotateKey ($status)"
call demo-admin KeyService/DisableKey "$(printf '{"key_id":"%s"}' "$eu2")"
[ "$status" = 200 ] && pass "DisableKey (eu-west)" || flunk "DisableKey ($status)"
call demo-admin KeyService/ScheduleKeyDeletion "$(printf '{"key_id":"%s","pending_window_days":30}' "$eu2")"
[ "$status" = 200 ] && pass "ScheduleKeyDeletion (eu-west)" || flunk "ScheduleKeyDeletion ($status)"
call demo-admin KeyService/ListKeys '{"page_size":100}'
if [ "$status" = 200 ] && [ "$(jget 'sorted(k["key_id"] for k in d["keys"]) == sorted(["'"$eu"'", "'"$us"'", "'"$eu2"'"])')" = True ]; then
    pass "ListKeys: the keys of both regions' databases"
else
    flunk "ListKeys ($status)"
fi
# Page by page (one key a page): every key once, none skipped.
seen=
tok=
i=0
while [ $i -lt 10 ]; do
    call demo-admin KeyService/ListKeys "$(printf '{"page_size":1,"page_token":"%s"}' "$tok")"
    [ "$status" = 200 ] || break
    seen="$seen $(jget '" ".join(k["key_id"] for k in d["keys"])')"
    tok=$(jget 'd.get("next_page_token", "")')
    [ -n "$tok" ] || break
    i=$((i + 1))
done
if [ "$(echo $seen | tr ' ' '\n' | sort | tr '\n' ' ')" = "$(printf '%s\n' "$eu" "$us" "$eu2" | sort | tr '\n' ' ')" ]; then
    pass "ListKeys page by page across the two databases: each key once"
else
    flunk "ListKeys pages: $seen"
fi

# Residency: each key's rows in its region's database only.
in_db() { psql_in "$1" "SELECT (SELECT count(*) FROM keys WHERE key_id = '$2') || '/' || (SELECT count(*) FROM key_versions WHERE key_id = '$2')"; }
r1=$(in_db "$EU_DB" "$eu") r2=$(in_db "$US_DB" "$eu") r3=$(in_db "$US_DB" "$us") r4=$(in_db "$EU_DB" "$us")
if [ "$r1" = 1/1 ] && [ "$r2" = 0/0 ] && [ "$r3" = 1/2 ] && [ "$r4" = 0/0 ]; then
    pass "the eu-west key's rows are only in the eu-west database, the us-east key's only in us-east's"
else
    flunk "rows by database: eu key eu=$r1 us=$r2; us key us=$r3 eu=$r4"
fi
st=$(psql_in "$EU_DB" "SELECT state FROM keys WHERE key_id = '$eu2'")
[ "$st" = 4 ] && pass "the scheduled deletion is in the eu-west database (state 4)" || flunk "eu2 state: $st"

# ---- us-east's database away --------------------------------------------------------------
us_db false
sleep 1.2 # past the key cache's bound: answers come from the store
call demo-admin KeyService/DescribeKey "$(printf '{"key_id":"%s"}' "$us")"
unavailable && pass "us-east database away: DescribeKey of a us-east key answered 503 unavailable" ||
    flunk "DescribeKey us-east with its database away: $status"
call demo-admin KeyService/CreateKey '{"region":"us-east","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}'
unavailable && pass "us-east database away: CreateKey in us-east answered 503 unavailable" ||
    flunk "CreateKey us-east with its database away: $status"
create eu-west
eu3=$kid
if [ "$eu3" != none ] && roundtrip demo-broker "$eu3" && roundtrip demo-broker "$eu"; then
    pass "us-east database away: eu-west creates keys, encrypts and decrypts"
else
    flunk "eu-west while us-east is away ($status)"
fi
call demo-admin KeyService/DescribeKey "$(printf '{"key_id":"%s"}' "$eu")"
[ "$status" = 200 ] && pass "us-east database away: DescribeKey of an eu-west key 200" || flunk "DescribeKey eu ($status)"
call demo-admin KeyService/ListKeys '{"page_size":100}'
unavailable && pass "us-east database away: ListKeys (which needs every region) 503 unavailable" ||
    flunk "ListKeys with us-east away: $status"
us_db true
ok=
i=0
while [ $i -lt 50 ]; do
    call demo-admin KeyService/DescribeKey "$(printf '{"key_id":"%s"}' "$us")"
    [ "$status" != 200 ] || { ok=1; break; }
    i=$((i + 1))
    sleep 0.1
done
create us-east
[ -n "$ok" ] && [ "$kid" != none ] && pass "us-east database back: us-east serves again by itself" ||
    flunk "us-east after its database came back ($status)"
[ "$(in_db "$US_DB" "$kid")" = 1/1 ] && [ "$(in_db "$EU_DB" "$kid")" = 0/0 ] &&
    pass "a key made after the outage is in the us-east database only" || flunk "post-outage key placement"
if ! grep -q "$(cat "$PGDIR/password")" "$E2E_DIR/kmsd.log" "$W/body"; then
    pass "no log line or answer holds the database password"
else
    flunk "password leak"
fi

e2e_stop && pass "kmsd stops cleanly" || flunk "kmsd exit status"

# ---- a region's database away at start: kmsd does not start -------------------------
# docs/fleet.md: "kmsd needs every region's database to start" (the
# start-up checks read each region's audit watermark). It must say which
# database, and exit rather than serve half its regions.
us_db false
rc=0
timeout 60 "$KMSD" --config "$E2E_DIR/kmsd-ok.json" >"$W/start-away.out" 2>&1 || rc=$?
us_db true
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "$US_DB" "$W/start-away.out" &&
    ! grep -q '"ready' "$W/start-away.out"; then
    pass "us-east database away at start: kmsd exits ($rc), naming that database, never ready"
else
    sed 's/^/#   /' "$W/start-away.out" | tail -n 8
    flunk "us-east database away at start (exit $rc)"
fi
[ "$failed" -eq 0 ]

#!/bin/sh
# The metadata store on PostgreSQL (docs/fleet.md "The store on PostgreSQL")
# end to end, on the scratch cluster tests/run-tests.sh started
# ($CUSTOS_TEST_PG_DIR), with stock curl in Twirp JSON:
#   - kmsd A on PostgreSQL: CreateKey, Encrypt, RotateKey, Encrypt, Decrypt
#     of both versions; no SQLite file is made; the keys survive a restart;
#   - kmsd B, on another port, with the same store and the same token
#     directory (the stand-in for a network HSM): decrypts what A encrypted
#     (a key B has never seen: cache miss -> store -> HSM object by CKA_ID),
#     and A uses a key created through B; a key disabled through A is
#     refused by B once its cache entry ages out (the key cache's 1 s);
#   - PostgreSQL stopped: CreateKey and ListKeys answered 503 "unavailable"
#     within a bound (never a hang), /readyz 503; PostgreSQL started again:
#     both nodes serve again by themselves, /readyz 200.
# Prints "ok N - ..." per check; exits 1 if any check failed.
set -eu
. tests/e2e/lib.sh
if [ -z "${CUSTOS_TEST_PG_DIR:-}" ]; then
    echo "ok 1 - skipped: no PostgreSQL test cluster (PostgreSQL not installed)"
    exit 0
fi
PGDIR=$CUSTOS_TEST_PG_DIR
e2e_setup pgstore
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
"$pgbin/createdb" custos_e2e_store

# cfg NAME PORT AUDITDIR: a kmsd config on PostgreSQL from dev-setup's.
cfg() {
    /usr/bin/python3 - "$E2E_DIR" "$1" "$2" "$3" "$PGHOST" "$PGPORT" "$PGDIR/password" <<'PY'
import json, sys
d, name, port, audit, host, pgport, pw = sys.argv[1:8]
c = json.load(open(f"{d}/kmsd.json"))
c["listen"]["port"] = int(port)
c["audit"]["dir"] = audit
# Nodes share one SoftHSMv2 token directory: one module call at a time
# per process (docs/pkcs11.md, "pkcs11.serialize_calls").
c["pkcs11"]["serialize_calls"] = True
c["store"] = {"backend": "postgresql",
              "conninfo": f"host={host} port={pgport} user=custos dbname=custos_e2e_store",
              "password": f"file:{pw}"}
c.setdefault("health", {})["cache_ms"] = 0
# Until the audit log is on PostgreSQL too (docs/fleet.md), a second node
# keeping its own local log would trip the restore check (the store's audit
# watermark is the first node's): node B runs without one (dev mode only).
if name == "b":
    c["audit"]["enabled"] = False
json.dump(c, open(f"{d}/kmsd-{name}.json", "w"), indent=2)
PY
}
PORT_A=$E2E_PORT
PORT_B=$(e2e_free_port)
cfg a "$PORT_A" "$E2E_DIR/audit"
cfg b "$PORT_B" "$E2E_DIR/audit-b"

PID_B=
cleanup() {
    # Never leave the shared cluster stopped for the tests after this one.
    [ -S "$PGHOST/.s.PGSQL.$PGPORT" ] || sh deploy/pg-scratch.sh start "$PGDIR" >/dev/null 2>&1 || true
    [ -z "$PID_B" ] || kill -TERM "$PID_B" 2>/dev/null || true
    e2e_stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

for p in demo-admin demo-broker; do
    (umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$CRED/$p.key")" >"$W/$p.auth")
done
# call PORT WHO Service/Method JSON: $status, reply in $W/body. --max-time:
# a call while PostgreSQL is away must fail, not hang.
call() {
    printf '%s' "$4" >"$W/req.json"
    status=$(curl -sS --max-time 60 -o "$W/body" -w '%{http_code}' -X POST -H @"$W/$2.auth" \
        -H "Content-Type: application/json" --data-binary @"$W/req.json" \
        "http://127.0.0.1:$1/twirp/custos.v1.$3") || status=timeout
}
jget() {
    /usr/bin/python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
v = eval(sys.argv[2])
print(" ".join(str(x) for x in v) if isinstance(v, tuple) else v)' "$W/body" "$1"
}
readyz() { curl -s --max-time 60 -o "$W/rz" -w '%{http_code}' "http://127.0.0.1:$1/readyz" || echo timeout; }
PT64=$(printf 'pg-store-plaintext-%s' "$(openssl rand -hex 4)" | base64 -w0)
encrypt() { # PORT KEY_ID -> $ct
    ct=
    call "$1" demo-broker KeyService/Encrypt "$(printf '{"key_id":"%s","plaintext":"%s"}' "$2" "$PT64")"
    [ "$status" != 200 ] || ct=$(jget 'd["ciphertext"]')
}
decrypts() { # PORT CT -> true when it gives PT64 back
    call "$1" demo-broker KeyService/Decrypt "$(printf '{"ciphertext":"%s"}' "$2")"
    [ "$status" = 200 ] && [ "$(jget 'd["plaintext"]')" = "$PT64" ]
}

# ---- one node on PostgreSQL ----------------------------------------------------------
e2e_start "$E2E_DIR/kmsd-a.json"
call "$PORT_A" demo-admin KeyService/CreateKey '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}'
kid=none
if [ "$status" = 200 ]; then kid=$(jget 'd["key"]["key_id"]'); pass "CreateKey on PostgreSQL"; else flunk "CreateKey on PostgreSQL ($status)"; fi
encrypt "$PORT_A" "$kid"
ct1=$ct
call "$PORT_A" demo-admin KeyService/RotateKey "$(printf '{"key_id":"%s"}' "$kid")"
[ "$status" = 200 ] && pass "RotateKey" || flunk "RotateKey ($status)"
encrypt "$PORT_A" "$kid"
ct2=$ct
if [ -n "$ct1" ] && [ -n "$ct2" ] && decrypts "$PORT_A" "$ct1" && decrypts "$PORT_A" "$ct2"; then
    pass "Encrypt before and after the rotation, both decrypt"
else
    flunk "Encrypt/Decrypt across a rotation"
fi
rows=$("$pgbin/psql" -X -qAt -d custos_e2e_store -c "SELECT count(*) FROM key_versions WHERE key_id = '$kid' AND state = 1")
[ "$rows" = 2 ] && pass "the key's two versions are rows in PostgreSQL" || flunk "versions in PostgreSQL: $rows"
[ ! -e "$E2E_DIR/kmsd.db" ] && pass "no SQLite file is made" || flunk "a SQLite file was made"
e2e_stop
e2e_start "$E2E_DIR/kmsd-a.json"
if decrypts "$PORT_A" "$ct1" && decrypts "$PORT_A" "$ct2"; then
    pass "after a restart both versions still decrypt"
else
    flunk "decrypt after restart"
fi

# ---- a second node on the same store and tokens ---------------------------------------
: >>"$E2E_DIR/kmsd-b.log"
"$KMSD" --config "$E2E_DIR/kmsd-b.json" >>"$E2E_DIR/kmsd-b.log" 2>&1 &
PID_B=$!
i=0
while ! grep -q '"ready' "$E2E_DIR/kmsd-b.log"; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 "$PID_B" 2>/dev/null; then
        cat "$E2E_DIR/kmsd-b.log" >&2
        flunk "node B did not start"
        exit 1
    fi
    sleep 0.1
done
if decrypts "$PORT_B" "$ct1" && decrypts "$PORT_B" "$ct2"; then
    pass "node B decrypts both versions of a key created and rotated through node A"
else
    flunk "node B decrypts A's ciphertexts"
fi
encrypt "$PORT_B" "$kid"
if [ -n "$ct" ] && decrypts "$PORT_A" "$ct"; then
    pass "node A decrypts what node B encrypted"
else
    flunk "A decrypts B's ciphertext"
fi
call "$PORT_B" demo-admin KeyService/CreateKey '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}'
kid_b=none
[ "$status" != 200 ] || kid_b=$(jget 'd["key"]["key_id"]')
encrypt "$PORT_A" "$kid_b"
ct_b=$ct
if [ -n "$ct" ] && decrypts "$PORT_B" "$ct"; then
    pass "a key created through node B is usable through node A at once"
else
    flunk "B's key through A ($status)"
fi
call "$PORT_A" demo-admin KeyService/DisableKey "$(printf '{"key_id":"%s"}' "$kid")"
[ "$status" = 200 ] || flunk "DisableKey through A ($status)"
# B's cached entry ages out within the key cache's bound (1 s); poll 10 s.
i=0
while :; do
    encrypt "$PORT_B" "$kid"
    [ "$status" = 200 ] || break
    i=$((i + 1))
    [ $i -lt 100 ] || break
    sleep 0.1
done
if [ "$status" = 412 ] || [ "$status" = 400 ]; then
    pass "a key disabled through node A is refused by node B ($status after $i retries)"
else
    flunk "disabled through A, B still answers $status"
fi

# ---- PostgreSQL stopped, then back ----------------------------------------------------
sh deploy/pg-scratch.sh stop "$PGDIR"
call "$PORT_A" demo-admin KeyService/CreateKey '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}'
if [ "$status" = 503 ] && [ "$(jget 'd["code"]')" = unavailable ]; then
    pass "PostgreSQL down: CreateKey answered 503 unavailable"
else
    flunk "CreateKey with PostgreSQL down: $status"
fi
call "$PORT_B" demo-admin KeyService/ListKeys '{"page_size":10}'
if [ "$status" = 503 ] && [ "$(jget 'd["code"]')" = unavailable ]; then
    pass "PostgreSQL down: ListKeys on node B answered 503 unavailable"
else
    flunk "ListKeys with PostgreSQL down: $status"
fi
rz=$(readyz "$PORT_A")
[ "$rz" = 503 ] && pass "PostgreSQL down: /readyz 503" || flunk "/readyz with PostgreSQL down: $rz"
if grep -q '"component":"store".*postgresql' "$E2E_DIR/kmsd.log" &&
    ! grep -q "$(cat "$PGDIR/password")" "$W/rz" "$W/body" "$E2E_DIR/kmsd.log" "$E2E_DIR/kmsd-b.log"; then
    pass "the log names PostgreSQL as the cause; no log or answer holds the database password"
else
    grep -i 'store\|postgres' "$E2E_DIR/kmsd.log" | tail -n 5 | sed 's/^/#   log: /'
    flunk "log of the outage, or password leak"
fi

sh deploy/pg-scratch.sh start "$PGDIR" >/dev/null
ok_a=
i=0
while [ $i -lt 100 ]; do
    call "$PORT_A" demo-admin KeyService/CreateKey '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}'
    [ "$status" != 200 ] || { ok_a=1; break; }
    i=$((i + 1))
    sleep 0.1
done
[ -n "$ok_a" ] && pass "PostgreSQL back: node A creates keys again by itself" || flunk "node A did not recover ($status)"
call "$PORT_B" demo-admin KeyService/ListKeys '{"page_size":100}'
if [ "$status" = 200 ] && [ "$(jget 'len(d["keys"])')" -ge 3 ]; then
    pass "PostgreSQL back: node B lists the keys of both nodes"
else
    flunk "node B after recovery: $status"
fi
rz=$(readyz "$PORT_A")
[ "$rz" = 200 ] && pass "PostgreSQL back: /readyz 200" || flunk "/readyz after recovery: $rz"
if decrypts "$PORT_B" "$ct_b"; then pass "old ciphertexts still decrypt after the outage"; else flunk "decrypt after outage"; fi

kill -TERM "$PID_B"
wait "$PID_B" && pass "node B stops cleanly" || flunk "node B exit status"
PID_B=
e2e_stop && pass "node A stops cleanly" || flunk "node A exit status"
trap - EXIT
[ "$failed" -eq 0 ]

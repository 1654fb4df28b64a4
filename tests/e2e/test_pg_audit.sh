#!/bin/sh
# One audit tree per region across two kmsd nodes, in PostgreSQL
# (docs/audit.md, "The audit log on PostgreSQL"): two nodes share the
# region logs (a throw-away PostgreSQL cluster of deploy/pg-scratch.sh) and
# one SoftHSMv2 token directory (standing in for a network HSM); each keeps
# its own SQLite metadata store, so that the audit log is shown on its own
# (the nodes sharing the store too: test_fleet_failover.sh, test_pg_nodes.sh),
# and each node encrypts with a key it created. Requests go to both;
# then three rounds: the sequencer node is killed with SIGKILL, the other
# takes over (the time is measured and printed), requests go on through it,
# the killed node restarts and follows. A node restarted with its own
# SQLite store finds the other node's CreateKey in the shared log and starts
# in safe mode (docs/operations.md: Decrypt still served, a RestoreDetected
# event recorded), as it must: its store is older than the log. At the end `kmsctl audit export --pg` straight from the database
# and the offline `kmsctl audit verify` accept the log; every acknowledged
# request is in it exactly once, and nothing else but those RestoreDetected
# events; node b's own ExportAuditLog verifies together with it.
#
# Prints "ok N - ..." per check; exits 1 if any check failed.
set -eu
. tests/e2e/lib.sh
CUSTOS_DEV_HEAD_MS=200 e2e_setup pgaudit
W="$E2E_DIR/t"
mkdir -p "$W"
K="$KMSCTL"
CRED="$E2E_DIR/credentials"
n=0
failed=0
pass() { n=$((n + 1)); echo "ok $n - $1"; }
flunk() {
    n=$((n + 1))
    echo "not ok $n - $1"
    failed=$((failed + 1))
    [ $# -lt 2 ] || sed 's/^/#   /' "$2"
}

# Our own cluster (not one another test may share): under /tmp, where the
# unprivileged server user can reach it.
PG=$(mktemp -d /tmp/custos-e2e-pgaudit.XXXXXX)
chmod 755 "$PG"
PID_A=
PID_B=
cleanup() {
    for p in $PID_A $PID_B; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $PID_A $PID_B; do wait "$p" 2>/dev/null || true; done
    sh deploy/pg-scratch.sh stop "$PG" >/dev/null 2>&1 || true
    rm -rf "$PG"
}
trap cleanup EXIT
sh deploy/pg-scratch.sh start "$PG" custos_eu custos_us >/dev/null
# pg-scratch.sh listens on $CUSTOS_PG_PORT when set (run-tests.sh sets it).
PGCONN_EU="host=$PG/socket port=${CUSTOS_PG_PORT:-5432} dbname=custos_eu user=custos"
PGCONN_US="host=$PG/socket port=${CUSTOS_PG_PORT:-5432} dbname=custos_us user=custos"

# Two node configurations from the dev one: their own port, store and
# (unused) audit directory; the same token directory; the region logs in
# their region's database (residency), sequencer poll 200 ms.
PORT_A=$(e2e_free_port)
PORT_B=$(e2e_free_port)
for node in a b; do
    port=$PORT_A
    [ $node = a ] || port=$PORT_B
    /usr/bin/python3 - "$E2E_DIR/kmsd.json" "$E2E_DIR/kmsd-$node.json" "$port" "$node" \
        "$PGCONN_EU" "$PGCONN_US" "$PG/password" <<'PYEOF'
import json, sys
src, dst, port, node, eu, us, pw = sys.argv[1:]
c = json.load(open(src))
c["listen"]["port"] = int(port)
c["store"] = f"kmsd-{node}.db"
c["audit"]["dir"] = f"audit-{node}"
# Nodes share one SoftHSMv2 token directory: one module call at a time
# per process (docs/pkcs11.md, "pkcs11.serialize_calls").
c["pkcs11"]["serialize_calls"] = True
c["audit"]["sequencer_poll_ms"] = 200
c["audit"]["postgresql"] = {
    "eu-west": {"conninfo": eu, "password": "file:" + pw},
    "us-east": {"conninfo": us, "password": "file:" + pw},
}
json.dump(c, open(dst, "w"), indent=2)
PYEOF
done

# start_node NODE: start kmsd NODE and wait until it is ready.
start_node() {
    log="$E2E_DIR/kmsd-$1.log"
    # A fresh log per start: "ready" and "sequencer" lines of this run only.
    [ ! -f "$log" ] || mv "$log" "$log.$(date +%s%N)"
    : >"$log"
    "$KMSD" --config "$E2E_DIR/kmsd-$1.json" >>"$log" 2>&1 &
    pid=$!
    i=0
    while ! grep -q '"ready' "$log"; do
        i=$((i + 1))
        if [ $i -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then
            echo "kmsd $1 did not start:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    eval "PID_$(echo "$1" | tr ab AB)=$pid"
    return 0
}
start_node a
start_node b
grep -q 'region eu-west: this node is the audit sequencer' "$E2E_DIR/kmsd-a.log" &&
    ! grep -q 'region eu-west: this node is the audit sequencer' "$E2E_DIR/kmsd-b.log" &&
    pass "node a (first up) sequences eu-west, node b does not" ||
    flunk "node a (first up) sequences eu-west, node b does not" "$E2E_DIR/kmsd-b.log"

for p in demo-admin demo-broker; do
    (umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$CRED/$p.key")" >"$W/$p.auth")
done

# call NODE WHO Service/Method JSON: every answer received is an
# acknowledged request (a refusal is audited too); its request id goes to
# $W/acked.txt. A request without an answer is not counted.
: >"$W/acked.txt"
call() {
    port=$PORT_A
    [ "$1" = a ] || port=$PORT_B
    printf '%s' "$4" >"$W/req.json"
    status=$(curl -sS -o "$W/body" -D "$W/headers" -w '%{http_code}' -X POST \
        -H @"$W/$2.auth" -H "Content-Type: application/json" --data-binary @"$W/req.json" \
        "http://127.0.0.1:$port/twirp/custos.v1.$3") || status=000
    rid=$(sed -n 's/^[Xx]-[Rr]equest-[Ii]d: *\([0-9a-f]*\).*/\1/p' "$W/headers" 2>/dev/null)
    [ -z "$rid" ] || echo "$rid $1 $3 $status" >>"$W/acked.txt"
}
key_id() {
    /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"]["key_id"])' \
        "$W/body"
}

# encrypt_n NODE KEY N: N encryptions through NODE; prints how many got 200.
encrypt_n() {
    ok=0
    i=0
    while [ $i -lt "$3" ]; do
        call "$1" demo-broker KeyService/Encrypt \
            "$(printf '{"keyId":"%s","plaintext":"%s"}' "$2" "$(printf 'pg-%s-%s' "$1" $i | base64)")"
        [ "$status" != 200 ] || ok=$((ok + 1))
        i=$((i + 1))
    done
    echo $ok
}

call a demo-admin KeyService/CreateKey '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}'
[ "$status" = 200 ] && KA=$(key_id) || { cat "$W/body"; KA=; }
call b demo-admin KeyService/CreateKey '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}'
[ "$status" = 200 ] && KB=$(key_id) || { cat "$W/body"; KB=; }
oa=$(encrypt_n a "$KA" 15)
CTA=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ciphertext"])' "$W/body")
ob=$(encrypt_n b "$KB" 15)
CTB=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ciphertext"])' "$W/body")

# decrypt_n NODE CIPHERTEXT N: N decryptions through NODE; prints how many
# got 200. (A restarted node whose own SQLite store lacks the other node's
# key starts in safe mode, docs/operations.md, which still serves Decrypt:
# with a shared PostgreSQL store it would not.)
decrypt_n() {
    ok=0
    i=0
    while [ $i -lt "$3" ]; do
        call "$1" demo-broker KeyService/Decrypt "$(printf '{"ciphertext":"%s"}' "$2")"
        [ "$status" != 200 ] || ok=$((ok + 1))
        i=$((i + 1))
    done
    echo $ok
}
[ -n "$KA" ] && [ -n "$KB" ] && [ "$oa" = 15 ] && [ "$ob" = 15 ] &&
    pass "both nodes create keys and encrypt, their events committed in PostgreSQL" ||
    flunk "both nodes create keys and encrypt (a: $oa/15, b: $ob/15)" "$W/body"

# Three rounds: kill -9 the sequencer (its lock session ends with it), the
# other node takes over (measured), requests go on through it, the killed
# node comes back and follows without taking the role back.
SEQ_LINE='region eu-west: this node is the audit sequencer'
seq_count() { grep -c "$SEQ_LINE" "$E2E_DIR/kmsd-$1.log" || true; }
victim=a
for round in 1 2 3; do
    other=b
    [ $victim = a ] || other=a
    ct=$CTB
    [ $other = a ] && ct=$CTA
    before=$(seq_count $other)
    vpid=$PID_A
    [ $victim = a ] || vpid=$PID_B
    t0=$(date +%s%3N)
    kill -KILL "$vpid"
    wait "$vpid" 2>/dev/null || true
    i=0
    while [ "$(seq_count $other)" -le "$before" ] && [ $i -lt 1000 ]; do
        i=$((i + 1))
        sleep 0.01
    done
    t1=$(date +%s%3N)
    if [ "$(seq_count $other)" -gt "$before" ]; then
        echo "# round $round: node $other became eu-west's sequencer $((t1 - t0)) ms after node $victim was killed (poll 200 ms)"
        pass "round $round: node $other takes over as sequencer after node $victim is killed"
    else
        flunk "round $round: node $other takes over after node $victim is killed" "$E2E_DIR/kmsd-$other.log"
    fi
    got=$(decrypt_n $other "$ct" 10)
    [ "$got" = 10 ] && pass "round $round: node $other goes on answering (10/10)" ||
        flunk "round $round: node $other goes on answering ($got/10)" "$W/body"
    # The killed node comes back and follows; the role stays where it is.
    start_node $victim
    sleep 0.6
    if [ "$(seq_count $victim)" = 0 ]; then
        pass "round $round: restarted node $victim follows, node $other stays the sequencer"
    else
        flunk "round $round: restarted node $victim follows" "$E2E_DIR/kmsd-$victim.log"
    fi
    got=$(decrypt_n $victim "$( [ $victim = a ] && echo "$CTA" || echo "$CTB")" 5)
    [ "$got" = 5 ] || flunk "round $round: restarted node $victim answers ($got/5)" "$W/body"
    victim=$other
done

# The auditor's side, straight from the database (no kmsd asked).
acked=$(wc -l <"$W/acked.txt")
want_eu=$(grep -c . "$W/acked.txt")
# Nothing is in flight: wait until a head covers at least every
# acknowledged request and the tree has stopped growing (a restarted node's
# RestoreDetected events come on top).
i=0
last=-1
while :; do
    rm -f "$W/eu.bin"
    "$K" audit export --pg "$PGCONN_EU" --pg-password "file:$PG/password" --region eu-west \
        --out "$W/eu.bin" >"$W/export.out" 2>&1 || true
    size=$(sed -n 's/.*head tree_size \([0-9]*\) .*/\1/p' "$W/export.out")
    [ "${size:-0}" -lt "$want_eu" ] || [ "$size" != "$last" ] || break
    last=${size:-0}
    i=$((i + 1))
    [ $i -lt 60 ] || break
    sleep 0.5
done
[ "${size:-0}" -ge "$want_eu" ] && pass "kmsctl audit export --pg: a head covers all $size events" ||
    flunk "kmsctl audit export --pg: a head covers the $want_eu acknowledged requests (got ${size:-none})" "$W/export.out"
if "$K" audit keys --pg "$PGCONN_EU" --pg-password "$PG/password" --region eu-west \
    --out-dir "$W/keys" >"$W/keys.out" 2>&1; then
    pass "kmsctl audit keys --pg writes the region's keys from the database"
else
    flunk "kmsctl audit keys --pg" "$W/keys.out"
fi
if "$K" audit verify --keys "$W/keys" "$W/eu.bin" >"$W/verify.out" 2>&1; then
    pass "kmsctl audit verify (offline, unchanged) accepts the export"
else
    flunk "kmsctl audit verify accepts the export" "$W/verify.out"
fi
# us-east's log is in its own database and holds none of these events.
"$K" audit export --pg "$PGCONN_US" --pg-password "file:$PG/password" --region us-east \
    --out "$W/us.bin" >"$W/us.out" 2>&1 || true

# kmsctl --pg refuses a password in the connection string (usage, exit 2,
# the password not echoed), and a wrong password is a transport error (3).
rc=0
"$K" audit export --pg "$PGCONN_EU password=hunter2-sentinel" --region eu-west \
    --out "$W/x.bin" >"$W/pgerr.out" 2>&1 || rc=$?
printf 'wrong-password' >"$W/wrong.pass"
chmod 600 "$W/wrong.pass"
rc2=0
"$K" audit export --pg "$PGCONN_EU" --pg-password "$W/wrong.pass" --region eu-west \
    --out "$W/x.bin" >>"$W/pgerr.out" 2>&1 || rc2=$?
rc3=0
"$K" audit keys --pg-password "$W/wrong.pass" >>"$W/pgerr.out" 2>&1 || rc3=$?
if [ $rc = 2 ] && [ $rc2 = 3 ] && [ $rc3 = 2 ] && ! grep -q hunter2 "$W/pgerr.out" && [ ! -e "$W/x.bin" ]; then
    pass "kmsctl --pg: a password in CONNINFO is refused unechoed (2), a wrong one fails (3), --pg-password needs --pg (2)"
else
    flunk "kmsctl --pg error paths (exit $rc, $rc2, $rc3)" "$W/pgerr.out"
fi

# Every acknowledged request exactly once; no other event.
"$K" audit events "$W/eu.bin" >"$W/events.jsonl" 2>"$W/events.err" || true
if /usr/bin/python3 - "$W/acked.txt" "$W/events.jsonl" 3 >"$W/count.out" 2>&1 <<'PYEOF'; then
import collections, json, sys
acked = [l.split()[0] for l in open(sys.argv[1]) if l.strip()]
evs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
rids = collections.Counter(e.get("request_id", "") for e in evs)
seqs = [int(e.get("seq", 0)) for e in evs]
assert seqs == list(range(len(evs))), "seqs are not 0..n-1"
missing = [r for r in acked if rids[r] != 1]
assert not missing, f"acknowledged requests not exactly once: {missing[:5]}"
# Events of no request: only the RestoreDetected a restarted node records
# when its own SQLite store lacks a key the other node created (at most
# one per restart).
service = [e for e in evs if not e.get("request_id")]
assert all(e.get("operation") == "RestoreDetected" for e in service), \
    f"unexpected service events: {[e.get('operation') for e in service]}"
assert len(service) <= int(sys.argv[3]), f"{len(service)} RestoreDetected events"
extra = [r for r in rids if r and r not in set(acked)]
assert not extra, f"events of no acknowledged request: {extra[:5]}"
n_req = len(evs) - len(service)
assert n_req == len(acked), f"{n_req} request events, {len(acked)} acknowledged requests"
print(f"{n_req} request events == {len(acked)} acknowledged requests, "
      f"+{len(service)} RestoreDetected")
PYEOF
    pass "events == acknowledged requests ($(cat "$W/count.out")), each exactly once"
else
    flunk "event count == acknowledged requests, each exactly once" "$W/count.out"
fi

# Through kmsd too: node b's AuditService serves the same tree. Its export
# (an audited call itself, so after the count) and the one from the
# database verify together: same entries, heads that extend each other.
CUSTOS_API_KEY_FILE="$CRED/auditor.key" "$K" --addr "http://127.0.0.1:$PORT_B" audit export \
    --region eu-west --out "$W/eu-http.bin" >"$W/http.out" 2>&1 || true
sleep 0.5
"$K" audit export --pg "$PGCONN_EU" --pg-password "file:$PG/password" --region eu-west \
    --out "$W/eu2.bin" >>"$W/http.out" 2>&1 || true
if "$K" audit verify --keys "$W/keys" "$W/eu-http.bin" "$W/eu2.bin" "$W/eu.bin" >>"$W/http.out" 2>&1; then
    pass "node b's ExportAuditLog and the exports from the database verify together"
else
    flunk "node b's ExportAuditLog and the exports from the database verify together" "$W/http.out"
fi

kill -TERM "$PID_A" "$PID_B"
rc_a=0
rc_b=0
wait "$PID_A" || rc_a=$?
wait "$PID_B" || rc_b=$?
PID_A=
PID_B=
[ $rc_a = 0 ] && [ $rc_b = 0 ] && pass "both nodes stop cleanly" ||
    flunk "both nodes stop cleanly (a $rc_a, b $rc_b)" "$E2E_DIR/kmsd-b.log"

echo "# $acked acknowledged requests"
[ $failed -eq 0 ] || exit 1

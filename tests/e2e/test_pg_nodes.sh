#!/bin/sh
# The key layer with several kmsd nodes (docs/state.md "Several nodes"):
# two nodes on one PostgreSQL store, the region audit logs in PostgreSQL,
# one SoftHSMv2 token directory (the stand-in for a network HSM), on the
# scratch cluster tests/run-tests.sh started ($CUSTOS_TEST_PG_DIR):
#   - node B started (and restarted) while node A creates, disables and
#     enables keys: B starts normally, never in SAFE MODE, destroys nothing
#     at start, and every key A acknowledged works through B;
#   - pg_nodes_race.py: the same import token, the same approval, the same
#     recovery execution sent to A and B at once (exactly one wins, nothing
#     left in the token by the loser); a key disabled, scheduled for deletion
#     and rotated through A is refused / changed on B (time printed); GCM
#     counts with both nodes encrypting;
#   - the audit log (exported from PostgreSQL, verified offline) holds one
#     successful ExecuteRecovery per recovered key, and no RestoreDetected.
# Prints "ok N - ..." per check; exits 1 if any check failed.
set -eu
. tests/e2e/lib.sh
if [ -z "${CUSTOS_TEST_PG_DIR:-}" ]; then
    echo "ok 1 - skipped: no PostgreSQL test cluster (PostgreSQL not installed)"
    exit 0
fi
PGDIR=$CUSTOS_TEST_PG_DIR
# Deletion "days" of a second, a sweep a second: keys are destroyed (for
# the recovery races) within the test.
CUSTOS_DEV_DAY_SECONDS=1 CUSTOS_DEV_MIN_DAYS=0 CUSTOS_DEV_SWEEP_S=1 CUSTOS_DEV_HEAD_MS=200 \
    e2e_setup pgnodes
W="$E2E_DIR/t"
mkdir -p "$W" "$E2E_DIR/py"
CRED="$E2E_DIR/credentials"
K="$KMSCTL"
n=0
failed=0
pass() { n=$((n + 1)); echo "ok $n - $1"; }
flunk() {
    n=$((n + 1))
    echo "not ok $n - $1"
    failed=$((failed + 1))
    [ $# -lt 2 ] || tail -n 30 "$2" | sed 's/^/#   /'
}

e2e_pg_client "$W"
for db in custos_nodes_store custos_nodes_eu custos_nodes_us; do
    "$pgbin/dropdb" --if-exists "$db" 2>/dev/null || true
    "$pgbin/createdb" "$db"
done

PORT_A=$E2E_PORT
PORT_B=$(e2e_free_port)
for node in a b; do
    port=$PORT_A
    [ $node = a ] || port=$PORT_B
    /usr/bin/python3 - "$E2E_DIR" "$node" "$port" "$PGHOST" "$PGPORT" "$PGDIR/password" <<'PY'
import json, sys
d, node, port, host, pgport, pw = sys.argv[1:7]
c = json.load(open(f"{d}/kmsd.json"))
conn = f"host={host} port={pgport} user=custos dbname="
c["listen"]["port"] = int(port)
# Nodes share one SoftHSMv2 token directory: one module call at a time
# per process (docs/pkcs11.md, "pkcs11.serialize_calls").
c["pkcs11"]["serialize_calls"] = True
c["store"] = {"backend": "postgresql", "conninfo": conn + "custos_nodes_store",
              "password": f"file:{pw}"}
c["audit"]["dir"] = f"audit-{node}"
c["audit"]["sequencer_poll_ms"] = 200
c["audit"]["postgresql"] = {
    "eu-west": {"conninfo": conn + "custos_nodes_eu", "password": f"file:{pw}"},
    "us-east": {"conninfo": conn + "custos_nodes_us", "password": f"file:{pw}"},
}
c.setdefault("health", {})["cache_ms"] = 0
# Automatic rotations every few seconds (dev mode allows a 1 s minimum).
c.setdefault("rotation", {})["min_period_s"] = 1
json.dump(c, open(f"{d}/kmsd-{node}.json", "w"), indent=2)
PY
done

PID_A=
PID_B=
LOAD_PID=
cleanup() {
    [ -z "$LOAD_PID" ] || kill "$LOAD_PID" 2>/dev/null || true
    for p in $PID_A $PID_B; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $PID_A $PID_B; do wait "$p" 2>/dev/null || true; done
    for db in custos_nodes_store custos_nodes_eu custos_nodes_us; do
        "$pgbin/dropdb" --if-exists "$db" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

# start_node NODE: start kmsd NODE (its log appended to) and wait until ready.
start_node() {
    log="$E2E_DIR/kmsd-$1.log"
    : >>"$log"
    before=$(grep -c '"ready' "$log" || true)
    "$KMSD" --config "$E2E_DIR/kmsd-$1.json" >>"$log" 2>&1 &
    pid=$!
    i=0
    while [ "$(grep -c '"ready' "$log" || true)" -le "${before:-0}" ]; do
        i=$((i + 1))
        if [ $i -gt 600 ] || ! kill -0 "$pid" 2>/dev/null; then
            echo "kmsd $1 did not start:" >&2
            tail -n 40 "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    eval "PID_$(echo "$1" | tr ab AB)=$pid"
}
stop_node() {
    eval "pid=\$PID_$(echo "$1" | tr ab AB)"
    kill -TERM "$pid" 2>/dev/null || true
    rc=0
    wait "$pid" || rc=$?
    eval "PID_$(echo "$1" | tr ab AB)="
    return $rc
}

for p in demo-admin demo-broker; do
    (umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$CRED/$p.key")" >"$W/$p.auth")
done
# call PORT WHO Service/Method JSON [OUT]: $status; reply in OUT ($W/body).
call() {
    out=${5:-$W/body}
    status=$(curl -sS --max-time 30 -o "$out" -w '%{http_code}' -X POST -H @"$W/$2.auth" \
        -H "Content-Type: application/json" --data "$4" \
        "http://127.0.0.1:$1/twirp/custos.v1.$3") || status=000
}

# ---- node B starts while node A changes keys ------------------------------------------
start_node a
# The load: on A, keys created, disabled and enabled again, until told to
# stop; every acknowledged CreateKey's id in $W/load-keys.txt.
: >"$W/load-keys.txt"
load() {
    while [ ! -e "$W/load.stop" ]; do
        call "$PORT_A" demo-admin KeyService/CreateKey \
            '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}' "$W/load.json"
        [ "$status" = 200 ] || continue
        kid=$(sed -n 's/.*"keyId": *"\([0-9a-f]*\)".*/\1/p' "$W/load.json" | head -n 1)
        [ -n "$kid" ] || kid=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"]["key_id"])' "$W/load.json" 2>/dev/null || true)
        echo "$kid" >>"$W/load-keys.txt"
        call "$PORT_A" demo-admin KeyService/DisableKey "{\"key_id\":\"$kid\"}" "$W/load.json"
        call "$PORT_A" demo-admin KeyService/EnableKey "{\"key_id\":\"$kid\"}" "$W/load.json"
    done
}
load &
LOAD_PID=$!
sleep 1
for round in 1 2 3; do
    start_node b
    sleep 0.5
    [ $round = 3 ] || stop_node b || true
done
touch "$W/load.stop"
wait "$LOAD_PID" || true
LOAD_PID=
starts=$(grep -c '"ready' "$E2E_DIR/kmsd-b.log" || true)
if ! grep -q 'SAFE MODE' "$E2E_DIR/kmsd-b.log" && [ "$starts" = 3 ]; then
    pass "node B started 3 times while node A changed keys: never in SAFE MODE"
else
    flunk "node B started while node A changed keys: never in SAFE MODE ($starts starts)" "$E2E_DIR/kmsd-b.log"
fi
rescans=$(grep -c 'scanning again' "$E2E_DIR/kmsd-b.log" || true)
echo "# node B's starts saw transient findings (scanned again) $rescans time(s)"
grep -o 'finding, to be confirmed: [^"]*' "$E2E_DIR/kmsd-b.log" | head -n 3 | sed 's/^/#   /' || true
if ! grep -q 'destroyed leftover\|removed half-created\|incomplete key object(s) without\|wrapping key .* unknown to the store: destroyed' "$E2E_DIR/kmsd-b.log"; then
    pass "node B's reconcile destroyed nothing of node A's work in progress"
else
    flunk "node B's reconcile destroyed nothing of node A's work in progress" "$E2E_DIR/kmsd-b.log"
fi
code=$(curl -s --max-time 30 -o "$W/rz" -w '%{http_code}' "http://127.0.0.1:$PORT_B/readyz" || echo 000)
[ "$code" = 200 ] && pass "node B is ready (/readyz 200)" || flunk "node B is ready (/readyz $code)" "$W/rz"
nkeys=$(grep -c . "$W/load-keys.txt" || true)
bad=0
for kid in $(cat "$W/load-keys.txt"); do
    call "$PORT_B" demo-broker KeyService/Encrypt "{\"key_id\":\"$kid\",\"plaintext\":\"eA==\"}"
    [ "$status" = 200 ] || { bad=$((bad + 1)); cp "$W/body" "$W/bad-enc.json"; }
done
[ "${nkeys:-0}" -gt 0 ] && [ $bad = 0 ] &&
    pass "every key node A created under load ($nkeys) encrypts through node B" ||
    flunk "every key node A created under load encrypts through node B ($bad of $nkeys fail)" "$W/bad-enc.json"

# ---- the races, invalidation, GCM counts ----------------------------------------------
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto proto/escrow.proto
if PYTHONPATH="$E2E_DIR/py:tests/e2e" /usr/bin/python3 tests/e2e/pg_nodes_race.py \
    "$E2E_DIR" "$PORT_A" "$PORT_B" 3 >"$W/race.out" 2>&1; then
    pass "races on two nodes: $(grep -c '^ok' "$W/race.out") checks"
else
    flunk "races on two nodes" "$W/race.out"
fi
sed 's/^/#   /' "$W/race.out"

# ---- the audit log: one successful ExecuteRecovery per recovered key ------------------
CONN_EU="host=$PGHOST port=$PGPORT user=custos dbname=custos_nodes_eu"
i=0
while :; do
    rm -f "$W/eu.bin"
    "$K" audit export --pg "$CONN_EU" --pg-password "file:$PGDIR/password" --region eu-west \
        --out "$W/eu.bin" >"$W/export.out" 2>&1 || true
    "$K" audit events "$W/eu.bin" >"$W/events.jsonl" 2>"$W/events.err" || true
    # Every recovery's events sequenced (a head covers them).
    want=$(grep -c . "$W/recovered.txt" 2>/dev/null || echo 0)
    got=$(grep -c '"ExecuteRecovery"' "$W/events.jsonl" || true)
    [ "${got:-0}" -lt $((2 * want)) ] || break
    i=$((i + 1))
    [ $i -lt 40 ] || break
    sleep 0.25
done
"$K" audit keys --pg "$CONN_EU" --pg-password "$PGDIR/password" --region eu-west \
    --out-dir "$W/keys" >"$W/keys.out" 2>&1 || true
if "$K" audit verify --keys "$W/keys" "$W/eu.bin" >"$W/verify.out" 2>&1; then
    pass "the region's log, exported from PostgreSQL, verifies offline"
else
    flunk "the region's log, exported from PostgreSQL, verifies offline" "$W/verify.out"
fi
if /usr/bin/python3 - "$W/recovered.txt" "$W/events.jsonl" >"$W/count.out" 2>&1 <<'PY'; then
import collections, json, sys
keys = [l.strip() for l in open(sys.argv[1]) if l.strip()]
evs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
assert keys, "no recovered key"
ok = collections.Counter(e.get("key_id") for e in evs
                         if e.get("operation") == "ExecuteRecovery" and e.get("outcome") == "ok")
other = collections.Counter(e.get("key_id") for e in evs
                            if e.get("operation") == "ExecuteRecovery" and e.get("outcome") != "ok")
bad = {k: ok[k] for k in keys if ok[k] != 1}
assert not bad, f"successful ExecuteRecovery events per key: {bad}"
assert all(other[k] == 1 for k in keys), f"refused ExecuteRecovery events: {dict(other)}"
detected = [e for e in evs if e.get("operation") == "RestoreDetected"]
assert not detected, f"{len(detected)} RestoreDetected events"
print(f"{len(keys)} recoveries: one ok and one refused ExecuteRecovery event each; "
      f"no RestoreDetected in {len(evs)} events")
PY
    pass "$(cat "$W/count.out")"
else
    flunk "one successful ExecuteRecovery event per recovered key" "$W/count.out"
fi

# ---- the sweeps: one node destroys each key, rotations happen once a period ----------
# Every key destroyed by a sweeper (the recovery rounds' keys, and the one
# scheduled for deletion in the invalidation phase once its window ends):
# named in exactly one node's log.
if /usr/bin/python3 - "$E2E_DIR/kmsd-a.log" "$E2E_DIR/kmsd-b.log" >"$W/destroy.out" 2>&1 <<'PY'; then
import collections, json, sys
by = collections.defaultdict(list)
for node, path in (("a", sys.argv[1]), ("b", sys.argv[2])):
    for line in open(path, errors="replace"):
        if "destroyed at the end of its waiting period" not in line:
            continue
        msg = json.loads(line)["msg"]
        by[msg.split()[1]].append(node)
assert len(by) >= 3, f"only {len(by)} keys destroyed by a sweeper"
twice = {k: v for k, v in by.items() if len(v) != 1}
assert not twice, f"keys destroyed more than once: {twice}"
print(f"{len(by)} keys destroyed by a sweeper, each by one node "
      f"({dict(collections.Counter(v[0] for v in by.values()))})")
PY
    pass "$(cat "$W/destroy.out")"
else
    flunk "each key destroyed by one node's sweeper" "$W/destroy.out"
fi
# The key pg_nodes_race.py made with a 2 s rotation period: every version
# made by one automatic rotation, at least a period after the one before
# (two nodes rotating it for one period would make two versions at once).
rk=$(cat "$W/rotating_key.txt" 2>/dev/null || echo none)
call "$PORT_B" demo-admin KeyService/DescribeKey "{\"key_id\":\"$rk\"}"
if /usr/bin/python3 - "$W/body" "$W/events.jsonl" "$rk" >"$W/rot.out" 2>&1 <<'PY'; then
import json, sys
k = json.load(open(sys.argv[1]))["key"]
evs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
vs = sorted((int(v["version"]), int(v.get("created_at", v.get("createdAt", 0)))) for v in k["versions"])
assert len(vs) >= 3, f"only {len(vs)} versions: {vs}"
assert [v for v, _ in vs] == list(range(1, len(vs) + 1)), f"versions {vs}"
gaps = [b[1] - a[1] for a, b in zip(vs, vs[1:])]
assert min(gaps) >= 2, f"versions made less than a period apart: {vs}"
rot = [e for e in evs if e.get("operation") == "RotateKey" and e.get("key_id") == sys.argv[3]
       and e.get("outcome") == "ok"]
assert all(e.get("principal") == "custos:system" for e in rot), rot
print(f"{len(vs)} versions, {gaps} s apart (period 2 s); {len(rot)} system RotateKey "
      f"events exported so far")
PY
    pass "automatic rotation with two nodes sweeping: $(cat "$W/rot.out")"
else
    flunk "automatic rotation with two nodes sweeping" "$W/rot.out"
fi

# ---- the sweeper lease changes hands --------------------------------------------------
# Node A (the sweeping node so far) stops and gives the lease back; a key
# scheduled for deletion through B is destroyed by B's sweeper.
rc_a=0
rc_b=0
stop_node a || rc_a=$?
call "$PORT_B" demo-admin KeyService/CreateKey '{"region":"eu-west","spec":"AES_256","usage":"ENCRYPT_DECRYPT"}'
hk=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"]["key_id"])' "$W/body" 2>/dev/null || echo none)
call "$PORT_B" demo-admin KeyService/ScheduleKeyDeletion "{\"key_id\":\"$hk\",\"pending_window_days\":1}"
i=0
while ! grep -q "key $hk destroyed at the end" "$E2E_DIR/kmsd-b.log" && [ $i -lt 150 ]; do
    i=$((i + 1))
    sleep 0.1
done
if grep -q "key $hk destroyed at the end" "$E2E_DIR/kmsd-b.log"; then
    pass "node A stopped: node B's sweeper takes over and destroys a key due ($((i / 10)).$((i % 10)) s)"
else
    flunk "node A stopped: node B's sweeper takes over" "$E2E_DIR/kmsd-b.log"
fi

# ---- both nodes stop cleanly ------------------------------------------------------------
stop_node b || rc_b=$?
if [ $rc_a = 0 ] && [ $rc_b = 0 ]; then
    pass "both nodes stop cleanly"
else
    bad_log=$E2E_DIR/kmsd-b.log
    [ $rc_a = 0 ] || bad_log=$E2E_DIR/kmsd-a.log
    flunk "both nodes stop cleanly (a $rc_a, b $rc_b)" "$bad_log"
fi
# ---- a store that is really behind is still found -------------------------------------
# The rescans only forgive what goes away: a store put back (here by hand:
# the disabled key ENABLED again, the audit watermark at 0, as in an old
# copy) shows the same finding every scan, and node B starts in SAFE MODE.
"$pgbin/psql" -q -d custos_nodes_store -v ON_ERROR_STOP=1 >"$W/psql.out" 2>&1 <<'SQL' || true
UPDATE keys SET state = 1 WHERE key_id = (SELECT key_id FROM keys WHERE state = 2 LIMIT 1);
UPDATE meta SET value = '0' WHERE name LIKE 'audit_mark:%';
SQL
# A fresh log for this start's counts; the earlier one is kept beside it
# (the sanitizer check below and run-tests' fatal-line printer read both).
mv "$E2E_DIR/kmsd-b.log" "$E2E_DIR/kmsd-b-earlier.log"
start_node b
if grep -q 'ready (dev mode) in SAFE MODE' "$E2E_DIR/kmsd-b.log" &&
    [ "$(grep -c 'scanning again' "$E2E_DIR/kmsd-b.log" || true)" = 2 ]; then
    pass "a store put back (a key ENABLED that the log disabled): three scans agree, SAFE MODE"
else
    flunk "a store put back: SAFE MODE after three scans" "$E2E_DIR/kmsd-b.log"
fi
stop_node b || true

if grep -q "ERROR: AddressSanitizer\|runtime error:" "$E2E_DIR/kmsd-a.log" "$E2E_DIR/kmsd-b.log" \
        "$E2E_DIR/kmsd-b-earlier.log"; then
    flunk "kmsd ran clean under the sanitizers" "$E2E_DIR/kmsd-a.log"
fi
[ $failed -eq 0 ] || exit 1

#!/bin/sh
# The fleet under load through crashes (issue 17): three kmsd nodes on the
# shared PostgreSQL store and audit log, haproxy in front, four clients
# (two on keep-alive connections, two on a new connection per request)
# sending Encrypt and now and then CreateKey through the balancer, every
# answer recorded (fleet_load.py). Three rounds, under that load: kill -9 a
# node that is not the sequencer and start it again; then kill -9 eu-west's
# audit sequencer (the node whose log says it took the role), time until
# another node's log says it took it, and start the killed node again.
# Asserts, afterwards:
#   - another node took the sequencer role after every kill;
#   - every acknowledged operation (HTTP 200) is audited exactly once in the
#     region's log read straight from PostgreSQL (kmsctl audit export --pg),
#     no request id twice, and served: every CreateKey's key is described,
#     every Encrypt's ciphertext decrypts (fleet_check.py);
#   - both regions' trees verify offline (kmsctl audit verify), and an
#     export through a node's ExportAuditLog verifies together with them;
#   - no two signed heads of one tree size ever differed (custos_audit_heads
#     read after every round, compared);
#   - every node's log is free of sanitizer reports.
# Prints the failover figures: time to a new sequencer, answers other than
# 200 around each kill.
set -eu
. tests/e2e/fleet_lib.sh
fleet_setup failover 3
W=$FLEET_DIR/t
fleet_start
mkdir -p "$W"
cred=$FLEET_DIR/credentials
key=$(fleet_create_key eu-west)
us_key=$(fleet_create_key us-east)
t "keys created through the balancer in both regions" [ -n "$key" ] && [ -n "$us_key" ]

heads() { # append eu-west's signed heads (tree size, head) as PostgreSQL holds them
    fleet_psql custos_eu_west "SELECT tree_size || ' ' || encode(head, 'hex') FROM custos_audit_heads
        WHERE region = 'eu-west' ORDER BY tree_size" >>"$W/heads.txt"
}

fleet_load_start "$key" "$W/load.jsonl"
fleet_load_for 100

: >"$W/rounds.txt"
round=1
while [ $round -le 3 ]; do
    seq=$(fleet_sequencer eu-west)
    if [ -z "$seq" ]; then
        t "round $round: a node is eu-west's sequencer" false
        break
    fi
    # A node that is not the sequencer: a crash that costs only the
    # requests in flight on it.
    victim=$((seq % 3 + 1))
    fleet_kill9 $victim
    fleet_wait_status $victim DOWN
    fleet_load_for 40
    fleet_node_start $victim >/dev/null
    fleet_wait_status $victim UP
    fleet_load_for 40
    # The sequencer.
    seq=$(fleet_sequencer eu-west)
    for k in 1 2 3; do fleet_seq_lines $k eu-west >"$W/seq_lines.$k"; done
    took() { # a node other than $seq took the role since the kill
        for k in 1 2 3; do
            [ "$k" != "$seq" ] || continue
            [ "$(fleet_seq_lines $k eu-west)" -gt "$(cat "$W/seq_lines.$k")" ] && { echo $k >"$W/new_seq"; return 0; }
        done
        return 1
    }
    t0=$(date +%s%3N)
    kill -KILL "$(cat "$FLEET_DIR/node$seq/kmsd.pid")"
    if fleet_wait "another node to take eu-west's sequencer role" took; then
        t1=$(date +%s%3N)
        t "round $round: node $(cat "$W/new_seq") became eu-west's sequencer after kill -9 of node $seq" true
    else
        t1=$(date +%s%3N)
        t "round $round: another node became eu-west's sequencer after kill -9 of node $seq" false
    fi
    fleet_wait_status "$seq" DOWN
    fleet_load_for 40
    fleet_node_start "$seq" >/dev/null
    fleet_wait_status "$seq" UP
    t2=$(date +%s%3N)
    echo "$round $victim $seq $t0 $t1 $t2" >>"$W/rounds.txt"
    heads
    round=$((round + 1))
done
fleet_load_for 40
fleet_load_stop

# The failover figures, from the clients' own records.
/usr/bin/python3 - "$W/rounds.txt" "$W/load.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
for l in open(sys.argv[1]):
    rnd, victim, seq, t0, t1, t2 = map(int, l.split())
    win = [r for r in recs if t0 - 1000 <= r["t"] <= t2]
    nok = [r for r in win if r["status"] != 200]
    print(f"# round {rnd}: kill -9 of sequencer node {seq}: another node sequencing "
          f"{t1 - t0} ms later (poll 200 ms); node {seq} back in rotation {(t2 - t0) / 1000:.1f} s later; "
          f"from 1 s before the kill until then {len(win)} answers, {len(nok)} not 200 "
          f"({', '.join(sorted(set(str(r['status']) + ' ' + r['code'] for r in nok))) or 'none'})")
bad = [r for r in recs if r["status"] != 200]
print(f"# whole run: {len(recs)} answers, {len(recs) - len(bad)} acknowledged, {len(bad)} not 200")
PY

# Every event sequenced and under a signed head before the export.
sequenced() { # REGION DB: no event waits for the sequencer, and a head covers them all
    n_ev=$(fleet_psql "$2" "SELECT count(*) FROM custos_audit_events WHERE region = '$1'")
    n_un=$(fleet_psql "$2" "SELECT count(*) FROM custos_audit_events WHERE region = '$1' AND seq IS NULL")
    n_hd=$(fleet_psql "$2" "SELECT coalesce(max(tree_size), 0) FROM custos_audit_heads WHERE region = '$1'")
    [ "$n_un" = 0 ] && [ "$n_hd" = "$n_ev" ]
}
t "eu-west: every event sequenced under a signed head" fleet_wait "eu-west sequenced" sequenced eu-west custos_eu_west
t "us-east: every event sequenced under a signed head" fleet_wait "us-east sequenced" sequenced us-east custos_us_east
heads

export_verify() { # REGION: export from PostgreSQL, keys, offline verify
    "$KMSCTL" audit export --pg "$(fleet_conninfo "$1")" --pg-password "file:$FLEET_DIR/pg/password" \
        --region "$1" --out "$W/$1.bin" >"$W/$1.export" 2>&1 &&
        "$KMSCTL" audit keys --pg "$(fleet_conninfo "$1")" --pg-password "file:$FLEET_DIR/pg/password" \
            --region "$1" --out-dir "$W/keys-$1" >>"$W/$1.export" 2>&1 &&
        "$KMSCTL" audit verify --keys "$W/keys-$1" "$W/$1.bin" >>"$W/$1.export" 2>&1 ||
        { sed 's/^/#   /' "$W/$1.export"; return 1; }
}
t "eu-west: kmsctl audit export --pg, then kmsctl audit verify offline accepts the tree" export_verify eu-west
t "us-east: kmsctl audit export --pg, then kmsctl audit verify offline accepts the tree" export_verify us-east

"$KMSCTL" audit events "$W/eu-west.bin" >"$W/events.jsonl" 2>"$W/events.err" || true
if /usr/bin/python3 tests/e2e/fleet_check.py "$FLEET_ADDR" "$cred/demo-broker.key" "$cred/demo-admin.key" \
    "$W/events.jsonl" "$W/load.jsonl" >"$W/check.out" 2>&1; then
    t "every acknowledged operation audited exactly once and served afterwards: $(head -n 1 "$W/check.out")" true
else
    sed 's/^/#   /' "$W/check.out"
    t "every acknowledged operation audited exactly once and served afterwards" false
fi

one_head_per_size() { # no tree size with two different heads across the snapshots
    [ -s "$W/heads.txt" ] && [ "$(sort -u "$W/heads.txt" | awk '{ print $1 }' | uniq -d | wc -l)" -eq 0 ]
}
t "no two signed heads of one tree size differ ($(sort -u "$W/heads.txt" | wc -l) heads over $(grep -c . "$W/rounds.txt") rounds)" \
    one_head_per_size
through_node() { # node 2's ExportAuditLog verifies together with the database's export
    CUSTOS_ADDR=$(fleet_node_addr 2) CUSTOS_API_KEY_FILE="$cred/auditor.key" "$KMSCTL" audit export \
        --region eu-west --out "$W/eu-http.bin" >"$W/http.out" 2>&1 &&
        "$KMSCTL" audit verify --keys "$W/keys-eu-west" "$W/eu-west.bin" "$W/eu-http.bin" >>"$W/http.out" 2>&1 ||
        { sed 's/^/#   /' "$W/http.out"; return 1; }
}
t "node2's ExportAuditLog and the export from PostgreSQL verify together" through_node

t "fleet.sh stop leaves no process" sh -c 'sh deploy/fleet.sh stop "$1" >/dev/null' _ "$FLEET_DIR"
t "no sanitizer report in any node's log" \
    sh -c '! grep -l "AddressSanitizer\|LeakSanitizer\|runtime error:" "$1"/node*/kmsd.log' _ "$FLEET_DIR"
exit $fail

#!/bin/sh
# The local fleet (deploy/fleet.sh, docs/fleet.md): PostgreSQL, three kmsd
# nodes on one shared SoftHSMv2 token directory, haproxy in front with
# /readyz health checks. Asserts, with the real haproxy, curl and kmsctl:
#   - a key created through the balancer, and one created through node1
#     alone, are used through the other nodes at once (one shared store);
#   - the object check of every node counts a live key version without its
#     HSM object, and never a CREATING one (a create in flight on another
#     node, or one that failed and left its row): /readyz stays 200 for it;
#   - the balancer spreads requests over the three nodes (each node's
#     /metrics counts its share; the shares add up);
#   - a ciphertext made through the balancer decrypts through every node
#     (one HSM behind all of them);
#   - kill -9 of one node: haproxy takes it out of rotation and requests
#     keep succeeding; at most the one request in flight on the killed node
#     fails (a single sequential client), none once haproxy saw it down;
#   - the node started again comes back into rotation and serves;
#   - fleet.sh stop leaves no process behind.
set -eu
. tests/e2e/fleet_lib.sh
fleet_setup test 3
# Each node's sweeper checks the token's objects against the store every 2 s.
CUSTOS_FLEET_SWEEP_S=2
export CUSTOS_FLEET_SWEEP_S

fleet_start
t "fleet.sh start: PostgreSQL, three nodes and haproxy; haproxy sees 3 nodes UP" fleet_n_up 3
t "fleet.sh status: every part runs" sh -c 'sh deploy/fleet.sh status "$1" >"$1/status.out"' _ "$FLEET_DIR"
refused() { # expected text, then fleet.sh's arguments: exits non-zero saying it
    rf_want=$1
    shift
    rf_out=$(BUILD="$BUILD_DIR" sh deploy/fleet.sh "$@" 2>&1) && return 1
    echo "$rf_out" | grep -qF -- "$rf_want" || { echo "# fleet.sh said: $rf_out"; return 1; }
}
t "a second start of a running fleet is refused, nothing started twice" \
    refused "already runs" start "$FLEET_DIR"
t "node-start of a node that runs is refused" refused "already runs" node-start "$FLEET_DIR" 1
t "node-start of a node the fleet does not have is refused" refused "no node 7" node-start "$FLEET_DIR" 7
t "the fleet still runs, 3 nodes UP" fleet_n_up 3

admin="$FLEET_DIR/credentials/demo-admin.key"
broker="$FLEET_DIR/credentials/demo-broker.key"
key=$(fleet_create_key eu-west)
t "CreateKey through the balancer, all three nodes up" [ -n "$key" ]

# ---- a key made through node A is used through node B at once -----------------
across() { # a key created through node1 alone: Encrypt through node2 right after, Decrypt through node3
    ka=$(CUSTOS_ADDR=$(fleet_node_addr 1) CUSTOS_API_KEY_FILE="$admin" "$KMSCTL" key create --region eu-west -q) || return 1
    echo "across nodes" | CUSTOS_ADDR=$(fleet_node_addr 2) CUSTOS_API_KEY_FILE="$broker" \
        "$KMSCTL" encrypt --key-id "$ka" >"$FLEET_DIR/ct.across" || return 1
    out=$(CUSTOS_ADDR=$(fleet_node_addr 3) CUSTOS_API_KEY_FILE="$broker" \
        "$KMSCTL" decrypt --in "$FLEET_DIR/ct.across") && [ "$out" = "across nodes" ]
}
t "a key created through node1 encrypts through node2 at once and decrypts through node3" across

# ---- the object check: live versions without an object, never CREATING ones ----
# Two rows written into the shared store as kmsd would: key A ENABLED with a
# version whose object no token holds (an object lost: it must be reported),
# key B CREATING with the same kind of version (a create in flight on some
# node before C_GenerateKey returned, or one whose create failed while
# PostgreSQL went away and whose row could not be discarded yet).
fake_a=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
fake_b=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
fake_row() { # KEY_ID STATE CURRENT: a key row like $key's and its version 1
    fleet_psql custos_eu_west "INSERT INTO keys (key_id, tenant, region, token, spec, usage, origin, state,
        description, created_at, deletion_at, current_version, last_version, escrow_required)
        SELECT '$1', tenant, region, token, spec, usage, origin, $2, '', extract(epoch from now())::bigint,
        0, $3, 1, 0 FROM keys WHERE key_id = '$key';
        INSERT INTO key_versions (key_id, version, hsm_id, state, created_at)
        VALUES ('$1', 1, decode('$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')', 'hex'), $2,
        extract(epoch from now())::bigint);"
}
fake_rows() { fake_row "$fake_a" 1 1 && fake_row "$fake_b" 0 0; }
t "a lost object (ENABLED row) and a create in flight (CREATING row) written into the store" fake_rows
readyz_all() { # TEXT: every node's /readyz body contains TEXT
    for k in 1 2 3; do
        curl -s -m 2 "$(fleet_node_addr $k)/readyz" | grep -qF -- "$1" || return 1
    done
}
counted_one() { readyz_all "region eu-west: 1 live key version(s) have no object"; }
if fleet_wait "every node's object check to report the lost object" counted_one; then
    t "every node reports exactly one version without its object: the lost one, not the CREATING one" true
else
    for k in 1 2 3; do echo "# node$k /readyz: $(curl -s -m 2 "$(fleet_node_addr $k)/readyz" | tr '\n' ' ')"; done
    t "every node reports exactly one version without its object: the lost one, not the CREATING one" false
fi
fleet_psql custos_eu_west "DELETE FROM keys WHERE key_id = '$fake_a'"
ready_all() { readyz_all ready && ! readyz_all "not ready"; }
t "the lost row removed (the CREATING one still there): every node ready again" \
    fleet_wait "every node ready with a CREATING row in the store" ready_all
t "haproxy sees the three nodes UP again" fleet_wait_up 3
fleet_psql custos_eu_west "DELETE FROM keys WHERE key_id = '$fake_b'"

# ---- the balancer spreads requests --------------------------------------------
enc() { # one Encrypt through the balancer with kmsctl (a new connection each)
    echo "hello fleet $1" | CUSTOS_ADDR="$FLEET_ADDR" CUSTOS_API_KEY_FILE="$broker" \
        "$KMSCTL" encrypt --key-id "$key" --context conv=42 >"$FLEET_DIR/ct.$1"
}
b1=$(fleet_requests 1 Encrypt)
b2=$(fleet_requests 2 Encrypt)
b3=$(fleet_requests 3 Encrypt)
sent=30
bad=0
j=0
while [ $j -lt $sent ]; do
    enc $j || bad=$((bad + 1))
    j=$((j + 1))
done
d1=$(($(fleet_requests 1 Encrypt) - b1))
d2=$(($(fleet_requests 2 Encrypt) - b2))
d3=$(($(fleet_requests 3 Encrypt) - b3))
echo "# $sent Encrypts through haproxy: node1 $d1, node2 $d2, node3 $d3, failed $bad"
t "every Encrypt through the balancer succeeded" [ $bad -eq 0 ]
t "each of the three nodes served some (node1 $d1, node2 $d2, node3 $d3)" \
    [ "$d1" -gt 0 ] && [ "$d2" -gt 0 ] && [ "$d3" -gt 0 ]
t "the nodes' counts add up to the requests sent ($((d1 + d2 + d3)) = $sent)" [ $((d1 + d2 + d3)) -eq $sent ]

dec_on() { # node: the first ciphertext decrypts through that node alone
    out=$(CUSTOS_ADDR=$(fleet_node_addr "$1") CUSTOS_API_KEY_FILE="$broker" \
        "$KMSCTL" decrypt --in "$FLEET_DIR/ct.0" --context conv=42) && [ "$out" = "hello fleet 0" ]
}
for k in 1 2 3; do
    t "a ciphertext made through the balancer decrypts through node$k (one shared HSM)" dec_on $k
done
printf 'Authorization: Bearer %s\n' "$(cat "$admin")" >"$FLEET_DIR/admin.auth"
listed() {
    echo '{}' | curl -sS -m 10 -H @"$FLEET_DIR/admin.auth" -H 'Content-Type: application/json' \
        --data-binary @- "$FLEET_ADDR/twirp/custos.v1.KeyService/ListKeys" | grep -q "\"$key\""
}
t "ListKeys through the balancer with curl (JSON) names the key" listed

# ---- kill -9 one node under a steady client ------------------------------------
printf 'Authorization: Bearer %s\n' "$(cat "$broker")" >"$FLEET_DIR/broker.auth"
printf '{"key_id":"%s","plaintext":"%s","encryption_context":{"conv":"7"}}' \
    "$key" "$(printf 'steady' | base64)" >"$FLEET_DIR/enc.json"
load=$FLEET_DIR/load.txt
: >"$load"
rm -f "$FLEET_DIR/load.stop"
# One sequential client, a new connection per request (curl): one status
# code per line, 000 when the transfer failed.
(
    while [ ! -f "$FLEET_DIR/load.stop" ]; do
        code=$(curl -s -o /dev/null -m 10 -w '%{http_code}' -H @"$FLEET_DIR/broker.auth" \
            -H 'Content-Type: application/json' --data-binary @"$FLEET_DIR/enc.json" \
            "$FLEET_ADDR/twirp/custos.v1.KeyService/Encrypt" || true)
        echo "${code:-000}" >>"$load"
    done
) &
loader=$!
lines() { wc -l <"$load"; }
at_least() { [ "$(lines)" -ge "$1" ]; }
fleet_wait "the client's first requests" at_least 10
c1=$(fleet_requests 1 Encrypt)
c3=$(fleet_requests 3 Encrypt)
killed_at=$(lines)
fleet_kill9 2
fleet_wait_status 2 DOWN
down_at=$(lines)
fleet_wait "20 requests after haproxy saw node2 down" at_least $((down_at + 20))
touch "$FLEET_DIR/load.stop"
wait "$loader"
total=$(lines)
failed=$(grep -cv '^200$' "$load" || true)
failed_after=$(tail -n +$((down_at + 1)) "$load" | grep -cv '^200$' || true)
echo "# kill -9 node2 after request $killed_at; haproxy saw it DOWN after request $down_at;" \
    "$total requests, $failed failed ($failed_after after DOWN); codes: $(sort "$load" | uniq -c | tr -s ' \n' ' ')"
# haproxy's own count: connection retries and redispatches of the backend.
echo "# haproxy: $(sh deploy/fleet.sh haproxy "$FLEET_DIR" "show stat" |
    awk -F, '$1 == "kmsd" && $2 == "BACKEND" { print $16 " retries, " $17 " redispatches" }')"
t "haproxy took the killed node out of rotation" fleet_is 2 DOWN
t "at most the one request in flight on the killed node failed ($failed of $total)" [ "$failed" -le 1 ]
t "no request failed once haproxy saw node2 down ($failed_after)" [ "$failed_after" -eq 0 ]
status_down() { # fleet.sh status exits 1 and names node2 not running
    out=$(sh deploy/fleet.sh status "$FLEET_DIR") && return 1
    echo "$out" | grep -qx "node2  not running"
}
t "fleet.sh status says node2 is not running (and exits 1)" status_down
g1=$(($(fleet_requests 1 Encrypt) - c1))
g3=$(($(fleet_requests 3 Encrypt) - c3))
t "nodes 1 and 3 served the client meanwhile (node1 +$g1, node3 +$g3)" [ "$g1" -gt 0 ] && [ "$g3" -gt 0 ]

# ---- the node comes back ---------------------------------------------------------
fleet_node_start 2 >/dev/null
fleet_wait_status 2 UP
t "node2 started again passes haproxy's /readyz check: 3 nodes UP" fleet_n_up 3
bad=0
j=100
while [ $j -lt 115 ]; do
    enc $j || bad=$((bad + 1))
    j=$((j + 1))
done
r2=$(fleet_requests 2 Encrypt)
t "the restarted node2 serves its share again ($r2 of 15), no failure ($bad)" [ "$r2" -gt 0 ] && [ $bad -eq 0 ]
t "a ciphertext made before the crash decrypts through the restarted node2" dec_on 2

# ---- stop: nothing left --------------------------------------------------------
pids="$(cat "$FLEET_DIR"/node*/kmsd.pid "$FLEET_DIR/haproxy.pid") $(head -n 1 "$FLEET_DIR/pg/data/postmaster.pid")"
t "fleet.sh stop stops haproxy, the nodes and PostgreSQL" fleet_stop
left=""
for p in $pids; do fleet_dead "$p" || left="$left $p"; done
t "no process of the fleet is left (pids$left)" [ -z "$left" ]
t "no PostgreSQL postmaster.pid, no node pid file left" \
    sh -c '! ls "$1"/pg/data/postmaster.pid "$1"/node*/kmsd.pid "$1"/haproxy.pid 2>/dev/null | grep -q .' _ "$FLEET_DIR"
# Each node's last run ended with kmsd's own "stopped" line (a clean exit
# after SIGTERM), and no node ever reported a sanitizer error (ASan build).
clean_exit() { tail -n 3 "$FLEET_DIR/node$1/kmsd.log" | grep -q '"msg":"stopped"'; }
for k in 1 2 3; do t "node$k stopped cleanly on SIGTERM (its log ends with \"stopped\")" clean_exit $k; done
# The nodes share one SoftHSMv2 token directory, which that module cannot
# take from several threads while another process writes it: fleet.sh
# turns pkcs11.serialize_calls on, and each node says so when it starts.
serialized() { grep -q '"msg":"pkcs11.serialize_calls: one call into the module at a time"' \
                   "$FLEET_DIR/node$1/kmsd.log"; }
for k in 1 2 3; do t "node$k runs with pkcs11.serialize_calls (its log says so)" serialized $k; done
t "no sanitizer report in any node's log" \
    sh -c '! grep -l "AddressSanitizer\|LeakSanitizer\|runtime error:" "$1"/node*/kmsd.log' _ "$FLEET_DIR"
exit $fail

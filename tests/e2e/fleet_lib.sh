# shellcheck shell=sh
# Shared by the fleet end-to-end tests and tests/bench/bench_fleet.sh: a
# fleet of our own (deploy/fleet.sh: PostgreSQL, N kmsd nodes on one shared
# SoftHSMv2 token directory, haproxy in front) in a temp directory.
#
#   . tests/e2e/fleet_lib.sh
#   fleet_setup NAME [NODES]   temp dir $FLEET_DIR, free ports; $FLEET_ADDR is
#                              the balancer; removes it all on exit (trap)
#   fleet_start                deploy/fleet.sh start, then haproxy sees NODES up
#   fleet_stop                 deploy/fleet.sh stop (fails if a process is left)
#   fleet_view                 haproxy's view: "nodeK STATUS" lines
#   fleet_wait_up N            until haproxy sees exactly N nodes UP
#   fleet_wait_status K S      until haproxy reports nodeK with status S (DOWN, UP)
#   fleet_kill9 K              kill -9 node K (a crash)
#   fleet_node_start K, fleet_node_stop K   deploy/fleet.sh node-start / node-stop
#   fleet_node_addr K          http://127.0.0.1:<node K's port>
#   fleet_requests K OP [OUTCOME]   node K's custos_requests_total{op,outcome}
#   fleet_create_key REGION    one key made through the balancer; prints its id
#   fleet_psql DB SQL          a query on the fleet's PostgreSQL (role custos)
#   fleet_conninfo REGION      the region database's conninfo (kmsctl --pg)
#   fleet_sequencer REGION     the node that is the region's audit sequencer now
#   t DESCRIPTION CMD...       one TAP check (tests/e2e/lib.sh)
#   fleet_load_start KEY OUT   fleet_load.py through the balancer (keep-alive and
#                              fresh connections, Encrypt with KEY, now and then
#                              CreateKey), one JSON line per answer in OUT; stopped
#                              by fleet_load_stop or, at the latest, the exit trap
#   fleet_load_for N           until N more answers are in OUT (the load goes on)
#
# Every wait is bounded (FLEET_WAIT_S, 60 s) and fails with haproxy's view.

. tests/e2e/lib.sh
i=0
fail=0
FLEET_WAIT_S=${FLEET_WAIT_S:-60}
FLEET_DIR=

fleet_free_base() { # N: a port P with P..P+N all free on 127.0.0.1
    /usr/bin/python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(200):
    base = random.randrange(20000, 60000 - n)
    socks = []
    try:
        for p in range(base, base + n + 1):
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    sys.exit(0)
sys.exit("no free port range")
PY
}

fleet_cleanup() {
    fleet_load_stop now
    if [ -n "$FLEET_DIR" ] && [ -d "$FLEET_DIR" ]; then
        [ ! -f "$FLEET_DIR/fleet.env" ] || sh deploy/fleet.sh stop "$FLEET_DIR" >/dev/null 2>&1 || true
        rm -rf "$FLEET_DIR"
    fi
}

fleet_setup() {
    FLEET_NODES=${2:-3}
    # Not under $CUSTOS_TEST_WORK: that is 0700, and PostgreSQL runs as
    # custos-pg when the suite runs as root; it must reach its directory.
    FLEET_DIR=$(mktemp -d "/tmp/custos-fleet-$1.XXXXXX")
    chmod 711 "$FLEET_DIR"
    trap fleet_cleanup EXIT
    trap 'exit 1' INT TERM
    FLEET_PORT=$(fleet_free_base "$FLEET_NODES")
    FLEET_ADDR="http://127.0.0.1:$FLEET_PORT"
    export FLEET_DIR FLEET_PORT FLEET_ADDR
}

fleet_start() {
    BUILD="$BUILD_DIR" CUSTOS_FLEET_NODES="$FLEET_NODES" CUSTOS_FLEET_PORT="$FLEET_PORT" \
        sh deploy/fleet.sh start "$FLEET_DIR" >"$FLEET_DIR/start.out" 2>&1 || {
        cat "$FLEET_DIR/start.out" >&2
        return 1
    }
    fleet_wait_up "$FLEET_NODES"
}

fleet_stop() {
    sh deploy/fleet.sh stop "$FLEET_DIR"
}

fleet_view() {
    sh deploy/fleet.sh haproxy "$FLEET_DIR" "show stat" |
        awk -F, '$1 == "kmsd" && $2 ~ /^node/ { print $2, $18 }'
}

fleet_wait() { # description, then a command that must come true
    fw_what=$1
    shift
    fw_i=0
    until "$@"; do
        fw_i=$((fw_i + 1))
        if [ $fw_i -gt $((FLEET_WAIT_S * 10)) ]; then
            echo "# fleet: waited ${FLEET_WAIT_S}s for $fw_what; haproxy sees:" >&2
            fleet_view | sed 's/^/#   /' >&2
            return 1
        fi
        sleep 0.1
    done
}

fleet_n_up() { [ "$(fleet_view | awk '$2 == "UP"' | wc -l)" -eq "$1" ]; }
fleet_is() { fleet_view | grep -qx "node$1 $2"; }

fleet_wait_up() { fleet_wait "$1 node(s) UP" fleet_n_up "$1"; }
fleet_wait_status() { fleet_wait "node$1 $2" fleet_is "$1" "$2"; }

fleet_node_port() { echo $((FLEET_PORT + $1)); }
fleet_node_addr() { echo "http://127.0.0.1:$((FLEET_PORT + $1))"; }

fleet_kill9() {
    fk_pid=$(cat "$FLEET_DIR/node$1/kmsd.pid")
    kill -KILL "$fk_pid"
    # Reaped by init (deploy/fleet.sh started it); gone once /proc says so.
    fleet_wait "node$1 (pid $fk_pid) to die" fleet_dead "$fk_pid"
}
fleet_dead() { ! kill -0 "$1" 2>/dev/null || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

fleet_node_start() { # the log's size first: fleet_sequencer reads this run's lines only
    wc -c <"$FLEET_DIR/node$1/kmsd.log" >"$FLEET_DIR/node$1/log.offset"
    BUILD="$BUILD_DIR" sh deploy/fleet.sh node-start "$FLEET_DIR" "$1"
}
fleet_node_log() { # K: node K's log since its last start by fleet_node_start
    tail -c +$(($(cat "$FLEET_DIR/node$1/log.offset" 2>/dev/null || echo 0) + 1)) "$FLEET_DIR/node$1/kmsd.log"
}
fleet_node_stop() { sh deploy/fleet.sh node-stop "$FLEET_DIR" "$1"; }

# The operator's bearer key in a header file (never on a command line).
fleet_auth_file() { # PRINCIPAL: path of a header file for curl -H @file
    fa="$FLEET_DIR/$1.auth"
    [ -f "$fa" ] || printf 'Authorization: Bearer %s\n' "$(cat "$FLEET_DIR/credentials/$1.key")" >"$fa"
    echo "$fa"
}

fleet_requests() { # K OP [OUTCOME]: node K's custos_requests_total{op=OP,outcome=OUTCOME}
    curl -sS -m 10 -H @"$(fleet_auth_file operator)" "$(fleet_node_addr "$1")/metrics" |
        awk -v want="custos_requests_total{op=\"$2\",outcome=\"${3:-ok}\"}" \
            '$1 == want { n = $2 } END { print n + 0 }'
}

# fleet_create_key REGION: one AES key made through the balancer
# (demo-admin); prints its id. Every node shares the store and the token,
# so it is usable through every node at once.
fleet_create_key() {
    CUSTOS_ADDR=$FLEET_ADDR CUSTOS_API_KEY_FILE="$FLEET_DIR/credentials/demo-admin.key" \
        "$BUILD_DIR/bin/kmsctl" key create --region "$1" -q
}

# fleet_psql DB SQL: one query on the fleet's cluster as the role custos
# (its password from the 0600 file, through PGPASSFILE, never argv);
# unaligned, tuples only.
fleet_psql() {
    fp_pass="$FLEET_DIR/pgpass"
    [ -f "$fp_pass" ] || (umask 077 && printf '*:*:*:*:%s\n' "$(cat "$FLEET_DIR/pg/password")" >"$fp_pass")
    fp_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    PGPASSFILE="$fp_pass" "$fp_bin/psql" -X -qAt -v ON_ERROR_STOP=1 -h "$FLEET_DIR/pg/socket" \
        -p "$(sed -n 's/^PGPORT=//p' "$FLEET_DIR/pg/env")" -U custos -d "$1" -c "$2"
}
fleet_conninfo() { # REGION: kmsctl --pg's connection string for the region's database
    echo "host=$FLEET_DIR/pg/socket port=$(sed -n 's/^PGPORT=//p' "$FLEET_DIR/pg/env") dbname=custos_$(echo "$1" | tr - _) user=custos"
}

# fleet_sequencer REGION: the node (K) that is the region's audit sequencer
# now: alive, and the last sequencer line of its current run's log says it
# took the role (a node killed with -9 never logged losing it); empty if none.
fleet_sequencer() {
    fs_k=1
    while [ $fs_k -le "$FLEET_NODES" ]; do
        fs_pid=$(cat "$FLEET_DIR/node$fs_k/kmsd.pid" 2>/dev/null || true)
        if [ -n "$fs_pid" ] && ! fleet_dead "$fs_pid" &&
            fleet_node_log $fs_k | grep -E "region $1: (this node is|no longer) the audit sequencer" |
            tail -n 1 | grep -q "this node is the audit sequencer"; then
            echo "$fs_k"
            return 0
        fi
        fs_k=$((fs_k + 1))
    done
}
fleet_seq_lines() { # K REGION: how many times node K took the region's sequencer role
    fleet_node_log "$1" | grep -c "region $2: this node is the audit sequencer" || true
}


FLEET_LOADER=
FLEET_LOAD_OUT=
fleet_load_start() { # KEY OUT
    FLEET_LOAD_OUT=$2
    : >"$FLEET_LOAD_OUT"
    rm -f "$FLEET_DIR/load.stop"
    /usr/bin/python3 tests/e2e/fleet_load.py "$FLEET_ADDR" "$FLEET_DIR/credentials/demo-broker.key" \
        "$FLEET_DIR/credentials/demo-admin.key" "$1" "$FLEET_LOAD_OUT" "$FLEET_DIR/load.stop" \
        --keepalive 2 --fresh 2 --create-every 40 --pause-ms 30 &
    FLEET_LOADER=$!
}

fleet_load_stop() { # [now]: the clients finish their requests in flight, or (now) are killed
    [ -n "$FLEET_LOADER" ] || return 0
    touch "$FLEET_DIR/load.stop" 2>/dev/null || true
    [ "${1:-}" != now ] || kill "$FLEET_LOADER" 2>/dev/null || true
    wait "$FLEET_LOADER" 2>/dev/null || true
    FLEET_LOADER=
}

fleet_answers() { wc -l <"$FLEET_LOAD_OUT"; }
fleet_more_answers() { [ "$(fleet_answers)" -ge "$1" ]; }
fleet_load_for() { # N: until N more answers arrived
    fl_n=$(($(fleet_answers) + $1))
    fleet_wait "$1 more answers" fleet_more_answers "$fl_n"
}

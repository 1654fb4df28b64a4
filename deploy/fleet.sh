#!/bin/sh
# fleet.sh - a local Custos fleet to try the fleet mode on one machine
# (docs/fleet.md): PostgreSQL, N kmsd nodes sharing one SoftHSMv2 token
# directory (standing in for a network HSM) and Debian's haproxy in front.
#
#   sh deploy/fleet.sh start DIR         set up (first time) and start it all
#   sh deploy/fleet.sh stop DIR          stop it all; exit 1 if any process is left
#   sh deploy/fleet.sh status DIR        what runs, each node's /readyz, haproxy's view
#   sh deploy/fleet.sh node-start DIR N  start node N again (after node-stop or a crash)
#   sh deploy/fleet.sh node-stop DIR N   SIGTERM node N (it drains) and wait for it
#   sh deploy/fleet.sh haproxy DIR CMD   one command on haproxy's admin socket, e.g.
#                                        'show stat', 'set server kmsd/node2 state drain'
#
# Environment, read at the first start and kept in DIR/fleet.env:
#   BUILD               build directory (build)
#   CUSTOS_FLEET_NODES  number of kmsd nodes, 1..9 (3)
#   CUSTOS_FLEET_PORT   the balancer's port (8700); node N listens on PORT+N
#   CUSTOS_FLEET_SWEEP_S  deletion.sweep_interval_s of the nodes (kmsd's default,
#                       60, when unset): the sweeper also checks each token's
#                       objects against the store once per interval
#
# DIR holds:
#   hsm/                the one SoftHSMv2 token directory every node uses
#                       (tokens custos-eu-west, custos-us-east; PINs in hsm/pins/)
#   credentials/, policy.json   made by deploy/dev-setup.sh (random keys, 0600)
#   pg/                 the PostgreSQL cluster (deploy/pg-scratch.sh): one
#                       database per region, custos_eu_west and custos_us_east
#   nodeN/              node N: kmsd.json (generated at every start), kmsd.log, kmsd.pid
#   haproxy.cfg, haproxy.log, haproxy.pid, haproxy.sock
#
# Who runs what: kmsd runs as the invoking user, as under `make run`;
# PostgreSQL as pg-scratch.sh runs it (never root: the user custos-pg when
# started by root); haproxy binds its port and then, when started by root,
# drops to Debian's `haproxy` user. No PIN or password is ever on a command
# line: kmsd reads PIN files, PostgreSQL's password stays in pg/password.
set -eu
umask 077

usage() {
    echo "usage: $0 start|stop|status DIR | node-start|node-stop DIR N | haproxy DIR CMD" >&2
    exit 2
}
[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
REGIONS="eu-west us-east"

# ---- state: DIR/fleet.env -------------------------------------------------------

load_env() {
    [ -f "$dir/fleet.env" ] || { echo "fleet: $dir is not a fleet (no fleet.env); run: $0 start $dir" >&2; exit 1; }
    # Written by this script only: NAME=value lines, no expansion needed.
    nodes=$(sed -n 's/^nodes=//p' "$dir/fleet.env")
    port=$(sed -n 's/^port=//p' "$dir/fleet.env")
    build=$(sed -n 's/^build=//p' "$dir/fleet.env")
    sweep=$(sed -n 's/^sweep=//p' "$dir/fleet.env")
    # The PostgreSQL settings fleet_node_config hands to kmsd. The cluster
    # listens on its Unix socket only; the port number just names the
    # socket file, and is the balancer's port unless the cluster says
    # otherwise (one fleet's cluster never collides with another's).
    pg_host="$dir/pg/socket"
    pg_port=$port
    # shellcheck disable=SC2034
    pg_user=custos
    if [ -f "$dir/pg/env" ]; then
        # shellcheck disable=SC2034
        pg_port=$(sed -n 's/^PGPORT=//p' "$dir/pg/env")
        # shellcheck disable=SC2034
        pg_user=$(sed -n 's/^PGUSER=//p' "$dir/pg/env")
    fi
    # shellcheck disable=SC2034
    pg_password="$dir/pg/password"
}

# The region's database in the fleet's PostgreSQL cluster.
fleet_db() {
    echo "custos_$(echo "$1" | tr - _)"
}

# ---- node configuration --------------------------------------------------------
# Every node's kmsd.json is written by fleet_node_config, at every start;
# the PostgreSQL settings come from the two functions below, the same on
# every node: the nodes share the store and one audit log per region, and
# each reads the role's password from $pg_password (file:..., never in a
# string of kmsd.json, never on a command line).

# fleet_conninfo R: libpq keywords for region R's database on the fleet's
# cluster (its Unix socket; no password: that is the "password" source).
fleet_conninfo() {
    echo "host=$pg_host port=$pg_port dbname=$(fleet_db "$1") user=$pg_user"
}

# fleet_store_json: the metadata store, shared by every node: one database
# per region (store.regions), the same one that holds the region's audit
# log, so a region's keys and their trail stay in it (docs/fleet.md,
# "Residency").
fleet_store_json() {
    fs=""
    for r in $REGIONS; do
        [ -z "$fs" ] || fs="$fs,
"
        fs="$fs      \"$r\": { \"conninfo\": \"$(fleet_conninfo "$r")\", \"password\": \"file:$pg_password\" }"
    done
    printf '"store": { "backend": "postgresql", "regions": {\n%s\n    } }' "$fs"
}

# fleet_audit_json: the audit log, one Merkle tree per region in that
# region's database, one elected sequencer per region (docs/audit.md). The
# node's own audit directory stays empty; "dir" is still required.
fleet_audit_json() {
    fa=""
    for r in $REGIONS; do
        [ -z "$fa" ] || fa="$fa,
"
        fa="$fa      \"$r\": { \"conninfo\": \"$(fleet_conninfo "$r")\", \"password\": \"file:$pg_password\" }"
    done
    printf '"audit": { "dir": "%s", "head_every_events": 1000, "head_every_ms": 5000,\n' "$nd/audit"
    printf '    "sequencer_poll_ms": 200,\n    "postgresql": {\n%s\n    } }' "$fa"
}

fleet_node_config() {
    n=$1
    nd="$dir/node$n"
    store_json=$(fleet_store_json)
    audit_json=$(fleet_audit_json)
    deletion_json=""
    [ -z "$sweep" ] || deletion_json="
  \"deletion\": { \"sweep_interval_s\": $sweep },"
    tokens=""
    for r in $REGIONS; do
        [ -z "$tokens" ] || tokens="$tokens,
"
        tokens="$tokens      { \"region\": \"$r\", \"token\": \"custos-$r\", \"pin\": \"file:$dir/hsm/pins/$r.pin\" }"
    done
    # Behind the balancer every connection comes from 127.0.0.1, so the
    # per-address limit is off here and haproxy bounds each node (maxconn).
    # The nodes share one SoftHSMv2 token directory (the stand-in for a
    # network HSM), where SoftHSMv2 is not safe to call from several threads
    # of one process at once: serialize_calls (docs/pkcs11.md).
    cat >"$nd/kmsd.json.new" <<EOF
{
  "mode": "dev",
  "listen": { "address": "127.0.0.1", "port": $((port + n)) },
  "pkcs11": {
    "module": "/usr/lib/softhsm/libsofthsm2.so",
    "serialize_calls": true,
    "tokens": [
$tokens
    ]
  },
  "policy": "$dir/policy.json",
  $store_json,
  $audit_json,$deletion_json
  "limits": { "max_connections": 512, "max_connections_per_ip": 0, "connection_timeout_s": 30,
              "drain_timeout_s": 10 },
  "health": { "cache_ms": 500 }
}
EOF
    mv "$nd/kmsd.json.new" "$nd/kmsd.json"
}

# ---- processes ------------------------------------------------------------------

# pid_of FILE PATTERN: the pid recorded in FILE when that process is alive
# and its command line contains PATTERN (a stale pid reused by another
# process is never signalled); empty otherwise.
pid_of() {
    [ -f "$1" ] || return 0
    p=$(cat "$1")
    case "$p" in '' | *[!0-9]*) return 0 ;; esac
    if [ -r "/proc/$p/cmdline" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF -- "$2"; then
        echo "$p"
    fi
}

node_pid() { pid_of "$dir/node$1/kmsd.pid" "$dir/node$1/kmsd.json"; }
haproxy_pid() { pid_of "$dir/haproxy.pid" "$dir/haproxy.cfg"; }

http_code() { # URL: the status code, 000 when nothing answers
    curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

# gone PID: the process has exited (a zombie whose parent has not reaped
# it yet counts as gone: it holds no port, file or lock any more).
gone() {
    ! kill -0 "$1" 2>/dev/null || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# wait_gone PID SECONDS: 0 once PID is gone, 1 if it is still there.
wait_gone() {
    wg=0
    while ! gone "$1"; do
        wg=$((wg + 1))
        [ $wg -le $(($2 * 10)) ] || return 1
        sleep 0.1
    done
}

node_start() {
    n=$1
    nd="$dir/node$n"
    if [ -n "$(node_pid "$n")" ]; then
        echo "fleet: node $n already runs (pid $(node_pid "$n"))" >&2
        return 1
    fi
    mkdir -p "$nd"
    [ -f "$nd/kmsd.json" ] || fleet_node_config "$n"
    SOFTHSM2_CONF="$dir/hsm/softhsm2.conf" "$build/bin/kmsd" --config "$nd/kmsd.json" \
        </dev/null >>"$nd/kmsd.log" 2>&1 &
    echo $! >"$nd/kmsd.pid"
    # Ready when /readyz says 200. A node that exits, or that started in
    # safe mode (it would wait forever), is reported with its log.
    w=0
    while :; do
        code=$(http_code "http://127.0.0.1:$((port + n))/readyz")
        [ "$code" = 200 ] && break
        p=$(node_pid "$n")
        w=$((w + 1))
        if [ -z "$p" ] || [ $w -gt 1200 ] ||
            { [ "$code" = 503 ] && curl -s -m 2 "http://127.0.0.1:$((port + n))/readyz" | grep -q 'SAFE MODE'; }; then
            echo "fleet: node $n did not become ready (/readyz: $code); its log, $nd/kmsd.log, ends:" >&2
            tail -n 15 "$nd/kmsd.log" >&2
            [ "$code" != 503 ] || echo "fleet: in SAFE MODE: the shared token holds keys the store does not" \
                "know, or the audit log is older than the store (docs/operations.md, \"Safe mode\")" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "fleet: node $n ready on 127.0.0.1:$((port + n)) (pid $(cat "$nd/kmsd.pid"))"
}

# node_stop N: SIGTERM (kmsd drains, up to limits.drain_timeout_s), then
# wait; a node still there after 40 s is killed and reported.
node_stop() {
    p=$(node_pid "$1")
    [ -n "$p" ] || { rm -f "$dir/node$1/kmsd.pid"; return 0; }
    kill -TERM "$p" 2>/dev/null || true
    if ! wait_gone "$p" 40; then
        echo "fleet: node $1 (pid $p) did not stop within 40 s of SIGTERM; killing it" >&2
        kill -KILL "$p" 2>/dev/null || true
        wait_gone "$p" 5 || true
        return 1
    fi
    rm -f "$dir/node$1/kmsd.pid"
}

haproxy_cmd() { # one command on the admin socket; its answer on stdout
    /usr/bin/python3 - "$dir/haproxy.sock" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
sys.stdout.write(out.decode())
PY
}

# haproxy's view of the nodes: "nodeN STATUS" lines (UP, DOWN, MAINT, ...).
haproxy_view() {
    haproxy_cmd "show stat" | awk -F, '$1 == "kmsd" && $2 ~ /^node/ { print $2, $18 }'
}

haproxy_config() {
    user=""
    [ "$(id -u)" -ne 0 ] || user="    user haproxy
    group haproxy"
    {
        cat <<EOF
# Made by deploy/fleet.sh at every start (docs/fleet.md, "The load balancer"
# and "The local fleet").
global
    stats socket $dir/haproxy.sock mode 600 level admin
    maxconn 4096
$user

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 30s
    timeout check 2s
    # A connection a node refused (it is down or stopping) is tried again
    # on another node. Only connection failures: a request a node received
    # may have been acted on (CreateKey), so it is never sent twice.
    retries 2
    option redispatch 1

frontend custos
    bind 127.0.0.1:$port
    default_backend kmsd

backend kmsd
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server check inter 1s fastinter 500ms fall 2 rise 2 maxconn 64
EOF
        i=1
        while [ $i -le "$nodes" ]; do
            echo "    server node$i 127.0.0.1:$((port + i))"
            i=$((i + 1))
        done
    } >"$dir/haproxy.cfg.new"
    mv "$dir/haproxy.cfg.new" "$dir/haproxy.cfg"
}

haproxy_start() {
    haproxy_config
    haproxy -c -q -f "$dir/haproxy.cfg" || { echo "fleet: haproxy refused $dir/haproxy.cfg" >&2; return 1; }
    rm -f "$dir/haproxy.sock"
    haproxy -db -f "$dir/haproxy.cfg" </dev/null >>"$dir/haproxy.log" 2>&1 &
    echo $! >"$dir/haproxy.pid"
    # Wait until haproxy has checked every node and found it UP.
    hw=0
    while :; do
        up=$( { haproxy_view 2>/dev/null || true; } | awk '$2 == "UP"' | wc -l)
        [ "$up" -eq "$nodes" ] && break
        hw=$((hw + 1))
        if [ -z "$(haproxy_pid)" ] || [ $hw -gt 300 ]; then
            echo "fleet: haproxy did not see the $nodes nodes up; $dir/haproxy.log ends:" >&2
            tail -n 15 "$dir/haproxy.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "fleet: haproxy on 127.0.0.1:$port (pid $(cat "$dir/haproxy.pid")), $nodes node(s) up"
}

haproxy_stop() {
    p=$(haproxy_pid)
    [ -n "$p" ] || { rm -f "$dir/haproxy.pid"; return 0; }
    # SIGUSR1: soft stop (stop listening, finish the requests in flight).
    kill -USR1 "$p" 2>/dev/null || true
    if ! wait_gone "$p" 15; then
        kill -TERM "$p" 2>/dev/null || true
        wait_gone "$p" 5 || { kill -KILL "$p" 2>/dev/null || true; wait_gone "$p" 5 || true; return 1; }
    fi
    rm -f "$dir/haproxy.pid" "$dir/haproxy.sock"
}

pg_alive() {
    [ -f "$dir/pg/data/postmaster.pid" ] && ! gone "$(head -n 1 "$dir/pg/data/postmaster.pid")"
}

# ---- commands -------------------------------------------------------------------

fleet_start() {
    build=${BUILD:-build}
    build=$(cd "$build" 2>/dev/null && pwd) || { echo "fleet: build directory ${BUILD:-build} missing (run make)" >&2; exit 1; }
    if [ ! -x "$build/bin/kmsd" ] || [ ! -x "$build/bin/kmsctl" ]; then
        echo "fleet: $build/bin/kmsd not built (run make)" >&2
        exit 1
    fi
    command -v haproxy >/dev/null || { echo "fleet: haproxy not installed (deploy/install-deps.sh)" >&2; exit 1; }
    # Parents as any mkdir makes them (PostgreSQL may need to pass through);
    # the fleet's own directory closed to others but for that.
    (umask 022 && mkdir -p "$(dirname "$dir")")
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ ! -f "$dir/fleet.env" ]; then
        nodes=${CUSTOS_FLEET_NODES:-3}
        port=${CUSTOS_FLEET_PORT:-8700}
        case "$nodes" in [1-9]) ;; *) echo "fleet: CUSTOS_FLEET_NODES must be 1..9" >&2; exit 2 ;; esac
        case "$port" in '' | *[!0-9]*) echo "fleet: CUSTOS_FLEET_PORT must be a port number" >&2; exit 2 ;; esac
        if [ "$port" -lt 1024 ] || [ $((port + nodes)) -gt 65535 ]; then
            echo "fleet: CUSTOS_FLEET_PORT out of range (1024..65535, nodes above it)" >&2
            exit 2
        fi
        sweep=${CUSTOS_FLEET_SWEEP_S:-}
        case "$sweep" in '' | [1-9] | [1-9][0-9] | [1-9][0-9][0-9]) ;; *)
            echo "fleet: CUSTOS_FLEET_SWEEP_S must be 1..999 seconds" >&2; exit 2 ;; esac
        printf 'nodes=%s\nport=%s\nbuild=%s\nsweep=%s\n' "$nodes" "$port" "$build" "$sweep" >"$dir/fleet.env"
    fi
    load_env
    build=$(cd "${BUILD:-$build}" && pwd)
    i=1
    while [ $i -le "$nodes" ]; do
        [ -z "$(node_pid $i)" ] || { echo "fleet: node $i already runs; $0 status $dir, or stop" >&2; exit 1; }
        i=$((i + 1))
    done
    [ -z "$(haproxy_pid)" ] || { echo "fleet: haproxy already runs; $0 stop $dir first" >&2; exit 1; }

    # PostgreSQL runs as custos-pg when we are root: it must reach $dir/pg.
    if [ "$(id -u)" -eq 0 ]; then
        d=$dir
        while [ "$d" != / ]; do
            case "$(stat -c %A "$d")" in
            ?????????[xt]) ;;
            *) # Search only (o+x, not o+r): nothing in it becomes listable
               # or readable. Done by itself for the fleet's directory and
               # its parents inside this tree (var/ made 0700 by make run).
               case "$d/" in "$dir/" | "$(pwd)"/?*) chmod o+x "$d" ;; *)
                   echo "fleet: PostgreSQL runs as custos-pg and cannot reach $dir/pg ($d is not searchable by others): chmod o+x $d, or choose another DIR" >&2
                   exit 1 ;;
               esac ;;
            esac
            d=$(dirname "$d")
        done
    fi

    # Tokens (the shared "network HSM"), escrow keys, credentials, policy.
    BUILD="$build" KMSCTL="$build/bin/kmsctl" sh "$here/dev-setup.sh" "$dir" 0 >/dev/null
    rm -f "$dir/kmsd.json" # dev-setup's single-node configuration: the nodes have theirs
    dbs=""
    for r in $REGIONS; do dbs="$dbs $(fleet_db "$r")"; done
    # A cluster left running (a node-only restart, a stop that failed)
    # is used as it is: its databases were made by its start.
    if ! pg_alive; then
        # shellcheck disable=SC2086
        CUSTOS_PG_PORT=$pg_port sh "$here/pg-scratch.sh" start "$dir/pg" $dbs
    fi
    echo "fleet: PostgreSQL on $dir/pg/socket, databases:$dbs"
    load_env

    i=1
    while [ $i -le "$nodes" ]; do
        mkdir -p "$dir/node$i"
        fleet_node_config $i
        node_start $i || { echo "fleet: stopping what started" >&2; fleet_stop >&2 || true; exit 1; }
        i=$((i + 1))
    done
    haproxy_start || { echo "fleet: stopping what started" >&2; fleet_stop >&2 || true; exit 1; }

    rel=$dir
    case "$dir" in "$(pwd)"/*) rel=${dir#"$(pwd)"/} ;; esac
    relb=$build
    case "$build" in "$(pwd)"/*) relb=${build#"$(pwd)"/} ;; esac
    cat <<EOF

Custos fleet: $nodes kmsd node(s) behind haproxy
  balancer     http://127.0.0.1:$port  (health checks: GET /readyz every second)
  nodes        http://127.0.0.1:$((port + 1)) .. http://127.0.0.1:$((port + nodes))  (logs: $rel/nodeN/kmsd.log)
  HSM          one SoftHSMv2 token directory shared by every node: $rel/hsm
  PostgreSQL   socket $rel/pg/socket, databases:$dbs, password in $rel/pg/password
  credentials  $rel/credentials/ (one 0600 file per principal; the API key is the file's content)
Try:
  export CUSTOS_ADDR=http://127.0.0.1:$port
  printf 'Authorization: Bearer %s\n' "\$(cat $rel/credentials/demo-admin.key)" > admin.auth
  echo '{}' | curl -sS -H @admin.auth -H 'Content-Type: application/json' --data-binary @- \\
      \$CUSTOS_ADDR/twirp/custos.v1.KeyService/ListKeys
  CUSTOS_API_KEY_FILE=$rel/credentials/demo-admin.key $relb/bin/kmsctl key list
  sh deploy/fleet.sh status $rel      # each node's /readyz and haproxy's view
Every node shares the store and the audit log in PostgreSQL: a key created
through the balancer is usable through every node at once.
Stop it all: make fleet-stop  (or sh deploy/fleet.sh stop $rel)
EOF
}

fleet_stop() {
    load_env
    left=""
    # The balancer first (no new requests), then the nodes (each drains),
    # then PostgreSQL.
    haproxy_stop || left="$left haproxy"
    pids=""
    i=1
    while [ $i -le "$nodes" ]; do
        p=$(node_pid $i)
        if [ -n "$p" ]; then kill -TERM "$p" 2>/dev/null || true; pids="$pids $i:$p"; fi
        i=$((i + 1))
    done
    for np in $pids; do
        n=${np%%:*}
        p=${np#*:}
        if wait_gone "$p" 40; then
            rm -f "$dir/node$n/kmsd.pid"
        else
            echo "fleet: node $n (pid $p) did not stop within 40 s of SIGTERM; killing it" >&2
            kill -KILL "$p" 2>/dev/null || true
            left="$left node$n"
        fi
    done
    [ -d "$dir/pg/data" ] && { sh "$here/pg-scratch.sh" stop "$dir/pg" || true; }
    # Checked, not assumed: nothing of this fleet may still run.
    i=1
    while [ $i -le "$nodes" ]; do
        [ -z "$(node_pid $i)" ] || left="$left node$i"
        i=$((i + 1))
    done
    [ -z "$(haproxy_pid)" ] || left="$left haproxy"
    ! pg_alive || left="$left postgresql"
    if [ -n "$left" ]; then
        echo "fleet: not stopped cleanly:$left" >&2
        return 1
    fi
    echo "fleet: stopped (haproxy, $nodes node(s), PostgreSQL); state kept in $dir"
}

fleet_status() {
    load_env
    rc=0
    i=1
    while [ $i -le "$nodes" ]; do
        p=$(node_pid $i)
        if [ -n "$p" ]; then
            body=$(curl -s -m 2 "http://127.0.0.1:$((port + i))/readyz" | head -n 1)
            echo "node$i  pid $p  127.0.0.1:$((port + i))  /readyz: ${body:-no answer}"
        else
            echo "node$i  not running"
            rc=1
        fi
        i=$((i + 1))
    done
    if [ -n "$(haproxy_pid)" ]; then
        echo "haproxy  pid $(haproxy_pid)  127.0.0.1:$port  sees: $(haproxy_view | tr '\n' ' ')"
    else
        echo "haproxy  not running"
        rc=1
    fi
    if pg_alive; then
        echo "postgresql  pid $(head -n 1 "$dir/pg/data/postmaster.pid")  socket $dir/pg/socket"
    else
        echo "postgresql  not running"
        rc=1
    fi
    return $rc
}

case "$cmd" in
start) fleet_start ;;
stop)
    [ -d "$dir" ] || { echo "fleet: no fleet in $dir" >&2; exit 1; }
    dir=$(cd "$dir" && pwd)
    fleet_stop
    ;;
status)
    dir=$(cd "$dir" && pwd)
    fleet_status
    ;;
node-start | node-stop)
    [ $# -eq 1 ] || usage
    dir=$(cd "$dir" && pwd)
    load_env
    case "$1" in [1-9]) ;; *) usage ;; esac
    [ "$1" -le "$nodes" ] || { echo "fleet: no node $1 (the fleet has $nodes)" >&2; exit 2; }
    build=$(cd "${BUILD:-$build}" && pwd)
    if [ "$cmd" = node-start ]; then node_start "$1"; else node_stop "$1"; fi
    ;;
haproxy)
    [ $# -eq 1 ] || usage
    dir=$(cd "$dir" && pwd)
    haproxy_cmd "$1"
    ;;
*) usage ;;
esac

#!/bin/sh
# The fleet row: Encrypt (256 bytes, protobuf, as bench_http.py) through
# haproxy with 1, 2 and 3 kmsd nodes in rotation, on a local fleet made by
# deploy/fleet.sh (tests/e2e/fleet_lib.sh: the shared PostgreSQL store and
# audit log), measured with wrk; plus the same against one node directly,
# which is the balancer's cost; the CPU each process used (kmsd nodes,
# haproxy, PostgreSQL, wrk); then the audit commit latency: one Encrypt at
# a time against one node whose audit log is in PostgreSQL, and against
# one node with local audit files (fdatasync), in the same run.
#
#   BUILD=build sh tests/bench/bench_fleet.sh
#
# BENCH_FLEET_SECONDS (5) per run, BENCH_FLEET_RUNS (1; the median is
# printed), BENCH_CONNECTIONS (32) wrk connections. The nodes not in
# rotation are put in haproxy's maintenance state (they run, idle).
# Every node, haproxy and wrk share this machine's cores: with 2 cores the
# cores, not the design, bound the total; the table prints `nproc` and the
# load average before the run so a reader can judge.
set -eu
BUILD=${BUILD:-build}
top=$(pwd)
CUSTOS_TEST_BUILD="$top/$BUILD"
. tests/e2e/fleet_lib.sh
secs=${BENCH_FLEET_SECONDS:-5}
runs=${BENCH_FLEET_RUNS:-3}
conns=${BENCH_CONNECTIONS:-32}
command -v wrk >/dev/null || { echo "bench_fleet: wrk not installed (deploy/install-deps.sh)" >&2; exit 1; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
fleet_setup bench 3
fleet_start
key=$(fleet_create_key eu-west)

mkdir -p "$FLEET_DIR/py"
protoc --python_out="$FLEET_DIR/py" -Iproto proto/key.proto
PYTHONPATH="$FLEET_DIR/py" /usr/bin/python3 - "$key" "$FLEET_DIR/encrypt.bin" <<'PY'
import sys
import key_pb2 as kpb
body = kpb.EncryptRequest(key_id=sys.argv[1], plaintext=b"m" * 256,
                          encryption_context={"conversation": "c-1"}).SerializeToString()
open(sys.argv[2], "wb").write(body)
PY
# The broker's key goes into the script file (0600, removed with the
# fleet's directory), never on wrk's command line.
cat >"$FLEET_DIR/encrypt.lua" <<EOF
local f = io.open("$FLEET_DIR/encrypt.bin", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/protobuf"
wrk.headers["Authorization"] = "Bearer $(cat "$FLEET_DIR/credentials/demo-broker.key")"
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, latency:percentile(50),
    latency:percentile(99), summary.duration))
end
EOF

one_run() { # URL: "rps p50_ms p99_ms errors"
    wrk -t2 -c"$conns" -d"${secs}s" -s "$FLEET_DIR/encrypt.lua" "$1/twirp/custos.v1.KeyService/Encrypt" |
        awk '$1 == "RESULT" { printf "%.0f %.2f %.2f %d\n", $2 / ($6 / 1e6), $4 / 1000, $5 / 1000, $3 }'
}
# CPU seconds (user + system) of a set of processes, from /proc.
cpu_of() { # PID...
    for p in "$@"; do awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0; done |
        awk -v hz="$(getconf CLK_TCK)" '{ s += $1 } END { printf "%.2f", s / hz }'
}
busy() { # CPU seconds the whole machine was busy (every process), from /proc/stat
    awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat
}
pg_pids() { # the postmaster and its backends (the nodes' connections persist,
    # so the same backends at the start and the end of a measure)
    pm=$(head -n 1 "$FLEET_DIR/pg/data/postmaster.pid")
    echo "$pm $(pgrep -P "$pm" | tr '\n' ' ')"
}
measure() { # LABEL URL: the median run by req/s, the spread (min..max req/s),
    # and the CPU each part used over all runs, in cores (CPU s / wall s)
    r=0
    : >"$FLEET_DIR/runs.txt"
    nodes_p=$(cat "$FLEET_DIR"/node*/kmsd.pid | tr '\n' ' ')
    hp=$(cat "$FLEET_DIR/haproxy.pid")
    pgp=$(pg_pids)
    # shellcheck disable=SC2086
    c0k=$(cpu_of $nodes_p); c0h=$(cpu_of $hp); c0p=$(cpu_of $pgp); c0m=$(busy); w0=$(date +%s%3N)
    while [ $r -lt "$runs" ]; do
        one_run "$2" >>"$FLEET_DIR/runs.txt"
        r=$((r + 1))
    done
    w1=$(date +%s%3N)
    pgp=$(pg_pids)
    # shellcheck disable=SC2086
    c1k=$(cpu_of $nodes_p); c1h=$(cpu_of $hp); c1p=$(cpu_of $pgp); c1m=$(busy)
    spread=$(sort -n "$FLEET_DIR/runs.txt" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo ".." hi }')
    cpu=$(awk -v k0="$c0k" -v k1="$c1k" -v h0="$c0h" -v h1="$c1h" -v p0="$c0p" -v p1="$c1p" \
        -v m0="$c0m" -v m1="$c1m" -v w="$((w1 - w0))" 'BEGIN { printf "kmsd %.2f, haproxy %.2f, postgres %.2f; machine %.2f",
        (k1 - k0) * 1000 / w, (h1 - h0) * 1000 / w, (p1 - p0) * 1000 / w, (m1 - m0) * 1000 / w }')
    sort -n "$FLEET_DIR/runs.txt" | sed -n "$(((runs + 1) / 2))p" |
        awk -v l="$1" -v s="$spread" -v c="$cpu" '{ printf "%-26s %9s %13s %8s %8s %6s   %s\n", l, $1, s, $2, $3, $4, c }'
}

in_rotation() { # N: nodes 1..N ready, the others in maintenance
    k=1
    while [ $k -le "$FLEET_NODES" ]; do
        if [ $k -le "$1" ]; then st=ready; else st=maint; fi
        sh deploy/fleet.sh haproxy "$FLEET_DIR" "set server kmsd/node$k state $st" >/dev/null
        k=$((k + 1))
    done
    fleet_wait_up "$1"
}

echo "# fleet: Encrypt 256 B (protobuf) through haproxy, wrk -t2 -c$conns, ${secs}s x $runs run(s), the median run;"
echo "# store and audit log in PostgreSQL (one cluster, fsync on); $(nproc) cores shared by every node, haproxy,"
echo "# PostgreSQL and wrk; load average before: $load_before; commit $(git rev-parse --short HEAD 2>/dev/null || echo -)"
printf '%-26s %9s %13s %8s %8s %6s   %s\n' "fleet Encrypt" "req/s" "spread" "p50 ms" "p99 ms" "errors" "CPU used, in cores"
measure "one node, no balancer" "$(fleet_node_addr 1)"
for n in 1 2 3; do
    in_rotation $n
    measure "haproxy, $n node(s)" "$FLEET_ADDR"
done
echo "# the cores, not the design, bound these figures: 'machine' is every process's CPU (wrk's and"
echo "# anything else running included), out of $(nproc) cores; at $(nproc) a node added takes cores from the"
echo "# others instead of adding its own, and req/s cannot grow with the nodes."
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- the audit commit latency: PostgreSQL against local files (fdatasync) -----
# One Encrypt at a time (a cheap audited operation: its answer waits for its
# event's commit) against node 1 alone, whose audit log is in PostgreSQL;
# then against one kmsd with local audit files (the `make run` setup of
# deploy/dev-setup.sh, SQLite store), on the same machine, in the same run.
in_rotation 1 >/dev/null
k=2
while [ $k -le "$FLEET_NODES" ]; do fleet_node_stop $k >/dev/null; k=$((k + 1)); done
lat_secs=$((secs < 3 ? secs : 3))
lat() { # URL LUA: "p50 p99 mean" in ms at concurrency 1
    wrk -t1 -c1 -d"${lat_secs}s" -s "$2" "$1/twirp/custos.v1.KeyService/Encrypt" |
        awk '$1 == "RESULT" { printf "%.2f %.2f %.0f\n", $4 / 1000, $5 / 1000, $2 / ($6 / 1e6) }'
}
pg_lat=$(lat "$(fleet_node_addr 1)" "$FLEET_DIR/encrypt.lua")
fleet_stop >/dev/null
solo=$FLEET_DIR/solo
BUILD="$CUSTOS_TEST_BUILD" KMSCTL="$CUSTOS_TEST_BUILD/bin/kmsctl" sh deploy/dev-setup.sh "$solo" 0 >/dev/null
solo_port=$(fleet_free_base 0)
sed -i "s/\"port\": *[0-9]*/\"port\": $solo_port/" "$solo/kmsd.json"
SOFTHSM2_CONF="$solo/hsm/softhsm2.conf" CUSTOS_LOG_LEVEL=warn "$CUSTOS_TEST_BUILD/bin/kmsd" \
    --config "$solo/kmsd.json" >"$solo/kmsd.log" 2>&1 &
solo_pid=$!
w=0
until [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$solo_port/readyz")" = 200 ]; do
    w=$((w + 1))
    [ $w -lt 300 ] && kill -0 $solo_pid 2>/dev/null || { tail "$solo/kmsd.log" >&2; kill $solo_pid 2>/dev/null; exit 1; }
    sleep 0.1
done
solo_key=$(CUSTOS_ADDR="http://127.0.0.1:$solo_port" CUSTOS_API_KEY_FILE="$solo/credentials/demo-admin.key" \
    "$CUSTOS_TEST_BUILD/bin/kmsctl" key create --region eu-west -q)
PYTHONPATH="$FLEET_DIR/py" /usr/bin/python3 - "$solo_key" "$solo/encrypt.bin" <<'PY'
import sys
import key_pb2 as kpb
open(sys.argv[2], "wb").write(kpb.EncryptRequest(key_id=sys.argv[1], plaintext=b"m" * 256,
    encryption_context={"conversation": "c-1"}).SerializeToString())
PY
sed -e "s|$FLEET_DIR/encrypt.bin|$solo/encrypt.bin|" \
    -e "s|Bearer .*\"|Bearer $(cat "$solo/credentials/demo-broker.key")\"|" "$FLEET_DIR/encrypt.lua" >"$solo/encrypt.lua"
file_lat=$(lat "http://127.0.0.1:$solo_port" "$solo/encrypt.lua")
kill -TERM $solo_pid
wait $solo_pid || true
echo
echo "# audit commit latency: one Encrypt at a time (its answer waits for its audit event's commit), ${lat_secs}s each"
printf '%-40s %8s %8s %8s\n' "audit log" "p50 ms" "p99 ms" "req/s"
echo "$pg_lat" | awk '{ printf "%-40s %8s %8s %8s\n", "PostgreSQL (one node of the fleet)", $1, $2, $3 }'
echo "$file_lat" | awk '{ printf "%-40s %8s %8s %8s\n", "local files, fdatasync (make run)", $1, $2, $3 }'

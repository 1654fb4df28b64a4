#!/bin/sh
# The fleet row: Encrypt (256 bytes, protobuf, as bench_http.py) through
# haproxy with 1, 2 and 3 kmsd nodes in rotation, on a local fleet made by
# deploy/fleet.sh (tests/e2e/fleet_lib.sh), measured with wrk; plus the same
# against one node directly, which is the balancer's cost.
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
runs=${BENCH_FLEET_RUNS:-1}
conns=${BENCH_CONNECTIONS:-32}
command -v wrk >/dev/null || { echo "bench_fleet: wrk not installed (deploy/install-deps.sh)" >&2; exit 1; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
fleet_setup bench 3
fleet_start
# FLEET-PG: with the shared store the key is made through the balancer.
key=$(fleet_key_everywhere eu-west)

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
measure() { # LABEL URL: the median run by req/s
    r=0
    : >"$FLEET_DIR/runs.txt"
    while [ $r -lt "$runs" ]; do
        one_run "$2" >>"$FLEET_DIR/runs.txt"
        r=$((r + 1))
    done
    sort -n "$FLEET_DIR/runs.txt" | sed -n "$(((runs + 1) / 2))p" |
        awk -v l="$1" '{ printf "%-26s %9s %9s %9s %7s\n", l, $1, $2, $3, $4 }'
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

echo "# fleet: Encrypt 256 B (protobuf) through haproxy, wrk -t2 -c$conns, ${secs}s x $runs run(s);"
echo "# $(nproc) cores shared by every node, haproxy and wrk; load average before: $load_before;" \
    "commit $(git rev-parse --short HEAD 2>/dev/null || echo -)"
printf '%-26s %9s %9s %9s %7s\n' "fleet Encrypt" "req/s" "p50 ms" "p99 ms" "errors"
measure "one node, no balancer" "$(fleet_node_addr 1)"
for n in 1 2 3; do
    in_rotation $n
    measure "haproxy, $n node(s)" "$FLEET_ADDR"
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
fleet_stop >/dev/null

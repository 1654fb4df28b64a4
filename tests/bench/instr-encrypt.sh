#!/bin/sh
# Instructions per Encrypt: kmsd of a source tree under callgrind, N
# Encrypts (256 bytes, one context pair) over one keep-alive connection
# after 50 warm-up requests with the counters zeroed. Instruction counts do
# not depend on what else the machine is doing, so two trees (e.g. before
# and after a change, each built with `make all`) compare exactly:
#
#   sh tests/bench/instr-encrypt.sh [TREE] [N]     (TREE default ., N 500)
#
# Prints Ir per request for the whole process and for kmsd's own code.
set -eu
T=$(cd "${1:-.}" && pwd)
N=${2:-500}
HERE=$(cd "$(dirname "$0")" && pwd)
D=$(mktemp -d /tmp/custos-instr.XXXXXX)
trap 'kill -TERM "$P" 2>/dev/null || true; rm -rf "$D"' EXIT
mkdir -p "$D/py"
protoc --python_out="$D/py" -I"$T/proto" "$T"/proto/*.proto
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$T" && BUILD=build sh deploy/dev-setup.sh "$D/inst" "$PORT" >/dev/null)
export SOFTHSM2_CONF="$D/inst/hsm/softhsm2.conf" CUSTOS_ADDR="http://127.0.0.1:$PORT"
valgrind --tool=callgrind --callgrind-out-file="$D/cg.out" "$T/build/bin/kmsd" \
    --config "$D/inst/kmsd.json" >"$D/kmsd.log" 2>&1 &
P=$!
i=0
until curl -fsS "$CUSTOS_ADDR/readyz" >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 600 ] || { cat "$D/kmsd.log" >&2; exit 1; }; sleep 0.5
done
K=$(CUSTOS_API_KEY_FILE="$D/inst/credentials/demo-admin.key" "$T/build/bin/kmsctl" key create --region eu-west -q)
run() { /usr/bin/python3 "$HERE/instr_client.py" "$D/py" "$PORT" "$1" "$K" "$D/inst/credentials/demo-broker.key"; }
run 50 >/dev/null
callgrind_control -z "$P" >/dev/null
ok=$(run "$N")
callgrind_control -d "$P" >/dev/null
kill -TERM "$P"; wait "$P" || true
F=$(ls "$D"/cg.out.* | head -1)
total=$(callgrind_annotate --threshold=100 "$F" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
own=$(callgrind_annotate --threshold=100 "$F" 2>/dev/null | grep "$T/build/bin/kmsd\]" |
      awk '{gsub(",", "", $1); s += $1} END {print s + 0}')
echo "tree $T: $ok of $N Encrypts answered 200"
echo "Ir per Encrypt: $((total / N)) in all, $((own / N)) in kmsd's own code"

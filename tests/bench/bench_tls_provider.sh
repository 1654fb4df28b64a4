#!/bin/sh
# TLS handshakes per second of `openssl s_server` with a custos: key (ECDSA
# P-256 and RSA-3072, signing through kmsd and the HSM) against the same
# server with a key file of the same kind, measured with `openssl s_time
# -new` (full handshakes, one connection at a time) in the same run.
#
#   bench_tls_provider.sh WORK BUILD SECONDS
#
# WORK is a dev installation (deploy/dev-setup.sh), as run-bench.sh makes.
set -eu
work=$1
build=$2
secs=${3:-5}
free() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
d="$work/tlsbench"
mkdir -p "$d"
port=$(free)
/usr/bin/python3 - "$work" "$port" <<'PY'
import json, sys
w, port = sys.argv[1], int(sys.argv[2])
c = json.load(open(f"{w}/kmsd.json"))
c["listen"]["port"] = port
json.dump(c, open(f"{w}/kmsd-tlsbench.json", "w"), indent=2)
PY
env -u CUSTOS_LOG_LEVEL "$build/bin/kmsd" --config "$work/kmsd-tlsbench.json" >"$d/kmsd.log" 2>&1 &
kp=$!
trap 'kill "$kp" 2>/dev/null; [ -z "${sp:-}" ] || kill "$sp" 2>/dev/null' EXIT
i=0
until grep -q '"ready' "$d/kmsd.log" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || { cat "$d/kmsd.log" >&2; exit 1; }
    sleep 0.1
done
export CUSTOS_ADDR="http://127.0.0.1:$port" OPENSSL_MODULES="$build/lib/ossl-modules"
export CUSTOS_API_KEY_FILE="$work/credentials/demo-broker.key"
P="-provider custos -provider default"
# In the sanitizer builds the module is instrumented and the stock CLI is
# not: preload the module's own sanitizer runtime into the CLI, as
# tests/e2e/test_provider.sh does (leak checking off: the CLI's exit-time
# allocations are not ours to judge).
san_rt=$(ldd "$build/lib/ossl-modules/custos.so" | awk '/lib(asan|tsan)\.so/ {print $3; exit}')
openssl() {
    if [ -n "$san_rt" ]; then
        LD_PRELOAD="$san_rt" ASAN_OPTIONS=detect_leaks=0 command openssl "$@"
    else
        command openssl "$@"
    fi
}
# The server runs in the background: a function there is a subshell whose
# pid kill would stop without its openssl child (seen: s_server left
# running after the bench). exec makes the server the pid that $! names.
server() {
    if [ -n "$san_rt" ]; then
        LD_PRELOAD="$san_rt" ASAN_OPTIONS=detect_leaks=0 exec openssl "$@"
    else
        exec openssl "$@"
    fi
}

# rate KEY CERT -> handshakes per second (s_time -new: a full handshake per
# connection; TLS 1.3, the client's default groups).
rate() {
    sport=$(free)
    # shellcheck disable=SC2086
    (server s_server $P -key "$1" -cert "$2" -accept "127.0.0.1:$sport" -quiet </dev/null \
        >"$d/srv.log" 2>&1) &
    sp=$!
    sleep 1
    n=$(openssl s_time -connect "127.0.0.1:$sport" -new -time "$secs" 2>/dev/null |
        sed -n 's/^\([0-9]*\) connections in \([0-9.]*\)s.*/\1 \2/p' | head -n 1)
    kill "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
    sp=
    echo "$n" | awk '{ if ($2 > 0) printf "%.0f", $1 / $2; else print 0 }'
}

echo "TLS 1.3 full handshakes/s, openssl s_server, one client connection at a time:"
for spec in ec-p256 rsa-3072; do
    key=$(CUSTOS_API_KEY_FILE="$work/credentials/demo-admin.key" "$build/bin/kmsctl" \
        key create --region eu-west --spec "$spec" -q)
    uri="custos:key=$key;version=1"
    # shellcheck disable=SC2086
    openssl req $P -new -x509 -key "$uri" -subj /CN=127.0.0.1 -days 1 -out "$d/$spec.crt" 2>/dev/null
    if [ "$spec" = ec-p256 ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
            -days 1 -keyout "$d/$spec.key" -out "$d/$spec.file.crt" 2>/dev/null
    else
        openssl req -x509 -newkey rsa:3072 -nodes -subj /CN=127.0.0.1 -days 1 \
            -keyout "$d/$spec.key" -out "$d/$spec.file.crt" 2>/dev/null
    fi
    c=$(rate "$uri" "$d/$spec.crt")
    f=$(rate "$d/$spec.key" "$d/$spec.file.crt")
    printf 'tls %-9s custos key %6s/s   key file %6s/s\n' "$spec" "$c" "$f"
done

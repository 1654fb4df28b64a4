#!/bin/sh
# kmsd's TLS private key in the HSM (tls.key_uri): for an EC P-256 key in
# custos-eu-west and an RSA-3072 key in custos-us-east, made in the tokens
# by deploy/tls-hsm-key.py, kmsd starts with key_uri and no key file;
# curl --cacert and openssl s_client complete TLS 1.3 and TLS 1.2
# handshakes (RSA: PSS, and PKCS#1 v1.5 when the client offers only that;
# SHA-1 only is refused) and a Twirp call answers; a burst of concurrent
# handshakes all succeed; with mutual TLS a client certificate still
# authenticates and its absence is refused. Through the fault-injecting
# PKCS#11 shim: a token reset during a handshake is survived (the key is
# found again), failing signatures fail only those handshakes (one log
# line). Under strace, no file kmsd opens holds a private
# key (and the same scan does find the key file of a file-key kmsd). kmsd
# refuses to start, naming the cause, when the certificate does not match
# the key (another key, another key type), when the URI names no object,
# no token, has bad syntax, carries a PIN, or comes with tls.key too. No
# PIN appears in any log.
#
# Prints "ok N - ..." per check; exits 1 if any check failed.
set -eu
. tests/e2e/lib.sh
e2e_setup tls_hsm
W="$E2E_DIR/t"
pki="$E2E_DIR/pki"
mkdir -p "$W" "$pki"
n=0
failed=0
pass() { n=$((n + 1)); echo "ok $n - $1"; }
flunk() {
    n=$((n + 1))
    echo "not ok $n - $1"
    failed=$((failed + 1))
    [ -z "${2:-}" ] || [ ! -f "$2" ] || tail -n 15 "$2" | sed 's/^/#   /'
}
check() { # description command...
    d=$1
    shift
    if "$@"; then pass "$d"; else flunk "$d"; fi
}
q() { openssl "$@" >/dev/null 2>&1; }

# A test CA (a key file: it is the CA's, never kmsd's), a file-key server
# certificate for the comparison, and the two HSM keys with certificates.
q req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/O=Custos Test/CN=Test CA" -keyout "$pki/ca.key" -out "$pki/ca.pem"
q req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$pki/file.key" -out "$pki/file.csr"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$pki/file.ext"
q x509 -req -in "$pki/file.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/file.ext" -out "$pki/file.pem"
mkkey() { # region label type stem
    /usr/bin/python3 deploy/tls-hsm-key.py --token "custos-$1" \
        --pin-source "file:$E2E_DIR/hsm/pins/$1.pin" --label "$2" --type "$3" \
        --pubout "$pki/$4.pub.pem" --ca-cert "$pki/ca.pem" --ca-key "$pki/ca.key" \
        --cert-out "$pki/$4.pem" --cn 127.0.0.1 --san IP:127.0.0.1
}
ec_uri=$(mkkey eu-west kmsd-tls ec-p256 hsm-ec)
rsa_uri=$(mkkey us-east kmsd-tls-rsa rsa-3072 hsm-rsa)
check "tls-hsm-key.py prints the URI of the new key" \
    test "$ec_uri" = "pkcs11:token=custos-eu-west;object=kmsd-tls;type=private"
if mkkey eu-west kmsd-tls ec-p256 again >"$W/again.out" 2>&1; then
    flunk "tls-hsm-key.py refuses a second key with the same label"
else
    pass "tls-hsm-key.py refuses a second key with the same label"
fi

# cfg NAME TLS-JSON: kmsd-NAME.json, the dev config with that tls section.
cfg() {
    /usr/bin/python3 - "$E2E_DIR" "$1" "$2" <<'PY'
import json, sys
d, name, tls = sys.argv[1:]
c = json.load(open(f"{d}/kmsd.json"))
# The PIN goes in only here, read from its file: never on a command line.
if "@PIN@" in tls:
    tls = tls.replace("@PIN@", open(f"{d}/hsm/pins/eu-west.pin").read().strip())
c["tls"] = json.loads(tls)
json.dump(c, open(f"{d}/kmsd-{name}.json", "w"), indent=2)
PY
}
cfg ec "{\"cert\": \"pki/hsm-ec.pem\", \"key_uri\": \"$ec_uri\"}"
cfg rsa "{\"cert\": \"pki/hsm-rsa.pem\", \"key_uri\": \"pkcs11:token=custos-us-east;object=kmsd-tls-rsa\"}"
cfg file '{"cert": "pki/file.pem", "key": "pki/file.key"}'

(umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$E2E_DIR/credentials/demo-admin.key")" \
    >"$W/admin.auth")
URL="https://127.0.0.1:$E2E_PORT"

# s_client VERSION [ARGS...]: one handshake; the transcript in $W/s_client.
s_client() {
    v=$1
    shift
    echo Q | timeout 20 openssl s_client -connect "127.0.0.1:$E2E_PORT" "$v" -CAfile "$pki/ca.pem" \
        -verify_return_error "$@" >"$W/s_client" 2>&1 || true
}
handshake_ok() { # version expected-peer-signature-type [ARGS...]
    v=$1 sig=$2
    shift 2
    s_client "$v" "$@"
    grep -q 'Verify return code: 0 (ok)' "$W/s_client" &&
        grep -q "Peer signature type: $sig\$" "$W/s_client" &&
        grep -Eq "^(New, TLSv1\.[23]|    Protocol  : TLSv1\.[23])" "$W/s_client"
}

# Start kmsd under strace (every openat of every thread), so the files it
# opened can be checked afterwards. e2e_start cannot: the process to stop
# is strace's child.
strace_start() { # config trace-file
    : >>"$E2E_DIR/kmsd.log"
    before=$(grep -c '"ready' "$E2E_DIR/kmsd.log" || true)
    # LeakSanitizer cannot run under ptrace (ASan builds): leaks are
    # checked in the runs without strace.
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        strace -f -qq -e trace=openat -o "$2" "$KMSD" --config "$1" >>"$E2E_DIR/kmsd.log" 2>&1 &
    E2E_PID=$!
    i=0
    while [ "$(grep -c '"ready' "$E2E_DIR/kmsd.log" || true)" -le "${before:-0}" ]; do
        i=$((i + 1))
        if [ $i -gt 300 ] || ! kill -0 "$E2E_PID" 2>/dev/null; then
            tail -n 20 "$E2E_DIR/kmsd.log" >&2
            return 1
        fi
        sleep 0.1
    done
}
strace_stop() {
    kid=$(pgrep -P "$E2E_PID" || true)
    [ -z "$kid" ] || kill -TERM "$kid"
    wait "$E2E_PID"
    rc=$?
    E2E_PID=
    return $rc
}
# Text files kmsd opened (successfully) that hold a PEM private key.
key_files_opened() { # trace-file
    sed -n 's/.*openat([^"]*"\([^"]*\)".*= [0-9][0-9]*$/\1/p' "$1" | sort -u |
        while read -r f; do
            [ -f "$f" ] && grep -lI -e '-----BEGIN [A-Z ]*PRIVATE KEY-----' "$f" 2>/dev/null || true
        done
}
trap 'if [ -n "$E2E_PID" ]; then kid=$(pgrep -P "$E2E_PID" || true); kill -TERM ${kid:-$E2E_PID} 2>/dev/null; wait "$E2E_PID"; fi; true' EXIT

serve_checks() { # name (kmsd running with the HSM key)
    code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$pki/ca.pem" "$URL/livez" || true)
    check "$1: curl --cacert completes a verified handshake (/livez $code)" test "$code" = 200
    status=$(printf '{}' | curl -sS -o "$W/body" -w '%{http_code}' --cacert "$pki/ca.pem" \
        -X POST -H @"$W/admin.auth" -H 'Content-Type: application/json' --data-binary @- \
        "$URL/twirp/custos.v1.KeyService/ListKeys" || true)
    check "$1: a Twirp call (ListKeys) over the HSM-keyed TLS answers 200 (got $status)" \
        test "$status" = 200
    seq 1 24 | xargs -P 8 -I{} curl -s -o /dev/null -w '%{http_code}\n' --cacert "$pki/ca.pem" \
        "$URL/livez" >"$W/burst" 2>&1 || true
    check "$1: 24 handshakes, 8 at a time, all succeed" \
        test "$(grep -c '^200$' "$W/burst")" = 24
}

# ---- EC P-256 --------------------------------------------------------------
e2e_start "$E2E_DIR/kmsd-ec.json"
check "ec: the log names the key and its token" \
    grep -q 'TLS private key pkcs11:token=custos-eu-west;object=kmsd-tls;type=private: EC P-256 in token .custos-eu-west' \
    "$E2E_DIR/kmsd.log"
serve_checks ec
if handshake_ok -tls1_3 ECDSA; then pass "ec: openssl s_client TLS 1.3 handshake (ECDSA) verifies"
else flunk "ec: openssl s_client TLS 1.3 handshake (ECDSA) verifies" "$W/s_client"; fi
if handshake_ok -tls1_2 ECDSA; then pass "ec: openssl s_client TLS 1.2 handshake (ECDSA) verifies"
else flunk "ec: openssl s_client TLS 1.2 handshake (ECDSA) verifies" "$W/s_client"; fi
e2e_stop && pass "ec: kmsd stops cleanly" || flunk "ec: kmsd stops cleanly" "$E2E_DIR/kmsd.log"

# Under strace: start, one handshake and a Twirp call, stop.
strace_start "$E2E_DIR/kmsd-ec.json" "$W/trace-ec"
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$pki/ca.pem" "$URL/livez" || true)
check "ec under strace: a verified handshake (/livez $code)" test "$code" = 200
strace_stop || true
found=$(key_files_opened "$W/trace-ec")
check "ec: no file kmsd opened holds a private key (strace openat)${found:+: $found}" test -z "$found"
check "ec: strace saw kmsd open its certificate (the scan sees kmsd's files)" \
    grep -q "hsm-ec.pem" "$W/trace-ec"

# The same scan on a kmsd with a key file finds it: the check can fail.
strace_start "$E2E_DIR/kmsd-file.json" "$W/trace-file"
strace_stop || true
found=$(key_files_opened "$W/trace-file")
check "file: the same scan finds the key file of a file-key kmsd" \
    test "$found" = "$pki/file.key"

# ---- RSA-3072 -----------------------------------------------------------------
e2e_start "$E2E_DIR/kmsd-rsa.json"
check "rsa: the log names the key and its token" \
    grep -q 'RSA-3072 in token .custos-us-east' "$E2E_DIR/kmsd.log"
serve_checks rsa
if handshake_ok -tls1_3 RSA-PSS; then pass "rsa: openssl s_client TLS 1.3 handshake (RSA-PSS) verifies"
else flunk "rsa: openssl s_client TLS 1.3 handshake (RSA-PSS) verifies" "$W/s_client"; fi
if handshake_ok -tls1_2 RSA-PSS; then pass "rsa: openssl s_client TLS 1.2 handshake (RSA-PSS) verifies"
else flunk "rsa: openssl s_client TLS 1.2 handshake (RSA-PSS) verifies" "$W/s_client"; fi
if handshake_ok -tls1_2 RSA -sigalgs RSA+SHA256; then
    pass "rsa: TLS 1.2 with only PKCS#1 v1.5 offered signs with PKCS#1 v1.5 and verifies"
else flunk "rsa: TLS 1.2 with only PKCS#1 v1.5 offered signs with PKCS#1 v1.5 and verifies" "$W/s_client"; fi
if handshake_ok -tls1_2 RSA -sigalgs RSA+SHA1; then
    flunk "rsa: a client offering only SHA-1 signatures is refused" "$W/s_client"
else pass "rsa: a client offering only SHA-1 signatures is refused"; fi
e2e_stop && pass "rsa: kmsd stops cleanly" || flunk "rsa: kmsd stops cleanly" "$E2E_DIR/kmsd.log"

# ---- mutual TLS with the key in the HSM ------------------------------------------
# The server still asks for and verifies client certificates: a client
# certificate of demo-admin (signed by the test CA) authenticates, none is
# refused.
q req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/O=Custos Dev/CN=demo-admin" \
    -keyout "$pki/admin.key" -out "$pki/admin.csr"
printf 'extendedKeyUsage=clientAuth\n' >"$pki/admin.ext"
q x509 -req -in "$pki/admin.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/admin.ext" -out "$pki/admin.pem"
cfg mtls "{\"cert\": \"pki/hsm-ec.pem\", \"key_uri\": \"$ec_uri\", \"client_ca\": \"pki/ca.pem\", \"require_client_cert\": true}"
e2e_start "$E2E_DIR/kmsd-mtls.json"
mcall() { # extra curl arguments...
    printf '{}' | curl -sS -o "$W/body" -w '%{http_code}' --cacert "$pki/ca.pem" "$@" -X POST \
        -H 'Content-Type: application/json' --data-binary @- \
        "$URL/twirp/custos.v1.KeyService/ListKeys" || true
}
status=$(mcall --cert "$pki/admin.pem" --key "$pki/admin.key")
check "mtls: a client certificate authenticates over the HSM-keyed TLS (got $status)" \
    test "$status" = 200
status=$(mcall)
check "mtls: no client certificate is refused with 401 (got $status)" test "$status" = 401
e2e_stop && pass "mtls: kmsd stops cleanly" || flunk "mtls: kmsd stops cleanly" "$E2E_DIR/kmsd.log"

# ---- HSM faults during handshakes (tests/p11fault) -----------------------------
# A token reset (every session closed, logged out; SoftHSMv2 then numbers
# its objects anew) before a handshake's C_SignInit: kmsd replaces the
# session, finds the key again and the handshake completes. Then three
# failing C_Sign calls: those handshakes fail, kmsd stays up, says so in
# one log line (not one per handshake), and the next handshake succeeds.
shim="$BUILD_DIR/lib/p11_fault.so"
export CUSTOS_P11FAULT_CONTROL="$W/fault.ctl"
export CUSTOS_P11FAULT_MODULE=/usr/lib/softhsm/libsofthsm2.so
: >"$CUSTOS_P11FAULT_CONTROL"
/usr/bin/python3 - "$E2E_DIR" "$shim" "$ec_uri" <<'PY'
import json, sys
d, shim, uri = sys.argv[1:]
c = json.load(open(f"{d}/kmsd.json"))
c["pkcs11"]["module"] = shim
c["tls"] = {"cert": "pki/hsm-ec.pem", "key_uri": uri}
# No signed head while faults are armed: only handshakes call C_Sign here.
c["audit"]["head_every_ms"] = 3600000
c["audit"]["head_every_events"] = 1000000
json.dump(c, open(f"{d}/kmsd-faults.json", "w"), indent=2)
PY
e2e_start "$E2E_DIR/kmsd-faults.json"
livez() { curl -sS -o /dev/null -w '%{http_code}' --cacert "$pki/ca.pem" "$URL/livez" 2>/dev/null || true; }
check "faults: a handshake through the fault shim, no fault armed ($(livez))" test "$(livez)" = 200
echo 'C_SignInit CKR_SESSION_HANDLE_INVALID close_all count=1' >"$CUSTOS_P11FAULT_CONTROL"
sleep 0.3 # the shim re-reads its control file at most every FAULT_CHECK_MS
code=$(livez)
check "faults: after a token reset mid-handshake the key is found again and the handshake completes ($code)" \
    test "$code" = 200
check "faults: ... and the reset was really injected (kmsd replaced the session)" \
    grep -q 'session lost' "$E2E_DIR/kmsd.log"
warned=$(grep -c 'did not sign' "$E2E_DIR/kmsd.log" || true)
echo 'C_Sign CKR_DEVICE_ERROR count=3' >"$CUSTOS_P11FAULT_CONTROL"
sleep 0.3
codes="$(livez) $(livez) $(livez)"
check "faults: three handshakes whose C_Sign fails get no connection (got $codes)" \
    test "$codes" = "000 000 000"
check "faults: kmsd stays up and the next handshake succeeds" test "$(livez)" = 200
check "faults: one warning for the three failures, not one per handshake" \
    test "$(grep -c 'did not sign' "$E2E_DIR/kmsd.log")" = $((warned + 1))
: >"$CUSTOS_P11FAULT_CONTROL"
sleep 0.3
e2e_stop && pass "faults: kmsd stops cleanly" || flunk "faults: kmsd stops cleanly" "$E2E_DIR/kmsd.log"
unset CUSTOS_P11FAULT_CONTROL CUSTOS_P11FAULT_MODULE

# ---- refusals at start --------------------------------------------------------
# refuses NAME TLS-JSON MESSAGE: kmsd exits non-zero and its log says MESSAGE.
refuses() {
    cfg "$1" "$2"
    log="$W/refuse-$1.log"
    if timeout 60 "$KMSD" --config "$E2E_DIR/kmsd-$1.json" >"$log" 2>&1; then
        flunk "$1: kmsd refuses to start" "$log"
    elif grep -qF -- "$3" "$log"; then
        pass "$1: kmsd refuses to start: $3"
    else
        flunk "$1: kmsd refuses to start: $3" "$log"
    fi
}
refuses mismatch "{\"cert\": \"pki/file.pem\", \"key_uri\": \"$ec_uri\"}" \
    "does not match tls.cert: a signature (ECDSA-SHA256) made by the key in the token does not verify"
refuses typemismatch "{\"cert\": \"pki/hsm-rsa.pem\", \"key_uri\": \"$ec_uri\"}" \
    "does not match tls.cert: the certificate's key is RSA, the key in the token is EC P-256"
refuses noobject '{"cert": "pki/hsm-ec.pem", "key_uri": "pkcs11:token=custos-eu-west;object=no-such-key"}' \
    "no private key matches it in token custos-eu-west"
refuses noid '{"cert": "pki/hsm-ec.pem", "key_uri": "pkcs11:token=custos-eu-west;id=%01%02"}' \
    "no private key matches it"
refuses notoken '{"cert": "pki/hsm-ec.pem", "key_uri": "pkcs11:token=custos-nowhere;object=kmsd-tls"}' \
    "no configured token matches it (tokens: custos-eu-west, custos-us-east)"
refuses badsyntax '{"cert": "pki/hsm-ec.pem", "key_uri": "pkcs11:token=custos-eu-west;object=%zz"}' \
    "tls.key_uri: not a valid PKCS#11 URI"
refuses noscheme '{"cert": "pki/hsm-ec.pem", "key_uri": "file:pki/hsm-ec.key"}' \
    "tls.key_uri: must be a pkcs11: URI"
refuses noname '{"cert": "pki/hsm-ec.pem", "key_uri": "pkcs11:token=custos-eu-west"}' \
    "names no object"
refuses both "{\"cert\": \"pki/file.pem\", \"key\": \"pki/file.key\", \"key_uri\": \"$ec_uri\"}" \
    "tls: needs exactly one of key (a PEM file) and key_uri (a pkcs11: URI)"
refuses pinvalue "{\"cert\": \"pki/hsm-ec.pem\", \"key_uri\": \"$ec_uri;pin-value=@PIN@\"}" \
    "must not carry a PIN"

leaks=0
for p in "$E2E_DIR"/hsm/pins/*.pin; do
    for log in "$E2E_DIR/kmsd.log" "$W"/refuse-*.log; do
        ! grep -qF -f "$p" "$log" || { leaks=$((leaks + 1)); echo "# PIN of $p in $log"; }
    done
done
check "no PIN (user or SO, any region) appears in any kmsd log" test "$leaks" = 0

# The pairs tls-hsm-key.py made follow the templates (sensitive, never
# extractable, sign-only private half, verify-only public half).
if out=$(e2e_scan_tokens 2>&1); then pass "token objects follow the key templates"
else echo "$out" | sed 's/^/#   /'; flunk "token objects follow the key templates"; fi

trap - EXIT
echo "1..$n"
[ "$failed" -eq 0 ]

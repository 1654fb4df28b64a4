#!/bin/sh
# The custos OpenSSL provider (docs/openssl-provider.md) with the stock
# openssl CLI and curl against a kmsd of our own: for an EC_P256 and an
# RSA_3072 key, `pkey -pubout` equals GetPublicKey's SPKI; pkeyutl and dgst
# signatures (PSS too) verify with the default provider alone; req -x509
# makes a certificate that verifies and holds the key; s_server completes
# TLS 1.3 and 1.2 handshakes with s_client and curl; refusals (disabled key,
# another tenant's key, a missing grant) name the Twirp code and request id;
# each Sign is one audit event; ;version=1 signs with v1 after a rotation;
# the provider also loads from an openssl.cnf section. Then the check
# binary test_provider's kmsd cases (EVP_DigestSign, SSL_CTX, fork).
set -eu
. tests/e2e/lib.sh
# Signed heads every 100 ms: the audit export (the Sign event count) reads
# up to the latest head.
export CUSTOS_DEV_HEAD_MS=100
e2e_setup provider
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
e2e_start
sp=
trap '[ -z "$sp" ] || kill "$sp" 2>/dev/null; e2e_stop >/dev/null 2>&1 || true' EXIT

ok() { echo "ok - $1"; }
fail() { echo "not ok - $1"; exit 1; }
W="$E2E_DIR/prov"
mkdir -p "$W"
MOD_DIR="$BUILD_DIR/lib/ossl-modules"
[ -f "$MOD_DIR/custos.so" ] || fail "$MOD_DIR/custos.so not built"
export OPENSSL_MODULES="$MOD_DIR"
# Under SAN=1 (SAN=thread) the module is instrumented (the check binary
# needs it so) and the stock openssl CLI is not: preload the module's own
# sanitizer runtime into the CLI so the module's code is checked there too.
# LeakSanitizer stays off for the CLI, whose own exit-time allocations are
# not ours to judge.
asan=$(ldd "$MOD_DIR/custos.so" | awk '/lib(asan|tsan)\.so/ {print $3; exit}')
ossl() {
    if [ -n "$asan" ]; then
        LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 openssl "$@"
    else
        openssl "$@"
    fi
}
P="-provider custos -provider default"
as() { who=$1; shift; CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/$who.key" "$KMSCTL" "$@"; }
export CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/demo-broker.key"
# Sign events of key $1 in eu-west's audit log (provider_audit.py).
signs() { /usr/bin/python3 tests/e2e/provider_audit.py "$E2E_DIR" "$E2E_PORT" "$1"; }
free_port() { e2e_free_port; }
printf 'a message the provider signs\n' >"$W/msg"
openssl dgst -sha256 -binary "$W/msg" >"$W/msg.sha256"

for spec in ec-p256 rsa-3072; do
    key=$(as demo-admin key create --region eu-west --spec "$spec" -q)
    uri="custos:key=$key"
    eval "key_$(echo $spec | tr - _)=$key"
    as demo-broker key public-key "$key" --pem --out "$W/$spec.spki.pem" 2>/dev/null
    # shellcheck disable=SC2086
    ossl pkey $P -in "$uri" -pubout -out "$W/$spec.pub.pem" ||
        fail "$spec: openssl pkey -in custos:key=... -pubout"
    cmp -s "$W/$spec.pub.pem" "$W/$spec.spki.pem" ||
        fail "$spec: pkey -pubout differs from GetPublicKey's SPKI"
    ok "$spec: openssl pkey -in $uri -pubout equals GetPublicKey's SPKI"
    # The private half is nowhere in this process: exporting it fails.
    # shellcheck disable=SC2086
    if ossl pkey $P -in "$uri" -out "$W/$spec.priv.pem" 2>/dev/null; then
        fail "$spec: openssl pkey wrote a private key for $uri"
    fi
    ! grep -q 'PRIVATE KEY' "$W/$spec.priv.pem" 2>/dev/null ||
        fail "$spec: a private key PEM came out"
    ok "$spec: openssl pkey -in $uri (private key output) fails: nothing to export"

    before=$(signs "$key")
    n=0
    if [ "$spec" = ec-p256 ]; then modes="none"; else modes="pkcs1 pss"; fi
    for mode in $modes; do
        case $mode in
        pss) so="-sigopt rsa_padding_mode:pss"; vo="-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32"
             po="-pkeyopt rsa_padding_mode:pss"; pvo="-pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:32" ;;
        pkcs1) so="-sigopt rsa_padding_mode:pkcs1"; vo="$so"; po="-pkeyopt rsa_padding_mode:pkcs1"; pvo="$po" ;;
        *) so=""; vo=""; po=""; pvo="" ;;
        esac
        # shellcheck disable=SC2086
        ossl dgst $P -sha256 -sign "$uri" $so -out "$W/sig" "$W/msg" ||
            fail "$spec $mode: openssl dgst -sha256 -sign"
        # shellcheck disable=SC2086
        openssl dgst -sha256 -verify "$W/$spec.spki.pem" $vo -signature "$W/sig" "$W/msg" >/dev/null ||
            fail "$spec $mode: the default provider rejects dgst -sign's signature"
        # shellcheck disable=SC2086
        ossl pkeyutl $P -sign -inkey "$uri" -in "$W/msg.sha256" -pkeyopt digest:sha256 $po \
            -out "$W/psig" || fail "$spec $mode: openssl pkeyutl -sign"
        # shellcheck disable=SC2086
        openssl pkeyutl -verify -pubin -inkey "$W/$spec.spki.pem" -in "$W/msg.sha256" \
            -pkeyopt digest:sha256 $pvo -sigfile "$W/psig" >/dev/null ||
            fail "$spec $mode: the default provider rejects pkeyutl -sign's signature"
        printf 'another message\n' >"$W/other"
        # shellcheck disable=SC2086
        if openssl dgst -sha256 -verify "$W/$spec.spki.pem" $vo -signature "$W/sig" "$W/other" \
                >/dev/null 2>&1; then
            fail "$spec $mode: a signature verifies for another message"
        fi
        n=$((n + 2))
        ok "$spec $mode: dgst -sha256 -sign and pkeyutl -sign with $uri verify with the default provider (and not for another message)"
    done
    # What Custos cannot sign is refused in the client; the exact count of
    # Sign events below also shows these sent nothing.
    # shellcheck disable=SC2086
    if ossl dgst $P -sha384 -sign "$uri" -out "$W/x" "$W/msg" 2>"$W/err"; then
        fail "$spec: signed with SHA-384"
    fi
    grep -q 'not supported by custos keys.*SHA-256 only' "$W/err" || fail "$spec sha384: $(cat "$W/err")"
    if [ "$spec" = rsa-3072 ]; then
        # shellcheck disable=SC2086
        if ossl dgst $P -sha256 -sign "$uri" -sigopt rsa_padding_mode:pss \
                -sigopt rsa_pss_saltlen:max -out "$W/x" "$W/msg" 2>"$W/err"; then
            fail "$spec: signed PSS with the maximum salt"
        fi
        grep -q 'not supported by custos keys.*32-byte salt' "$W/err" ||
            fail "$spec saltlen max: $(cat "$W/err")"
    fi
    ok "$spec: SHA-384 (and for RSA a PSS salt other than 32 bytes) refused locally: not supported by custos keys"
    # Each Sign is one audit event: durable before the reply, exported once
    # a signed head covers it.
    i=0
    after=$(signs "$key")
    while [ "$after" -lt $((before + n)) ] && [ $i -lt 50 ]; do
        sleep 0.2; i=$((i + 1)); after=$(signs "$key")
    done
    [ "$after" -eq $((before + n)) ] || fail "$spec: $n signatures made $((after - before)) Sign events"
    ok "$spec: each of the $n Sign calls is one audit event"

    ossl req $P -new -x509 -key "$uri" -subj "/CN=custos $spec" -days 1 \
        -addext "subjectAltName=IP:127.0.0.1" -out "$W/$spec.crt" ||
        fail "$spec: openssl req -new -x509 -key custos:..."
    openssl verify -CAfile "$W/$spec.crt" "$W/$spec.crt" >/dev/null ||
        fail "$spec: the self-signed certificate does not verify"
    openssl x509 -in "$W/$spec.crt" -noout -pubkey | cmp -s - "$W/$spec.spki.pem" ||
        fail "$spec: the certificate's key is not the Custos key"
    ok "$spec: req -new -x509 -key $uri makes a certificate that verifies and holds the key"

    tls_before=$(signs "$key")
    for v in tls1_3 tls1_2; do
        port=$(free_port)
        srv="$W/srv-$spec-$v.log"
        # -naccept 2: s_client, then curl; it exits after them.
        # shellcheck disable=SC2086
        ossl s_server $P -key "$uri" -cert "$W/$spec.crt" -accept "127.0.0.1:$port" \
            -naccept 2 -$v -www </dev/null >"$srv" 2>&1 &
        sp=$!
        i=0
        until grep -q ACCEPT "$srv" 2>/dev/null; do
            i=$((i + 1)); [ $i -lt 100 ] || fail "$spec $v: s_server did not start: $(cat "$srv")"
            sleep 0.1
        done
        printf 'GET / HTTP/1.0\r\n\r\n' | openssl s_client -connect "127.0.0.1:$port" -$v \
            -CAfile "$W/$spec.crt" -verify_return_error -servername localhost \
            >"$W/cli.log" 2>&1 || fail "$spec $v: s_client handshake: $(tail -5 "$W/cli.log"; cat "$srv")"
        want=$(echo $v | sed 's/tls1_/TLSv1./')
        grep -q "^New, $want, Cipher is" "$W/cli.log" || fail "$spec $v: s_client did not negotiate $want: $(grep -E "New,|rror" "$W/cli.log")"
        grep -q 'Verify return code: 0' "$W/cli.log" || fail "$spec $v: s_client verification"
        cv=$(echo $v | sed 's/tls1_/1./')
        curl -sS --cacert "$W/$spec.crt" --tlsv$cv --tls-max $cv -o "$W/curl.out" \
            "https://127.0.0.1:$port/" 2>"$W/curl.err" || fail "$spec $v: curl: $(cat "$W/curl.err")"
        grep -q "$want" "$W/curl.out" || fail "$spec $v: s_server's page does not say $want"
        wait "$sp" || fail "$spec $v: s_server exited with an error: $(cat "$srv")"
        sp=
        ok "$spec: s_server -key $uri completes $want handshakes with s_client and curl --cacert"
    done
    # Four full handshakes, four signatures made by kmsd (one event each).
    i=0
    tls_after=$(signs "$key")
    while [ "$tls_after" -lt $((tls_before + 4)) ] && [ $i -lt 50 ]; do
        sleep 0.2; i=$((i + 1)); tls_after=$(signs "$key")
    done
    [ "$tls_after" -eq $((tls_before + 4)) ] ||
        fail "$spec: 4 handshakes made $((tls_after - tls_before)) Sign events"
    ok "$spec: each of the 4 handshakes signed through kmsd: 4 Sign events"
done
key=$key_ec_p256

# ---- refusals name the Twirp code and the request id ------------------------
expect_refusal() { # what code uri [who]
    who=${4:-demo-broker}
    # shellcheck disable=SC2086
    if CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/$who.key" \
            ossl dgst $P -sha256 -sign "$3" -out "$W/x" "$W/msg" 2>"$W/err"; then
        fail "$1: signing succeeded"
    fi
    grep -q "custos.*$2" "$W/err" && grep -q 'request id [0-9a-zA-Z-]\{8,\}' "$W/err" ||
        fail "$1: error does not name $2 and a request id: $(cat "$W/err")"
    ok "$1: refused, the OpenSSL error names $2 and kmsd's request id"
}
dk=$(as demo-admin key create --region eu-west --spec ec-p256 -q)
as demo-admin key disable "$dk" >/dev/null
expect_refusal "a disabled key" failed_precondition "custos:key=$dk"
expect_refusal "another tenant's key" not_found "custos:key=$key" other-broker
gk=$(as demo-admin key create --region eu-west --spec ec-p256 -q)
/usr/bin/python3 - "$E2E_DIR" "$gk" <<'PY'
import json, sys
d, k = sys.argv[1:3]
p = json.load(open(f"{d}/policy.json"))
for t in p["tenants"]:
    if t["id"] == "demo":
        t.setdefault("grants", []).append(
            {"sid": "provider-public-only", "key_id": k, "principals": ["demo-broker"],
             "operations": ["GetPublicKey"]})
json.dump(p, open(f"{d}/policy.json", "w"), indent=2)
PY
n=$(grep -c 'policy.json' "$E2E_DIR/kmsd.log" || true)
kill -HUP "$E2E_PID"
i=0
while [ "$(grep -c 'policy.json' "$E2E_DIR/kmsd.log" || true)" -le "$n" ]; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "no policy reload"; sleep 0.1
done
expect_refusal "a grant without Sign" permission_denied "custos:key=$gk"
if ossl pkey $P -in "custos:key=$key;version=0" -pubout >/dev/null 2>"$W/err"; then
    fail "version=0 accepted"
fi
grep -q 'bad custos URI' "$W/err" && ok "custos:key=...;version=0 is a bad custos URI" ||
    fail "version=0: $(cat "$W/err")"

# ---- local configuration mistakes: refused before anything is sent -----------
cp "$E2E_DIR/credentials/demo-broker.key" "$W/open.key"
chmod 644 "$W/open.key"
if CUSTOS_API_KEY_FILE="$W/open.key" ossl pkey $P -in "custos:key=$key" -pubout \
        >/dev/null 2>"$W/err"; then
    fail "an API key file of mode 0644 was used"
fi
grep -q 'custos provider configuration.*mode 0644 is too open' "$W/err" ||
    fail "API key mode: $(cat "$W/err")"
cp "$W/ec-p256.crt" "$W/client.pem"
printf 'not a key\n' >"$W/client.key"
chmod 644 "$W/client.key"
if CUSTOS_CLIENT_CERT="$W/client.pem" CUSTOS_CLIENT_KEY="$W/client.key" \
        ossl pkey $P -in "custos:key=$key" -pubout >/dev/null 2>"$W/err"; then
    fail "a client key of mode 0644 was used"
fi
grep -q 'client key .*too open' "$W/err" || fail "client key mode: $(cat "$W/err")"
if CUSTOS_CLIENT_CERT="$W/client.pem" ossl pkey $P -in "custos:key=$key" -pubout \
        >/dev/null 2>"$W/err"; then
    fail "a client certificate without its key was accepted"
fi
grep -q 'client certificate and client key go together' "$W/err" ||
    fail "cert without key: $(cat "$W/err")"
ok "an API key or client key readable by others, or a client certificate without its key: a configuration error naming the file"

# ---- version pinning --------------------------------------------------------
as demo-admin key rotate "$key" >/dev/null
ossl dgst $P -sha256 -sign "custos:key=$key;version=1" -out "$W/v1sig" "$W/msg" ||
    fail "signing with ;version=1 after a rotation"
openssl dgst -sha256 -verify "$W/ec-p256.spki.pem" -signature "$W/v1sig" "$W/msg" >/dev/null ||
    fail ";version=1 did not sign with version 1's key"
ossl pkey $P -in "custos:key=$key" -pubout | cmp -s - "$W/ec-p256.spki.pem" &&
    fail "the current version after rotation has version 1's key"
ok "after a rotation custos:key=...;version=1 still signs with v1 (and the current version is v2)"

# ---- openssl.cnf --------------------------------------------------------------
cat >"$W/openssl.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
custos = custos_sect
default = default_sect
[custos_sect]
module = $MOD_DIR/custos.so
custos-addr = http://127.0.0.1:$E2E_PORT
api-key-file = $E2E_DIR/credentials/demo-broker.key
timeout-ms = 20000
activate = 1
[default_sect]
activate = 1
EOF
env -u CUSTOS_ADDR -u CUSTOS_API_KEY_FILE OPENSSL_CONF="$W/openssl.cnf" \
    sh -c 'asan=$1; shift; if [ -n "$asan" ]; then LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 "$@"; else "$@"; fi' \
    _ "$asan" openssl dgst -sha256 -sign "custos:key=$key;version=1" -out "$W/cnfsig" "$W/msg" ||
    fail "signing with the provider configured in openssl.cnf"
openssl dgst -sha256 -verify "$W/ec-p256.spki.pem" -signature "$W/cnfsig" "$W/msg" >/dev/null ||
    fail "openssl.cnf: signature does not verify"
ok "configured by an openssl.cnf provider section (custos-addr, api-key-file) instead of the environment"

# ---- the check binary's kmsd cases ------------------------------------------------
if CUSTOS_PROVIDER_TEST_EC="custos:key=$key" CUSTOS_PROVIDER_TEST_RSA="custos:key=$key_rsa_3072" \
        CUSTOS_TEST_BUILD="$BUILD_DIR" "$BUILD_DIR/tests/test_provider" >"$W/unit.out" 2>&1 &&
        grep -q '^100%: Checks: 10, Failures: 0, Errors: 0' "$W/unit.out"; then
    ok "test_provider against kmsd: EVP_DigestSign, SSL_CTX with an X509_sign'd certificate, signing after fork(), four threads at once"
else
    cat "$W/unit.out"
    fail "test_provider against kmsd"
fi
e2e_stop

# ---- https with a client certificate only (mutual TLS, no API key) ---------
pki="$E2E_DIR/pki"
mkdir -p "$pki"
q() { openssl "$@" >/dev/null 2>&1; }
q req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/O=Custos Test/CN=ca" -keyout "$pki/ca.key" -out "$pki/ca.pem"
leaf() { # name subject ext
    q req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
        -keyout "$pki/$1.key" -out "$pki/$1.csr"
    printf '%s\n' "$3" >"$pki/$1.ext"
    q x509 -req -in "$pki/$1.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 2 -extfile "$pki/$1.ext" -out "$pki/$1.pem"
}
leaf server "/CN=127.0.0.1" "subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth"
leaf broker "/O=Custos Dev/CN=demo-broker" "extendedKeyUsage=clientAuth"
chmod 600 "$pki/broker.key"
/usr/bin/python3 - "$E2E_DIR" <<'PY'
import json, sys
d = sys.argv[1]
c = json.load(open(f"{d}/kmsd.json"))
c["tls"] = {"cert": "pki/server.pem", "key": "pki/server.key", "client_ca": "pki/ca.pem",
            "require_client_cert": True}
json.dump(c, open(f"{d}/kmsd-mtls.json", "w"), indent=2)
PY
e2e_start "$E2E_DIR/kmsd-mtls.json"
if env -u CUSTOS_API_KEY_FILE CUSTOS_ADDR="https://127.0.0.1:$E2E_PORT" CUSTOS_CACERT="$pki/ca.pem" \
        CUSTOS_CLIENT_CERT="$pki/broker.pem" CUSTOS_CLIENT_KEY="$pki/broker.key" \
        sh -c 'asan=$1; shift; if [ -n "$asan" ]; then LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 "$@"; else "$@"; fi' \
        _ "$asan" openssl dgst -provider custos -provider default -sha256 \
        -sign "custos:key=$key;version=1" -out "$W/mtlssig" "$W/msg" 2>"$W/err" &&
        openssl dgst -sha256 -verify "$W/ec-p256.spki.pem" -signature "$W/mtlssig" "$W/msg" >/dev/null; then
    ok "over https with a client certificate and no API key (mutual TLS): the signature verifies"
else
    fail "mutual TLS: $(cat "$W/err")"
fi
# shellcheck disable=SC2086
if (unset CUSTOS_API_KEY_FILE; export CUSTOS_ADDR="https://127.0.0.1:$E2E_PORT"
        ossl pkey $P -in "custos:key=$key" -pubout >/dev/null 2>"$W/err"); then
    fail "kmsd's certificate accepted without its CA"
fi
grep -q 'cannot reach kmsd' "$W/err" && ok "kmsd's certificate from an unknown CA: cannot reach kmsd" ||
    fail "unknown CA: $(cat "$W/err")"
e2e_stop
trap - EXIT

#!/bin/sh
# The XKS proxy API over TLS, as AWS KMS reaches it in production
# (docs/xks.md): kmsd's TLS listener with client certificates required for
# the Twirp API. AWS KMS presents no client certificate (the spec
# deprecated mTLS), so an XKS call without one must be served, verified by
# its SigV4 signature alone, while a Twirp call without one is refused on
# the same listener. curl --aws-sigv4 is the client, over HTTPS, checking
# kmsd's certificate against the test CA.
#
# Prints "ok N - ..."; exits 1 if any check failed.
set -eu
. tests/e2e/lib.sh
e2e_setup xks-tls
W="$E2E_DIR/xks"
pki="$E2E_DIR/pki"
mkdir -p "$W" "$pki"
chmod 700 "$W"
n=0
failed=0
pass() { n=$((n + 1)); echo "ok $n - $1"; }
flunk() { n=$((n + 1)); echo "not ok $n - $1"; failed=$((failed + 1)); }
q() { openssl "$@" >/dev/null 2>&1; }

# A CA, kmsd's server certificate, and a broker's client certificate.
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

AK=$(/usr/bin/python3 -c 'import base64,os; print("AKIA" + base64.b32encode(os.urandom(10)).decode()[:16])')
(umask 077 && /usr/bin/python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())' >"$W/sk")

# The key is made over loopback HTTP first (kmsctl with an API key), then
# kmsd restarts on TLS with client certificates required.
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
K=$("$KMSCTL" key create --region eu-west -q --api-key-file "$E2E_DIR/credentials/demo-admin.key")
e2e_stop
cat >"$W/xks.json" <<EOF
{"endpoints": [
 {"uri_prefix": "/demo-xks", "tenant": "demo",
  "credentials": [{"access_key_id": "$AK", "secret": "file:$W/sk"}],
  "keys": {"$K": ["ENCRYPT", "DECRYPT"]}}]}
EOF
/usr/bin/python3 - "$E2E_DIR/kmsd.json" "$W/xks.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["xks"] = sys.argv[2]
c["tls"] = {"cert": "pki/server.pem", "key": "pki/server.key", "client_ca": "pki/ca.pem",
            "require_client_cert": True}
json.dump(c, open(sys.argv[1], "w"), indent=1)
EOF
e2e_start
URL="https://127.0.0.1:$E2E_PORT"

xcurl() { # xcurl PATH BODYFILE [extra curl args...] -> $W/out, prints the status
    p=$1
    b=$2
    shift 2
    printf 'user = "%s:%s"\n' "$AK" "$(cat "$W/sk")" |
        curl -sS -o "$W/out" -w '%{http_code}' -K - --cacert "$pki/ca.pem" \
            --aws-sigv4 "aws:amz:eu-west-1:kms-xks-proxy" \
            -H "Content-Type: application/json" --data-binary @"$b" "$@" "$URL$p"
}
cat >"$W/enc.json" <<EOF
{"requestMetadata": {"awsPrincipalArn": "arn:aws:iam::123456789012:user/Bob",
 "kmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/tls-1",
 "kmsOperation": "Encrypt", "kmsRequestId": "tls-request-1"},
 "plaintext": "SGVsbG8gV29ybGQh", "encryptionAlgorithm": "AES_GCM"}
EOF
st=$(xcurl "/demo-xks/kms/xks/v1/keys/$K/encrypt" "$W/enc.json" || echo "curl-failed")
[ "$st" = 200 ] && pass "XKS encrypt over TLS without a client certificate: 200 (SigV4 alone)" ||
    { flunk "XKS encrypt over TLS: $st"; sed 's/^/#   /' "$W/out"; echo; }
/usr/bin/python3 - "$W/out" "$W/dec.json" <<'EOF'
import json, sys
try:
    e = json.load(open(sys.argv[1]))
except ValueError:
    e = {}
json.dump({"requestMetadata": {"awsPrincipalArn": "arn:aws:iam::123456789012:user/Bob",
           "kmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/tls-1",
           "kmsOperation": "Decrypt", "kmsRequestId": "tls-request-2"},
           "encryptionAlgorithm": "AES_GCM", "ciphertext": e.get("ciphertext", ""),
           "ciphertextMetadata": e.get("ciphertextMetadata", ""),
           "initializationVector": e.get("initializationVector", ""),
           "authenticationTag": e.get("authenticationTag", "")}, open(sys.argv[2], "w"))
EOF
st=$(xcurl "/demo-xks/kms/xks/v1/keys/$K/decrypt" "$W/dec.json" || echo "curl-failed")
if [ "$st" = 200 ] && grep -q '"plaintext":"SGVsbG8gV29ybGQh"' "$W/out"; then
    pass "XKS decrypt over TLS gives the plaintext back"
else
    flunk "XKS decrypt over TLS: $st"
    sed 's/^/#   /' "$W/out"
    echo
fi
echo '{}' >"$W/health.json"
st=$(xcurl "/demo-xks/kms/xks/v1/health" "$W/health.json" || echo "curl-failed")
[ "$st" = 200 ] && pass "XKS health over TLS: 200" || flunk "XKS health over TLS: $st"

# The same listener still requires a client certificate for Twirp.
st=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$pki/ca.pem" \
    -H 'Content-Type: application/json' -d '{}' "$URL/twirp/custos.v1.KeyService/ListKeys" ||
    echo "refused")
case "$st" in
200) flunk "Twirp without a client certificate was served over the same listener" ;;
*) pass "Twirp without a client certificate refused on the same listener ($st)" ;;
esac
st=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$pki/ca.pem" \
    --cert "$pki/broker.pem" --key "$pki/broker.key" \
    -H 'Content-Type: application/json' -d '{}' "$URL/twirp/custos.v1.KeyService/ListKeys" ||
    echo "curl-failed")
[ "$st" != "curl-failed" ] && [ "$st" != 401 ] &&
    pass "Twirp with the broker's client certificate authenticates ($st)" ||
    flunk "Twirp with a client certificate: $st"

# Plain HTTP on the TLS port is not an XKS path into kmsd.
st=$(printf 'user = "%s:%s"\n' "$AK" "$(cat "$W/sk")" |
    curl -sS -o /dev/null -w '%{http_code}' -K - --max-time 5 \
        --aws-sigv4 "aws:amz:eu-west-1:kms-xks-proxy" -H "Content-Type: application/json" \
        --data-binary @"$W/enc.json" "http://127.0.0.1:$E2E_PORT/demo-xks/kms/xks/v1/keys/$K/encrypt" \
        2>/dev/null || echo "refused")
[ "$st" != 200 ] && pass "plain HTTP to the TLS listener is not served ($st)" ||
    flunk "plain HTTP XKS call served on the TLS port"

e2e_stop
[ "$failed" -eq 0 ]

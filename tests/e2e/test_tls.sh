#!/bin/sh
# TLS and mutual TLS: the principal comes from a verified client
# certificate; a missing, unknown or foreign-CA certificate is refused.
set -eu
. tests/e2e/lib.sh
e2e_setup tls
pki="$E2E_DIR/pki"
mkdir -p "$pki"
q() { openssl "$@" >/dev/null 2>&1; }

ca() { # name
    q req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/O=Custos Test/CN=$1" -keyout "$pki/$1.key" -out "$pki/$1.pem"
}
leaf() { # name ca subject [ext]
    q req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$3" \
        -keyout "$pki/$1.key" -out "$pki/$1.csr"
    printf '%s\n' "${4:-extendedKeyUsage=clientAuth}" >"$pki/$1.ext"
    q x509 -req -in "$pki/$1.csr" -CA "$pki/$2.pem" -CAkey "$pki/$2.key" -CAcreateserial \
        -days 2 -extfile "$pki/$1.ext" -out "$pki/$1.pem"
}
ca ca
ca rogue-ca
leaf server ca "/CN=127.0.0.1" "subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth"
leaf broker ca "/O=Custos Dev/CN=demo-broker"
leaf admin ca "/O=Custos Dev/CN=demo-admin"
leaf stranger ca "/O=Custos Dev/CN=nobody"
leaf rogue rogue-ca "/O=Custos Dev/CN=demo-broker"
# Hostile client certificates, all with a subject the policy knows:
# self-signed, expired (signed by the right CA), and a leaf whose issuer is
# one of two intermediates that certify each other (a cycle, no path to the
# CA).
q req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/O=Custos Dev/CN=demo-broker" -keyout "$pki/selfsigned.key" -out "$pki/selfsigned.pem"
/usr/bin/python3 tests/e2e/tls_certs.py "$pki"

/usr/bin/python3 - "$E2E_DIR" <<'PY'
import json, sys
d = sys.argv[1]
c = json.load(open(f"{d}/kmsd.json"))
c["tls"] = {"cert": "pki/server.pem", "key": "pki/server.key", "client_ca": "pki/ca.pem",
            "require_client_cert": True}
json.dump(c, open(f"{d}/kmsd-mtls.json", "w"), indent=2)
c["tls"] = {"cert": "pki/server.pem", "key": "pki/server.key"}
json.dump(c, open(f"{d}/kmsd-tls.json", "w"), indent=2)
PY
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto

e2e_start "$E2E_DIR/kmsd-mtls.json"
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
PYTHONPATH="$E2E_DIR/py" /usr/bin/python3 tests/e2e/tls_test.py "$E2E_DIR" "$E2E_PORT" mtls
e2e_stop
e2e_start "$E2E_DIR/kmsd-tls.json"
protoc --python_out="$E2E_DIR/py" -Iproto proto/audit.proto
# tls mode also reads back the audit events of mtls mode's refusals.
PYTHONPATH="$E2E_DIR/py" /usr/bin/python3 tests/e2e/tls_test.py "$E2E_DIR" "$E2E_PORT" tls
e2e_scan_tokens
e2e_stop
trap - EXIT

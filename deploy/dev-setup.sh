#!/bin/sh
# Create a complete development (or test) installation of Custos under DIR:
#
#   deploy/dev-setup.sh DIR [PORT]
#
#   DIR/hsm/            SoftHSMv2 config and tokens custos-eu-west, custos-us-east,
#                       each with its region's escrow key (kmsctl hsm init-region)
#   DIR/credentials/    random API keys, one 0600 file per principal:
#                       demo-broker, demo-broker-us (home us-east), demo-admin,
#                       officer-1..3, auditor (both regions), auditor-eu
#                       (eu-west only), operator, other-broker, other-admin and
#                       other-officer (a second tenant, "other"), bank-admin,
#                       bank-broker, bank-officer-1..3 (an escrow tenant, "bank");
#                       <officer>.key.pem: each officer's ECDSA P-256 key;
#                       bank-legal-eu/us.rsa.pem: recovery recipients' RSA keys
#   DIR/policy.json     tenants "demo", "other" and "bank", principals above
#   DIR/kmsd.json       dev-mode config listening on 127.0.0.1:PORT (8700)
#   DIR/kmsd.db         created by kmsd on first start
#   DIR/audit/          the audit logs, one per region (created by kmsd)
#
# Idempotent: existing files are kept. Environment knobs for tests:
# CUSTOS_DEV_DAY_SECONDS (length of a deletion "day", default 86400),
# CUSTOS_DEV_MIN_DAYS (default 7), CUSTOS_DEV_SWEEP_S (default 60),
# CUSTOS_DEV_HEAD_EVENTS / CUSTOS_DEV_HEAD_MS (signed head cadence, 1000 / 5000),
# CUSTOS_DEV_RECOVERY_TTL_S / CUSTOS_DEV_TIME_LOCK_S (the bank tenant's
# recovery request lifetime and time lock, 86400 / 0).
# CUSTOS_TEST_TOKEN=nss: the tokens are NSS softoken databases
# (deploy/dev-nss.sh) instead of SoftHSMv2's, and kmsd.json names
# libsoftokn3.so with its module_args (docs/pkcs11.md, "NSS softoken").
set -eu
[ $# -ge 1 ] || { echo "usage: $0 DIR [PORT]" >&2; exit 2; }
dir=$1
port=${2:-8700}
BUILD=${BUILD:-build}
KMSCTL=${KMSCTL:-$BUILD/bin/kmsctl}
PY=/usr/bin/python3

umask 077
mkdir -p "$dir/credentials"
module=/usr/lib/softhsm/libsofthsm2.so
module_args=
if [ "${CUSTOS_TEST_TOKEN:-softhsm}" = nss ]; then
    sh "$(dirname "$0")/dev-nss.sh" "$dir/hsm" eu-west us-east >/dev/null
    module=${CUSTOS_NSS_MODULE:-/usr/lib/x86_64-linux-gnu/libsoftokn3.so}
    module_args=$(cat "$dir/hsm/module-args")
else
    KMSCTL="$KMSCTL" sh "$(dirname "$0")/dev-hsm.sh" "$dir/hsm" eu-west us-east >/dev/null
fi
dir=$(cd "$dir" && pwd)
[ -z "$module_args" ] || module_args=$(cat "$dir/hsm/module-args")

# Each region's escrow key (kmsctl hsm init-region is idempotent).
for region in eu-west us-east; do
    if ! out=$(SOFTHSM2_CONF="$dir/hsm/softhsm2.conf" CUSTOS_PKCS11_MODULE="$module" \
            CUSTOS_PKCS11_MODULE_ARGS="$module_args" "$KMSCTL" hsm init-region \
            --label "custos-$region" --region "$region" \
            --pin-source "file:$dir/hsm/pins/$region.pin" 2>&1); then
        echo "$out" >&2
        exit 1
    fi
done

for p in demo-broker demo-broker-us demo-admin officer-1 officer-2 officer-3 auditor auditor-eu \
         operator other-broker other-admin other-officer bank-admin bank-broker \
         bank-officer-1 bank-officer-2 bank-officer-3; do
    f="$dir/credentials/$p.key"
    [ -f "$f" ] || { printf 'ck_%s\n' "$(openssl rand -hex 24)" >"$f"; chmod 600 "$f"; }
done
for o in officer-1 officer-2 officer-3 other-officer bank-officer-1 bank-officer-2 bank-officer-3; do
    k="$dir/credentials/$o.key.pem"
    [ -f "$k" ] || openssl ecparam -name prime256v1 -genkey -noout -out "$k" 2>/dev/null
    [ -f "$k.pub" ] || openssl ec -in "$k" -pubout -out "$k.pub" 2>/dev/null
done
# Recipients of EXPORT_WRAPPED recoveries (a legal-hold team per region):
# their private keys stay here, only the public halves go in the policy.
for r in bank-legal-eu bank-legal-us; do
    k="$dir/credentials/$r.rsa.pem"
    [ -f "$k" ] || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$k" 2>/dev/null
    [ -f "$k.pub" ] || openssl pkey -in "$k" -pubout -out "$k.pub" 2>/dev/null
done

if [ ! -f "$dir/policy.json" ]; then
    CUSTOS_DEV_RECOVERY_TTL_S=${CUSTOS_DEV_RECOVERY_TTL_S:-86400} \
    CUSTOS_DEV_TIME_LOCK_S=${CUSTOS_DEV_TIME_LOCK_S:-0} "$PY" - "$dir" <<'PYEOF'
import hashlib, json, os, sys
d = sys.argv[1]
def h(p):
    key = open(f"{d}/credentials/{p}.key").read().strip()
    return hashlib.sha256(key.encode()).hexdigest()
def pub(p):
    return open(f"{d}/credentials/{p}.key.pem.pub").read()
def rsa_pub(r):
    return open(f"{d}/credentials/{r}.rsa.pem.pub").read()
def principal(pid, role, home, **extra):
    p = {"id": pid, "role": role, "home_region": home, "api_key_sha256": h(pid)}
    p.update(extra)
    return p
policy = {
    "version": 1,
    "description": "Custos development policy, made by deploy/dev-setup.sh with random credentials.",
    "tenants": [
        {
            "id": "demo",
            "allowed_regions": ["eu-west", "us-east"],
            "escrow_required": False,
            "quorum": {"approvals": 2, "officers": ["officer-1", "officer-2", "officer-3"]},
            "principals": [
                principal("demo-broker", "broker", "eu-west",
                          cert_subject="CN=demo-broker,O=Custos Dev"),
                principal("demo-broker-us", "broker", "us-east"),
                principal("demo-admin", "key-admin", "eu-west",
                          cert_subject="CN=demo-admin,O=Custos Dev"),
            ] + [principal(o, "officer", "eu-west", public_key_pem=pub(o))
                 for o in ("officer-1", "officer-2", "officer-3")],
        },
        {
            "id": "other",
            "allowed_regions": ["eu-west"],
            "escrow_required": False,
            "principals": [
                principal("other-broker", "broker", "eu-west"),
                principal("other-admin", "key-admin", "eu-west"),
                principal("other-officer", "officer", "eu-west",
                          public_key_pem=pub("other-officer")),
            ],
        },
        {
            # A regulated tenant: every key is escrowed at birth; 2 of 3
            # officers recover (docs/escrow-recovery.md).
            "id": "bank",
            "allowed_regions": ["eu-west", "us-east"],
            "escrow_required": True,
            "quorum": {"approvals": 2,
                       "officers": ["bank-officer-1", "bank-officer-2", "bank-officer-3"],
                       "request_ttl_s": int(os.environ["CUSTOS_DEV_RECOVERY_TTL_S"]),
                       "time_lock_s": int(os.environ["CUSTOS_DEV_TIME_LOCK_S"])},
            "recovery_recipients": [
                {"id": "bank-legal-eu", "region": "eu-west", "public_key_pem": rsa_pub("bank-legal-eu")},
                {"id": "bank-legal-us", "region": "us-east", "public_key_pem": rsa_pub("bank-legal-us")},
            ],
            "principals": [
                principal("bank-admin", "key-admin", "eu-west"),
                principal("bank-broker", "broker", "eu-west"),
            ] + [principal(o, "officer", "eu-west", public_key_pem=pub(o))
                 for o in ("bank-officer-1", "bank-officer-2", "bank-officer-3")],
        },
    ],
    "principals": [
        # Auditors read the logs of their home region and allowed_regions.
        principal("auditor", "auditor", "eu-west", allowed_regions=["us-east"]),
        principal("auditor-eu", "auditor", "eu-west"),
        principal("operator", "operator", "eu-west"),
    ],
}
with open(f"{d}/policy.json", "w") as f:
    json.dump(policy, f, indent=2)
PYEOF
fi

if [ ! -f "$dir/kmsd.json" ]; then
    # The NSS string holds paths, labels and quotes ('), never '"' or '\\'.
    margs_line=
    [ -z "$module_args" ] || margs_line="
    \"module_args\": \"$module_args\","
    cat >"$dir/kmsd.json" <<EOF
{
  "mode": "dev",
  "listen": { "address": "127.0.0.1", "port": $port },
  "pkcs11": {
    "module": "$module",$margs_line
    "tokens": [
      { "region": "eu-west", "token": "custos-eu-west", "pin": "file:hsm/pins/eu-west.pin" },
      { "region": "us-east", "token": "pkcs11:token=custos-us-east", "pin": "file:hsm/pins/us-east.pin" }
    ]
  },
  "policy": "policy.json",
  "store": "kmsd.db",
  "limits": { "max_body_bytes": 98304, "max_connections": 512, "connection_timeout_s": 30 },
  "audit": {
    "dir": "audit",
    "head_every_events": ${CUSTOS_DEV_HEAD_EVENTS:-1000},
    "head_every_ms": ${CUSTOS_DEV_HEAD_MS:-5000}
  },
  "deletion": {
    "default_days": 30,
    "min_days": ${CUSTOS_DEV_MIN_DAYS:-7},
    "day_seconds": ${CUSTOS_DEV_DAY_SECONDS:-86400},
    "sweep_interval_s": ${CUSTOS_DEV_SWEEP_S:-60}
  }
}
EOF
fi
echo "dev installation ready in $dir"

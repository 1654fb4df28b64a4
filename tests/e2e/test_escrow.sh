#!/bin/sh
# Escrow at birth and M-of-N recovery (docs/escrow-recovery.md), end to end:
# the full flow, every refusal with the tokens' objects counted, expiry and
# the time lock (after policy reloads), and the audit trail of every step.
set -eu
. tests/e2e/lib.sh
e2e_setup escrow
CUSTOS_DEV_DAY_SECONDS=1 CUSTOS_DEV_MIN_DAYS=0 CUSTOS_DEV_SWEEP_S=1 CUSTOS_DEV_HEAD_MS=100 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto proto/escrow.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
/usr/bin/python3 tests/e2e/escrow_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" main

# ---- the walk-through of docs/escrow-recovery.md, with kmsctl and openssl ----
ok() { echo "ok - $1"; }
fail() { echo "not ok - $1"; exit 1; }
cred() { echo "$E2E_DIR/credentials/$1"; }
as() { who=$1; shift; CUSTOS_API_KEY_FILE=$(cred "$who.key") "$KMSCTL" "$@"; }
W="$E2E_DIR/walk"
mkdir -p "$W"
key=$(as bank-admin key create --region eu-west -q)
printf 'walkthrough-sentinel' | as bank-broker encrypt --key-id "$key" >"$W/msg.ct"
as bank-admin key schedule-deletion "$key" --days 1 >/dev/null
i=0
until as bank-admin key describe "$key" | grep -q '^state: DESTROYED'; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "key not destroyed"; sleep 0.3
done
id=$(as bank-officer-1 recovery request "$key" --mode restore --state enabled \
       --justification accidental-deletion --text "deleted by mistake in change CHG-1042" \
       --case INC-7731 -q)
[ ${#id} -eq 32 ] && ok "kmsctl recovery request prints the recovery id" || fail "request: $id"
as bank-officer-2 recovery approve "$id" --officer-key "$(cred bank-officer-2.key.pem)" \
    >"$W/approve.out" 2>"$W/approve.err" &&
    grep -q "^approvals: *1 of 2" "$W/approve.out" &&
    grep -q "^recovery: $id" "$W/approve.err" &&
    ok "kmsctl recovery approve shows the statement, signs locally, sends: 1 of 2" ||
    fail "approve with --officer-key: $(cat "$W/approve.out" "$W/approve.err")"
# Officer 3 signs offline; anyone can check the signature with openssl.
as bank-officer-3 recovery show "$id" --statement-out "$W/statement.txt" >/dev/null
"$KMSCTL" officer sign --officer-key "$(cred bank-officer-3.key.pem)" --in "$W/statement.txt" \
    --out "$W/sig.der"
openssl dgst -sha256 -verify "$(cred bank-officer-3.key.pem.pub)" -signature "$W/sig.der" \
    "$W/statement.txt" >/dev/null &&
    ok "an offline signature verifies with openssl dgst -verify" || fail "openssl verify"
openssl dgst -sha256 -sign "$(cred bank-officer-3.key.pem)" -out "$W/sig2.der" "$W/statement.txt"
openssl dgst -sha256 -verify "$(cred bank-officer-3.key.pem.pub)" -signature "$W/sig2.der" \
    "$W/statement.txt" >/dev/null || fail "openssl-made signature"
as bank-officer-3 recovery approve "$id" --signature "$W/sig.der" | grep -q '^state: *APPROVED' &&
    ok "kmsctl recovery approve --signature: APPROVED" || fail "approve --signature"
chmod 644 "$W/sig.der"
cp "$(cred bank-officer-1.key.pem)" "$W/loose.pem"; chmod 644 "$W/loose.pem"
if "$KMSCTL" officer sign --officer-key "$W/loose.pem" --in "$W/statement.txt" >/dev/null 2>&1; then
    fail "a group-readable officer key was used"
fi
ok "kmsctl refuses an officer key file readable by others"
as bank-officer-1 recovery execute "$id" | grep -q "key is ENABLED again, current version 1" &&
    ok "kmsctl recovery execute restores the key" || fail "execute"
[ "$(as bank-broker decrypt --in "$W/msg.ct")" = "walkthrough-sentinel" ] &&
    ok "the old ciphertext decrypts again" || fail "decrypt after restore"
as bank-admin recovery list | grep -q "^$id  EXECUTED" && ok "kmsctl recovery list" ||
    fail "list"
# EXPORT to the registered recipient, opened with the page's openssl commands.
id=$(as bank-officer-1 recovery request "$key" --mode export --recipient bank-legal-eu \
       --justification lawful-request --text "court order 12/2026" --case COURT-7 -q)
as bank-officer-2 recovery approve "$id" --officer-key "$(cred bank-officer-2.key.pem)" \
    >/dev/null 2>&1
as bank-officer-3 recovery approve "$id" --officer-key "$(cred bank-officer-3.key.pem)" \
    >/dev/null 2>&1
as bank-officer-1 recovery execute "$id" --out-dir "$W" >"$W/exec.out"
# The OAEP hash follows the token: SHA-1 on SoftHSMv2, SHA-256 where the
# token takes it (NSS's softoken; docs/pkcs11.md).
md=sha1
grep -q "wrote $W/$key-v1.wrapped (RSA_AES_KEY_WRAP_SHA_256)" "$W/exec.out" && md=sha256
grep -q "wrote $W/$key-v1.wrapped (RSA_AES_KEY_WRAP_SHA_1)" "$W/exec.out" ||
    [ $md = sha256 ] || fail "execute --out-dir: $(cat "$W/exec.out")"
(
    cd "$W"
    cp "$(cred bank-legal-eu.rsa.pem)" bank-legal-eu.pem
    mv "$key-v1.wrapped" key-v1.wrapped
    n=384   # bytes of the recipient's RSA modulus (3072 bits)
    head -c $n key-v1.wrapped > oaep.bin
    tail -c +$((n + 1)) key-v1.wrapped > kwp.bin
    openssl pkeyutl -decrypt -inkey bank-legal-eu.pem -in oaep.bin -out eph.bin \
        -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:$md -pkeyopt rsa_mgf1_md:$md
    openssl enc -d -id-aes256-wrap-pad -iv A65959A6 -K "$(od -An -tx1 -v eph.bin | tr -d ' \n')" \
        -in kwp.bin -out key-v1.bin
)
/usr/bin/python3 - "$W/key-v1.bin" "$W/msg.ct" <<'PYEOF' && ok "the recipient's openssl commands recover the key; it opens the old ciphertext" || fail "exported key"
import sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key, blob = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
r = blob[2]
hl = 36 + r  # format 2 (docs/ciphertext-format.md)
assert AESGCM(key).decrypt(blob[23 + r:35 + r], blob[hl:], blob[:hl] + b"\0\0") == b"walkthrough-sentinel"
PYEOF

quorum() { # quorum TTL TIME_LOCK [PATTERN]: set the bank tenant's recovery timing,
           # SIGHUP, wait for PATTERN (default: the policy loaded) in the log
    /usr/bin/python3 - "$E2E_DIR/policy.json" "$1" "$2" <<'PYEOF'
import json, sys
p = json.load(open(sys.argv[1]))
for t in p["tenants"]:
    if t["id"] == "bank":
        t["quorum"]["request_ttl_s"] = int(sys.argv[2])
        t["quorum"]["time_lock_s"] = int(sys.argv[3])
json.dump(p, open(sys.argv[1], "w"), indent=2)
PYEOF
    pat=${3:-loaded .*policy.json}
    before=$(grep -c "$pat" "$E2E_DIR/kmsd.log" || true)
    kill -HUP "$E2E_PID"
    i=0
    while [ "$(grep -c "$pat" "$E2E_DIR/kmsd.log" || true)" -le "$before" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "not ok - no '$pat' after SIGHUP"; exit 1; }
        sleep 0.1
    done
}
quorum 3 0
/usr/bin/python3 tests/e2e/escrow_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" timing
quorum 7200 3600
/usr/bin/python3 tests/e2e/escrow_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" timelock

# A time lock not below the request's lifetime is refused, and kmsd keeps
# the policy it has.
quorum 60 60 'quorum.time_lock_s: must be below request_ttl_s'
echo "ok - a time lock >= request_ttl_s is refused at reload, naming the field"
quorum 86400 0
# Restored, exported and escrowed keys, the escrow keys: all follow the templates.
e2e_scan_tokens
e2e_stop

# ---- a failing escrow wrap creates nothing ----------------------------------------
# kmsd talks to the HSM through the PKCS#11 spy, which refuses every
# C_WrapKey: escrow at birth fails at its wrap step, and the key must not
# exist afterwards, in the store or in the token.
cc -Wall -Wextra -Werror -shared -fPIC -o "$E2E_DIR/p11_spy.so" tests/e2e/p11_spy.c \
    $(pkg-config --cflags p11-kit-1) -ldl -pthread
export CUSTOS_P11SPY_LOG="$E2E_DIR/p11_spy.log"
/usr/bin/python3 - "$E2E_DIR/kmsd.json" "$E2E_DIR/p11_spy.so" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["pkcs11"]["module"] = sys.argv[2]
json.dump(c, open(sys.argv[1], "w"), indent=2)
PYEOF
objects() { # token objects of eu-west, counted with PyKCS11
    /usr/bin/python3 - "$E2E_DIR" <<'PYEOF'
import os, sys, PyKCS11
d = sys.argv[1]
sys.path.insert(0, "tests/e2e")
import p11_module
lib = p11_module.pykcs11(os.environ.get("CUSTOS_TEST_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
slot = [s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == "custos-eu-west"][0]
s = lib.openSession(slot); s.login(open(f"{d}/hsm/pins/eu-west.pin").read().strip())
print(len(s.findObjects([(PyKCS11.CKA_TOKEN, True)])))
PYEOF
}
e2e_start
before_objs=$(objects)
before_keys=$(as bank-admin key list --all -q | wc -l)
if as bank-admin key create --region eu-west -q >"$W/create.out" 2>&1; then
    fail "a key was created although its escrow wrap failed"
fi
grep -q "C_WrapKey" "$CUSTOS_P11SPY_LOG" || fail "the spy did not see the escrow wrap"
[ "$(objects)" = "$before_objs" ] && [ "$(as bank-admin key list --all -q | wc -l)" = "$before_keys" ] &&
    ok "an escrow wrap the HSM refuses: CreateKey fails, no key in the store, no object in the token" ||
    fail "a half-escrowed key was left behind"
as demo-admin key create --region eu-west -q >/dev/null &&
    ok "tenants without escrow are unaffected" || fail "demo CreateKey through the spy"
e2e_stop
trap - EXIT
# API keys (one line) and private keys (their first base64 line).
for f in "$E2E_DIR"/credentials/*.key "$E2E_DIR"/credentials/*.pem; do
    case $f in *.key) secret=$(cat "$f") ;; *) secret=$(sed -n 2p "$f") ;; esac
    [ -n "$secret" ] || { echo "not ok - empty credential file $f"; exit 1; }
    if grep -qF "$secret" "$E2E_DIR/kmsd.log"; then
        echo "not ok - a credential appears in the kmsd log ($f)"; exit 1
    fi
done
echo "ok - no credential or officer key in the operational log"

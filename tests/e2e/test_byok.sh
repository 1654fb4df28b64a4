#!/bin/sh
# BYOK end to end (docs/byok.md):
#   - the page's openssl flow, run verbatim, ending with the exit decrypt by
#     a C program on OpenSSL alone, outside Custos;
#   - pkcs11-tool showing the imported key sensitive and non-extractable in
#     the right region's token;
#   - kmsctl byok wrap and its refusals;
#   - every bad input, re-import, rotation, limits, concurrency, and kmsd's
#     memory (byok_test.py main), with the tokens' objects counted;
#   - kmsd talking to the HSM through a PKCS#11 spy that fails the test on
#     any read of CKA_VALUE or any C_WrapKey;
#   - expiry, the sweep, and what crashes leave behind (import.token_ttl_s 2).
set -eu
. tests/e2e/lib.sh
e2e_setup byok
PY=/usr/bin/python3
PIN=$(cat "$E2E_DIR/hsm/pins/eu-west.pin")

ok() { echo "ok - $1"; }
fail() { echo "not ok - $1"; exit 1; }

mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto

# kmsd reaches SoftHSMv2 through the spy.
cc -Wall -Wextra -Werror -shared -fPIC -o "$E2E_DIR/p11_spy.so" tests/e2e/p11_spy.c \
    $(pkg-config --cflags p11-kit-1) -ldl -pthread
export CUSTOS_P11SPY_LOG="$E2E_DIR/p11_spy.log"
: >"$CUSTOS_P11SPY_LOG"
set_config() { # set_config KEY JSON_VALUE: top-level key of kmsd.json
    "$PY" - "$E2E_DIR/kmsd.json" "$1" "$2" <<'EOF'
import json, sys
path, key, value = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
c = json.load(open(path))
if key == "module":
    c["pkcs11"]["module"] = value
else:
    c[key] = value
json.dump(c, open(path + ".new", "w"), indent=2)
EOF
    mv "$E2E_DIR/kmsd.json.new" "$E2E_DIR/kmsd.json"
}
set_config module "\"$E2E_DIR/p11_spy.so\""
# The spy forwards to the module under test (NSS's softoken in the NSS pass;
# C_Initialize's arguments pass through it).
export CUSTOS_P11SPY_MODULE="${CUSTOS_TEST_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT

# ---- 1. the documented flow, verbatim -------------------------------------------
doc="$E2E_DIR/doc"
mkdir -p "$doc/var" "$doc/build"
ln -s "$E2E_DIR" "$doc/var/dev"
ln -s "$BUILD_DIR/bin" "$doc/build/bin"
"$PY" tests/e2e/byok_doc.py docs/byok.md "$doc" >/dev/null
# The page's blocks, unchanged; afterwards, remember the key id for the checks.
echo 'echo "$id" > flow-key-id' >>"$doc/flow.sh"
if (cd "$doc" && sh -eu flow.sh) >"$doc/out" 2>"$doc/err"; then
    ok "the openssl flow of docs/byok.md runs verbatim"
else
    cat "$doc/err"; fail "the openssl flow of docs/byok.md runs verbatim"
fi
id=$(cat "$doc/flow-key-id")
[ "$(tail -n 1 "$doc/out")" = "hello, +14155550123" ] ||
    { cat "$doc/out"; fail "the exit decrypt prints the plaintext"; }
ok "the exit decrypt, OpenSSL alone outside Custos, gives back what Custos encrypted"
grep -q "^key_check_value: " "$doc/out" || fail "import prints a key check value"
kcv=$(sed -n 's/^key_check_value: //p' "$doc/out")
local_kcv=$("$PY" -c '
import hashlib, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
k = open(sys.argv[1], "rb").read()
print(hashlib.sha256(AESGCM(k).encrypt(b"\0" * 12, b"\0" * 16, b"custos-kcv-v1")).hexdigest())' \
    "$doc/tenant-key.bin")
[ "$kcv" = "$local_kcv" ] || fail "the printed key check value is the tenant's own"
ok "the key check value kmsctl prints matches the documented recipe on the tenant's copy"
if (cd "$doc" && ./custos-decrypt tenant-key.bin msg.ct conv=43) >/dev/null 2>&1; then
    fail "the exit decrypt refuses another context"
fi
head -c 32 /dev/urandom >"$doc/wrong-key.bin"
if (cd "$doc" && ./custos-decrypt wrong-key.bin msg.ct conv=42) >/dev/null 2>&1; then
    fail "the exit decrypt refuses another key"
fi
ok "the exit decrypt refuses another context and another key"
cc -Wall -Wextra -Werror -o "$doc/custos-decrypt-strict" "$doc/custos-decrypt.c" -lcrypto ||
    fail "custos-decrypt.c compiles with -Wall -Wextra -Werror"
ok "the documented C program compiles cleanly with -Wall -Wextra -Werror"

# ---- 2. pkcs11-tool: the imported key in the right token ----------------------------
# pkcs11-tool cannot give NSS's softoken its initialisation string; in the
# NSS pass the template scan (end of this test) reads the key instead.
if [ "${CUSTOS_TEST_TOKEN:-softhsm}" != nss ]; then
p11tool() { # p11tool TOKEN_LABEL: list the token's secret keys
    pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --login --pin "$2" \
        --token-label "$1" --list-objects --type secrkey 2>/dev/null
}
p11tool custos-eu-west "$PIN" >"$E2E_DIR/p11tool.out"
awk -v l="custos:key:$id:v1" '
    /^Secret Key Object/ { inobj = 0 }
    $1 == "label:" && $2 == l { inobj = 1; found = 1 }
    inobj && $1 == "Access:" { access = $0 }
    inobj && $1 == "Usage:" { usage = $0 }
    END {
        if (!found) exit 1
        print access; print usage
        if (access !~ /sensitive/ || access ~ /[^-]extractable/ && access !~ /never extractable/) exit 2
        if (usage !~ /encrypt/ || usage !~ /decrypt/ || usage ~ /wrap/) exit 3
    }' "$E2E_DIR/p11tool.out" >"$E2E_DIR/p11tool.key" ||
    { cat "$E2E_DIR/p11tool.out"; fail "pkcs11-tool shows the key sensitive, not extractable"; }
grep -q "extractable" "$E2E_DIR/p11tool.key" && ! grep -q "never extractable" "$E2E_DIR/p11tool.key" &&
    fail "pkcs11-tool: the key must not be extractable"
ok "pkcs11-tool shows the imported key in custos-eu-west: $(head -n 1 "$E2E_DIR/p11tool.key" | sed 's/^ *//'), encrypt/decrypt only"
PIN_US=$(cat "$E2E_DIR/hsm/pins/us-east.pin")
if p11tool custos-us-east "$PIN_US" | grep -q "custos:key:$id"; then
    fail "the key is in no other region's token"
fi
ok "and in no other region's token (custos-us-east)"
fi

# ---- 3. kmsctl byok wrap ------------------------------------------------------------------
w="$E2E_DIR/wrap"
mkdir -p "$w"
export CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/demo-admin.key"
kid=$("$KMSCTL" key create --region eu-west --origin external -q)
"$KMSCTL" key import-params "$kid" --out-public-key "$w/pub.pem" --json >"$w/params.json"
# The OAEP hashes follow the token: SHA-1 only on SoftHSMv2, SHA-256 first
# where the token takes it (NSS's softoken; docs/pkcs11.md).
"$PY" -c 'import json,os,sys; j=json.load(open(sys.argv[1])); want = ["RSA_AES_KEY_WRAP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1"] if os.environ.get("CUSTOS_TEST_TOKEN") == "nss" else ["RSA_AES_KEY_WRAP_SHA_1"]; assert j["wrapping_algorithms"] == want and len(j["import_token"]) == 44, j' "$w/params.json" ||
    fail "import-params --json without --out-token prints the token in base64"
"$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["import_token"])' "$w/params.json" >"$w/token.b64"
(umask 077; head -c 32 /dev/urandom >"$w/key.bin")
"$KMSCTL" byok wrap --public-key "$w/pub.pem" --key "$w/key.bin" --algorithm RSA_AES_KEY_WRAP_SHA_1 \
    --out "$w/wrapped.bin" || fail "kmsctl byok wrap"
[ "$(wc -c <"$w/wrapped.bin")" -eq 424 ] || fail "kmsctl byok wrap writes 424 bytes"
"$KMSCTL" key import "$kid" --token "$w/token.b64" --wrapped "$w/wrapped.bin" \
    --algorithm RSA_AES_KEY_WRAP_SHA_1 --json >"$w/import.json" ||
    fail "kmsctl key import of kmsctl byok wrap's output"
"$PY" - "$w/import.json" "$w/key.bin" <<'EOF' || fail "the imported key is the wrapped one"
import hashlib, json, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
j, k = json.load(open(sys.argv[1])), open(sys.argv[2], "rb").read()
kcv = hashlib.sha256(AESGCM(k).encrypt(b"\0" * 12, b"\0" * 16, b"custos-kcv-v1")).hexdigest()
assert j["state"] == "ENABLED" and j["imported_version"] == 1 and j["key_check_value"] == kcv, j
EOF
ok "kmsctl byok wrap + kmsctl key import (token in base64): the key is the tenant's (KCV)"
rc=0; "$KMSCTL" key import "$kid" --token "$w/token.b64" --wrapped "$w/wrapped.bin" 2>"$w/err" || rc=$?
[ $rc -eq 1 ] && grep -q "already used" "$w/err" || fail "kmsctl: a used token is refused (exit 1)"
ok "kmsctl key import: a used token is refused with exit code 1"
head -c 31 /dev/urandom >"$w/short.bin"
rc=0; "$KMSCTL" byok wrap --public-key "$w/pub.pem" --key "$w/short.bin" \
    --algorithm RSA_AES_KEY_WRAP_SHA_1 --out "$w/x.bin" 2>"$w/err" || rc=$?
[ $rc -eq 4 ] && grep -q "exactly 32" "$w/err" && [ ! -e "$w/x.bin" ] ||
    fail "byok wrap refuses a 31-byte key"
head -c 33 /dev/urandom >"$w/long.bin"
rc=0; "$KMSCTL" byok wrap --public-key "$w/pub.pem" --key "$w/long.bin" \
    --algorithm RSA_AES_KEY_WRAP_SHA_1 --out "$w/x.bin" 2>"$w/err" || rc=$?
[ $rc -eq 4 ] && [ ! -e "$w/x.bin" ] || fail "byok wrap refuses a 33-byte key"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null |
    openssl pkey -pubout -out "$w/rsa2048.pem" 2>/dev/null
rc=0; "$KMSCTL" byok wrap --public-key "$w/rsa2048.pem" --key "$w/key.bin" \
    --algorithm RSA_AES_KEY_WRAP_SHA_1 --out "$w/x.bin" 2>"$w/err" || rc=$?
[ $rc -eq 4 ] && grep -q "RSA-3072" "$w/err" || fail "byok wrap refuses a non-RSA-3072 key"
rc=0; "$KMSCTL" byok wrap --public-key "$w/pub.pem" --key "$w/key.bin" --out "$w/x.bin" 2>/dev/null || rc=$?
[ $rc -eq 2 ] || fail "byok wrap needs --algorithm"
chmod 644 "$w/key.bin"
"$KMSCTL" byok wrap --public-key "$w/pub.pem" --key "$w/key.bin" --algorithm RSA_AES_KEY_WRAP_SHA_256 \
    --out "$w/x.bin" 2>"$w/err" && grep -q "readable by group or others" "$w/err" ||
    fail "byok wrap warns about a key file others can read"
ok "kmsctl byok wrap refuses 31- and 33-byte keys, a non-RSA-3072 key, no algorithm; warns on mode 644"
rc=0; "$KMSCTL" key import "$kid" --token "$w/token.b64" --wrapped "$w/short.bin" 2>/dev/null || rc=$?
[ $rc -eq 4 ] || fail "kmsctl key import refuses a wrapped file that is not 424 bytes, locally"
ok "kmsctl key import refuses a wrapped file that is not 424 bytes before sending it"

# ---- 4. the API, every bad input, counted objects ---------------------------------------
PYTHONPATH="$E2E_DIR/py" "$PY" tests/e2e/byok_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" main

# ---- 5. nothing read key material out of the HSM ----------------------------------------------
if grep -q VIOLATION "$CUSTOS_P11SPY_LOG"; then
    grep VIOLATION "$CUSTOS_P11SPY_LOG" | sort | uniq -c
    fail "no C_GetAttributeValue(CKA_VALUE) and no C_WrapKey reached the HSM"
fi
oaep=$(grep -c "C_UnwrapKey mechanism 0x9$" "$CUSTOS_P11SPY_LOG" || true)
# RFC 5649: CKM_AES_KEY_WRAP_PAD (SoftHSMv2) or CKM_AES_KEY_WRAP_KWP (NSS).
kwp=$(grep -c "C_UnwrapKey mechanism 0x210[ab]$" "$CUSTOS_P11SPY_LOG" || true)
[ "$oaep" -gt 10 ] && [ "$kwp" -gt 10 ] || fail "the spy saw the imports ($oaep OAEP, $kwp KWP unwraps)"
ok "through a PKCS#11 spy: $oaep OAEP and $kwp RFC 5649 unwraps, no CKA_VALUE read, no C_WrapKey"
# And in the source: no code names CKA_VALUE, only pkcs11/ talks PKCS#11, and
# the import code has no way to wrap.
if grep -rnw "CKA_VALUE" pkcs11 kms policy; then
    fail "no source file names CKA_VALUE"
fi
if grep -rln "p11-kit/pkcs11.h\|C_GetAttributeValue\|C_WrapKey" kms policy; then
    fail "only pkcs11/ calls PKCS#11"
fi
if grep -nE '(^|[^A-Za-z0-9_])(C_[A-Z][A-Za-z]+|p11_kwp_wrap|p11_escrow_and_lock)\(' kms/keys/kms_import.c; then
    fail "kms_import.c neither wraps nor calls PKCS#11"
fi
ok "source: no CKA_VALUE anywhere, PKCS#11 only in pkcs11/, no wrap call in the import code"

# ---- 6. expiry, the sweep, and crash leftovers -------------------------------------------------
e2e_stop
trap - EXIT
PYTHONPATH="$E2E_DIR/py" "$PY" tests/e2e/byok_test.py "$E2E_DIR" "$E2E_PORT" 0 crash-prep
set_config import '{"token_ttl_s": 2}'
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
PYTHONPATH="$E2E_DIR/py" "$PY" tests/e2e/byok_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" expiry
e2e_scan_tokens
e2e_stop
trap - EXIT
! grep -q VIOLATION "$CUSTOS_P11SPY_LOG" || fail "no key material read after the restart either"

# ---- 7. nothing secret in the operational log ----------------------------------------------------
for f in "$doc/tenant-key.bin" "$w/key.bin"; do
    hex=$(od -An -tx1 -v "$f" | tr -d ' \n')
    b64=$(base64 -w0 <"$f")
    if grep -qiF -e "$hex" -e "$b64" "$E2E_DIR/kmsd.log"; then
        fail "a tenant key appears in the kmsd log"
    fi
done
ok "no tenant key in the operational log"

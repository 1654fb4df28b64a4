#!/bin/sh
# Ciphertext kinds and ReEncrypt residency, end to end (issue 14;
# docs/ciphertext-format.md, docs/policy.md):
#   - every producer (Encrypt, GenerateDataKey, ReEncrypt of each,
#     EncryptFields) against every consumer (Decrypt, DecryptDataKey,
#     ReEncrypt, DecryptFields): accepted only where it must be; a principal
#     granted only the data-key operations cannot read messages;
#   - a changed kind byte, or a blob relabelled as format 1, is refused;
#   - format 1 blobs, made here exactly as releases before format 2 made
#     them (with the material of an imported BYOK key), behave as documented;
#   - a broker allowed in two regions cannot ReEncrypt across them until the
#     tenant's cross_region_re_encrypt names the route; refusals are audited
#     with their own rules.
#   - docs/ciphertext-format.md's OpenSSL programs, run verbatim, decrypt its
#     worked example.
set -eu
. tests/e2e/lib.sh
e2e_setup blobkinds

# ---- the page's programs, verbatim ----------------------------------------------
doc="$E2E_DIR/doc"
/usr/bin/python3 tests/e2e/byok_doc.py docs/ciphertext-format.md "$doc" >/dev/null
if (cd "$doc" && sh -eu flow.sh) >"$doc/out" 2>"$doc/err"; then
    [ "$(cat "$doc/out")" = "$(printf '+14155550123\n+14155550123')" ] ||
        { cat "$doc/out"; echo "not ok - the page's programs print the example's plaintext"; exit 1; }
    echo "ok - docs/ciphertext-format.md: its C and Python programs, run verbatim, decrypt the worked example with OpenSSL alone"
else
    cat "$doc/err"; echo "not ok - docs/ciphertext-format.md's programs run"; exit 1
fi

mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/fields.proto proto/audit.proto
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT

# A BYOK key whose material this test holds: the format 1 fixtures are
# encrypted under it outside Custos, as the old code did inside.
cred="$E2E_DIR/credentials"
export CUSTOS_API_KEY_FILE="$cred/demo-admin.key"
byok=$("$KMSCTL" key create --region eu-west --origin external -q)
"$KMSCTL" key import-params "$byok" --out-public-key "$E2E_DIR/wrap-pub.pem" \
    --out-token "$E2E_DIR/import-token.bin" >/dev/null
(umask 077 && openssl rand -out "$E2E_DIR/byok-key.bin" 32)
"$KMSCTL" byok wrap --public-key "$E2E_DIR/wrap-pub.pem" --key "$E2E_DIR/byok-key.bin" \
    --algorithm RSA_AES_KEY_WRAP_SHA_1 --out "$E2E_DIR/wrapped.bin" >/dev/null
"$KMSCTL" key import "$byok" --token "$E2E_DIR/import-token.bin" --wrapped "$E2E_DIR/wrapped.bin" \
    --algorithm RSA_AES_KEY_WRAP_SHA_1 >/dev/null
unset CUSTOS_API_KEY_FILE
echo "ok - a BYOK key for the format 1 fixtures"

PYTHONPATH="$E2E_DIR/py" /usr/bin/python3 tests/e2e/blob_kinds_test.py "$E2E_DIR" "$E2E_PORT" \
    "$E2E_PID" "$byok"
e2e_stop
trap - EXIT
if grep -q 'kinds-sentinel' "$E2E_DIR/kmsd.log"; then
    echo "not ok - plaintext appears in the kmsd log"; exit 1
fi
echo "ok - no plaintext in the operational log"

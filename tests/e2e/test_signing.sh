#!/bin/sh
# Signing keys end to end (docs/signing.md): kmsctl's verbs checked with the
# stock openssl CLI, then signing_test.py (every spec and algorithm, field
# boundaries, rotation, states, tenants, grants, audit; escrow and M-of-N
# restore of a signing key; the keys after a restart), and the key-template
# scan of every object made.
set -eu
. tests/e2e/lib.sh
e2e_setup signing
# Deletion "days" of one second and a sweep every second, so that the escrow
# phase can destroy a key and restore it (as test_escrow.sh does).
CUSTOS_DEV_DAY_SECONDS=1 CUSTOS_DEV_MIN_DAYS=0 CUSTOS_DEV_SWEEP_S=1 CUSTOS_DEV_HEAD_MS=100 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto proto/escrow.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT

ok() { echo "ok - $1"; }
fail() { echo "not ok - $1"; exit 1; }
as() { who=$1; shift; CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/$who.key" "$KMSCTL" "$@"; }
W="$E2E_DIR/cli"
mkdir -p "$W"
printf 'the message kmsctl signs\n' >"$W/msg"

# ---- kmsctl key create / public-key / sign / verify, checked with openssl ----
for spec in ec-p256 rsa-3072; do
    key=$(as demo-admin key create --region eu-west --spec "$spec" -q)
    [ ${#key} -eq 32 ] || fail "kmsctl key create --spec $spec: $key"
    as demo-admin key describe "$key" --json | grep -q '"usage": *"SIGN_VERIFY"' ||
        fail "describe $spec: usage"
    as demo-broker key public-key "$key" --pem --out "$W/$spec.pem" 2>/dev/null
    openssl pkey -pubin -in "$W/$spec.pem" -noout 2>/dev/null ||
        fail "kmsctl key public-key --pem ($spec) is not a public key openssl reads"
    as demo-broker key public-key "$key" >"$W/$spec.der"
    openssl pkey -pubin -inform DER -in "$W/$spec.der" -pubout 2>/dev/null |
        cmp -s - "$W/$spec.pem" || fail "public-key DER and PEM differ ($spec)"
    ok "$spec: kmsctl key create --spec and public-key (DER and PEM) that openssl reads"
    if [ "$spec" = ec-p256 ]; then algs="ecdsa-sha256"; else algs="rsa-pss-sha256 rsa-pkcs1-sha256"; fi
    for alg in $algs; do
        case $alg in
        rsa-pss-sha256) o="-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32"
                        po="-pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:32" ;;
        rsa-pkcs1-sha256) o="-sigopt rsa_padding_mode:pkcs1"; po="-pkeyopt rsa_padding_mode:pkcs1" ;;
        *) o=""; po="" ;;
        esac
        as demo-broker key sign "$key" --alg "$alg" --in "$W/msg" --out "$W/sig" 2>/dev/null
        # shellcheck disable=SC2086
        openssl dgst -sha256 -verify "$W/$spec.pem" $o -signature "$W/sig" "$W/msg" >/dev/null ||
            fail "$spec $alg: openssl dgst -verify rejects kmsctl key sign --in"
        d=$(openssl dgst -sha256 -hex "$W/msg" | sed 's/.*= //')
        as demo-broker key sign "$key" --alg "$alg" --digest "$d" --out "$W/dsig" 2>/dev/null
        openssl dgst -sha256 -binary "$W/msg" >"$W/msg.sha256"
        # shellcheck disable=SC2086
        openssl pkeyutl -verify -pubin -inkey "$W/$spec.pem" -in "$W/msg.sha256" \
            -sigfile "$W/dsig" -pkeyopt digest:sha256 $po >/dev/null ||
            fail "$spec $alg: openssl pkeyutl -verify rejects kmsctl key sign --digest"
        as demo-broker key verify "$key" --alg "$alg" --in "$W/msg" --signature "$W/sig" |
            grep -q '^Verified OK$' || fail "$spec $alg: kmsctl key verify"
        as demo-broker key sign "$key" --alg "$alg" --in "$W/msg" >"$W/sig.b64"
        as demo-broker key verify "$key" --alg "$alg" --digest "$d" --signature "$W/sig.b64" \
            --version 1 >/dev/null || fail "$spec $alg: verify a base64 signature by digest"
        printf 'another message\n' >"$W/other"
        if as demo-broker key verify "$key" --alg "$alg" --in "$W/other" --signature "$W/sig" \
                >"$W/v.out"; then
            fail "$spec $alg: kmsctl key verify accepted the wrong message"
        fi
        grep -q '^Verification failure$' "$W/v.out" || fail "$spec $alg: verify output"
        ok "$spec $alg: kmsctl key sign (--in, --digest) verifies with openssl dgst and pkeyutl; kmsctl key verify says OK, and exits 1 for another message"
    done
done
if as demo-broker key sign "$key" --alg ecdsa-sha256 --in "$W/msg" >/dev/null 2>"$W/err"; then
    fail "ecdsa-sha256 with an RSA key"
fi
grep -q 'invalid_argument' "$W/err" && ok "kmsctl key sign with the wrong --alg: invalid_argument" ||
    fail "wrong alg: $(cat "$W/err")"
rc=0; as demo-broker key sign "$key" --alg ecdsa --in "$W/msg" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] && ok "an unknown --alg is a usage error (exit 2)" || fail "--alg ecdsa: exit $rc"
rc=0; as demo-broker key sign "$key" --alg rsa-pss-sha256 --digest abcd >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] && ok "--digest that is not 64 hex digits: exit 2" || fail "--digest abcd: exit $rc"
head -c 65537 /dev/zero >"$W/big"
rc=0; as demo-broker key sign "$key" --alg rsa-pss-sha256 --in "$W/big" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] && ok "--in over 64 KiB: exit 2, nothing sent" || fail "--in big: exit $rc"

/usr/bin/python3 tests/e2e/signing_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" main
/usr/bin/python3 tests/e2e/signing_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" escrow
e2e_scan_tokens
e2e_stop
e2e_start
/usr/bin/python3 tests/e2e/signing_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID" restart
e2e_stop
trap - EXIT

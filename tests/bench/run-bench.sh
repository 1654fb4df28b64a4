#!/bin/sh
# make bench: everything on throw-away tokens made here, in one run:
#   1. the raw PKCS#11 baseline and the pkcs11/ layer (bench_p11), 1 and 2 threads
#   2. kmsd over HTTP with wrk: Encrypt, Decrypt, GenerateDataKey, DecryptDataKey
#      with the audit log on, Encrypt with it off, latency at half of peak
#   2b. the XKS proxy API: XksEncrypt/XksDecrypt peak and at ~1,800 calls/s (bench_xks.py)
#   3. signing keys: raw C_Sign and the layer (bench_sign_p11), ECDSA P-256 and
#      RSA-3072 PSS, then Sign over HTTP against them (bench_sign.py)
#   4. link tokens: raw C_Sign(CKM_SHA256_HMAC) and the layer (bench_links_p11),
#      then MintLinkToken and RedeemLinkToken over HTTP against it (bench_links.py)
#   5. NSS softoken, the second PKCS#11 implementation: bench_p11 and Encrypt
#      over HTTP on it (bench_http.py --encrypt-only)
#   6. TLS handshakes/s of openssl s_server with a custos: key (the OpenSSL
#      provider) and with a key file (bench_tls_provider.sh)
# The table goes to stdout and to $BUILD/bench/results-<time>.txt.
# BENCH_QUICK=1 makes a few-second smoke run (used by make check).
# Between 1 and 2: TLS handshakes/s of kmsd with its key in the HSM (tls.key_uri)
# against kmsd with a key file (bench_tls.py).
set -eu
BUILD=${BUILD:-build}
top=$(pwd)
work=$(mktemp -d /tmp/custos-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
BUILD="$BUILD" KMSCTL="$BUILD/bin/kmsctl" sh deploy/dev-setup.sh "$work" 0 >/dev/null
export SOFTHSM2_CONF="$work/hsm/softhsm2.conf"
export CUSTOS_BENCH_HSM_DIR="$work/hsm"
export CUSTOS_LOG_LEVEL=warn
mkdir -p "$work/py" "$BUILD/bench"
protoc --python_out="$work/py" -Iproto proto/key.proto proto/fields.proto proto/links.proto
quick=
if [ -n "${BENCH_QUICK:-}" ]; then quick=--quick; secs=1; runs=1; else secs=${BENCH_SECONDS:-2}; runs=${BENCH_RUNS:-5}; fi
out="$BUILD/bench/results-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
    echo "# $(date -u) $(uname -m) $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo -)"
    "$BUILD/bench/bench_p11" "$secs" "$runs" | tee "$work/p11.txt"
    raw1=$(awk '$1 == "raw" && $2 == 1 {print $3}' "$work/p11.txt")
    raw2=$(awk '$1 == "raw" && $2 == 2 {print $3}' "$work/p11.txt")
    echo
    /usr/bin/python3 tests/bench/bench_tls.py "$work" "$top/$BUILD" $quick
    echo
    /usr/bin/python3 tests/bench/bench_http.py "$work" "$top/$BUILD" "$raw1" "$raw2" $quick
    # The XKS proxy API (issue 18): encrypt/decrypt as AWS KMS calls them.
    echo
    /usr/bin/python3 tests/bench/bench_xks.py "$work" "$top/$BUILD" "$raw1" $quick
    # Signing keys (issue 16): raw C_Sign, then Sign over HTTP against it.
    echo
    "$BUILD/bench/bench_sign_p11" "$secs" "$runs" | tee "$work/sign_p11.txt"
    echo
    /usr/bin/python3 tests/bench/bench_sign.py "$work" "$top/$BUILD" "$work/sign_p11.txt" $quick
    # Link tokens (issue 19): the raw HSM HMAC, then Mint and Redeem over
    # HTTP against it.
    echo
    "$BUILD/bench/bench_links_p11" "$secs" "$runs" | tee "$work/links_p11.txt"
    echo
    /usr/bin/python3 tests/bench/bench_links.py "$work" "$top/$BUILD" "$work/links_p11.txt" $quick
    # The second PKCS#11 implementation (issue 20): NSS's softoken, its raw
    # C_Encrypt and kmsd's Encrypt on it, in the same run as everything above.
    echo
    CUSTOS_TEST_TOKEN=nss BUILD="$BUILD" KMSCTL="$BUILD/bin/kmsctl" \
        sh deploy/dev-setup.sh "$work/nss" 0 >/dev/null
    CUSTOS_BENCH_HSM_DIR="$work/nss/hsm" \
        CUSTOS_BENCH_MODULE=${CUSTOS_NSS_MODULE:-/usr/lib/x86_64-linux-gnu/libsoftokn3.so} \
        CUSTOS_BENCH_MODULE_ARGS="$(cat "$work/nss/hsm/module-args")" \
        "$BUILD/bench/bench_p11" "$secs" "$runs" | tee "$work/p11_nss.txt"
    nraw1=$(awk '$1 == "raw" && $2 == 1 {print $3}' "$work/p11_nss.txt")
    nraw2=$(awk '$1 == "raw" && $2 == 2 {print $3}' "$work/p11_nss.txt")
    mkdir -p "$work/nss/py"
    cp "$work"/py/*.py "$work/nss/py/"
    echo
    /usr/bin/python3 tests/bench/bench_http.py "$work/nss" "$top/$BUILD" "$nraw1" "$nraw2" $quick \
        --encrypt-only "NSS softoken"
    # The custos OpenSSL provider: s_server handshakes with a custos: key
    # against the same server with a key file.
    echo
    sh tests/bench/bench_tls_provider.sh "$work" "$top/$BUILD" "$secs"
} | tee "$out"
echo "saved to $out"

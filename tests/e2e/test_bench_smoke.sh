#!/bin/sh
# A few seconds of make bench, so the benchmark cannot rot: every stage runs
# and reports no error. (Figures from this run mean nothing.)
set -eu
BUILD_DIR=${CUSTOS_TEST_BUILD:-$(pwd)/build}
out=$(BENCH_QUICK=1 BUILD="${BUILD_DIR#$(pwd)/}" sh tests/bench/run-bench.sh 2>&1) || {
    echo "$out"; echo "not ok 1 - the benchmark smoke run failed"; exit 1; }
echo "$out" | grep -Eq '^raw +2 ' && echo "ok 1 - bench_p11 measured raw PKCS#11 at 2 threads" ||
    { echo "$out"; echo "not ok 1 - no raw figure"; exit 1; }
echo "$out" | grep -q '^Encrypt (audit off)' && echo "ok 2 - kmsd over HTTP measured with audit on and off" ||
    { echo "$out"; echo "not ok 2 - no HTTP figures"; exit 1; }
echo "$out" | grep -Eq '^ec-p256 +HSM key +1 +[1-9][0-9]* ' &&
    echo "$out" | grep -Eq '^rsa-3072 +HSM key +1 +[1-9][0-9]* ' &&
    echo "$out" | grep -Eq '^ec-p256 +key file +1 +[1-9][0-9]* ' &&
    echo "ok 8 - TLS handshakes/s measured with the key in the HSM and in a file" ||
    { echo "$out"; echo "not ok 8 - no TLS handshake figures"; exit 1; }
echo "$out" | grep -q '^bare HTTP + HSM call ' && echo "$out" | grep -q '^Encrypt (audit on, per-connection) ' &&
    echo "ok 5 - the bare HTTP ceiling and the other thread model measured" ||
    { echo "$out"; echo "not ok 5 - no ceiling or thread model figures"; exit 1; }
echo "$out" | grep -q '^CreateKey, sequential: plain .* with escrow at birth' &&
    echo "ok 4 - key creation measured with and without escrow" ||
    { echo "$out"; echo "not ok 4 - no key creation figures"; exit 1; }
echo "$out" | grep -q '^EncryptFields, 8 fields (audit on) ' && echo "$out" | grep -q '^BlindIndex, 1 value (audit on) ' &&
    echo "$out" | grep -Eq '^latency at half of peak, open loop .* p99 [0-9.]+ ms, p99.9 [0-9.]+ ms' &&
    echo "ok 6 - metadata operations and the open-loop latency at half peak measured" ||
    { echo "$out"; echo "not ok 6 - no metadata rows or no open-loop latency"; exit 1; }
echo "$out" | grep -Eq '^sign ecdsa-p256 +raw +2 ' && echo "$out" | grep -Eq '^sign rsa3072-pss +layer +2 ' &&
    echo "$out" | grep -q '^Sign ECDSA P-256 (audit on) ' && echo "$out" | grep -q '^Sign RSA-3072 PSS (audit on) ' &&
    echo "ok 7 - Sign over HTTP measured beside the raw C_Sign rate (ECDSA P-256, RSA-3072)" ||
    { echo "$out"; echo "not ok 7 - no signing rows"; exit 1; }
echo "$out" | grep -Eq '^tls ec-p256 +custos key +[0-9]+/s +key file +[0-9]+/s' &&
    echo "$out" | grep -Eq '^tls rsa-3072 +custos key +[0-9]+/s +key file +[0-9]+/s' &&
    echo "ok 8 - TLS handshakes with a custos: key and with a key file measured" ||
    { echo "$out"; echo "not ok 8 - no TLS provider rows"; exit 1; }
echo "$out" | grep -Eq '^hmac raw +2 ' && echo "$out" | grep -Eq '^MintLinkToken \(audit on\) +[1-9][0-9]* ' &&
    echo "$out" | grep -Eq '^RedeemLinkToken \(audit on\) +[1-9][0-9]* ' &&
    echo "ok 9 - MintLinkToken and RedeemLinkToken over HTTP measured beside the raw HSM HMAC" ||
    { echo "$out"; echo "not ok 9 - no link token rows"; exit 1; }
echo "$out" | grep -Eq '^XksEncrypt peak +[1-9][0-9]* ' && echo "$out" | grep -Eq '^XksDecrypt peak +[1-9][0-9]* ' &&
    echo "$out" | grep -Eq '^XksEncrypt at [1-9][0-9]*/s +[1-9][0-9]* ' &&
    [ "$(echo "$out" | awk '/^Xks(En|De)crypt/ && $NF != 0' | wc -l)" -eq 0 ] &&
    echo "ok 10 - XKS encrypt/decrypt measured (peak and paced), without errors" ||
    { echo "$out"; echo "not ok 10 - no XKS rows, or XKS errors"; exit 1; }
echo "$out" | grep -Eq '^AES-256-GCM encrypt, 256 B, token key, NSS softoken' &&
    echo "$out" | grep -Eq '^Encrypt \(audit on\), NSS softoken +[1-9][0-9]* req/s' &&
    echo "ok 11 - NSS softoken: raw C_Encrypt and kmsd's Encrypt measured in the same run" ||
    { echo "$out"; echo "not ok 11 - no NSS softoken rows"; exit 1; }
[ "$(echo "$out" | grep -c '^errors: 0$')" -eq 8 ] && echo "ok 3 - no errors in any stage" ||
    { echo "$out"; echo "not ok 3 - errors in the smoke run"; exit 1; }

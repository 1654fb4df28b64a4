#!/bin/sh
# Install every Debian package Custos needs to build, test and run.
# Idempotent: when everything is present it only asks dpkg, and says nothing.
set -eu

# Build: the libraries of DESIGN.md, plus libgnutls28-dev because
# libmicrohttpd's TLS is GnuTLS and verifying a client certificate (and
# reading its subject) needs the GnuTLS session it exposes.
# Run: SoftHSMv2 (the dev/test HSM) and openssl (dev PINs, PKI in tests).
# Tests: check; Python's protobuf (a third-party client generated from the
# .proto by protoc), PyKCS11 (inspecting tokens independently of our
# pkcs11/), cryptography (verifying heads and ciphertexts independently);
# opensc for pkcs11-tool; wrk, the HTTP load generator of make bench;
# clang and its compiler-rt (libFuzzer, sanitizers) for the fuzz targets of
# tests/fuzz, which make check runs for a few seconds each.
# Programs the tests and the docs' commands run that a minimal Debian 12
# lacks (packages of priority "important" or lower; everything else they
# call is Essential or "required": coreutils, grep, sed, findutils,
# diffutils, util-linux, libc-bin): python3 (/usr/bin/python3 runs every
# end-to-end helper; named, not left to python3-protobuf's dependency);
# xxd (docs/audit.md's openssl example turns hex into bytes with xxd -r -p,
# and tests/e2e/test_audit.sh runs it as written); man-db (man: test_install
# renders the man pages with man --warnings); jq (docs/policy.md quotes a
# PEM as a JSON string with it, docs/operations.md filters the JSON log);
# mawk (awk in the tests: "required" priority, named so that a container
# image trimmed below that still has it).
# libpq-dev and postgresql-15: the PostgreSQL store of a fleet; the tests
# start a scratch cluster with deploy/pg-scratch.sh (initdb/pg_ctl in a temp
# directory, as an unprivileged user). haproxy: the fleet's load balancer
# (make fleet). libnss3 and libnss3-tools: NSS's softoken, the second PKCS#11
# implementation the suite runs on, and certutil to create its database.
# Not here: systemctl, systemd-sysusers, journalctl (docs/operations.md,
# for the production host, which runs systemd; test_install calls
# systemd-analyze only when it exists), podman (building the container,
# optional), git (the benchmarks print the commit when there is one).
PKGS="
build-essential pkg-config
libp11-kit-dev libmicrohttpd-dev libprotobuf-c-dev protobuf-c-compiler
libjansson-dev libsqlite3-dev libcurl4-openssl-dev libssl-dev libgnutls28-dev
check libsubunit-dev
softhsm2 opensc openssl sqlite3 curl
libpq-dev postgresql-15 haproxy libnss3 libnss3-tools
python3-protobuf python3-pykcs11 python3-cryptography python3-botocore protobuf-compiler
wrk procps util-linux strace
clang libclang-rt-14-dev
python3 xxd man-db jq mawk
"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done

[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing" >&2
    echo "install-deps: run as root (or install them) and retry" >&2
    exit 1
fi

echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null

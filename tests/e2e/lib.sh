# Shared by the end-to-end tests: start and stop a kmsd of our own.
#
#   . tests/e2e/lib.sh
#   e2e_setup NAME           # dev installation in $E2E_DIR, free port in $E2E_PORT
#   e2e_start [config]       # start kmsd (default $E2E_DIR/kmsd.json), wait until it answers
#   e2e_stop                 # SIGTERM, wait; fails if kmsd did not exit 0
#
# The daemon's log is $E2E_DIR/kmsd.log. Everything lives under
# $CUSTOS_TEST_WORK (made and removed by tests/run-tests.sh).

BUILD_DIR=${CUSTOS_TEST_BUILD:-$(pwd)/build}
KMSD="$BUILD_DIR/bin/kmsd"
KMSCTL="$BUILD_DIR/bin/kmsctl"
E2E_PID=

e2e_free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

e2e_setup() {
    E2E_DIR="${CUSTOS_TEST_WORK:-/tmp}/e2e-$1"
    E2E_PORT=$(e2e_free_port)
    rm -rf "$E2E_DIR"
    BUILD="$BUILD_DIR" KMSCTL="$KMSCTL" sh deploy/dev-setup.sh "$E2E_DIR" "$E2E_PORT" >/dev/null
    export SOFTHSM2_CONF="$E2E_DIR/hsm/softhsm2.conf"
    # NSS pass: this installation's own databases, for kmsctl and the
    # python helpers (tests/e2e/p11_module.py).
    if [ -f "$E2E_DIR/hsm/module-args" ]; then
        CUSTOS_PKCS11_MODULE_ARGS=$(cat "$E2E_DIR/hsm/module-args")
        export CUSTOS_PKCS11_MODULE_ARGS
    fi
    export CUSTOS_ADDR="http://127.0.0.1:$E2E_PORT"
}

e2e_start() {
    cfg=${1:-$E2E_DIR/kmsd.json}
    # The log accumulates over restarts: wait for one more "ready" line.
    # Create it first: kmsd's own redirection happens in the background
    # child, and a count taken before that would be empty ("Illegal
    # number"), ending the wait at once.
    : >>"$E2E_DIR/kmsd.log"
    before=$(grep -c '"ready' "$E2E_DIR/kmsd.log" 2>/dev/null || true)
    before=${before:-0}
    # The log must exist before the wait loop reads it: the background
    # shell may not have opened it yet, and an empty count made the test
    # ([: Illegal number) stop waiting before kmsd was ready (seen in
    # test_fields: connection refused).
    : >>"$E2E_DIR/kmsd.log"
    "$KMSD" --config "$cfg" >>"$E2E_DIR/kmsd.log" 2>&1 &
    E2E_PID=$!
    e2e_i=0
    while [ "$(grep -c '"ready' "$E2E_DIR/kmsd.log" 2>/dev/null || true)" -le "$before" ]; do
        e2e_i=$((e2e_i + 1))
        if [ $e2e_i -gt 300 ] || ! kill -0 "$E2E_PID" 2>/dev/null; then
            echo "kmsd did not start:" >&2
            cat "$E2E_DIR/kmsd.log" >&2
            return 1
        fi
        sleep 0.1
    done
}

e2e_stop() {
    [ -n "$E2E_PID" ] || return 0
    kill -TERM "$E2E_PID" 2>/dev/null
    wait "$E2E_PID"
    rc=$?
    E2E_PID=
    [ $rc -eq 0 ] || { echo "kmsd exited with $rc" >&2; tail -n 20 "$E2E_DIR/kmsd.log" >&2; }
    return $rc
}

# t DESCRIPTION CMD...: one TAP check, "ok N - DESCRIPTION" when CMD
# succeeds, else "not ok N - ..." and fail=1. N counts on from $i (set i
# and fail before the first check).
t() {
    i=$((i + 1))
    t_what=$1
    shift
    if "$@"; then echo "ok $i - $t_what"; else echo "not ok $i - $t_what"; fail=1; fi
}

# e2e_pg_client DIR: psql, createdb and dropdb on the scratch PostgreSQL
# cluster tests/run-tests.sh started ($CUSTOS_TEST_PG_DIR): $pgbin, the
# PG* variables, and the password in a 0600 passfile in DIR (never argv).
e2e_pg_client() {
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    . "$CUSTOS_TEST_PG_DIR/env"
    export PGHOST PGPORT PGUSER
    (umask 077 && printf '*:*:*:custos:%s\n' "$(cat "$CUSTOS_TEST_PG_DIR/password")" >"$1/pgpass")
    PGPASSFILE="$1/pgpass"
    export PGPASSFILE
}

# The key-template scan (tests/e2e/scan_templates.py): every object of this
# installation's tokens against DESIGN.md's templates. Call it before
# e2e_stop at the end of a test, so that the objects the test made are
# checked. PINs are read from the pin files by the scanner, never argv.
e2e_scan_tokens() {
    SOFTHSM2_CONF="$E2E_DIR/hsm/softhsm2.conf" /usr/bin/python3 tests/e2e/scan_templates.py \
        "$E2E_DIR/hsm" "${CUSTOS_TEST_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
}

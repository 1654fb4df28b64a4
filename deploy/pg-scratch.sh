#!/bin/sh
# pg-scratch.sh - a throw-away PostgreSQL cluster for tests, benchmarks and
# `make fleet`: Debian's PostgreSQL 15 binaries, a data directory under DIR,
# a Unix socket only (no TCP port), run as an unprivileged user.
#
#   sh deploy/pg-scratch.sh start DIR [DB...]   init (first time) and start;
#                                               create each DB (owner custos)
#   sh deploy/pg-scratch.sh stop DIR            fast shutdown (kept on disk)
#   sh deploy/pg-scratch.sh kill DIR            immediate shutdown (a crash)
#   sh deploy/pg-scratch.sh env DIR             print the libpq settings
#
# After start, DIR holds:
#   socket/       the Unix socket directory (PGHOST)
#   password      the role custos's password, mode 0600 (kmsd reads it from
#                 a file: never argv, never the environment of a ps listing)
#   env           PGHOST/PGPORT/PGUSER lines for `. DIR/env`
# The role `custos` owns the databases; authentication is scram-sha-256 on
# the socket, so a client without the password is refused, as in production.
#
# As root, the cluster runs as the user `custos-pg` (created here when
# missing); as any other user, as that user. The server never runs as root.
set -eu

cmd=${1:?usage: pg-scratch.sh start|stop|kill|env DIR [DB...]}
dir=${2:?usage: pg-scratch.sh start|stop|kill|env DIR [DB...]}
shift 2

pgbin=${CUSTOS_PG_BIN:-}
if [ -z "$pgbin" ]; then
    for v in 17 16 15; do
        if [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]; then
            pgbin=/usr/lib/postgresql/$v/bin
            break
        fi
    done
fi
[ -n "$pgbin" ] && [ -x "$pgbin/pg_ctl" ] || {
    echo "pg-scratch: PostgreSQL server binaries not found (deploy/install-deps.sh installs postgresql)" >&2
    exit 1
}
port=${CUSTOS_PG_PORT:-5432}

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u custos-pg -- "$@"
    else
        "$@"
    fi
}

pgctl() { as_owner "$pgbin/pg_ctl" -D "$dir/data" "$@"; }

case "$cmd" in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" -eq 0 ]; then
        id custos-pg >/dev/null 2>&1 ||
            useradd --system --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin custos-pg
        chown custos-pg "$dir"
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        umask 077
        # The password is random per cluster; a test that needs it reads
        # the file. od keeps it to hex so no quoting is ever needed.
        od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$dir/password"
        chmod 600 "$dir/password"
        [ "$(id -u)" -eq 0 ] && chown custos-pg "$dir/password"
        as_owner "$pgbin/initdb" -D "$dir/data" -U custos --pwfile="$dir/password" \
            --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
            cat "$dir/initdb.log" >&2
            exit 1
        }
        [ "$(id -u)" -eq 0 ] && chown root "$dir/password"
        mkdir -p "$dir/socket"
        chmod 755 "$dir/socket"
        [ "$(id -u)" -eq 0 ] && chown custos-pg "$dir/socket"
        cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$dir/socket'
port = $port
max_connections = 200
fsync = on
synchronous_commit = on
logging_collector = off
EOF
    fi
    pgctl -w -t 60 -l "$dir/server.log" start >/dev/null
    cat >"$dir/env" <<EOF
PGHOST=$dir/socket
PGPORT=$port
PGUSER=custos
EOF
    for db in "$@"; do
        PGPASSWORD=$(cat "$dir/password") "$pgbin/psql" -X -q -h "$dir/socket" -p "$port" \
            -U custos -d postgres -v ON_ERROR_STOP=1 \
            -c "SELECT 1" >/dev/null
        exists=$(PGPASSWORD=$(cat "$dir/password") "$pgbin/psql" -X -qAt -h "$dir/socket" \
            -p "$port" -U custos -d postgres \
            -c "SELECT 1 FROM pg_database WHERE datname = '$db'")
        [ "$exists" = 1 ] || PGPASSWORD=$(cat "$dir/password") "$pgbin/createdb" \
            -h "$dir/socket" -p "$port" -U custos "$db"
    done
    ;;
stop)
    [ -f "$dir/data/postmaster.pid" ] && pgctl -w -t 60 -m fast stop >/dev/null
    ;;
kill)
    [ -f "$dir/data/postmaster.pid" ] && pgctl -m immediate stop >/dev/null
    ;;
env)
    cat "$dir/env"
    ;;
*)
    echo "pg-scratch: unknown command $cmd" >&2
    exit 2
    ;;
esac

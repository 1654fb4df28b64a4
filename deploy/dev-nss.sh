#!/bin/sh
# Create NSS softoken databases, one token per region, under DIR: the second,
# independent PKCS#11 implementation Custos is tested on (docs/pkcs11.md,
# "NSS softoken").
#
#   deploy/dev-nss.sh DIR REGION [REGION...]
#
# For each region: an NSS database DIR/nss/REGION (certutil -N), whose
# password (the token's user PIN) is random and kept in DIR/pins/REGION.pin
# (mode 0600; certutil reads it with -f, never from argv). NSS labels a token
# by the tokenDescription of the module's initialisation string, not by
# C_InitToken, so the script writes that string to DIR/module-args:
#
#   tokens=<0x4=[configdir='sql:DIR/nss/eu-west' tokenDescription='custos-eu-west']
#           0x5=[configdir='sql:DIR/nss/us-east' tokenDescription='custos-us-east']>
#
# one slot per region of ONE module instance (a process initialises a module
# once). Use it as kmsd's pkcs11.module_args, kmsctl's --module-args, or
# $CUSTOS_PKCS11_MODULE_ARGS, with module /usr/lib/x86_64-linux-gnu/libsoftokn3.so.
# The string holds paths and labels only, never a PIN. Idempotent: existing
# databases and PINs are kept; the string lists every database under DIR/nss.
set -eu

[ $# -ge 2 ] || { echo "usage: $0 DIR REGION [REGION...]" >&2; exit 2; }
dir=$1
shift
command -v certutil >/dev/null || { echo "dev-nss: certutil not found (apt-get install libnss3-tools)" >&2; exit 1; }

umask 077
mkdir -p "$dir/nss" "$dir/pins"
dir=$(cd "$dir" && pwd)
case "$dir" in
*"'"* | *" "* | *"]"* | *">"*) echo "dev-nss: DIR must not contain quotes, blanks, ] or >" >&2; exit 1 ;;
esac

for region in "$@"; do
    case "$region" in
    *[!a-z0-9-]* | "") echo "dev-nss: region '$region' must be [a-z0-9-]" >&2; exit 2 ;;
    esac
    db="$dir/nss/$region"
    pin="$dir/pins/$region.pin"
    if [ -f "$db/key4.db" ]; then
        echo "dev-nss: database of $region exists"
        continue
    fi
    mkdir -p "$db"
    # A random PIN straight into a 0600 file: never on a command line.
    [ -f "$pin" ] || openssl rand -hex 16 >"$pin"
    chmod 600 "$pin"
    certutil -N -d "sql:$db" -f "$pin" >/dev/null
    # The SO PIN of an NSS token is empty (C_InitToken resets the database):
    # an empty file keeps the layout of deploy/dev-hsm.sh.
    : >"$dir/pins/$region.so.pin"
done

# Slots 1-3 are NSS's own (crypto services, the default database, FIPS);
# configured tokens take 4 and up, in the order of the directory listing, so
# a slot id depends on which regions exist: Custos never uses slot ids.
args="tokens=<"
slot=4
sep=""
for db in "$dir"/nss/*/; do
    [ -f "$db/key4.db" ] || continue
    region=$(basename "$db")
    args="$args${sep}0x$(printf %x $slot)=[configdir='sql:$dir/nss/$region' tokenDescription='custos-$region']"
    sep=" "
    slot=$((slot + 1))
done
args="$args>"
printf '%s\n' "$args" >"$dir/module-args"
chmod 644 "$dir/module-args"
echo "dev-nss: module arguments in $dir/module-args"

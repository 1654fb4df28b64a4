#!/bin/sh
# Create a private SoftHSMv2 configuration and one token per region under DIR.
#
#   deploy/dev-hsm.sh DIR REGION [REGION...]
#
# Writes DIR/softhsm2.conf (token store DIR/tokens), and for each region a
# token labelled custos-REGION whose user and SO PINs are random and kept in
# DIR/pins/REGION.pin and DIR/pins/REGION.so.pin (mode 0600). Never touches
# /etc/softhsm or /var/lib/softhsm. Idempotent: existing tokens are kept.
# Run again on a copied installation, it re-roots the copy's softhsm2.conf
# to the copy's own tokens (never the live ones the copy was taken from).
# Use the result with: export SOFTHSM2_CONF=DIR/softhsm2.conf
set -eu

[ $# -ge 2 ] || { echo "usage: $0 DIR REGION [REGION...]" >&2; exit 2; }
dir=$1
shift
KMSCTL=${KMSCTL:-build/bin/kmsctl}
[ -x "$KMSCTL" ] || { echo "dev-hsm: $KMSCTL not built (run make)" >&2; exit 1; }

umask 077
mkdir -p "$dir/tokens" "$dir/pins"
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
if [ ! -f "$conf" ]; then
    cat >"$conf" <<CONF
# SoftHSMv2 configuration for Custos development and tests (made by dev-hsm.sh)
directories.tokendir = $dir/tokens/
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
CONF
fi
# SoftHSMv2 reads directories.tokendir as an absolute path (a relative one
# is taken from the process's working directory, not from this file). A
# copied installation (a backup restored beside the live one) would keep
# naming the live tokens: re-root the line to this directory's own tokens.
tokendir=$(sed -n 's/^directories\.tokendir *= *//p' "$conf")
if [ "${tokendir%/}" != "$dir/tokens" ]; then
    sed "s|^directories\.tokendir *=.*|directories.tokendir = $dir/tokens/|" "$conf" >"$conf.new"
    mv "$conf.new" "$conf"
    echo "dev-hsm: $conf named token directory $tokendir; now $dir/tokens/ (its own)" >&2
fi
export SOFTHSM2_CONF="$conf"

for region in "$@"; do
    label="custos-$region"
    pin="$dir/pins/$region.pin"
    so="$dir/pins/$region.so.pin"
    if "$KMSCTL" hsm list 2>/dev/null | grep -q "label=$label "; then
        echo "dev-hsm: token $label exists"
        continue
    fi
    # Random PINs straight into 0600 files: never on a command line.
    [ -f "$pin" ] || openssl rand -hex 16 >"$pin"
    [ -f "$so" ] || openssl rand -hex 16 >"$so"
    chmod 600 "$pin" "$so"
    "$KMSCTL" hsm init-token --label "$label" --so-pin-source "file:$so" --pin-source "file:$pin"
done
"$KMSCTL" hsm list

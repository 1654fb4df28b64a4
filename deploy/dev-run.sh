#!/bin/sh
# make run: a complete dev installation under var/dev (two region tokens,
# demo tenants, random credentials in 0600 files, policy, config), then kmsd
# in the foreground on 127.0.0.1:8700. Ctrl-C stops it; state is kept.
set -eu
BUILD=${BUILD:-build}
dev=var/dev
BUILD="$BUILD" sh deploy/dev-setup.sh "$dev" "${CUSTOS_DEV_PORT:-8700}"
dev=$(cd "$dev" && pwd)
export SOFTHSM2_CONF="$dev/hsm/softhsm2.conf"
port=$(sed -n 's/.*"port": *\([0-9]*\).*/\1/p' "$dev/kmsd.json")
cat <<EOF2

Custos dev kmsd on http://127.0.0.1:$port  (tokens: custos-eu-west, custos-us-east)
Credentials (0600): $dev/credentials/
In another shell:
  export CUSTOS_ADDR=http://127.0.0.1:$port
  export CUSTOS_API_KEY_FILE=$dev/credentials/demo-admin.key
  id=\$($BUILD/bin/kmsctl key create --region eu-west -q)
  export CUSTOS_API_KEY_FILE=$dev/credentials/demo-broker.key
  echo 'hello' | $BUILD/bin/kmsctl encrypt --key-id \$id --context conv=42 > msg.ct
  $BUILD/bin/kmsctl decrypt --in msg.ct --context conv=42

EOF2
exec "$BUILD/bin/kmsd" --config "$dev/kmsd.json"

#!/bin/sh
# make run: dev tokens (two regions) under var/dev, then the slots they are in.
set -eu
BUILD=${BUILD:-build}
dev=var/dev
KMSCTL="$BUILD/bin/kmsctl" sh deploy/dev-hsm.sh "$dev/hsm" eu-west us-east
echo
echo "Dev HSM ready: export SOFTHSM2_CONF=$(pwd)/$dev/hsm/softhsm2.conf"

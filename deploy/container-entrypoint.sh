#!/bin/sh
# Entry point of deploy/Containerfile: on first start, make a development
# installation in the volume (SoftHSMv2 tokens for eu-west and us-east,
# random credentials, policy, config) with a self-signed TLS certificate so
# that kmsd may listen on every interface; then run kmsd in the foreground.
set -eu
state=/var/lib/custos
dev=$state/dev
if [ ! -f "$dev/kmsd-container.json" ]; then
    KMSCTL=/usr/bin/kmsctl sh /usr/share/custos/dev-setup.sh "$dev" 8700 >/dev/null
    umask 077
    mkdir -p "$dev/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
        -subj "/CN=custos-dev" -keyout "$dev/tls/server.key" -out "$dev/tls/server.pem" \
        2>/dev/null
    /usr/bin/python3 - "$dev" <<'PY'
import json, sys
d = sys.argv[1]
c = json.load(open(f"{d}/kmsd.json"))
c["listen"]["address"] = "0.0.0.0"
c["tls"] = {"cert": "tls/server.pem", "key": "tls/server.key"}
json.dump(c, open(f"{d}/kmsd-container.json", "w"), indent=2)
PY
    echo "custos: development installation made in $dev;" \
         "credentials are in $dev/credentials (copy them out with podman cp)" >&2
fi
export SOFTHSM2_CONF="$dev/hsm/softhsm2.conf"
exec /usr/sbin/kmsd --config "$dev/kmsd-container.json"

#!/bin/sh
# An expired BYOK import token's RSA wrapping key leaves the HSM at expiry,
# through kmsd's sweeper thread, with no further import request
# (kms_import_sweep called by the sweeper; docs/byok.md).
set -eu
. tests/e2e/lib.sh
e2e_setup import-sweep
CUSTOS_DEV_SWEEP_S=1 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
/usr/bin/python3 - "$E2E_DIR/kmsd.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["import"] = {"token_ttl_s": 10}
json.dump(c, open(sys.argv[1], "w"), indent=2)
PYEOF
ok() { echo "ok - $1"; }
fail() { echo "not ok - $1"; exit 1; }
as() { who=$1; shift; CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/$who.key" "$KMSCTL" "$@"; }
wrapping_keys() { # objects labelled custos:import:KEY in the eu-west token (PyKCS11)
    /usr/bin/python3 - "$E2E_DIR" "$1" <<'PYEOF'
import sys, PyKCS11
d, key = sys.argv[1], sys.argv[2]
lib = PyKCS11.PyKCS11Lib(); lib.load("/usr/lib/softhsm/libsofthsm2.so")
slot = [s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == "custos-eu-west"][0]
s = lib.openSession(slot); s.login(open(f"{d}/hsm/pins/eu-west.pin").read().strip())
print(len(s.findObjects([(PyKCS11.CKA_LABEL, "custos:import:" + key)])))
s.logout()
PYEOF
}
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
key=$(as demo-admin key create --region eu-west --origin external -q)
as demo-admin key import-params "$key" --out-public-key "$E2E_DIR/wrap.pem" >/dev/null
n=$(wrapping_keys "$key")
[ "$n" -ge 1 ] && ok "GetImportParameters: the wrapping key is in the token ($n object(s))" ||
    fail "no wrapping key in the token after GetImportParameters"
# No request from here on: only the sweeper can remove it (10 s life, 1 s
# sweeps; the life is long enough that an RSA-3072 generation on a loaded
# machine, under ASan, does not outlast it before the first count).
i=0
while [ "$(wrapping_keys "$key")" -ne 0 ]; do
    i=$((i + 1))
    [ $i -lt 300 ] || fail "the expired wrapping key is still in the token after 60 s"
    sleep 0.2
done
ok "the expired import token's wrapping key is gone from the token without another import"
grep -q "key $key: import token expired, wrapping key destroyed" "$E2E_DIR/kmsd.log" &&
    ok "kmsd logs the expiry cleanup" || fail "no cleanup line in the log"
e2e_stop
trap - EXIT

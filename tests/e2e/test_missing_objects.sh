#!/bin/sh
# Readiness tells the truth about a token missing objects the store says are
# live, while kmsd runs (issue 21). A live key's object is destroyed behind
# kmsd's back with PyKCS11.
#
# Before: checked only at start; a running kmsd stayed ready and said nothing
# until a request for that key failed.
# Now: within one sweep interval (deletion.sweep_interval_s; 1 s here), or
# within seconds of a request that needed the missing object,
# /readyz answers 503 with a count for the region and its token (no key ids:
# it is unauthenticated), the log names the key and version, the region's
# other keys keep serving; when the version stops being live (the key is
# deleted), /readyz is 200 again and the log says so.
set -eu
. tests/e2e/lib.sh
e2e_setup missing_objects
CUSTOS_DEV_DAY_SECONDS=1 CUSTOS_DEV_MIN_DAYS=0 CUSTOS_DEV_SWEEP_S=1 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
ok() { echo "ok - $1"; }
fail() { echo "not ok - $1"; exit 1; }
as() { who=$1; shift; CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/$who.key" "$KMSCTL" "$@"; }
readyz() { curl -s -o "$W/rz" -w '%{http_code}' "http://127.0.0.1:$E2E_PORT/readyz${1:-}"; }
W="$E2E_DIR/w"
mkdir -p "$W"

e2e_start
ka=$(as demo-admin key create --region eu-west -q)
kb=$(as demo-admin key create --region eu-west -q)
printf 'a' | as demo-broker encrypt --key-id "$ka" >"$W/ct-a"
printf 'b' | as demo-broker encrypt --key-id "$kb" >"$W/ct-b"
sleep 2 # a few sweeps with every object in place
[ "$(readyz)" = 200 ] && ok "ready while every live version has its object" ||
    fail "not ready at first: $(cat "$W/rz")"

[ "$(/usr/bin/python3 tests/e2e/token_objects.py delete "$E2E_DIR" eu-west "$ka")" = 1 ] ||
    fail "the object was not deleted"
i=0
until [ "$(readyz)" = 503 ]; do
    i=$((i + 1)); [ $i -lt 120 ] || fail "/readyz still ready after 30 s"
    sleep 0.25
done
grep -q "region eu-west: 1 live key version(s) have no object in HSM token 'custos-eu-west'" "$W/rz" &&
    ok "/readyz 503 within the sweep interval, counting the region's missing versions ($(tr '\n' ' ' <"$W/rz"))" ||
    fail "/readyz body: $(cat "$W/rz")"
if grep -q "$ka" "$W/rz"; then fail "the unauthenticated body names the key"; fi
ok "the body names no key"
[ "$(readyz /eu-west)" = 503 ] && grep -q "1 live key version" "$W/rz" && [ "$(readyz /us-east)" = 200 ] &&
    ok "/readyz/eu-west 503, /readyz/us-east 200" || fail "per region: $(cat "$W/rz")"
grep -q "key $ka version 1 is live in the store but its object is not in token 'custos-eu-west'" \
    "$E2E_DIR/kmsd.log" && ok "the log names the key and version" ||
    fail "log: $(grep 'live key' "$E2E_DIR/kmsd.log")"
[ "$(grep -c "key $ka version 1 is live in the store" "$E2E_DIR/kmsd.log")" = 1 ] &&
    ok "logged once, not every sweep" || fail "logged on every sweep"
[ "$(as demo-broker decrypt --in "$W/ct-b")" = b ] &&
    ok "the region's other keys still decrypt" || fail "other key"
if out=$(as demo-broker decrypt --in "$W/ct-a" 2>&1); then fail "decrypted without its object"; fi
case "$out" in *not_found*) ok "a request for the missing version gets not_found" ;;
    *) fail "decrypt of the missing version: $out" ;; esac

# The version stops being live: the key is deleted (its waiting period is a
# second here), and readiness comes back by itself.
as demo-admin key schedule-deletion "$ka" --days 1 >/dev/null
i=0
until [ "$(readyz)" = 200 ]; do
    i=$((i + 1)); [ $i -lt 120 ] || fail "/readyz not ready again: $(cat "$W/rz")"
    sleep 0.25
done
grep -q "region eu-west: every live key version has its object in token 'custos-eu-west' again" \
    "$E2E_DIR/kmsd.log" && ok "ready again once no live version lacks its object; logged" ||
    fail "no recovery line"
e2e_stop && ok "kmsd stops cleanly"

# ---- a request finds the object missing: checked at once, not a sweep later --------
# The sweep interval is an hour now; a Decrypt that needs the missing object
# makes the sweeper check within seconds.
/usr/bin/python3 - "$E2E_DIR/kmsd.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["deletion"]["sweep_interval_s"] = 3600
json.dump(c, open(p, "w"), indent=2)
PY
e2e_start
kc=$(as demo-admin key create --region eu-west -q)
printf 'c' | as demo-broker encrypt --key-id "$kc" >"$W/ct-c"
[ "$(readyz)" = 200 ] || fail "not ready after the restart: $(cat "$W/rz")"
[ "$(/usr/bin/python3 tests/e2e/token_objects.py delete "$E2E_DIR" eu-west "$kc")" = 1 ] ||
    fail "the object was not deleted"
if as demo-broker decrypt --in "$W/ct-c" >/dev/null 2>&1; then fail "decrypted without its object"; fi
i=0
until [ "$(readyz)" = 503 ]; do
    i=$((i + 1)); [ $i -lt 120 ] || fail "/readyz still ready 30 s after a request missed the object"
    sleep 0.25
done
grep -q "1 live key version(s) have no object in HSM token 'custos-eu-west'" "$W/rz" &&
    grep -q "key $kc version 1 is live in the store but its object is not in token" "$E2E_DIR/kmsd.log" &&
    ok "a request that needed the missing object: /readyz and the log say so long before the hour's sweep" ||
    fail "after the request: $(cat "$W/rz")"
e2e_stop && ok "kmsd stops cleanly"

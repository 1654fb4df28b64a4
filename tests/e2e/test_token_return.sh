#!/bin/sh
# A token that goes away and comes back while kmsd runs (issue 21), on a real
# SoftHSMv2 token: its directory is moved away and back, as a restore of the
# token directory or a lost mount does.
#
# Before: the first requests got `internal` (C_Login answered
# CKR_GENERAL_ERROR, not on the re-probe path), later ones `unavailable`, and
# after the directory came back SoftHSMv2 kept answering CKR_GENERAL_ERROR:
# the region stayed down until kmsd was restarted.
# Now: every request of the region gets `unavailable` while the token is
# away, /readyz names the region and its token, the other region serves
# throughout, and once the directory is back kmsd re-initialises the module
# (docs/pkcs11.md "Tokens that go away") and serves the region again, with
# no restart.
set -eu
. tests/e2e/lib.sh
e2e_setup token_return
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
ok() { echo "ok - $1"; }
fail() { echo "not ok - $1"; exit 1; }
as() { who=$1; shift; CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/$who.key" "$KMSCTL" "$@"; }
readyz() { curl -s -o "$W/rz" -w '%{http_code}' "http://127.0.0.1:$E2E_PORT/readyz${1:-}"; }
W="$E2E_DIR/w"
mkdir -p "$W"

e2e_start
pid=$E2E_PID
ready_lines=$(grep -c '"ready' "$E2E_DIR/kmsd.log")
ke=$(as demo-admin key create --region eu-west -q)
ku=$(as demo-admin key create --region us-east -q)
printf 'eu-text' | as demo-broker encrypt --key-id "$ke" >"$W/ct-e"
printf 'us-text' | as demo-broker-us encrypt --key-id "$ku" >"$W/ct-u"

tokdir=
for d in "$E2E_DIR"/hsm/tokens/*; do
    grep -q custos-eu-west "$d/token.object" 2>/dev/null && tokdir=$d
done
[ -n "$tokdir" ] || fail "no eu-west token directory"

# us-east works on throughout, while eu-west's module is re-initialised under
# it: each of its requests must succeed.
(
    n=0
    while [ ! -f "$W/stop-us" ]; do
        printf 'us-load' | as demo-broker-us encrypt --key-id "$ku" >"$W/us-ct" 2>"$W/us-err" ||
            { echo "us-east request $n failed: $(cat "$W/us-err")" >"$W/us-failed"; }
        n=$((n + 1))
    done
    echo "$n" >"$W/us-count"
) &
us_load=$!

# ---- the token goes away ----------------------------------------------------------
mv "$tokdir" "$W/away"
codes=
for i in 1 2 3; do
    out=$(printf x | as demo-broker encrypt --key-id "$ke" 2>&1) && fail "encrypt while away: $out"
    codes="$codes $(echo "$out" | sed -n 's/^kmsctl: \([a-z_]*\):.*/\1/p')"
    out=$(as demo-broker decrypt --in "$W/ct-e" 2>&1) && fail "decrypt while away: $out"
    codes="$codes $(echo "$out" | sed -n 's/^kmsctl: \([a-z_]*\):.*/\1/p')"
done
[ "$codes" = " unavailable unavailable unavailable unavailable unavailable unavailable" ] &&
    ok "every request of the region gets unavailable while its token is away" ||
    fail "codes while away:$codes"
[ "$(readyz)" = 503 ] && grep -q "region eu-west: its HSM token 'custos-eu-west' is unavailable" "$W/rz" &&
    ok "/readyz 503 names the region and its token ($(tr '\n' ' ' <"$W/rz"))" ||
    fail "/readyz while away: $(cat "$W/rz")"
[ "$(readyz /eu-west)" = 503 ] && grep -q "custos-eu-west" "$W/rz" && [ "$(readyz /us-east)" = 200 ] &&
    ok "/readyz/eu-west 503, /readyz/us-east 200" || fail "per region readiness: $(cat "$W/rz")"
[ "$(as demo-broker-us decrypt --in "$W/ct-u")" = us-text ] &&
    printf 'w2' | as demo-broker-us encrypt --key-id "$ku" >/dev/null &&
    ok "the other region serves while the token is away" || fail "us-east while eu-west away"
grep -q "token 'custos-eu-west' (region eu-west) is unavailable" "$E2E_DIR/kmsd.log" &&
    ok "the log says the token is unavailable" || fail "no log line"

# ---- it comes back ----------------------------------------------------------------
mv "$W/away" "$tokdir"
i=0
until [ "$(readyz)" = 200 ]; do
    i=$((i + 1)); [ $i -lt 240 ] || fail "/readyz never 200 after the token came back: $(cat "$W/rz")"
    sleep 0.25
done
ok "/readyz 200 once the token is back"
touch "$W/stop-us"
wait $us_load
[ ! -f "$W/us-failed" ] && [ "$(cat "$W/us-count")" -gt 0 ] &&
    ok "the other region served every one of its $(cat "$W/us-count") requests meanwhile" ||
    fail "$(cat "$W/us-failed" 2>/dev/null || echo 'no us-east requests ran')"
[ "$(as demo-broker decrypt --in "$W/ct-e")" = eu-text ] &&
    printf 'again' | as demo-broker encrypt --key-id "$ke" >"$W/ct-e2" &&
    [ "$(as demo-broker decrypt --in "$W/ct-e2")" = again ] &&
    ok "Encrypt and Decrypt work again in the region that came back" || fail "eu-west after return"
[ "$(as demo-broker-us decrypt --in "$W/ct-u")" = us-text ] &&
    ok "the other region still serves after the module was re-initialised" || fail "us-east after"
as demo-admin key rotate "$ke" >/dev/null && k2=$(as demo-admin key create --region eu-west -q) &&
    printf 'new' | as demo-broker encrypt --key-id "$k2" >/dev/null &&
    ok "keys are created and rotated in the region again" || fail "writes after return"
grep -q "token 'custos-eu-west' (region eu-west) is available again" "$E2E_DIR/kmsd.log" &&
    grep -q "re-initialised .* to recover token 'custos-eu-west'" "$E2E_DIR/kmsd.log" &&
    ok "the log says how it came back" || fail "no recovery line"
kill -0 "$pid" && [ "$E2E_PID" = "$pid" ] &&
    [ "$(grep -c '"ready' "$E2E_DIR/kmsd.log")" = "$ready_lines" ] &&
    ok "no restart: the same kmsd process throughout" || fail "kmsd restarted"
if grep -q "$(cat "$E2E_DIR/hsm/pins/eu-west.pin")" "$E2E_DIR/kmsd.log"; then fail "PIN in the log"; fi
e2e_scan_tokens >/dev/null || fail "token template scan"
e2e_stop && ok "kmsd stops cleanly"

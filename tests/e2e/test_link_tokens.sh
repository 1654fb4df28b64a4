#!/bin/sh
# Link tokens end to end (docs/link-tokens.md) with a real kmsd on SoftHSMv2:
# links_test.py (round trip, every refusal's one answer and its own audit
# reason, 100 concurrent redemptions of one token, expiry on the test clock,
# the attempt limit, the per-recipient rate limit, rotation, residency,
# roles and grants, revocation, escrow and its M-of-N restore, the sweep);
# then nothing personal (phone number, device value, token) in the audit
# log, the store or kmsd's log; the key-template scan of the HSM objects;
# kmsctl's verbs; a token that survives a restart, once.
set -eu
. tests/e2e/lib.sh
e2e_setup links
# Deletion "days" of one second, so that an escrowed link key can be
# destroyed and restored by its officers within the test.
CUSTOS_DEV_DAY_SECONDS=1 CUSTOS_DEV_MIN_DAYS=0 CUSTOS_DEV_SWEEP_S=1 CUSTOS_DEV_HEAD_MS=100 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
# The link clock tests move (dev mode only), small limits so that the test
# reaches them quickly.
echo 0 >"$E2E_DIR/link_clock"
/usr/bin/python3 - "$E2E_DIR/kmsd.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["link_tokens"] = {"min_ttl_s": 60, "max_ttl_s": 900, "default_ttl_s": 300,
                    "max_attempts": 3, "recipient_limit": 150, "recipient_window_s": 900,
                    "clock_skew_s": 30, "keep_expired_s": 3600,
                    "test_clock_file": "link_clock"}
# 100 concurrent connections from this one address (the race below).
c["limits"]["max_connections_per_ip"] = 128
json.dump(c, open(p, "w"), indent=2)
PY
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto proto/escrow.proto \
    proto/links.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT

ok() { echo "ok - $1"; }
fail() { echo "not ok - $1"; exit 1; }

/usr/bin/python3 tests/e2e/links_test.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID"

# ---- kmsctl verbs ------------------------------------------------------------------
as() { who=$1; shift; CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/$who.key" "$KMSCTL" "$@"; }
key=$(as demo-admin key create --region eu-west --spec link-token -q)
[ ${#key} -eq 32 ] || fail "kmsctl key create --spec link-token: $key"
as demo-admin key describe "$key" --json | grep -q '"usage": *"LINK_TOKEN"' ||
    fail "kmsctl key describe: usage LINK_TOKEN"
printf 'device-cookie-for-kmsctl' >"$E2E_DIR/dev.bin"
as demo-broker link mint "$key" --phone '+1 (415) 555-0199' --device-file "$E2E_DIR/dev.bin" \
    --purpose view-message --ttl 120 --message-ref msg-kmsctl-1 >"$E2E_DIR/mint.out"
tok=$(sed -n 's/^token: //p' "$E2E_DIR/mint.out")
tid=$(sed -n 's/^token_id: //p' "$E2E_DIR/mint.out")
[ ${#tok} -eq 48 ] && [ ${#tid} -eq 24 ] || fail "kmsctl link mint output: $(cat "$E2E_DIR/mint.out")"
ok "kmsctl link mint prints a 48-character token and its id"
printf '%s' "$tok" >"$E2E_DIR/tok.txt"
rc=0
as demo-broker link redeem "$key" --token-file "$E2E_DIR/tok.txt" --phone '+14155550199' \
    --device-file "$E2E_DIR/dev.bin" --purpose login >/dev/null 2>"$E2E_DIR/err" || rc=$?
[ $rc -eq 1 ] && grep -q 'link token not accepted' "$E2E_DIR/err" ||
    fail "kmsctl link redeem with the wrong purpose: exit $rc $(cat "$E2E_DIR/err")"
ok "kmsctl link redeem with the wrong purpose: exit 1, the one answer"
as demo-broker link redeem "$key" --token-file "$E2E_DIR/tok.txt" --phone '+14155550199' \
    --device-file "$E2E_DIR/dev.bin" --purpose view-message | grep -q "^redeemed: $tid" ||
    fail "kmsctl link redeem"
ok "kmsctl link redeem: redeemed, names the token id"
tok2=$(as demo-broker link mint "$key" --phone '+14155550199' --device-file "$E2E_DIR/dev.bin" \
    --purpose view-message --message-ref msg-kmsctl-2 | sed -n 's/^token: //p')
as demo-broker link revoke "$key" --message-ref msg-kmsctl-2 | grep -q '^revoked: 1$' ||
    fail "kmsctl link revoke --message-ref"
printf '%s' "$tok2" >"$E2E_DIR/tok.txt"
if as demo-broker link redeem "$key" --token-file "$E2E_DIR/tok.txt" --phone '+14155550199' \
    --device-file "$E2E_DIR/dev.bin" --purpose view-message >/dev/null 2>&1; then
    fail "a revoked token redeemed"
fi
ok "kmsctl link revoke --message-ref: revoked 1, and that token no longer redeems"

# ---- nothing personal anywhere ----------------------------------------------------
sleep 0.3
cat "$E2E_DIR/personal.txt" "$E2E_DIR/tok.txt" >"$E2E_DIR/needles"
echo "$tok" >>"$E2E_DIR/needles"
printf '4155550199\ndevice-cookie-for-kmsctl\n' >>"$E2E_DIR/needles"
n=$(wc -l <"$E2E_DIR/needles")
[ "$n" -gt 40 ] || fail "the needle list is short ($n)"
found=0
for f in "$E2E_DIR"/kmsd.log "$E2E_DIR"/kmsd.db* "$E2E_DIR"/audit/*; do
    [ -f "$f" ] || continue
    if grep -a -F -q -f "$E2E_DIR/needles" "$f"; then
        echo "# personal data or a token in $f: $(grep -a -o -F -f "$E2E_DIR/needles" "$f" | head -3)"
        found=1
    fi
done
[ $found -eq 0 ] || fail "phone numbers, device values or tokens were written"
ok "no phone number, device value or token ($n needles) in kmsd.log, the store or the audit log"

# ---- a token minted before a restart redeems after it, once ----------------------------
tok3=$(as demo-broker link mint "$key" --phone '+14155550199' --device-file "$E2E_DIR/dev.bin" \
    --purpose view-message | sed -n 's/^token: //p')
printf '%s' "$tok3" >"$E2E_DIR/tok.txt"
echo "$tok3" >>"$E2E_DIR/needles"
e2e_scan_tokens
e2e_stop
e2e_start
as demo-broker link redeem "$key" --token-file "$E2E_DIR/tok.txt" --phone '+14155550199' \
    --device-file "$E2E_DIR/dev.bin" --purpose view-message >/dev/null ||
    fail "a token minted before the restart does not redeem after it"
if as demo-broker link redeem "$key" --token-file "$E2E_DIR/tok.txt" --phone '+14155550199' \
    --device-file "$E2E_DIR/dev.bin" --purpose view-message >/dev/null 2>&1; then
    fail "a token redeemed twice across a restart"
fi
ok "a token minted before a kmsd restart redeems after it, once"
e2e_stop
found=0
for f in "$E2E_DIR"/kmsd.log "$E2E_DIR"/kmsd.db* "$E2E_DIR"/audit/*; do
    [ -f "$f" ] || continue
    grep -a -F -q -f "$E2E_DIR/needles" "$f" && found=1
done
[ $found -eq 0 ] || fail "personal data or a token written after the restart"
ok "still nothing personal after the restart"
trap - EXIT

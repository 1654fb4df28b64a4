#!/bin/sh
# Operating kmsd (docs/operations.md): sd_notify and watchdog, /livez,
# /readyz with a token removed through the fault shim, /metrics, SIGHUP,
# SIGTERM (ops_test.py); then --check-config and start-up refusals: a bad
# configuration names the offending key, a PIN file open to others is
# refused.
set -eu
. tests/e2e/lib.sh
e2e_setup ops
shim="$BUILD_DIR/lib/p11_fault.so"
[ -f "$shim" ] || { echo "not ok 1 - $shim not built"; exit 1; }
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto
export CUSTOS_P11FAULT_CONTROL="$E2E_DIR/fault.ctl"
export CUSTOS_P11FAULT_MODULE=/usr/lib/softhsm/libsofthsm2.so

/usr/bin/python3 - "$E2E_DIR" "$shim" <<'PY'
import json, sys
d, shim = sys.argv[1], sys.argv[2]
c = json.load(open(f"{d}/kmsd.json"))
c["pkcs11"]["module"] = shim
c["log"] = {"level": "info", "file": "kmsd-file.log"}
c["health"] = {"cache_ms": 200}
c["audit"]["head_every_ms"] = 200
json.dump(c, open(f"{d}/kmsd-ops.json", "w"), indent=2)
PY
PYTHONPATH="$E2E_DIR/py:tests/e2e" /usr/bin/python3 tests/e2e/ops_test.py "$E2E_DIR" "$E2E_PORT" "$KMSD"

# ---- configuration refusals -------------------------------------------------
i=100
fail=0
bad() { # name python-edit: writes $E2E_DIR/bad-NAME.json from kmsd.json
    /usr/bin/python3 - "$E2E_DIR" "$1" "$2" <<'PY'
import json, sys
d, name, edit = sys.argv[1:4]
c = json.load(open(f"{d}/kmsd.json"))
exec(edit)
json.dump(c, open(f"{d}/bad-{name}.json", "w"))
PY
}
refused() { # config expected-text: --check-config and a start both fail naming it
    out=$("$KMSD" --check-config --config "$1" 2>&1) && return 1
    echo "$out" | grep -qF -- "$2" || { echo "# check-config said: $out"; return 1; }
    out=$(timeout 60 "$KMSD" --config "$1" 2>&1) && return 1
    echo "$out" | grep -qF -- "$2" || { echo "# start said: $out"; return 1; }
}
t "--check-config accepts the dev configuration" "$KMSD" --check-config --config "$E2E_DIR/kmsd.json"
bad typo 'c["limits"]["max_body_byte"] = 5'
t "an unknown key is refused by name: limits.max_body_byte" refused "$E2E_DIR/bad-typo.json" "limits.max_body_byte: unknown key"
bad range 'c["limits"]["max_body_bytes"] = 5'
t "a value out of range names its key: limits.max_body_bytes" refused "$E2E_DIR/bad-range.json" "limits.max_body_bytes: must be an integer in 1024..16777216"
bad level 'c["log"] = {"level": "loud"}'
t "log.level must be a known level" refused "$E2E_DIR/bad-level.json" "log.level: must be"
bad health 'c["health"] = {"cache_ms": -1}'
t "health.cache_ms is range-checked" refused "$E2E_DIR/bad-health.json" "health.cache_ms: must be an integer in 0..60000"
bad drain 'c["limits"]["drain_timeout_s"] = 0'
t "limits.drain_timeout_s is range-checked" refused "$E2E_DIR/bad-drain.json" "limits.drain_timeout_s: must be an integer in 1..3600"
bad token 'c["pkcs11"]["tokens"][1]["pin"] = 7'
t "a token's PIN of the wrong type names pkcs11.tokens[1].pin" refused "$E2E_DIR/bad-token.json" "pkcs11.tokens[1].pin: must be a non-empty string"
printf '{ "mode": "dev", }' >"$E2E_DIR/bad-json.json"
t "broken JSON names the file and line" refused "$E2E_DIR/bad-json.json" "bad-json.json:1:"

# PIN sources: a file readable by group or others is refused, at
# --check-config and at start, and the PIN never shows in the message.
pin="$E2E_DIR/hsm/pins/eu-west.pin"
cp "$pin" "$E2E_DIR/open.pin"
chmod 0644 "$E2E_DIR/open.pin"
bad pinmode "c['pkcs11']['tokens'][0]['pin'] = 'file:open.pin'"
t "a PIN file of mode 0644 is refused (check-config and start)" refused "$E2E_DIR/bad-pinmode.json" "mode 0644 is too open"
out=$("$KMSD" --check-config --config "$E2E_DIR/bad-pinmode.json" 2>&1 || true)
t "the refusal names the token's pin key and not the PIN" sh -c \
    'echo "$1" | grep -qF "pkcs11.tokens[0].pin" && ! echo "$1" | grep -qF "$(cat "$2")"' - "$out" "$pin"
chmod 0640 "$E2E_DIR/open.pin"
t "mode 0640 (group-readable) is refused too" refused "$E2E_DIR/bad-pinmode.json" "mode 0640 is too open"
chmod 0600 "$E2E_DIR/open.pin"
t "mode 0600 passes --check-config" "$KMSD" --check-config --config "$E2E_DIR/bad-pinmode.json"
bad pinenv "c['pkcs11']['tokens'][0]['pin'] = 'env:CUSTOS_TEST_UNSET_PIN'"
t "an unset env: PIN source is refused by --check-config" refused "$E2E_DIR/bad-pinenv.json" "CUSTOS_TEST_UNSET_PIN"

# ---- the fault shim on its own, through kmsctl hsm list ----------------------
ctl="$CUSTOS_P11FAULT_CONTROL"
: >"$ctl"
t "the shim forwards everything when the control file is empty" sh -c \
    '"$1" hsm list --module "$2" 2>&1 | grep -q custos-eu-west' - "$KMSCTL" "$shim"
printf '* CKR_TOKEN_NOT_PRESENT\n' >"$ctl"
t "'* CKR_TOKEN_NOT_PRESENT' fails the slot listing too (exit 1, the CKR named)" sh -c \
    'out=$("$1" hsm list --module "$2" 2>&1); rc=$?; [ $rc -eq 1 ] &&
     echo "$out" | grep -q CKR_TOKEN_NOT_PRESENT' - "$KMSCTL" "$shim"
printf 'C_Bogus CKR_DEVICE_ERROR\nC_GetSlotList CKR_NOPE\nC_GetSlotList after=x CKR_DEVICE_ERROR\n' >"$ctl"
out=$("$KMSCTL" hsm list --module "$shim" 2>&1 || echo FAILED)
t "lines that do not parse are reported and ignored" sh -c \
    'echo "$1" | grep -q "fault.ctl:1: unknown function; line ignored" &&
     echo "$1" | grep -q "fault.ctl:2: bad word" && echo "$1" | grep -q "fault.ctl:3: bad word" &&
     echo "$1" | grep -q custos-eu-west && ! echo "$1" | grep -q FAILED' - "$out"
: >"$ctl"
exit $fail

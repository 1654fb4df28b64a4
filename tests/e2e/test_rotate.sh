#!/bin/sh
# Key rotation (docs/api.md RotateKey, docs/state.md): concurrent RotateKey
# on one key tells each caller its own version in a dense snapshot, and a
# token's transient failure on object creation is retried (rotate_test.py
# through the fault-injecting shim tests/p11fault).
set -eu
. tests/e2e/lib.sh
e2e_setup rotate
shim="$BUILD_DIR/lib/p11_fault.so"
[ -f "$shim" ] || { echo "not ok 1 - $shim not built"; exit 1; }
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto proto/fields.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
export CUSTOS_P11FAULT_CONTROL="$E2E_DIR/fault.ctl"
export CUSTOS_P11FAULT_STATS="$E2E_DIR/p11.stats"
export CUSTOS_P11FAULT_MODULE=/usr/lib/softhsm/libsofthsm2.so
: >"$CUSTOS_P11FAULT_CONTROL"

# cfg NAME PYTHON-EDIT: $E2E_DIR/kmsd-NAME.json from kmsd.json, module = shim.
cfg() {
    /usr/bin/python3 - "$E2E_DIR" "$shim" "$1" "$2" <<'PY'
import json, sys
d, shim, name, edit = sys.argv[1:5]
c = json.load(open(f"{d}/kmsd.json"))
c["pkcs11"]["module"] = shim
exec(edit)
json.dump(c, open(f"{d}/kmsd-{name}.json", "w"), indent=2)
PY
}
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT

cfg base 'pass'
e2e_start "$E2E_DIR/kmsd-base.json"
/usr/bin/python3 tests/e2e/rotate_test.py concurrent "$E2E_DIR" "$E2E_PORT"
e2e_stop

# GCM usage: a tiny threshold and limit (dev mode only), sweeps every second.
cfg usage 'c["rotation"] = {"usage_rotate_at": 10, "usage_limit": 20, "usage_reserve_block": 4}
c["deletion"]["sweep_interval_s"] = 1'
e2e_start "$E2E_DIR/kmsd-usage.json"
/usr/bin/python3 tests/e2e/rotate_test.py usage "$E2E_DIR" "$E2E_PORT"
e2e_stop
e2e_start "$E2E_DIR/kmsd-usage.json"
/usr/bin/python3 tests/e2e/rotate_test.py usage_restart "$E2E_DIR" "$E2E_PORT"
/usr/bin/python3 tests/e2e/rotate_test.py hardlimit "$E2E_DIR" "$E2E_PORT"
e2e_stop

# Rotation periods: rotation.min_period_s 2 (dev mode only).
cfg period 'c["rotation"] = {"min_period_s": 2}
c["deletion"]["sweep_interval_s"] = 1'
e2e_start "$E2E_DIR/kmsd-period.json"
/usr/bin/python3 tests/e2e/rotate_test.py period "$E2E_DIR" "$E2E_PORT" "$KMSCTL"
e2e_scan_tokens >/dev/null
e2e_stop
trap - EXIT

# Last: it kills kmsd with SIGABRT.
/usr/bin/python3 tests/e2e/rotate_test.py dump "$E2E_DIR" "$E2E_PORT" "$KMSD" \
    "$E2E_DIR/kmsd-base.json"

#!/bin/sh
# HSM faults through the fault-injecting PKCS#11 shim in front of SoftHSMv2,
# a real kmsd over HTTP (faults_test.py): a lost session is retried exactly
# once and the key found again by CKA_ID; PIN errors give 503 and no login
# storm (one C_Login, at run time and at start, exit 3 at start); device
# errors, removed tokens and slow calls on Encrypt, Decrypt, GenerateDataKey
# and CreateKey give the right Twirp code, no partial output, one audit
# event each, and kmsd serves again once the fault is gone. The audit log
# then verifies offline, and the tokens pass the template scan.
set -eu
. tests/e2e/lib.sh
e2e_setup faults
shim="$BUILD_DIR/lib/p11_fault.so"
[ -f "$shim" ] || { echo "not ok 1 - $shim not built"; exit 1; }
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
export CUSTOS_P11FAULT_CONTROL="$E2E_DIR/fault.ctl"
export CUSTOS_P11FAULT_STATS="$E2E_DIR/p11.stats"
export CUSTOS_P11FAULT_MODULE=/usr/lib/softhsm/libsofthsm2.so

# Heads only at start and stop: no signing in the background while the
# test counts the calls each request makes.
/usr/bin/python3 - "$E2E_DIR" "$shim" <<'PY'
import json, sys
d, shim = sys.argv[1], sys.argv[2]
c = json.load(open(f"{d}/kmsd.json"))
c["pkcs11"]["module"] = shim
c["health"] = {"cache_ms": 0}
c["audit"]["head_every_ms"] = 3600000
c["audit"]["head_every_events"] = 1000000
json.dump(c, open(f"{d}/kmsd-faults.json", "w"), indent=2)
PY
/usr/bin/python3 tests/e2e/faults_test.py "$E2E_DIR" "$E2E_PORT" "$KMSD"

# The log, failures and all, verifies offline (OpenSSL only, no server).
: >"$CUSTOS_P11FAULT_CONTROL"
e2e_start "$E2E_DIR/kmsd-faults.json"
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
export CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/auditor.key"
"$KMSCTL" audit keys --out-dir "$E2E_DIR/keys" >/dev/null
"$KMSCTL" audit export --region eu-west --out "$E2E_DIR/faults.bin" --proofs >/dev/null
unset CUSTOS_API_KEY_FILE
e2e_scan_tokens
e2e_stop
trap - EXIT
if "$KMSCTL" audit verify --keys="$E2E_DIR/keys" "$E2E_DIR/faults.bin" >"$E2E_DIR/verify.out" 2>&1; then
    echo "ok 100 - kmsctl audit verify accepts the eu-west log after every fault"
else
    cat "$E2E_DIR/verify.out"
    echo "not ok 100 - kmsctl audit verify"
    exit 1
fi

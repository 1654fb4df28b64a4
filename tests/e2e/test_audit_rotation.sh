#!/bin/sh
# Audit signing keys rotate by age: new heads are signed by the new key, the
# old public key stays listed (with the end of its validity) and still
# verifies the heads it signed.
set -eu
. tests/e2e/lib.sh
e2e_setup rotation
/usr/bin/python3 - "$E2E_DIR" <<'PY'
import json, sys
d = sys.argv[1]
c = json.load(open(f"{d}/kmsd.json"))
c["audit"].update({"head_every_ms": 100, "key_max_age_s": 1})
json.dump(c, open(f"{d}/kmsd.json", "w"))
PY
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
/usr/bin/python3 tests/e2e/audit_rotation.py "$E2E_DIR" "$E2E_PORT"
e2e_stop
trap - EXIT

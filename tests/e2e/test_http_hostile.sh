#!/bin/sh
# HTTP hostility: request smuggling shapes, endless and oversized bodies,
# slowloris, header floods, invalid UTF-8 and path tricks in ids. Each gets
# a clear refusal (or the connection is closed), kmsd's memory stays
# bounded, and honest clients are served throughout; their p99 is measured
# with and without the attack (printed, only sanity-bounded).
set -eu
. tests/e2e/lib.sh
e2e_setup hostile
# A short idle timeout so that abandoned connections (endless chunked
# bodies, slowloris) are reaped within the test's time.
/usr/bin/python3 - "$E2E_DIR" <<'PY'
import json, sys
d = sys.argv[1]
c = json.load(open(f"{d}/kmsd.json"))
c.setdefault("limits", {})["connection_timeout_s"] = 4
json.dump(c, open(f"{d}/kmsd.json", "w"), indent=2)
PY
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
PYTHONPATH="$E2E_DIR/py" /usr/bin/python3 tests/e2e/http_hostile.py "$E2E_DIR" "$E2E_PORT" "$E2E_PID"
e2e_scan_tokens
e2e_stop
trap - EXIT

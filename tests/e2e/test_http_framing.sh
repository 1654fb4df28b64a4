#!/bin/sh
# Request framing and header hygiene (docs/hardening.md, "Request framing
# and headers"): Content-Length with Transfer-Encoding in every order and
# casing, Transfer-Encoding other than exactly "chunked", repeated
# credential and framing headers, NUL/CR/LF/control bytes in each header,
# obs-fold and bare LF, each with a request hidden behind it. Each is one
# 400, the connection closed, the hidden request never answered, and no
# hang; routed refusals are audited with nothing truncated. Legitimate
# chunked bodies and keep-alive pipelining still work. Run in both thread
# models (pool with suspend-while-auditing, and per-connection).
set -eu
. tests/e2e/lib.sh
CUSTOS_DEV_HEAD_MS=200 e2e_setup framing
# A short idle timeout: a server that waited for a body it framed
# differently would close within the test's time, without an answer (which
# the checks catch), instead of holding each connection for 30 s.
/usr/bin/python3 - "$E2E_DIR" <<'PY'
import json, sys
d = sys.argv[1]
c = json.load(open(f"{d}/kmsd.json"))
c.setdefault("limits", {})["connection_timeout_s"] = 4
json.dump(c, open(f"{d}/kmsd.json", "w"), indent=2)
PY
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
# Both thread models: in the pool a routed refusal suspends the connection
# until its audit event is durable and answers after the resume (by then
# libmicrohttpd may have read the body); per connection it answers at once.
for model in pool per-connection; do
    /usr/bin/python3 - "$E2E_DIR" "$model" <<'PY'
import json, sys
d, model = sys.argv[1], sys.argv[2]
c = json.load(open(f"{d}/kmsd.json"))
c["limits"]["thread_model"] = model
json.dump(c, open(f"{d}/kmsd.json", "w"), indent=2)
PY
    echo "# thread model: $model"
    e2e_start
    PYTHONPATH="$E2E_DIR/py" /usr/bin/python3 tests/e2e/http_framing.py "$E2E_DIR" "$E2E_PORT"
    e2e_stop
done
trap - EXIT

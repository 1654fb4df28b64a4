#!/bin/sh
# String fields: every string field of every method (found by walking the
# protobuf descriptors of proto/, map keys and values and nested messages
# included) with a NUL byte or invalid UTF-8 is refused 400
# invalid_argument naming the field, and changes nothing; a context value
# alice\0mallory does not decrypt what was bound to alice; CreateKey with
# region eu-west\0us-east creates no key (tests/e2e/strings_test.py).
set -eu
. tests/e2e/lib.sh
e2e_setup strings
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/*.proto
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
PYTHONPATH="$E2E_DIR/py" /usr/bin/python3 tests/e2e/strings_test.py "$E2E_DIR" "$E2E_PORT"
e2e_stop
trap - EXIT
# The refused values are never echoed: not in replies (strings_test.py),
# not in the operational log.
if grep -q 'mallory' "$E2E_DIR/kmsd.log"; then
    echo "not ok - a refused string value appears in the kmsd log"; exit 1
fi
echo "ok - no refused string value in the operational log"

#!/bin/sh
# Field values the decoder and the handlers must refuse, end to end
# (tests/e2e/values_test.py):
#  - every enum field of every method (found by walking the protobuf
#    descriptors of proto/, nested and repeated messages included) set to a
#    value its enum does not define is refused 400 invalid_argument naming
#    the field, in protobuf and in JSON (the number), and changes nothing;
#    CreateKey origin=99 / origin=2^40 (a varint protobuf-c alone reads as 0)
#    makes no key;
#  - every free-text field (recovery justification_text, case_reference,
#    cancel reason, key description) with a C0/C1 control, NEL, a line or
#    paragraph separator, a bidi override/isolate/mark or a zero-width
#    character is refused 400 invalid_argument and creates nothing.
set -eu
. tests/e2e/lib.sh
e2e_setup values
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/*.proto
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
PYTHONPATH="$E2E_DIR/py" /usr/bin/python3 tests/e2e/values_test.py "$E2E_DIR" "$E2E_PORT"
e2e_stop
trap - EXIT

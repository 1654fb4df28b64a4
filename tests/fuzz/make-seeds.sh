#!/bin/sh
# Regenerate the checked-in seed corpora: tests/fuzz/corpus/<target>/.
#   sh tests/fuzz/make-seeds.sh build/tools/fuzz_seedgen     (make fuzz-seeds)
# Seeds come from the project's own encoders (seedgen.c), for the policy
# loader from the example policy, for fuzz_xks from tests/fuzz/seeds/. Regression inputs of
# fixed findings live apart, in tests/fuzz/regress/<target>/, and are never
# regenerated.
set -eu
seedgen=$1
top=$(cd "$(dirname "$0")/../.." && pwd)
out="$top/tests/fuzz/corpus"
rm -rf "$out"
mkdir -p "$out/fuzz_policy"
"$seedgen" "$out"
cp "$top/deploy/examples/policy.json" "$out/fuzz_policy/example.json"
printf '{}' >"$out/fuzz_policy/empty.json"
# The XKS parsers' seeds are the specification's own example requests,
# kept by hand in tests/fuzz/seeds/fuzz_xks/ (first byte: the parser).
mkdir -p "$out/fuzz_xks"
cp "$top"/tests/fuzz/seeds/fuzz_xks/* "$out/fuzz_xks/"
for d in "$out"/*/; do
    echo "$(basename "$d"): $(ls "$d" | wc -l) seeds"
done

#!/bin/sh
# The audit log end to end, from the auditor's side: one event per request
# (key operations and refusals, through raw HTTP and kmsctl), no plaintext,
# data key or credential in the log or its exports, the openssl command line
# verifying a head, and `kmsctl audit verify` accepting honest bundles and
# naming each tamper case: a flipped byte in an entry or a signature, a
# dropped entry, two reordered, a truncated tail, spliced exports, an older
# smaller head, a rolled-back (forked) log; consistency between heads; key
# rotation.
#
# Prints "ok N - ..." per check; exits 1 if any check failed.
set -eu
. tests/e2e/lib.sh
CUSTOS_DEV_HEAD_MS=200 e2e_setup audit
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT

W="$E2E_DIR/t"
mkdir -p "$W"
K="$KMSCTL"
CRED="$E2E_DIR/credentials"
export CUSTOS_API_KEY_FILE="$CRED/auditor.key"
n=0
failed=0

pass() { n=$((n + 1)); echo "ok $n - $1"; }
flunk() {
    n=$((n + 1))
    echo "not ok $n - $1"
    failed=$((failed + 1))
    [ $# -lt 2 ] || sed 's/^/#   /' "$2"
}
py() { PYTHONPATH="$E2E_DIR/py" /usr/bin/python3 tests/e2e/audit_test.py "$@"; }

# check DESC CMD...: CMD succeeds.
check() {
    d=$1
    shift
    if "$@" >"$W/out" 2>&1; then pass "$d"; else flunk "$d" "$W/out"; fi
}

# verify_ok DESC ARGS...: `kmsctl audit verify ARGS` exits 0.
verify_ok() {
    d=$1
    shift
    if "$K" audit verify "$@" >"$W/out" 2>&1; then pass "$d"; else flunk "$d" "$W/out"; fi
}

# verify_bad DESC TEXT ARGS...: it exits 1 and says TEXT.
verify_bad() {
    d=$1
    want=$2
    shift 2
    rc=0
    "$K" audit verify "$@" >"$W/out" 2>&1 || rc=$?
    if [ $rc -eq 1 ] && grep -qF -- "$want" "$W/out"; then
        pass "$d"
    else
        echo "exit $rc, wanted 1 and: $want" >>"$W/out"
        flunk "$d" "$W/out"
    fi
}

# A head made after now (it covers every request answered before).
wait_head() {
    since=$(($(date +%s%3N) + 50))
    i=0
    while :; do
        ts=$("$K" audit head --region "$1" | sed -n 's/^timestamp: .*(\([0-9]*\) ms)$/\1/p')
        [ -n "$ts" ] && [ "$ts" -gt "$since" ] && return 0
        i=$((i + 1))
        [ $i -lt 100 ] || { echo "no new head for $1" >&2; return 1; }
        sleep 0.1
    done
}

export_() { # REGION OUT [ARGS]
    r=$1
    o=$2
    shift 2
    "$K" audit export --region "$r" --out "$o" "$@" >/dev/null
}

tree_size() { py info "$1" | cut -d' ' -f1; }

# ---- one event per request -----------------------------------------------------------

py ops "$E2E_DIR" "$E2E_PORT" "$W/ops.json" >/dev/null
A="--api-key-file=$CRED/demo-admin.key"
B="--api-key-file=$CRED/demo-broker.key"
: >"$W/corr.txt"
kc() { # CORRELATION_ID OPERATION OUTCOME kmsctl-args...
    id=$1 op=$2 outcome=$3
    shift 3
    echo "$id $op $outcome" >>"$W/corr.txt"
    rc=0
    "$K" "$@" --correlation-id "$id" >"$W/kc.out" 2>&1 || rc=$?
    if [ "$outcome" = ok ] && [ $rc -ne 0 ]; then cat "$W/kc.out" >&2; return 1; fi
    if [ "$outcome" != ok ] && ! grep -q "^kmsctl: $outcome:" "$W/kc.out"; then
        cat "$W/kc.out" >&2
        return 1
    fi
}
kid=$("$K" key create --region eu-west -q "$A" --correlation-id e2e-kmsctl-create)
echo "e2e-kmsctl-create CreateKey ok" >>"$W/corr.txt"
printf 'PLAINTEXT-SENTINEL-kmsctl-%s' "$(openssl rand -hex 8)" >"$W/pt.txt"
kc e2e-kmsctl-encrypt Encrypt ok encrypt --key-id "$kid" --in "$W/pt.txt" --out "$W/ct" "$B"
kc e2e-kmsctl-decrypt Decrypt ok decrypt --in "$W/ct" --out "$W/pt2.txt" "$B"
kc e2e-kmsctl-disable DisableKey ok key disable "$kid" "$A"
kc e2e-kmsctl-encrypt-disabled Encrypt failed_precondition \
    encrypt --key-id "$kid" --in "$W/pt.txt" --out "$W/ct2" "$B"
kc e2e-kmsctl-describe-unknown DescribeKey not_found \
    key describe 00000000000000000000000000000000 "$A"
kc e2e-kmsctl-create-by-broker CreateKey permission_denied key create --region eu-west "$B"
kc e2e-kmsctl-export-by-broker ExportAuditLog permission_denied \
    audit export --region eu-west --out "$W/nope.bin" "$B"

i=0
while :; do
    export_ eu-west "$W/all-eu.bin"
    export_ us-east "$W/all-us.bin"
    rc=0
    py events "$W/ops.json" "$W/corr.txt" "$W/all-eu.bin" "$W/all-us.bin" >"$W/out" 2>&1 || rc=$?
    [ $rc -eq 3 ] && [ $i -lt 50 ] || break
    i=$((i + 1))
    sleep 0.2
done
if [ $rc -eq 0 ]; then
    pass "every key operation and refusal (HTTP and kmsctl) has exactly one event, with its fields"
else
    flunk "every key operation and refusal has exactly one event" "$W/out"
fi
check "no plaintext, data key or credential in the audit files or the exports" \
    py secrets "$W/ops.json" "$E2E_DIR"/audit/* "$W/all-eu.bin" "$W/all-us.bin"
check "the .events file is framed as documented and holds the exported leaves" \
    py rawlog "$E2E_DIR/audit/eu-west.events" "$W/all-eu.bin"

# ---- the openssl command line --------------------------------------------------------

check "kmsctl audit keys --out-dir writes every region's key" "$K" audit keys --out-dir "$W/keys"
"$K" audit head --region eu-west --out "$W/head.bin" --json >"$W/head.json"
"$K" audit sth-bytes --head "$W/head.bin" --out-bin "$W/sth.bin" --out-sig "$W/sth.sig" >/dev/null
keyid=$(sed -n 's/^ *"key_id": "\([0-9a-f]*\)".*/\1/p' "$W/head.json")
pem="$W/keys/eu-west-$keyid.pem"
if openssl dgst -sha256 -verify "$pem" -signature "$W/sth.sig" "$W/sth.bin" >"$W/out" 2>&1 &&
    grep -q "Verified OK" "$W/out"; then
    pass "openssl dgst -sha256 -verify checks an exported head"
else
    flunk "openssl dgst -sha256 -verify checks an exported head" "$W/out"
fi
# The signed bytes by hand, as docs/audit.md spells them out.
eval "$(/usr/bin/python3 -c '
import json, sys
h = json.load(open(sys.argv[1]))
for k in ("region", "tree_size", "timestamp_ms", "root_hash", "signature"):
    print(f"{k}={h[k]}")' "$W/head.json")"
{
    printf 'CUSTOS-STH-V1'
    printf "$(printf '\\%03o' "${#region}")"
    printf '%s' "$region"
    printf '%016x%016x%s' "$tree_size" "$timestamp_ms" "$root_hash" | xxd -r -p
} >"$W/sth-by-hand.bin"
printf '%s' "$signature" | xxd -r -p >"$W/sth-by-hand.sig"
if cmp -s "$W/sth.bin" "$W/sth-by-hand.bin" && cmp -s "$W/sth.sig" "$W/sth-by-hand.sig" &&
    openssl dgst -sha256 -verify "$pem" -signature "$W/sth-by-hand.sig" "$W/sth-by-hand.bin" \
        >/dev/null 2>&1; then
    pass "the signed bytes built by hand from the documented layout are sth-bytes' and verify"
else
    flunk "the signed bytes built by hand from the documented layout are sth-bytes' and verify"
fi
# The worked example in docs/audit.md, run as it stands there.
mkdir -p "$W/doc"
sed -n '/<!-- sth-example-begin -->/,/<!-- sth-example-end -->/p' docs/audit.md |
    sed '/^```/d; /^<!--/d' >"$W/doc/example.sh"
if (cd "$W/doc" && sh ./example.sh) >"$W/out" 2>&1 && grep -q "^Verified OK" "$W/out"; then
    pass "the openssl example of docs/audit.md verifies as written"
else
    flunk "the openssl example of docs/audit.md verifies as written" "$W/out"
fi
cp "$W/sth.bin" "$W/sth-bad.bin"
printf '\001' | dd of="$W/sth-bad.bin" bs=1 seek=20 conv=notrunc 2>/dev/null
if ! openssl dgst -sha256 -verify "$pem" -signature "$W/sth.sig" "$W/sth-bad.bin" >/dev/null 2>&1
then
    pass "openssl rejects a head whose signed bytes were altered"
else
    flunk "openssl rejects a head whose signed bytes were altered"
fi

# ---- verify: honest bundles ---------------------------------------------------------------

KEYS="--keys=$W/keys"
export_ eu-west "$W/p0.bin" --proofs
s0=$(tree_size "$W/p0.bin")
verify_ok "verify: a whole-log bundle (root recomputed)" "$KEYS" "$W/all-eu.bin"
verify_ok "verify: a bundle with inclusion proofs" "$KEYS" "$W/p0.bin"
verify_ok "verify: both regions at once" "$KEYS" "$W/all-eu.bin" "$W/all-us.bin" "$W/p0.bin"
export_ eu-west "$W/range.bin" --start 3 --count 5 --proofs
verify_ok "verify --partial: a range with inclusion proofs" --partial "$KEYS" "$W/range.bin"
verify_bad "verify: a range is not the whole log unless --partial" "entry seq 0 missing" \
    "$KEYS" "$W/range.bin"
export_ eu-west "$W/range-np.bin" --start 3 --count 5
verify_bad "verify --partial: a range without proofs is tied to nothing" \
    "entry seq 0 missing: the bundle starts at seq 3, carries no inclusion proofs" \
    --partial "$KEYS" "$W/range-np.bin"

# A later head, with a consistency proof from the first.
"$K" key create --region eu-west -q "$A" >/dev/null
wait_head eu-west
export_ eu-west "$W/p1.bin" --proofs
s1=$(tree_size "$W/p1.bin")
export_ eu-west "$W/c1.bin" --proofs --known-head "$W/p0.bin" --start "$s0"
verify_ok "verify: an incremental bundle whose consistency proof links it to the earlier head" \
    "$KEYS" "$W/p0.bin" "$W/c1.bin"
if grep -q "consistent with tree_size $s0" "$W/out"; then
    pass "verify reports the consistency proof from tree_size $s0"
else
    flunk "verify reports the consistency proof from tree_size $s0" "$W/out"
fi
verify_ok "verify --state: the first bundle is kept" --state "$W/s-inc" "$KEYS" "$W/p0.bin"
verify_ok "verify --state: the next range verifies against the kept head (consistency proof)" \
    --state "$W/s-inc" "$KEYS" "$W/c1.bin"
verify_ok "verify --state is idempotent" --state "$W/s-inc" "$KEYS" "$W/c1.bin"
wait_head eu-west
"$K" audit export --region eu-west --out "$W/c2.bin" --proofs --known-state "$W/s-inc" >/dev/null
verify_ok "export --known-state continues where the state ends, and verifies against it" \
    --state "$W/s-inc" "$KEYS" "$W/c2.bin"
export_ eu-west "$W/unlinked.bin" --proofs --start "$s0"
verify_bad "verify: two heads with nothing proving one extends the other" \
    "nothing proves that this head" --partial "$KEYS" "$W/p0.bin" "$W/unlinked.bin"

# ---- verify: tampering ----------------------------------------------------------------------

py tamper flip-entry "$W/p1.bin" "$W/t.bin" 5
verify_bad "tamper: one byte of an entry flipped (proofs)" \
    "t.bin: entry seq 5 (index 5 in the bundle): inclusion proof does not verify" "$KEYS" "$W/t.bin"
py tamper flip-file "$W/p1.bin" "$W/t.bin" 7
verify_bad "tamper: one byte of the bundle file flipped inside an entry" \
    "t.bin: entry seq 7 (index 7 in the bundle): inclusion proof does not verify" "$KEYS" "$W/t.bin"
py tamper flip-entry "$W/all-eu.bin" "$W/t.bin" 4
verify_bad "tamper: one byte of an entry flipped (whole log, no proofs): the root differs" \
    "does not match the signed head's root" "$KEYS" "$W/t.bin"
py tamper flip-sig "$W/p1.bin" "$W/t.bin"
verify_bad "tamper: one byte of the head signature flipped" "t.bin: head signature invalid" \
    "$KEYS" "$W/t.bin"
py tamper flip-root "$W/p1.bin" "$W/t.bin"
verify_bad "tamper: the signed root replaced" "t.bin: head signature invalid" "$KEYS" "$W/t.bin"
py tamper drop "$W/p1.bin" "$W/t.bin" 12
verify_bad "tamper: an entry dropped" "t.bin: entry seq 12 missing (found 13 at index 12)" \
    "$KEYS" "$W/t.bin"
py tamper drop "$W/all-eu.bin" "$W/t.bin" 0
verify_bad "tamper: the first entry dropped (no proofs)" "t.bin: entry seq 0 missing" \
    "$KEYS" "$W/t.bin"
py tamper reorder "$W/p1.bin" "$W/t.bin" 3
verify_bad "tamper: two entries reordered" "t.bin: entries out of order at index 3" \
    "$KEYS" "$W/t.bin"
py tamper drop-tail "$W/p1.bin" "$W/t.bin" 3
verify_bad "tamper: the tail of a bundle dropped (proofs)" \
    "entry seq $((s1 - 3)) missing: the entries of region eu-west end at seq $((s1 - 4))" \
    "$KEYS" "$W/t.bin"
py tamper drop-tail "$W/all-eu.bin" "$W/t.bin" 2
sa=$(tree_size "$W/all-eu.bin")
verify_bad "tamper: the tail of a bundle dropped (no proofs)" \
    "t.bin: entry seq $((sa - 2)) missing: the bundle ends at seq $((sa - 3))" "$KEYS" "$W/t.bin"
py tamper cut "$W/p1.bin" "$W/t.bin" 7
verify_bad "tamper: the bundle file truncated" \
    "t.bin: not an ExportAuditLogResponse: truncated or damaged" "$KEYS" "$W/t.bin"
py tamper splice "$W/p1.bin" "$W/t.bin" "$W/p0.bin" 2 3
verify_bad "tamper: entries spliced in from an export under another head" \
    "t.bin: entry seq 2 (index 2 in the bundle): inclusion proof does not verify" "$KEYS" "$W/t.bin"
export_ us-east "$W/pu.bin" --proofs
py tamper splice "$W/p1.bin" "$W/t.bin" "$W/pu.bin" 1 1
verify_bad "tamper: an entry spliced in from another region's export" \
    "t.bin: entry seq 1 (index 1 in the bundle): an event of region \"us-east\" in the log of eu-west" \
    "$KEYS" "$W/t.bin"
py tamper flip-consistency "$W/c1.bin" "$W/t.bin"
verify_bad "tamper: one byte of a consistency proof flipped" \
    "consistency proof from tree_size $s0 to" "$KEYS" "$W/p0.bin" "$W/t.bin"
check "tamper: 100 random one-bit flips of a bundle with proofs are all refused" \
    py flips "$K" "$W/keys" 100 "$W/p1.bin"
check "tamper: 100 random one-bit flips of a whole-log bundle are all refused" \
    py flips "$K" "$W/keys" 100 "$W/all-eu.bin"
check "tamper: 50 random one-bit flips of an incremental bundle are all refused" \
    py flips "$K" "$W/keys" 50 "$W/c1.bin" "$W/p0.bin"
verify_ok "verify --state: a newer head is kept" --state "$W/s-old" "$KEYS" "$W/p1.bin"
verify_bad "verify --state: an older, smaller head is refused" \
    "p0.bin: head of region eu-west (tree_size $s0," --state "$W/s-old" "$KEYS" "$W/p0.bin"
if grep -qF "refusing an older, smaller head" "$W/out"; then
    pass "the refusal says why"
else
    flunk "the refusal says why" "$W/out"
fi
mkdir -p "$W/keys-us"
cp "$W"/keys/us-east-*.pem "$W/keys-us/"
verify_bad "verify: a head signed by a key not given" "head signed by unknown key $keyid" \
    "--keys=$W/keys-us" "$W/p1.bin"
sed 's/^Custos-Audit-Not-Before-Ms: .*/Custos-Audit-Not-Before-Ms: 4102444800000/' "$pem" \
    >"$W/keys-us/future.pem"
verify_bad "verify: a head dated outside its key's validity" "is outside the validity of key" \
    "--keys=$W/keys-us" "$W/p1.bin"

# ---- key rotation -----------------------------------------------------------------------------

# Restart once with a 1 s key lifetime: the aged key is replaced at start.
e2e_stop
py setcfg "$E2E_DIR/kmsd.json" key_max_age_s 1
sleep 1.2
e2e_start
e2e_stop
py setcfg "$E2E_DIR/kmsd.json" key_max_age_s -
e2e_start
check "kmsctl audit keys lists the old key (with an end) and the new one" sh -c '
    "$1" audit keys --region eu-west --out-dir "$2" >/dev/null &&
    [ "$(ls "$2"/eu-west-*.pem | wc -l)" -eq 2 ] &&
    grep -l "Not-After-Ms: [1-9]" "$2"/eu-west-*.pem | grep -q "$3"' sh "$K" "$W/keys2" "$keyid"
"$K" key create --region eu-west -q "$A" >/dev/null
wait_head eu-west
export_ eu-west "$W/pr.bin" --proofs
newkey=$(py info "$W/pr.bin" | cut -d' ' -f6)
if [ "$newkey" != "$keyid" ]; then
    pass "heads after the rotation are signed by the new key"
else
    flunk "heads after the rotation are signed by the new key"
fi
verify_ok "verify: bundles signed before and after a rotation, old and new keys" \
    "--keys=$W/keys2" "$W/p0.bin" "$W/pr.bin"
verify_ok "verify --state: the kept head from before the rotation is extended" \
    --state "$W/s-inc" "--keys=$W/keys2" "$W/pr.bin"
mkdir -p "$W/keys-new"
cp "$W/keys2/eu-west-$newkey.pem" "$W/keys-new/"
verify_bad "verify: the old key is needed for the old heads" "head signed by unknown key $keyid" \
    "--keys=$W/keys-new" "$W/p0.bin"

# ---- a rolled-back log (a fork) --------------------------------------------------------------

e2e_stop
cp -a "$E2E_DIR/audit" "$W/audit.snap"
e2e_start
for i in 1 2 3; do "$K" key list -q "$A" >/dev/null; done
wait_head eu-west
export_ eu-west "$W/fa.bin" --proofs
e2e_stop
rm -rf "$E2E_DIR/audit"
mv "$W/audit.snap" "$E2E_DIR/audit"
e2e_start
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do "$K" key list -q "$A" >/dev/null; done
wait_head eu-west
export_ eu-west "$W/fb.bin" --proofs
sa=$(tree_size "$W/fa.bin")
sb=$(tree_size "$W/fb.bin")
[ "$sb" -gt "$sa" ] || echo "# fork: $sb entries after the rollback, $sa before" >&2
verify_ok "verify: each side of a fork verifies on its own" "--keys=$W/keys2" "$W/fa.bin"
verify_ok "verify: ... the other side too" "--keys=$W/keys2" "$W/fb.bin"
verify_bad "verify: two exports of a forked log given together are caught" \
    "(spliced or forked exports)" "--keys=$W/keys2" "$W/fa.bin" "$W/fb.bin"
verify_ok "verify --state: keep the head before the rollback" --state "$W/s-fork" \
    "--keys=$W/keys2" "$W/fa.bin"
verify_bad "verify --state: a larger head of the rewritten log is refused" \
    "the log was rewritten or forked" --state "$W/s-fork" "--keys=$W/keys2" "$W/fb.bin"

# ---- usage -------------------------------------------------------------------------------------

check "kmsctl audit --help and every command's --help" sh -c '
    for v in "" head keys export sth-bytes verify; do
        "$1" audit $v --help | grep -q "^usage: kmsctl audit" || exit 1
    done' sh "$K"
rc=0
"$K" audit verify "$W/p0.bin" >/dev/null 2>&1 || rc=$?
if [ $rc -eq 2 ]; then pass "verify without --keys is a usage error (2)"; else flunk "verify without --keys: exit $rc"; fi
rc=0
"$K" audit verify "$KEYS" "$W/no-such.bin" >/dev/null 2>&1 || rc=$?
if [ $rc -eq 4 ]; then pass "verify of a missing file is a local error (4)"; else flunk "verify of a missing file: exit $rc"; fi

e2e_stop
trap - EXIT
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$E2E_DIR/kmsd.log"; then
    flunk "kmsd ran clean under the sanitizers"
fi
[ $failed -eq 0 ] || { echo "$failed of $n checks failed"; exit 1; }

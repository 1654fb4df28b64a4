#!/bin/sh
# Recovery evidence and escrow refusals in the audit log:
#   - the approvals of a recovery are re-verified from an exported, verified
#     audit log by the openssl block of docs/escrow-recovery.md ("Checking
#     approvals"), run as it stands;
#   - escrow refusals (another tenant's officer, an auditor, a missing id, a
#     bad signature, the requester's own approval, a cross-region export) are
#     events that name the probed recovery or key and the rule that refused.
set -eu
. tests/e2e/lib.sh
e2e_setup recovery-audit
CUSTOS_DEV_HEAD_MS=100 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
e2e_start
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
ok() { echo "ok - $1"; }
fail() { echo "not ok - $1"; exit 1; }
cred() { echo "$E2E_DIR/credentials/$1"; }
as() { who=$1; shift; CUSTOS_API_KEY_FILE=$(cred "$who.key") "$KMSCTL" "$@"; }
W="$E2E_DIR/work"
mkdir -p "$W/officers"

# ---- a recovery with two approvals, and a second one approved once ----
key=$(as bank-admin key create --region eu-west -q)
req() { as bank-officer-1 recovery request "$key" --mode export --recipient "$1" \
          --justification lawful-request --text "court order 12/2026" --case COURT-7 -q; }
id=$(req bank-legal-eu)
id2=$(req bank-legal-eu)
for o in bank-officer-2 bank-officer-3; do
    as "$o" recovery approve "$id" --officer-key "$(cred "$o.key.pem")" >/dev/null 2>&1 ||
        fail "approve $id by $o"
done
as bank-officer-3 recovery approve "$id2" --officer-key "$(cred bank-officer-3.key.pem)" \
    >/dev/null 2>&1 || fail "approve $id2"

# ---- refusals ----
refused() { # refused WHO ARGS...: the call must fail
    if as "$@" >/dev/null 2>&1; then fail "$* was not refused"; fi
}
missing=0123456789abcdef0123456789abcdef
refused other-officer recovery show "$id"
refused auditor recovery show "$id"
refused bank-officer-2 recovery show "$missing"
as bank-officer-2 recovery show "$id2" --statement-out "$W/s2.txt" >/dev/null
# Officer 2 sends a signature officer 3 made: it does not verify with 2's key.
"$KMSCTL" officer sign --officer-key "$(cred bank-officer-3.key.pem)" --in "$W/s2.txt" \
    --out "$W/wrong.der"
refused bank-officer-2 recovery approve "$id2" --signature "$W/wrong.der"
refused bank-officer-1 recovery approve "$id2" --officer-key "$(cred bank-officer-1.key.pem)"
if req bank-legal-us >/dev/null 2>&1; then fail "an export to another region's recipient"; fi
as bank-officer-1 recovery execute "$id" --out-dir "$W" >/dev/null || fail "execute $id"
ok "a recovery approved by two officers and executed; six refusals made"

# ---- the auditor's export, verified, as JSON lines ----
sleep 0.5 # a head that covers everything above (heads every 100 ms)
as auditor audit keys --out-dir "$W/keys" >/dev/null
as auditor audit export --region eu-west --out "$W/eu-west.bin" >/dev/null
"$KMSCTL" audit verify --keys "$W/keys" "$W/eu-west.bin" >/dev/null &&
    ok "the export verifies" || fail "audit verify"
"$KMSCTL" audit events "$W/eu-west.bin" >"$W/events.jsonl"
grep -q "\"recovery_id\": *\"$id\"" "$W/events.jsonl" || fail "events: no recovery $id"
ok "kmsctl audit events prints the export as JSON lines"

# ---- the page's openssl block, with each officer's key from the policy ----
jq -r '.tenants[].principals[] | select(.public_key_pem) | .id' "$E2E_DIR/policy.json" |
while read -r o; do
    jq -r --arg o "$o" '.tenants[].principals[] | select(.id == $o) | .public_key_pem' \
        "$E2E_DIR/policy.json" >"$W/officers/$o.pem"
done
sed -n '/<!-- approval-check-begin -->/,/<!-- approval-check-end -->/p' docs/escrow-recovery.md |
    grep -v '^<!--' | grep -v '^```' >"$W/check.sh"
(cd "$W" && sh ./check.sh) >"$W/check.out" 2>&1 || true
approvals=$(jq -c 'select(.operation == "ApproveRecovery" and .outcome == "ok")' "$W/events.jsonl" | wc -l)
[ "$approvals" -eq 3 ] || fail "3 counted approvals expected in the log, found $approvals"
[ "$(grep -c '^Verified OK$' "$W/check.out")" -eq 3 ] &&
    [ "$(grep -c '^Signature Verified Successfully$' "$W/check.out")" -eq 3 ] &&
    ! grep -q MISMATCH "$W/check.out" &&
    ok "docs/escrow-recovery.md's openssl commands verify all 3 approvals from the audit log" ||
    fail "approval check: $(cat "$W/check.out")"
# The check is not vacuous: a changed statement or another officer's key fails it.
mkdir -p "$W/tamper/officers"
cp "$W/events.jsonl" "$W/tamper/"
for o in bank-officer-1 bank-officer-2 bank-officer-3; do
    cp "$W/officers/bank-officer-1.pem" "$W/tamper/officers/$o.pem"
done
(cd "$W/tamper" && sh ../check.sh) >"$W/tamper.out" 2>&1 || true
[ "$(grep -c '^Verified OK$' "$W/tamper.out")" -eq 0 ] && grep -q "MISMATCH: key" "$W/tamper.out" &&
    ok "with the wrong officer keys no approval verifies" || fail "tamper: $(cat "$W/tamper.out")"

# ---- refusals: the probed ids and the rule that refused ----
ev() { # ev JQ_FILTER: the single event matching it, or fail
    n=$(jq -c "select($1)" "$W/events.jsonl" | wc -l)
    [ "$n" -eq 1 ] || { echo "# $n events match $1" >&2; return 1; }
}
ev ".operation == \"GetRecovery\" and .principal == \"other-officer\" and .outcome == \"not_found\"
    and .recovery_id == \"$id\" and .key_id == \"$key\" and .rule == \"tenant\"" &&
    ok "another tenant's officer: not_found, the event names the recovery, its key, rule tenant" ||
    fail "other-officer GetRecovery event"
ev ".operation == \"GetRecovery\" and .principal == \"auditor\" and .outcome == \"not_found\"
    and .recovery_id == \"$id\" and .key_id == \"$key\" and .rule == \"tenant\"" &&
    ok "an auditor: not_found, the event names the recovery, its key, rule tenant" ||
    fail "auditor GetRecovery event"
ev ".operation == \"GetRecovery\" and .outcome == \"not_found\" and .recovery_id == \"$missing\"
    and .rule == \"\" and (.detail | contains(\"does not exist\"))" &&
    ok "a missing recovery: the probed id, no rule, 'does not exist'" || fail "missing id event"
ev ".operation == \"ApproveRecovery\" and .principal == \"bank-officer-2\"
    and .outcome == \"permission_denied\" and .recovery_id == \"$id2\" and .key_id == \"$key\"
    and .rule == \"signature\" and .approval_signature != \"\" and .officer_key_sha256 != \"\"" &&
    ok "a bad signature: rule signature, with the signature sent and the key it was checked with" ||
    fail "bad signature event"
ev ".operation == \"ApproveRecovery\" and .principal == \"bank-officer-1\"
    and .outcome == \"permission_denied\" and .recovery_id == \"$id2\" and .rule == \"requester\"" &&
    ok "the requester's own approval: rule requester" || fail "requester event"
ev ".operation == \"RequestRecovery\" and .outcome == \"permission_denied\" and .key_id == \"$key\"
    and .rule == \"residency.recipient_region\"" &&
    ok "an export to another region's recipient: rule residency.recipient_region" ||
    fail "cross-region export event"
ev ".operation == \"ExecuteRecovery\" and .outcome == \"ok\" and .recovery_id == \"$id\"
    and .statement_sha256 != \"\"" &&
    ok "the execution names the recovery and the statement hash" || fail "execute event"
e2e_stop
trap - EXIT

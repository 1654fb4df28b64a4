#!/bin/sh
# Backups and restores that never destroy a key (issue 21), on real tokens:
#
# 1. Store older than the tokens and the audit log: a hot backup of the
#    store, then a rotation, a new key, a cancelled deletion and an escrow
#    recovery; the backup restored. Before: reconcile destroyed the
#    recovered key's object, the sweeper destroyed the key whose deletion
#    was cancelled, v2 ciphertexts failed and the next rotation reissued v2.
#    Now: kmsd starts in SAFE MODE (log, /readyz, audited), destroys
#    nothing, decrypts what the old store knows, refuses writes;
#    `kmsd --reconcile` prints the plan and changes nothing; `--confirm`
#    applies it (audited); then every acknowledged ciphertext decrypts,
#    version numbers stay unique, nothing was destroyed.
# 2. Tokens older than the store: SAFE MODE too (before: ready, and
#    not_found everywhere), until the newer token is back.
# 3. `kmsctl backup` while keys are created and rotated, the token copy
#    after it, everything restored as on a new machine and reconciled with
#    `kmsctl reconcile` (refused while kmsd runs or without a store): every
#    ciphertext acknowledged before the backup decrypts, nothing destroyed,
#    no version number reissued, the audit log verifies and records it.
# 4. Store and tokens restored together, older than the audit log: SAFE
#    MODE; the acknowledged version number is never reissued.
# 5. The audit log restored older than the store: SAFE MODE until the
#    operator confirms going on with it.
# 6. A backup taken while a deletion was pending, restored after the
#    sweeper destroyed the key: safe mode, the plan offers to accept the
#    version as lost, then the sweeper finishes the deletion.
# 7. A token backup older than an audit key rotation: kmsd names the
#    missing signing key; the documented steps bring the node back.
# 8. A store restored after encryptions: each version's GCM count is
#    rebuilt from the audit log, never below what was spent.
# And readiness with no room on the state disk.
set -eu
. tests/e2e/lib.sh
e2e_setup restore
CUSTOS_DEV_DAY_SECONDS=1 CUSTOS_DEV_MIN_DAYS=0 CUSTOS_DEV_SWEEP_S=1 CUSTOS_DEV_HEAD_MS=100 \
    sh -c 'rm -f "$0/kmsd.json"; BUILD="$1" KMSCTL="$2" sh deploy/dev-setup.sh "$0" "$3" >/dev/null' \
    "$E2E_DIR" "$BUILD_DIR" "$KMSCTL" "$E2E_PORT"
mkdir -p "$E2E_DIR/py"
protoc --python_out="$E2E_DIR/py" -Iproto proto/key.proto proto/audit.proto
export PYTHONPATH="$E2E_DIR/py:tests/e2e"
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
ok() { echo "ok - $1"; }
fail() { echo "not ok - $1"; exit 1; }
as() { who=$1; shift; CUSTOS_API_KEY_FILE="$E2E_DIR/credentials/$who.key" "$KMSCTL" "$@"; }
objects() { /usr/bin/python3 tests/e2e/restore_tokens.py objects "$E2E_DIR"; }
readyz() { curl -s "http://127.0.0.1:$E2E_PORT/readyz"; }
W="$E2E_DIR/w"
mkdir -p "$W"
safe_lines() { grep -c 'SAFE MODE: the store' "$E2E_DIR/kmsd.log" || true; }
wait_state() {
    i=0
    until as "$1" key describe "$2" | grep -q "^state: *$3"; do
        i=$((i + 1)); [ $i -lt 100 ] || fail "key $2 did not become $3"; sleep 0.2
    done
}
db_state() { sqlite3 "$E2E_DIR/kmsd.db" "SELECT state FROM keys WHERE key_id = '$1'"; }

e2e_start
# ---- before the backup --------------------------------------------------------------
k1=$(as demo-admin key create --region eu-west -q)
printf 'one-v1' | as demo-broker encrypt --key-id "$k1" >"$W/ct1"
k2=$(as demo-admin key create --region eu-west -q)
printf 'two' | as demo-broker encrypt --key-id "$k2" >"$W/ct2"
as demo-admin key schedule-deletion "$k2" --days 4 >/dev/null
k4=$(as demo-admin key create --region eu-west -q)
kb=$(as bank-admin key create --region eu-west -q)
printf 'bank' | as bank-broker encrypt --key-id "$kb" >"$W/ctb"
as bank-admin key schedule-deletion "$kb" --days 1 >/dev/null
wait_state bank-admin "$kb" DESTROYED
# The hot backup the docs used to recommend.
sqlite3 "$E2E_DIR/kmsd.db" ".backup '$W/store-backup.db'"
# ---- after the backup ---------------------------------------------------------------
as demo-admin key rotate "$k1" >/dev/null
t_rot=$(date +%s)
printf 'one-v2' | as demo-broker encrypt --key-id "$k1" >"$W/ct1v2"
k3=$(as demo-admin key create --region eu-west -q)
printf 'three' | as demo-broker encrypt --key-id "$k3" >"$W/ct3"
as demo-admin key cancel-deletion "$k2" >/dev/null
as demo-admin key schedule-deletion "$k4" --days 1000 >/dev/null
# Keys born after the backup and then disabled, or rotated and scheduled for
# deletion: before, the reconcile brought them back ENABLED.
k6=$(as demo-admin key create --region eu-west -q)
printf 'six' | as demo-broker encrypt --key-id "$k6" >"$W/ct6"
as demo-admin key disable "$k6" >/dev/null
k7=$(as demo-admin key create --region eu-west -q)
as demo-admin key rotate "$k7" >/dev/null
printf 'seven-v2' | as demo-broker encrypt --key-id "$k7" >"$W/ct7"
as demo-admin key schedule-deletion "$k7" --days 1000 >/dev/null
rid=$(as bank-officer-1 recovery request "$kb" --mode restore --state enabled \
        --justification accidental-deletion --text "restore drill" --case DRILL-1 -q)
for o in 2 3; do
    as bank-officer-$o recovery approve "$rid" \
        --officer-key "$E2E_DIR/credentials/bank-officer-$o.key.pem" >/dev/null 2>&1
done
as bank-officer-1 recovery execute "$rid" >/dev/null
[ "$(as bank-broker decrypt --in "$W/ctb")" = bank ] || fail "recovery drill set-up"
set -- $(objects)
n_live=$1
[ "$2" = 0 ] || fail "duplicate labels before the restore"
e2e_stop

# ---- drill 1: restore the store alone -------------------------------------------------
mkdir -p "$W/live-store"
mv "$E2E_DIR"/kmsd.db* "$W/live-store/"
cp "$W/store-backup.db" "$E2E_DIR/kmsd.db"
# A key object with neither CKA_ID nor label that kmsd did not make.
/usr/bin/python3 tests/e2e/restore_tokens.py husk "$E2E_DIR" plant
[ "$(/usr/bin/python3 tests/e2e/restore_tokens.py husk "$E2E_DIR" count)" = 1 ] ||
    fail "husk not planted"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" -gt "$sb" ] && ok "a store older than the audit log and tokens: SAFE MODE in the log" ||
    fail "no safe mode: $(tail -n 5 "$E2E_DIR/kmsd.log")"
r=$(readyz)
case "$r" in *"SAFE MODE"*) ok "/readyz says not ready, and why ($r)" ;;
    *) fail "/readyz: $r" ;; esac
curl -s -H "Authorization: Bearer $(cat "$E2E_DIR/credentials/operator.key")" \
    "http://127.0.0.1:$E2E_PORT/metrics" | grep -q '^custos_safe_mode{region="eu-west",token="custos-eu-west"} 1' &&
    ok "custos_safe_mode is 1 for the alert" || fail "safe mode metric"
grep -q "finding: .*$k3" "$E2E_DIR/kmsd.log" && grep -q "finding: key $k2 is PENDING_DELETION" \
    "$E2E_DIR/kmsd.log" && grep -q "finding: key $kb is DESTROYED" "$E2E_DIR/kmsd.log" &&
    ok "the log names the findings: the unknown key, the cancelled deletion, the recovery" ||
    fail "findings: $(grep finding "$E2E_DIR/kmsd.log")"
[ "$(/usr/bin/python3 tests/e2e/restore_tokens.py husk "$E2E_DIR" count)" = 1 ] &&
    ok "safe mode leaves a key object without CKA_ID or label in place" ||
    fail "safe mode destroyed an unlabelled object"
sleep 5 # the restored store's deletion of k2 is due, the sweeper runs every second
[ "$(objects)" = "$n_live 0" ] && ok "no HSM object destroyed ($n_live key objects)" ||
    fail "objects after the restore: $(objects), were $n_live"
[ "$(db_state "$k2")" = 4 ] && ok "the sweeper left the key whose deletion was cancelled" ||
    fail "k2 state $(db_state "$k2")"
[ "$(as demo-broker decrypt --in "$W/ct1")" = one-v1 ] &&
    ok "safe mode decrypts what the restored store knows" || fail "decrypt v1 in safe mode"
if out=$(as demo-admin key rotate "$k1" 2>&1); then fail "rotation in safe mode: $out"; fi
case "$out" in *"safe mode"*) ok "safe mode refuses a rotation ($out)" ;;
    *) fail "rotation refusal: $out" ;; esac
if out=$(as demo-admin key create --region eu-west -q 2>&1); then fail "create in safe mode"; fi
if out=$(printf x | as demo-broker encrypt --key-id "$k1" 2>&1); then fail "encrypt in safe mode"; fi
ok "safe mode refuses key creation and encryption"
/usr/bin/python3 tests/e2e/restore_tokens.py ops "$E2E_DIR" "$E2E_PORT" RestoreDetected &&
    ok "the audit log records the detected restore" || fail "RestoreDetected not audited"
if out=$("$KMSCTL" reconcile --config "$E2E_DIR/kmsd.json" --confirm 2>&1); then
    fail "kmsctl reconcile while kmsd runs: $out"
fi
case "$out" in *"kmsd is running"*"stop it first"*)
    [ "$(db_state "$k2")" = 4 ] && ok "kmsctl reconcile refuses while kmsd runs, changing nothing ($out)" ||
        fail "kmsctl reconcile changed the store" ;;
    *) fail "kmsctl reconcile while kmsd runs: $out" ;; esac
e2e_stop

"$KMSD" --config "$E2E_DIR/kmsd.json" --reconcile >"$W/plan.txt" 2>>"$E2E_DIR/kmsd.log" ||
    fail "kmsd --reconcile: $(cat "$W/plan.txt")"
grep -q "reattach: key $k1 version 2" "$W/plan.txt" &&
    grep -q "rebuild: key $k2 -> DISABLED" "$W/plan.txt" &&
    grep -q "rebuild: key $kb -> DISABLED" "$W/plan.txt" &&
    grep -q "rebuild: key $k4 -> DISABLED" "$W/plan.txt" &&
    grep -q "reattach: key $k3 (tenant demo, region eu-west) with version 1" "$W/plan.txt" &&
    ok "kmsd --reconcile prints the plan: rebuild, reattach the version and the key" ||
    fail "plan: $(cat "$W/plan.txt")"
grep -q "reattach: key $k6 (tenant demo, region eu-west) with version 1 from token '[^']*', DISABLED" \
    "$W/plan.txt" &&
    grep -q "reattach: key $k7 (tenant demo, region eu-west) with version 1 from token '[^']*', DISABLED" \
        "$W/plan.txt" && grep -q "reattach: key $k7 version 2" "$W/plan.txt" &&
    ok "the plan reattaches keys disabled or scheduled for deletion after the backup as DISABLED" ||
    fail "plan for k6/k7: $(grep -e "$k6" -e "$k7" "$W/plan.txt")"
grep -q "key object(s) without CKA_ID or label" "$W/plan.txt" &&
    ok "the plan lists the unlabelled object a normal start would destroy" ||
    fail "plan: no husk line"
[ "$(db_state "$k2")" = 4 ] && [ "$(db_state "$kb")" = 5 ] &&
    ok "the plan alone changes nothing" || fail "the plan changed the store"
"$KMSD" --config "$E2E_DIR/kmsd.json" --reconcile --confirm >"$W/apply.txt" 2>>"$E2E_DIR/kmsd.log" ||
    fail "kmsd --reconcile --confirm: $(cat "$W/apply.txt")"
grep -q "applied: key $k1 version 2 reattached" "$W/apply.txt" &&
    ok "kmsd --reconcile --confirm applies it" || fail "apply: $(cat "$W/apply.txt")"
c2=$(sqlite3 "$E2E_DIR/kmsd.db" "SELECT created_at FROM key_versions WHERE key_id = '$k1' AND version = 2")
[ -n "$c2" ] && [ "$c2" -le "$t_rot" ] &&
    ok "the reattached version is dated by its RotateKey event, not the reconcile (its rotation period runs on)" ||
    fail "k1 v2 created_at $c2, rotated by $t_rot"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" = "$sb" ] && [ "$(readyz)" = ready ] &&
    curl -s -H "Authorization: Bearer $(cat "$E2E_DIR/credentials/operator.key")" \
        "http://127.0.0.1:$E2E_PORT/metrics" | grep -q '^custos_safe_mode{region="eu-west",token="custos-eu-west"} 0' &&
    ok "after the confirmed reconcile kmsd starts normally and is ready" ||
    fail "still safe: $(readyz)"
[ "$(as demo-broker decrypt --in "$W/ct1")" = one-v1 ] &&
    [ "$(as demo-broker decrypt --in "$W/ct1v2")" = one-v2 ] &&
    ok "v1 and the reattached v2 ciphertexts decrypt" || fail "decrypt after reconcile"
[ "$(as demo-broker decrypt --in "$W/ct3")" = three ] &&
    as demo-admin key describe "$k3" | grep -q '^state: *ENABLED' &&
    ok "the key created after the backup is reattached, ENABLED, and its ciphertext decrypts" ||
    fail "k3 after reconcile: $(as demo-admin key describe "$k3" 2>&1)"
as demo-admin key describe "$k2" | grep -q '^state: *DISABLED' &&
    [ "$(as demo-broker decrypt --in "$W/ct2" 2>&1 || true)" != two ] &&
    as demo-admin key enable "$k2" >/dev/null &&
    [ "$(as demo-broker decrypt --in "$W/ct2")" = two ] &&
    ok "the key whose deletion was cancelled is DISABLED, as acknowledged, and decrypts once enabled" ||
    fail "k2 after reconcile"
as bank-admin key enable "$kb" >/dev/null && [ "$(as bank-broker decrypt --in "$W/ctb")" = bank ] &&
    ok "the recovered key is back (DISABLED until re-enabled) and decrypts" ||
    fail "kb after reconcile"
as demo-admin key describe "$k6" | grep -q '^state: *DISABLED' &&
    as demo-admin key describe "$k7" | grep -q '^state: *DISABLED' &&
    as demo-admin key describe "$k7" | grep -q '^current_version: *2' &&
    ok "keys disabled or scheduled for deletion after the backup come back DISABLED, rotations kept" ||
    fail "k6/k7: $(as demo-admin key describe "$k6"; as demo-admin key describe "$k7")"
as demo-admin key enable "$k7" >/dev/null && [ "$(as demo-broker decrypt --in "$W/ct7")" = seven-v2 ] &&
    ok "the reattached rotation of a reattached key decrypts once enabled" || fail "k7 v2 decrypt"
as demo-admin key describe "$k4" | grep -q '^state: *DISABLED' &&
    ok "a deletion scheduled after the backup is rebuilt as DISABLED, never re-scheduled" ||
    fail "k4: $(as demo-admin key describe "$k4")"
v=$(as demo-admin key rotate "$k1" | sed -n 's/^current_version: *//p')
[ "$v" = 3 ] && ok "the next rotation takes version 3, never v2 again" || fail "rotation gave $v"
sleep 3
set -- $(objects)
[ "$1" = $((n_live + 1)) ] && [ "$2" = 0 ] &&
    ok "no HSM object destroyed, one added, no (key, version) names two objects" ||
    fail "objects: $*; were $n_live"
/usr/bin/python3 tests/e2e/restore_tokens.py ops "$E2E_DIR" "$E2E_PORT" RestoreDetected \
    RestoreConfirmed RestoreReconciled &&
    ok "the audit log records the restore and the operator's reconcile" ||
    fail "reconcile not audited"
as auditor audit keys --out-dir "$W/keys" >/dev/null
as auditor audit export --region eu-west --out "$W/all.bin" --proofs >/dev/null
"$KMSCTL" audit verify --keys "$W/keys" "$W/all.bin" >/dev/null &&
    ok "kmsctl audit verify accepts the whole log" || fail "audit verify"

# ---- drill 2: tokens older than the store ---------------------------------------------
e2e_stop
cp -a "$E2E_DIR/hsm/tokens" "$W/tokens-old"
e2e_start
k5=$(as demo-admin key create --region eu-west -q)
printf 'five' | as demo-broker encrypt --key-id "$k5" >"$W/ct5"
e2e_stop
mv "$E2E_DIR/hsm/tokens" "$W/tokens-live"
cp -a "$W/tokens-old" "$E2E_DIR/hsm/tokens"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" -gt "$sb" ] && grep -q "token is older than the store" "$E2E_DIR/kmsd.log" &&
    ok "a token older than the store: SAFE MODE, and the log says the token is older" ||
    fail "old token not noticed"
case "$(readyz)" in *"without HSM object"*) ok "/readyz names the missing objects" ;;
    *) fail "/readyz: $(readyz)" ;; esac
[ "$(as demo-broker decrypt --in "$W/ct1")" = one-v1 ] &&
    ok "what the old token holds still decrypts" || fail "decrypt with the old token"
if as demo-admin key rotate "$k5" >/dev/null 2>&1; then fail "rotation with an old token"; fi
ok "no rotation hides the missing object"
e2e_stop
rm -rf "$E2E_DIR/hsm/tokens"
mv "$W/tokens-live" "$E2E_DIR/hsm/tokens"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" = "$sb" ] && [ "$(readyz)" = ready ] &&
    [ "$(as demo-broker decrypt --in "$W/ct5")" = five ] &&
    ok "the newer token back: ready, and the newest key decrypts" || fail "after the token came back"

# ---- drill 3: kmsctl backup while keys are created and rotated, restored as on a new machine
/usr/bin/python3 tests/e2e/restore_load.py load "$E2E_DIR" "$E2E_PORT" &
load=$!
sleep 1.5
# Backups in a loop while events and heads are written: each copy of the
# audit logs must open as kmsd opens it. Before, the files were copied in
# directory order, so a copied .heads could name events the copied .events
# lacked (the region not served after a restore).
i=0
while [ $i -lt 6 ]; do
    "$KMSCTL" backup --config "$E2E_DIR/kmsd.json" --out "$W/bkloop$i" >"$W/bkloop$i.out" ||
        fail "kmsctl backup $i under load: $(cat "$W/bkloop$i.out")"
    grep -q "audit log of region eu-west: .*checked" "$W/bkloop$i.out" ||
        fail "backup $i did not check its audit copy: $(cat "$W/bkloop$i.out")"
    out=$(/usr/bin/python3 tests/e2e/restore_tokens.py auditcopy "$W/bkloop$i/audit") ||
        fail "backup $i: the audit copy would not open: $out"
    i=$((i + 1))
done
ok "6 backups under audit load: each audit copy checked by kmsctl and opens (heads within events, keys listed)"
t0=$(date +%s.%N)
"$KMSCTL" backup --config "$E2E_DIR/kmsd.json" --out "$W/bk" >"$W/bk.out" ||
    fail "kmsctl backup: $(cat "$W/bk.out")"
sleep 1.5
touch "$E2E_DIR/stop"
wait $load
grep -q "now back up the HSM tokens" "$W/bk.out" && [ -f "$W/bk/kmsd.db" ] &&
    [ -f "$W/bk/MANIFEST" ] && [ -d "$W/bk/audit" ] &&
    ok "kmsctl backup under load: store, audit logs, configuration, manifest" ||
    fail "backup: $(cat "$W/bk.out")"
[ "$(sqlite3 "$W/bk/kmsd.db" "SELECT value FROM meta WHERE name = 'backup_of'")" = \
  "$(sqlite3 "$E2E_DIR/kmsd.db" "SELECT value FROM meta WHERE name = 'store_id'")" ] &&
    [ "$(sqlite3 "$W/bk/kmsd.db" "SELECT value FROM meta WHERE name = 'store_id'")" != \
      "$(sqlite3 "$E2E_DIR/kmsd.db" "SELECT value FROM meta WHERE name = 'store_id'")" ] &&
    ok "the backup has its own store_id and names the store it copies" || fail "store ids"
e2e_stop
# The HSM backup after the store's (kmsd stopped: SoftHSMv2's files are then still).
cp -a "$E2E_DIR/hsm/tokens" "$W/bk/tokens"
set -- $(objects)
n_live=$1
# A new machine: the state comes from the backup alone.
mkdir -p "$W/old-machine"
mv "$E2E_DIR"/kmsd.db* "$E2E_DIR/audit" "$W/old-machine/"
rm -rf "$E2E_DIR/hsm/tokens"
cp -a "$W/bk/tokens" "$E2E_DIR/hsm/tokens"
if out=$("$KMSCTL" reconcile --config "$E2E_DIR/kmsd.json" 2>&1); then fail "reconcile without a store"; fi
case "$out" in *"restore it first"*) [ ! -e "$E2E_DIR/kmsd.db" ] &&
    ok "kmsctl reconcile refuses a missing store, and creates none ($out)" || fail "a store appeared" ;;
    *) fail "kmsctl reconcile without a store: $out" ;; esac
cp "$W/bk/kmsd.db" "$E2E_DIR/kmsd.db"
cp -a "$W/bk/audit" "$E2E_DIR/audit"
# The operator's command (the runbook's): kmsctl reconcile runs kmsd's
# reconcile; the PINs stay in the files the configuration names.
"$KMSCTL" reconcile --config "$E2E_DIR/kmsd.json" >"$W/plan3.txt" 2>>"$E2E_DIR/kmsd.log" ||
    fail "kmsctl reconcile: $(cat "$W/plan3.txt")"
grep -q "this store is a restored backup of store" "$W/plan3.txt" &&
    grep -q "kmsd would start in SAFE MODE" "$W/plan3.txt" &&
    ok "kmsctl reconcile prints the plan: the store is a restored backup" ||
    fail "plan3: $(head -3 "$W/plan3.txt")"
e2e_start
case "$(readyz)" in *"SAFE MODE"*) ok "the plan alone changed nothing: still safe mode" ;;
    *) fail "not in safe mode after the plan: $(readyz)" ;; esac
e2e_stop
"$KMSCTL" reconcile --config "$E2E_DIR/kmsd.json" --confirm >"$W/apply3.txt" 2>>"$E2E_DIR/kmsd.log" ||
    fail "kmsctl reconcile --confirm: $(cat "$W/apply3.txt")"
grep -q "operator confirmed the restore reconcile" "$W/apply3.txt" &&
    ok "kmsctl reconcile --confirm applies it" || fail "apply3: $(cat "$W/apply3.txt")"
e2e_start
[ "$(readyz)" = ready ] && ok "restored on a new machine and reconciled: ready" ||
    fail "not ready: $(readyz)"
out=$(/usr/bin/python3 tests/e2e/restore_load.py check "$E2E_DIR" "$E2E_PORT" "$t0") &&
    ok "every ciphertext acknowledged before the backup decrypts ($out)" || fail "decrypt: $out"
set -- $(objects)
[ "$1" = "$n_live" ] && [ "$2" = 0 ] && ok "no HSM object destroyed by the restore ($1)" ||
    fail "objects $*; were $n_live"
for k in $(sqlite3 "$E2E_DIR/kmsd.db" "SELECT key_id FROM keys WHERE state = 1 LIMIT 20"); do
    as demo-admin key rotate "$k" >/dev/null 2>&1 || true
done
set -- $(objects)
[ "$2" = 0 ] && ok "rotations after the restore reissue no version number" ||
    fail "duplicate versions: $*"
/usr/bin/python3 tests/e2e/restore_tokens.py ops "$E2E_DIR" "$E2E_PORT" StoreRestored \
    RestoreConfirmed && ok "the audit log records the restored store and the reconcile" ||
    fail "not audited"
as auditor audit keys --out-dir "$W/keys3" >/dev/null
as auditor audit export --region eu-west --out "$W/all3.bin" --proofs >/dev/null
"$KMSCTL" audit verify --keys "$W/keys3" "$W/all3.bin" >/dev/null &&
    ok "kmsctl audit verify accepts the restored log" || fail "audit verify after restore"
# ---- readiness tells the truth: a state disk without room -------------------------------
# (a file-size limit on kmsd, as test_audit_diskfull does: writes fail as on a
# full disk). Before: /readyz said ready while the idle audit log could not
# take one more record.
[ "$(readyz)" = ready ] || fail "not ready before the disk test: $(readyz)"
sleep 1 # the last head is written: the audit log is idle from here on
# The limit must let kmsd's own log (this test's evidence) grow: start it
# afresh (kmsd appends) under a limit below one audit record (64 KiB).
cp "$E2E_DIR/kmsd.log" "$W/kmsd.log.before-disk"
: >"$E2E_DIR/kmsd.log"
prlimit --pid="$E2E_PID" --fsize=60000:
i=0
until [ "$(readyz)" != ready ]; do
    i=$((i + 1)); [ $i -lt 50 ] || break; sleep 0.2
done
[ "$(readyz)" != ready ] && grep -q "no room for one more record" "$E2E_DIR/kmsd.log" &&
    ok "a state disk without room: not ready, and the log says why" ||
    fail "still ready with no room: $(readyz)"
prlimit --pid="$E2E_PID" --fsize=unlimited:
i=0
until [ "$(readyz)" = ready ]; do
    i=$((i + 1)); [ $i -lt 50 ] || fail "not ready again after room returned: $(readyz)"; sleep 0.2
done
ok "room back: ready again without a restart"

# ---- drill 4: store and tokens restored together, older than the audit log ------------
e2e_stop
kr=$(sqlite3 "$E2E_DIR/kmsd.db" "SELECT key_id FROM keys WHERE state = 1 AND tenant = 'demo' LIMIT 1")
rm -rf "$W/pair"
mkdir -p "$W/pair"
cp "$E2E_DIR/kmsd.db" "$W/pair/"
cp -a "$E2E_DIR/hsm/tokens" "$W/pair/tokens"
e2e_start
printf 'pair-before' | as demo-broker encrypt --key-id "$kr" >"$W/ct-pair" ||
    fail "encrypt for drill 4"
vr=$(as demo-admin key rotate "$kr" | sed -n 's/^current_version: *//p')
e2e_stop
rm -f "$E2E_DIR"/kmsd.db*
cp "$W/pair/kmsd.db" "$E2E_DIR/kmsd.db"
rm -rf "$E2E_DIR/hsm/tokens"
cp -a "$W/pair/tokens" "$E2E_DIR/hsm/tokens"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" -gt "$sb" ] && ok "store and tokens older than the audit log: SAFE MODE" ||
    fail "both old not noticed"
e2e_stop
"$KMSD" --config "$E2E_DIR/kmsd.json" --reconcile >"$W/plan4.txt" 2>>"$E2E_DIR/kmsd.log"
grep -q "floor: key $kr never reissues version $vr" "$W/plan4.txt" &&
    ok "the plan keeps the acknowledged version number $vr taken" ||
    fail "plan4: $(cat "$W/plan4.txt")"
"$KMSD" --config "$E2E_DIR/kmsd.json" --reconcile --confirm >"$W/apply4.txt" 2>>"$E2E_DIR/kmsd.log" ||
    fail "apply4: $(cat "$W/apply4.txt")"
e2e_start
v=$(as demo-admin key rotate "$kr" | sed -n 's/^current_version: *//p')
[ "$v" = $((vr + 1)) ] && ok "the next rotation takes $v: version $vr is never reissued" ||
    fail "rotation after both-old restore gave $v (acknowledged $vr before)"
[ "$(as demo-broker decrypt --in "$W/ct-pair")" = pair-before ] &&
    ok "a ciphertext acknowledged before the store and token copies decrypts" ||
    fail "decrypt after drill 4"

# ---- drill 5: the audit log restored older than the store and the tokens ---------------
e2e_stop
rm -rf "$E2E_DIR/audit"
cp -a "$W/bk/audit" "$E2E_DIR/audit"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" -gt "$sb" ] && grep -q "the audit log is older than the store" "$E2E_DIR/kmsd.log" &&
    # The summary (readyz, the SAFE MODE line) counts it as what it is,
    # not as changes missing from the store.
    grep -q "SAFE MODE: .* [1-9] audit log(s) older than the store" "$E2E_DIR/kmsd.log" &&
    ok "an audit log older than the store: SAFE MODE, and the log says so" ||
    fail "old audit log not noticed"
e2e_stop
"$KMSD" --config "$E2E_DIR/kmsd.json" --reconcile --confirm >"$W/apply5.txt" 2>>"$E2E_DIR/kmsd.log" ||
    fail "apply5: $(cat "$W/apply5.txt")"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" = "$sb" ] && [ "$(readyz)" = ready ] &&
    [ "$(as demo-broker decrypt --in "$W/ct-pair")" = pair-before ] &&
    ok "confirmed: the node goes on with the audit log in place, ready, decrypting" ||
    fail "after drill 5: $(readyz)"
as auditor audit keys --out-dir "$W/keys5" >/dev/null
as auditor audit export --region eu-west --out "$W/all5.bin" --proofs >/dev/null
"$KMSCTL" audit verify --keys "$W/keys5" "$W/all5.bin" >/dev/null &&
    /usr/bin/python3 tests/e2e/restore_tokens.py ops "$E2E_DIR" "$E2E_PORT" RestoreDetected \
        RestoreConfirmed &&
    ok "the continued audit log verifies and records the detection and the confirmation" ||
    fail "audit after drill 5"

# ---- drill 6: a backup taken while a deletion was pending, finished after it ------------
kd=$(as demo-admin key create --region eu-west -q)
as demo-admin key schedule-deletion "$kd" --days 3 >/dev/null
"$KMSCTL" backup --config "$E2E_DIR/kmsd.json" --out "$W/bk6" >/dev/null || fail "backup 6"
wait_state demo-admin "$kd" DESTROYED
e2e_stop
set -- $(objects)
n6=$1
rm -f "$E2E_DIR"/kmsd.db*
cp "$W/bk6/kmsd.db" "$E2E_DIR/kmsd.db"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" -gt "$sb" ] && ok "a store from before a deletion finished: safe mode (the object is gone)" ||
    fail "drill 6 not noticed"
e2e_stop
"$KMSD" --config "$E2E_DIR/kmsd.json" --reconcile >"$W/plan6.txt" 2>>"$E2E_DIR/kmsd.log"
grep -q "lost: key $kd version 1 has no object" "$W/plan6.txt" &&
    ok "the plan offers to accept the destroyed version as lost" || fail "plan6: $(cat "$W/plan6.txt")"
"$KMSD" --config "$E2E_DIR/kmsd.json" --reconcile --confirm >"$W/apply6.txt" 2>>"$E2E_DIR/kmsd.log" ||
    fail "apply6: $(cat "$W/apply6.txt")"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" = "$sb" ] && [ "$(readyz)" = ready ] && ok "confirmed: ready" ||
    fail "after drill 6: $(readyz)"
wait_state demo-admin "$kd" DESTROYED
[ "$(objects)" = "$n6 0" ] && ok "the sweeper finishes the deletion the backup had pending; nothing else destroyed" ||
    fail "objects after drill 6: $(objects), were $n6"

# ---- drill 7: a token backup older than an audit key rotation ---------------------------
e2e_stop
rm -rf "$W/tok7"
cp -a "$E2E_DIR/hsm/tokens" "$W/tok7"
cp "$E2E_DIR/kmsd.json" "$W/kmsd.json.keep"
/usr/bin/python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["audit"]["key_max_age_s"] = 1; json.dump(c, open(sys.argv[1], "w"))' "$E2E_DIR/kmsd.json"
sleep 1.5
e2e_start # every region's signing key is older than 1 s: rotated at start
e2e_stop
cp "$W/kmsd.json.keep" "$E2E_DIR/kmsd.json"
rm -rf "$E2E_DIR/hsm/tokens"
cp -a "$W/tok7" "$E2E_DIR/hsm/tokens"
if timeout 30 "$KMSD" --config "$E2E_DIR/kmsd.json" >>"$E2E_DIR/kmsd.log" 2>&1; then
    fail "kmsd served with a token that lacks its audit signing keys"
fi
grep -q "the audit signing key is missing from token" "$E2E_DIR/kmsd.log" &&
    ok "a token older than the audit key rotation: kmsd names the missing signing key" ||
    fail "drill 7: $(tail -n 3 "$E2E_DIR/kmsd.log")"
# The documented way on (docs/operations.md): archive the old logs, new logs.
mv "$E2E_DIR/audit" "$W/audit-archive-7"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" -gt "$sb" ] && ok "new audit logs behind the store's watermark: safe mode until confirmed" ||
    fail "drill 7: no safe mode"
e2e_stop
"$KMSD" --config "$E2E_DIR/kmsd.json" --reconcile --confirm >"$W/apply7.txt" 2>>"$E2E_DIR/kmsd.log" ||
    fail "apply7: $(cat "$W/apply7.txt")"
sb=$(safe_lines)
e2e_start
[ "$(safe_lines)" = "$sb" ] && [ "$(readyz)" = ready ] &&
    [ "$(as demo-broker decrypt --in "$W/ct-pair")" = pair-before ] &&
    ok "the runbook's steps bring the node back: ready, decrypting, nothing destroyed" ||
    fail "after drill 7: $(readyz)"
as auditor audit keys --out-dir "$W/keys7" >/dev/null
as auditor audit export --region eu-west --out "$W/all7.bin" --proofs >/dev/null
"$KMSCTL" audit verify --keys "$W/keys7" "$W/all7.bin" >/dev/null &&
    ok "the new audit log verifies" || fail "audit verify after drill 7"

# ---- drill 8: GCM encryption counts never go back with a restored store ---------------
# Before: only encryptions after the backup, so no finding and no safe mode,
# and each version's count restarted from the backup's value (the 2^32
# random-IV limit could be passed unnoticed).
enc_v1() { as demo-admin key describe "$1" | sed -n 's/^  1  .*encryptions \([0-9]*\)$/\1/p'; }
kc=$(as demo-admin key create --region eu-west -q)
printf 'c0' | as demo-broker encrypt --key-id "$kc" >/dev/null
e2e_stop # a clean stop gives back reserved, unused encryptions
sqlite3 "$E2E_DIR/kmsd.db" ".backup '$W/store8.db'"
e2e_start
e0=$(enc_v1 "$kc")
i=0
while [ $i -lt 20 ]; do
    printf 'c%s' $i | as demo-broker encrypt --key-id "$kc" >/dev/null || fail "encrypt $i"
    i=$((i + 1))
done
e1=$(enc_v1 "$kc")
[ -n "$e0" ] && [ "$e1" -ge $((e0 + 20)) ] || fail "counts before the restore: $e0 then $e1"
e2e_stop
rm -f "$E2E_DIR"/kmsd.db*
cp "$W/store8.db" "$E2E_DIR/kmsd.db"
sb=$(safe_lines)
e2e_start
e2=$(enc_v1 "$kc")
[ "$(safe_lines)" = "$sb" ] && [ "$e2" -ge "$e1" ] && [ "$e2" -ge $((e0 + 20)) ] &&
    ok "a restored store's encryption count is rebuilt from the audit log ($e0 at the backup, $e1 before, $e2 after)" ||
    fail "encryption count after the restore: $e2, was $e1 (backup $e0)"
e2e_stop
e2e_start
e3=$(enc_v1 "$kc")
[ "$e3" -ge "$e2" ] && [ "$e3" -le $((e2 + 1024)) ] &&
    ok "a restart counts the audit log's encryptions once ($e3)" || fail "count after restart: $e3, was $e2"

# A copied dev installation never opens the live tokens once set up again.
cp -a "$E2E_DIR/hsm" "$W/hsm-copy"
KMSCTL="$KMSCTL" sh deploy/dev-hsm.sh "$W/hsm-copy" eu-west us-east >/dev/null 2>&1
copy=$(cd "$W/hsm-copy" && pwd)
grep -qx "directories.tokendir = $copy/tokens/" "$W/hsm-copy/softhsm2.conf" &&
    ok "deploy/dev-hsm.sh re-roots a copied softhsm2.conf to the copy's own tokens" ||
    fail "copied conf: $(grep tokendir "$W/hsm-copy/softhsm2.conf")"
e2e_scan_tokens
e2e_stop
trap - EXIT

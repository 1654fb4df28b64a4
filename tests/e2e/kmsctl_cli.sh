#!/bin/sh
# kmsctl end to end: every KeyService subcommand of kmsctl against a running
# kmsd. Run it (sh tests/e2e/kmsctl_cli.sh) or source it (. kmsctl_cli.sh):
# either way it prints "ok N - ..." / "not ok N - ..." per check (TAP) and
# ends non-zero if any check failed. Sourcing runs it in a subshell, so it
# leaves no variables, traps or directory changes behind, and returns.
#
# Environment:
#   KMSCTL           path to the kmsctl binary                      (required)
#   CUSTOS_ADDR      kmsd base URL, e.g. http://127.0.0.1:8700     (required)
#   ADMIN_KEY_FILE   API key file (mode 0600) of a key-admin        (required)
#   BROKER_KEY_FILE  API key file (mode 0600) of a broker of the
#                    same tenant                                   (required)
#   REGION           region to create keys in (default eu-west); the
#                    broker must be allowed to use it
#   UNUSED_PORT      a localhost port nothing listens on (default 1)
#   WORK_DIR         directory for the test's files, kept afterwards for
#                    inspection (default: a temporary one, removed)
#   CUSTOS_CACERT, CUSTOS_CLIENT_CERT, CUSTOS_CLIENT_KEY: passed through
#
# The server must accept a 7-day deletion window (its minimum) and keep
# every key version able to decrypt after rotation.
#
# Checks are strings run by eval, so their expansions are deliberately late
# (and variables used only there look unused); ls -l is read for the mode:
# shellcheck disable=SC2016,SC2317,SC2034,SC2012

kmsctl_cli_main() {
    set -u
    : "${KMSCTL:?KMSCTL must name the kmsctl binary}"
    : "${CUSTOS_ADDR:?CUSTOS_ADDR must name kmsd}"
    : "${ADMIN_KEY_FILE:?ADMIN_KEY_FILE must name a key-admin API key file}"
    : "${BROKER_KEY_FILE:?BROKER_KEY_FILE must name a broker API key file}"
    export CUSTOS_ADDR
    # Credentials are passed per call, never inherited by accident.
    unset CUSTOS_API_KEY_FILE
    REGION=${REGION:-eu-west}
    UNUSED_PORT=${UNUSED_PORT:-1}

    if [ -n "${WORK_DIR:-}" ]; then
        T=$WORK_DIR
        mkdir -p "$T" || exit 1
    else
        T=$(mktemp -d "${TMPDIR:-/tmp}/kmsctl-e2e.XXXXXX") || exit 1
        trap 'rm -rf "$T"' EXIT
    fi
    trap 'exit 1' INT TERM
    n=0
    failed=0

    pass() { n=$((n + 1)); echo "ok $n - $1"; }
    fail() {
        n=$((n + 1))
        failed=$((failed + 1))
        echo "not ok $n - $1"
        # Show what kmsctl said, as TAP diagnostics.
        [ -s "$T/err" ] && sed 's/^/# stderr: /' "$T/err" | head -n 5
        return 0
    }
    check() { d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }

    # run ARGS...: kmsctl with stdin from $IN (default /dev/null); stdout in
    # $T/out, stderr in $T/err, exit code in $rc.
    run() {
        "$KMSCTL" "$@" <"${IN:-/dev/null}" >"$T/out" 2>"$T/err"
        rc=$?
        IN=
    }
    # The admin passes its key before the command, the broker after it, so
    # both placements of connection options are exercised throughout.
    adm() { run --api-key-file "$ADMIN_KEY_FILE" "$@"; }
    brk() { c=$1; shift; run "$c" --api-key-file "$BROKER_KEY_FILE" "$@"; }

    rc_is() { [ "$rc" -eq "$1" ]; }
    out_has() { grep -q -- "$1" "$T/out"; }
    err_has() { grep -q -- "$1" "$T/err"; }
    refused() { [ "$rc" -eq 1 ] && grep -q -- "$1" "$T/err"; }
    same() { cmp -s "$1" "$2"; }
    mode600() { [ "$(ls -l "$1" | cut -c1-10)" = "-rw-------" ]; }
    size_is() { [ "$(wc -c <"$1" | tr -d ' ')" -eq "$2" ]; }
    is_kid() { printf '%s\n' "$1" | grep -Eq '^[0-9a-f]{32}$'; }
    field() { sed -n "s/^$1: //p" "$T/out" | head -n 1; }

    # --- help and usage (no server needed) --------------------------------
    for c in "" key encrypt decrypt re-encrypt data-key; do
        run $c --help
        check "kmsctl $c --help exits 0 with usage" eval 'rc_is 0 && out_has "usage:"'
    done
    run key --help
    check "key --help documents exit codes" eval 'out_has "3 transport" && out_has "4 local"'
    run key
    check "key without a command is a usage error (2)" rc_is 2
    run key frobnicate
    check "unknown key command is a usage error (2)" rc_is 2
    run key describe
    check "key describe without KEY_ID is a usage error (2)" rc_is 2
    run key create
    check "key create without --region is a usage error (2)" rc_is 2
    run key list --page-size 0
    check "key list --page-size 0 is a usage error (2)" rc_is 2
    run key describe 00000000000000000000000000000000 --days 7
    check "an option that does not apply is a usage error (2)" rc_is 2
    run encrypt --context a=1
    check "encrypt without --key-id is a usage error (2)" rc_is 2
    run encrypt --key-id 00000000000000000000000000000000 --context novalue
    check "--context without '=' is a usage error (2)" rc_is 2
    run encrypt --key-id 00000000000000000000000000000000 --context =v
    check "--context with an empty key is a usage error (2)" rc_is 2
    run encrypt --key-id 00000000000000000000000000000000 --context a=1 --context a=2
    check "a duplicate --context key is a usage error (2)" rc_is 2
    run encrypt --key-id 00000000000000000000000000000000 --no-such-option
    check "an unknown option is a usage error (2)" rc_is 2
    run data-key generate --key-id 00000000000000000000000000000000 --out-blob "$T/x"
    check "data-key generate without --out-plaintext is a usage error (2)" rc_is 2
    run data-key generate --key-id 00000000000000000000000000000000 --bytes 8 \
        --out-plaintext "$T/x" --out-blob "$T/y"
    check "data-key generate --bytes 8 is a usage error (2)" rc_is 2

    # --- transport and local errors ---------------------------------------
    run key list --addr "http://127.0.0.1:$UNUSED_PORT" --api-key-file "$ADMIN_KEY_FILE"
    check "an unreachable server is a transport error (3)" rc_is 3
    run key list --api-key-file "$T/no-such-key-file"
    check "a missing API key file is a local error (4)" rc_is 4
    cp "$ADMIN_KEY_FILE" "$T/open-key" && chmod 644 "$T/open-key"
    run key list --api-key-file "$T/open-key"
    check "an API key file of mode 0644 is refused (4)" eval 'rc_is 4 && err_has "mode"'
    brk encrypt --key-id 00000000000000000000000000000000 --in "$T/no-such-input"
    check "a missing input file is a local error (4)" rc_is 4
    dd if=/dev/urandom of="$T/64k" bs=1024 count=64 2>/dev/null
    { cat "$T/64k"; printf x; } >"$T/64k+1"
    brk encrypt --key-id 00000000000000000000000000000000 --in "$T/64k+1"
    check "plaintext over 64 KiB is refused locally (4)" eval 'rc_is 4 && err_has "larger than"'

    # --- authentication and roles -----------------------------------------
    printf 'not-a-real-key\n' >"$T/bad-key" && chmod 600 "$T/bad-key"
    run key list --api-key-file "$T/bad-key"
    check "an unknown API key is unauthenticated (1)" refused unauthenticated
    check "a Twirp error names the request id" err_has "request id"

    # --- key create, describe, list ---------------------------------------
    adm key create --region "$REGION" --description "kmsctl e2e" -q
    KID=$(cat "$T/out")
    check "key create -q prints only a key id" eval 'rc_is 0 && is_kid "$KID"'
    if ! is_kid "$KID"; then
        echo "Bail out! cannot create a key in $REGION"
        echo "1..$n"
        return 1
    fi
    adm key create --region "$REGION" --description "kmsctl e2e destination"
    KID2=$(sed -n '1s/^key_id: //p' "$T/out")
    check "key create prints a summary starting with key_id" eval 'rc_is 0 && is_kid "$KID2"'
    check "key create summary shows state ENABLED" out_has "^state: ENABLED"
    adm key create --region "$REGION" --json
    check "key create --json prints a JSON key" eval 'rc_is 0 && out_has "\"key_id\": \"[0-9a-f]\{32\}\""'
    KID3=$(sed -n 's/^  "key_id": "\([0-9a-f]*\)",$/\1/p' "$T/out")

    adm key describe "$KID"
    check "key describe shows the key" eval 'rc_is 0 && [ "$(field key_id)" = "$KID" ]'
    check "key describe shows region, version and creation time" eval \
        '[ "$(field region)" = "$REGION" ] && [ "$(field current_version)" = 1 ] &&
         field created | grep -Eq "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$"'
    adm key describe "$KID" --json
    check "key describe --json" eval 'rc_is 0 && out_has "\"current_version\": 1" &&
        out_has "\"state\": \"ENABLED\"" && out_has "\"description\": \"kmsctl e2e\""'
    adm key describe 00000000000000000000000000000000
    check "describing an unknown key is not_found (1)" refused not_found

    adm key list --all -q
    check "key list --all -q lists the new keys" eval \
        'rc_is 0 && out_has "^$KID\$" && out_has "^$KID2\$"'
    adm key list
    check "key list prints a table with the key" eval 'rc_is 0 && out_has "^KEY_ID" && out_has "^$KID "'
    adm key list --json --all
    check "key list --json --all" eval 'rc_is 0 && out_has "\"keys\": \[" && out_has "\"$KID\""'
    adm key list --page-size 1 --json
    TOKEN=$(sed -n 's/^  "next_page_token": "\(.*\)"$/\1/p' "$T/out")
    check "key list --page-size 1 returns a next_page_token" eval 'rc_is 0 && [ -n "$TOKEN" ]'
    adm key list --page-size 1 -q
    FIRST=$(cat "$T/out")
    check "key list --page-size 1 -q prints one id and a hint" eval \
        'rc_is 0 && [ "$(wc -l <"$T/out" | tr -d " ")" -eq 1 ] && err_has "--page-token"'
    adm key list --page-size 1 --page-token "$TOKEN" -q
    check "key list --page-token returns the next page" eval \
        'rc_is 0 && [ -s "$T/out" ] && [ "$(cat "$T/out")" != "$FIRST" ]'

    # --- roles ---------------------------------------------------------------
    brk key create --region "$REGION"
    check "a broker may not create keys (permission_denied)" refused permission_denied
    printf 'x' >"$T/x"
    adm encrypt --key-id "$KID" --in "$T/x"
    check "a key-admin may not encrypt (permission_denied)" refused permission_denied

    # --- encrypt / decrypt -------------------------------------------------
    printf 'hello, custos' >"$T/msg"
    IN="$T/msg" brk encrypt --key-id "$KID" --context app=e2e --context tenant=demo
    cp "$T/out" "$T/ct1"
    check "encrypt stdin -> stdout" eval 'rc_is 0 && [ -s "$T/ct1" ] && ! same "$T/ct1" "$T/msg"'
    IN="$T/ct1" brk decrypt --context tenant=demo --context app=e2e
    check "decrypt stdin -> stdout round-trips (context order free)" eval \
        'rc_is 0 && same "$T/out" "$T/msg"'
    IN="$T/ct1" brk decrypt --context app=other --context tenant=demo
    check "decrypt with a different context fails (invalid_argument)" refused invalid_argument
    IN="$T/ct1" brk decrypt --context app=e2e
    check "decrypt with a missing context pair fails (1)" rc_is 1
    IN="$T/ct1" brk decrypt --key-id "$KID2" --context app=e2e --context tenant=demo
    check "decrypt --key-id of another key fails (1)" rc_is 1
    IN="$T/ct1" brk decrypt --key-id "$KID" --context app=e2e --context tenant=demo
    check "decrypt --key-id of the right key" eval 'rc_is 0 && same "$T/out" "$T/msg"'

    dd if=/dev/urandom of="$T/bin" bs=1000 count=1 2>/dev/null
    brk encrypt --key-id "$KID" --in "$T/bin" --out "$T/bin.ct" --correlation-id e2e-files
    check "encrypt file -> file (binary, with a correlation id)" eval 'rc_is 0 && [ -s "$T/bin.ct" ]'
    brk decrypt --in "$T/bin.ct" --out "$T/bin.pt"
    check "decrypt file -> file round-trips" eval 'rc_is 0 && same "$T/bin" "$T/bin.pt"'
    check "decrypted file has mode 0600" mode600 "$T/bin.pt"
    brk encrypt --key-id "$KID" --in "$T/64k" --out "$T/64k.ct"
    brk decrypt --in "$T/64k.ct" --out "$T/64k.pt"
    check "exactly 64 KiB of plaintext round-trips" eval 'rc_is 0 && same "$T/64k" "$T/64k.pt"'

    brk encrypt --key-id "$KID" --in "$T/msg" --base64-out --context app=b64
    cp "$T/out" "$T/ct.b64"
    check "encrypt --base64-out writes one base64 line" eval \
        'rc_is 0 && [ "$(wc -l <"$T/ct.b64" | tr -d " ")" -eq 1 ] &&
         grep -Eq "^[A-Za-z0-9+/]+=*\$" "$T/ct.b64"'
    IN="$T/ct.b64" brk decrypt --base64-in --context app=b64
    check "decrypt --base64-in round-trips" eval 'rc_is 0 && same "$T/out" "$T/msg"'
    printf 'aGVsbG8=\n' >"$T/hello.b64"
    IN="$T/hello.b64" brk encrypt --key-id "$KID" --base64-in --base64-out
    cp "$T/out" "$T/hello.ct.b64"
    IN="$T/hello.ct.b64" brk decrypt --base64-in --base64-out
    check "base64 plaintext in, base64 plaintext out" eval 'rc_is 0 && same "$T/out" "$T/hello.b64"'
    printf 'not base64 !!\n' >"$T/junk"
    IN="$T/junk" brk decrypt --base64-in
    check "invalid base64 input is a local error (4)" rc_is 4

    # --- rotation ------------------------------------------------------------
    adm key rotate "$KID"
    check "key rotate makes version 2 current" eval 'rc_is 0 && [ "$(field current_version)" = 2 ]'
    adm key describe "$KID" --json
    check "describe after rotate lists two versions" eval \
        'out_has "\"current_version\": 2" && out_has "\"version\": 2"'
    IN="$T/ct1" brk decrypt --context app=e2e --context tenant=demo
    check "a version-1 ciphertext still decrypts after rotate" eval 'rc_is 0 && same "$T/out" "$T/msg"'
    IN="$T/msg" brk encrypt --key-id "$KID"
    cp "$T/out" "$T/ct2"
    IN="$T/ct2" brk decrypt
    check "encrypt/decrypt under version 2" eval 'rc_is 0 && same "$T/out" "$T/msg"'

    # --- disable / enable ----------------------------------------------------
    adm key disable "$KID"
    check "key disable" eval 'rc_is 0 && [ "$(field state)" = DISABLED ]'
    IN="$T/msg" brk encrypt --key-id "$KID" --out "$T/never"
    check "encrypt under a disabled key fails (1)" rc_is 1
    check "a refused encrypt leaves no output file" eval '[ ! -e "$T/never" ]'
    IN="$T/ct2" brk decrypt
    check "decrypt under a disabled key fails (1)" rc_is 1
    adm key enable "$KID"
    check "key enable" eval 'rc_is 0 && [ "$(field state)" = ENABLED ]'
    IN="$T/ct2" brk decrypt
    check "decrypt works again after enable" eval 'rc_is 0 && same "$T/out" "$T/msg"'

    # --- data keys -------------------------------------------------------------
    brk data-key generate --key-id "$KID" --context purpose=dk \
        --out-plaintext "$T/dk" --out-blob "$T/dk.blob"
    check "data-key generate writes a 32-byte key and a blob" eval \
        'rc_is 0 && size_is "$T/dk" 32 && [ -s "$T/dk.blob" ]'
    check "the plaintext data key file has mode 0600" mode600 "$T/dk"
    brk data-key decrypt --in "$T/dk.blob" --out "$T/dk2" --context purpose=dk
    check "data-key decrypt returns the same key" eval 'rc_is 0 && same "$T/dk" "$T/dk2"'
    check "the decrypted data key file has mode 0600" mode600 "$T/dk2"
    IN="$T/dk.blob" brk data-key decrypt --context purpose=dk --key-id "$KID"
    check "data-key decrypt to a non-terminal stdout" eval 'rc_is 0 && same "$T/out" "$T/dk"'
    brk data-key decrypt --in "$T/dk.blob" --out "$T/dk3" --context purpose=other
    check "data-key decrypt with a different context fails (1)" rc_is 1
    brk data-key generate --key-id "$KID" --bytes 16 --base64-out \
        --out-plaintext "$T/dk16.b64" --out-blob "$T/dk16.blob.b64"
    check "data-key generate --bytes 16 --base64-out" eval \
        'rc_is 0 && grep -Eq "^[A-Za-z0-9+/]{22}==\$" "$T/dk16.b64"'
    brk data-key decrypt --base64-in --base64-out --in "$T/dk16.blob.b64" --out "$T/dk16b.b64"
    check "data-key decrypt of a base64 blob round-trips" eval \
        'rc_is 0 && same "$T/dk16.b64" "$T/dk16b.b64"'
    brk data-key generate --key-id "$KID" --out-plaintext - --out-blob "$T/dk-s.blob"
    cp "$T/out" "$T/dk-s"
    brk data-key decrypt --in "$T/dk-s.blob" --out -
    check "data-key generate --out-plaintext - writes the key to stdout" eval \
        'rc_is 0 && size_is "$T/dk-s" 32 && same "$T/out" "$T/dk-s"'

    # --- re-encrypt -------------------------------------------------------------
    brk re-encrypt --key-id "$KID2" --source-context app=e2e --source-context tenant=demo \
        --context app=moved --in "$T/ct1" --out "$T/ct-moved"
    check "re-encrypt to another key and context" eval 'rc_is 0 && [ -s "$T/ct-moved" ]'
    brk decrypt --key-id "$KID2" --context app=moved --in "$T/ct-moved"
    check "the re-encrypted blob decrypts under the new key and context" eval \
        'rc_is 0 && same "$T/out" "$T/msg"'
    brk decrypt --key-id "$KID" --context app=moved --in "$T/ct-moved"
    check "the re-encrypted blob no longer names the old key (1)" rc_is 1
    brk re-encrypt --key-id "$KID2" --source-context app=wrong --in "$T/ct1"
    check "re-encrypt with a wrong source context fails (1)" rc_is 1
    brk re-encrypt --key-id "$KID2" --base64-in --base64-out --source-context app=b64 \
        --in "$T/ct.b64"
    cp "$T/out" "$T/moved.b64"
    IN="$T/moved.b64" brk decrypt --base64-in
    check "re-encrypt with base64 in and out" eval 'rc_is 0 && same "$T/out" "$T/msg"'

    # --- deletion ------------------------------------------------------------------
    adm key schedule-deletion "$KID2" --days 7
    check "key schedule-deletion" eval 'rc_is 0 && [ "$(field state)" = PENDING_DELETION ]'
    check "a key pending deletion shows its deletion time" eval \
        'field deletion | grep -Eq "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$"'
    IN="$T/msg" brk encrypt --key-id "$KID2"
    check "encrypt under a key pending deletion fails (1)" rc_is 1
    adm key cancel-deletion "$KID2" --json
    check "key cancel-deletion leaves the key disabled" eval \
        'rc_is 0 && out_has "\"state\": \"DISABLED\"" && out_has "\"deletion_at\": null"'
    adm key enable "$KID2" -q
    check "key enable -q prints the key id" eval 'rc_is 0 && [ "$(cat "$T/out")" = "$KID2" ]'

    # Leave nothing usable behind: every key this test made is scheduled.
    for k in "$KID" "$KID2" $KID3; do
        adm key schedule-deletion "$k" --days 7 -q
        check "clean-up: schedule deletion of $k" rc_is 0
    done

    echo "1..$n"
    [ "$failed" -eq 0 ]
}

# Sourced: run in a subshell and return; executed: run and exit.
if (return 0 2>/dev/null); then
    (kmsctl_cli_main)
    return $?
fi
kmsctl_cli_main
exit $?

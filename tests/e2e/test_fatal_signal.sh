#!/bin/sh
# kmsd turns core dumps off (a core would hold PINs and data keys), so a
# fault must leave its cause in the log (kms/base/kms_crash.h): kmsd, sent
# SIGSEGV and (restarted) SIGABRT, writes one JSON line at level "fatal"
# naming the signal, then the thread's frames as module+offset lines that
# addr2line resolves on this build, and dies of the same signal (exit
# status 128+N, as without the handler). Under ASan/TSan the handler stays
# out of the way: the sanitizer's own report is there instead.
# Prints "ok N - ..." per check; exits 1 if any check failed.
set -eu
. tests/e2e/lib.sh
e2e_setup fatalsig
trap 'kill -9 $E2E_PID 2>/dev/null || true' EXIT
n=0
failed=0
check() {
    n=$((n + 1))
    if [ "$1" = 0 ]; then echo "ok $n - $2"; else
        echo "not ok $n - $2"
        failed=$((failed + 1))
        tail -n 20 "$E2E_DIR/kmsd.log" | sed 's/^/#   /'
    fi
}
sanitized=0
ldd "$KMSD" | grep -q 'libasan\|libtsan' && sanitized=1

for sig in SEGV ABRT; do
    : >"$E2E_DIR/kmsd.log"
    e2e_start
    kill -s "$sig" "$E2E_PID"
    rc=0
    wait "$E2E_PID" || rc=$?
    E2E_PID=
    num=$(kill -l "$sig" 2>/dev/null || /usr/bin/python3 -c "import signal; print(int(signal.SIG$sig))")
    if [ $sanitized = 1 ]; then
        grep -q '"level":"fatal"' "$E2E_DIR/kmsd.log" && r=1 || r=0
        check $r "SIG$sig under a sanitizer: no handler of ours in the way"
        continue
    fi
    [ "$rc" = $((128 + num)) ] && r=0 || r=1
    check $r "SIG$sig: kmsd dies of the signal (exit status $rc, want $((128 + num)))"
    # The fatal line is JSON like every other line, with the signal's name.
    line=$(grep '"level":"fatal"' "$E2E_DIR/kmsd.log" || true)
    printf '%s' "$line" | /usr/bin/python3 -c '
import json, sys
m = json.loads(sys.stdin.read())
assert m["component"] == "kmsd" and m["ts"].endswith("Z") and len(m["ts"]) == 24, m
assert ("fatal signal %s (SIG%s), sent by pid %s;" % tuple(sys.argv[1:4])) in m["msg"], m
' "$num" "$sig" "$$" >/dev/null 2>&1 && r=0 || r=1
    # Sent with kill(2): the sender's pid (this shell), not a fault address.
    check $r "SIG$sig: one JSON line at level fatal names signal $num and its sender (pid $$)"
    # The frames: module+offset lines; the handler's own frame resolves to
    # on_fatal in kms_crash.c with addr2line on this binary.
    offs=$(sed -n 's/^[^ ]*kmsd(+\(0x[0-9a-f]*\)).*/\1/p' "$E2E_DIR/kmsd.log")
    frames=$(printf '%s\n' "$offs" | grep -c . || true)
    resolved=$(printf '%s\n' "$offs" | xargs -r addr2line -f -e "$KMSD" | grep -c '^on_fatal$' || true)
    [ "$frames" -ge 2 ] && [ "$resolved" -ge 1 ] && r=0 || r=1
    check $r "SIG$sig: $frames frames follow, and addr2line finds the handler among them"
done
[ $failed -eq 0 ]

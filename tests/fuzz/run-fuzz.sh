#!/bin/sh
# Run every fuzz target of $FUZZ_BUILD/fuzz for SECONDS each, on its seed
# corpus and regression inputs. New inputs go to $FUZZ_BUILD/corpus/<target>
# (not checked in); a crash leaves its input in $FUZZ_BUILD/artifacts/.
#   sh tests/fuzz/run-fuzz.sh SECONDS [TARGET]
# Prints one line per target and fails if any target found something.
set -u
secs=${1:-60}
only=${2:-}
top=$(cd "$(dirname "$0")/../.." && pwd)
fb=${FUZZ_BUILD:-build/fuzz}
case $fb in /*) ;; *) fb="$top/$fb" ;; esac
failed=0
found=0
for bin in "$fb"/fuzz/fuzz_*; do
    [ -x "$bin" ] || continue
    name=$(basename "$bin")
    [ -z "$only" ] || [ "$only" = "$name" ] || continue
    found=1
    new="$fb/corpus/$name"
    mkdir -p "$new" "$fb/artifacts"
    set -- "$new"
    for d in "$top/tests/fuzz/corpus/$name" "$top/tests/fuzz/regress/$name"; do
        [ -d "$d" ] && set -- "$@" "$d"
    done
    log="$fb/$name.log"
    # rss_limit: a decoder that allocates without bound fails here, not
    # after eating the machine; the other engineers share its 2 cores.
    if "$bin" -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$fb/artifacts/$name-" "$@" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        echo "fuzz $name: ${runs:-?} runs in ${secs}s, ok"
    else
        failed=1
        echo "fuzz $name: FAILED (log $log)"
        grep -E 'ERROR|SUMMARY|Test unit written' "$log" | head -n 5
    fi
done
[ $found -eq 1 ] || { echo "run-fuzz: no fuzz targets in $fb/fuzz" >&2; exit 1; }
exit $failed

#!/bin/sh
# A short make soak-http, so the soak cannot rot: 20 s at a modest rate
# (SOAK_RATE 400 req/s, the machine is shared in make check) with 1 %
# hostile requests, through the same script and checks as the long run
# (tests/bench/soak.py): no honest 5xx or transport error, RSS, descriptors
# and PKCS#11 sessions flat, audit events == requests that reached a route,
# exactly by outcome, and the log verifies offline. Its "ok N" lines are
# soak.py's own.
set -eu
BUILD_DIR=${CUSTOS_TEST_BUILD:-$(pwd)/build}
# Whether kmsd kept up with the schedule is reported, not asserted here
# (SOAK_KEEP_RATE=0): a timing property, which make check-asan on shared
# cores cannot promise; the long soak asserts it.
SOAK_SECONDS=${SOAK_SECONDS:-20} SOAK_RATE=${SOAK_RATE:-400} SOAK_PEAK_SECONDS=2 SOAK_KEEP_RATE=0 \
    SOAK_SAMPLE_S=4 SOAK_WARMUP_S=4 BUILD="$BUILD_DIR" sh tests/bench/run-soak.sh

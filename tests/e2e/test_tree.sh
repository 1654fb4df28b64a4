#!/bin/sh
# The tree's rules, checked on the sources (tests/e2e/tree_rules.py):
# layering as the Makefile's per-layer include paths say, no include circle
# between modules, no production .c file over 600 lines and no function over
# 100 lines without a comment saying why it must be one piece.
set -eu
/usr/bin/python3 tests/e2e/tree_rules.py .

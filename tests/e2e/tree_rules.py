"""The tree's own rules (docs/development.md, "Layers"), checked on the sources.

  1. Layering: every #include of a production file resolves inside its
     folder's layer include path, as the Makefile's L_* lines give it (the
     build enforces this too; this names the offending line).
  2. No include circle between modules (a module is x.c + x.h; a folder's
     *_internal.h header belongs to the files that share it).
  3. No production .c file over 600 lines; no function over 100 lines
     unless a comment just above it says why it must be "one piece".

Prints "ok N - ..." / "not ok N - ..." lines; exits 1 on any failure.
"""
import collections
import glob
import os
import re
import subprocess
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "."
os.chdir(ROOT)
SRC_DIRS = ["kms", "pkcs11", "policy"]
FILE_MAX, FN_MAX = 600, 100
n = 0
failed = False


def report(ok, what, details=()):
    global n, failed
    n += 1
    print(("ok %d - %s" if ok else "not ok %d - %s") % (n, what))
    for d in details:
        print("#   " + d)
    failed |= not ok


files = sorted(f for d in SRC_DIRS for f in glob.glob(d + "/**/*.[ch]", recursive=True))
includes = {f: re.findall(r'^#include "([^"]+)"', open(f).read(), re.M) for f in files}
by_name = {}
for f in files:
    by_name.setdefault(os.path.basename(f), f)

# 1. Layering: ask make for each folder's include path.
def layer_path(folder):
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "show-layer"],
        input="show-layer:\n\t@echo $(L_%s)\n" % folder, capture_output=True, text=True)
    return out.stdout.split()

LAYER_OF = {"kms/base": "base", "pkcs11": "pkcs11", "policy": "policy", "kms/store": "store",
            "kms/audit": "audit", "kms/service": "service", "kms/contract": "contract",
            "kms/keys": "keys", "kms/auditsvc": "auditsvc", "kms/xks": "xks", "kms/http": "http",
            "kms/ctl": "ctl", "kms/provider": "provider", "kms": "main"}
paths = {d: layer_path(l) for d, l in LAYER_OF.items()}
report(all(paths.values()), "every folder has a layer include path in the Makefile",
       [d for d, p in paths.items() if not p])
upward = []
for f in files:
    d = os.path.dirname(f)
    if d not in paths:
        upward.append("%s: a folder with no layer (add it to the Makefile's L_* lines)" % f)
        continue
    for h in includes[f]:
        if h.startswith("proto/"):
            continue
        target = by_name.get(os.path.basename(h))
        if target is not None and os.path.dirname(target) not in paths[d]:
            upward.append("%s includes %s (%s is above its layer)" % (f, h, os.path.dirname(target)))
report(not upward, "no include reaches a layer above its own", upward)

# 2. Include circles between modules.
def module(path):
    base = os.path.basename(path)[:-2]
    return None if base.endswith("_internal") else base

graph = collections.defaultdict(set)
for f in files:
    m = module(f)
    for h in includes[f]:
        target = by_name.get(os.path.basename(h))
        if m is None or target is None:
            continue
        t = module(target)
        if t is not None and t != m:
            graph[m].add(t)

index, low, stack, on, circles = {}, {}, [], set(), []
sys.setrecursionlimit(10000)

def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            circles.append(" <-> ".join(sorted(comp)))

for v in list(graph):
    if v not in index:
        visit(v)
report(not circles, "no include circle between modules", circles)

# 3. Sizes.
big_files, long_fns = [], []
for f in files:
    if not f.endswith(".c"):
        continue
    lines = open(f).read().split("\n")
    if len(lines) - 1 > FILE_MAX:
        big_files.append("%s: %d lines" % (f, len(lines) - 1))
    start = None
    for i, line in enumerate(lines):
        if line.startswith("{") and start is None:
            start = i
        elif line.startswith("}") and start is not None:
            if i - start - 1 > FN_MAX:
                above = "\n".join(lines[max(0, start - 20):start])
                if "one piece" not in above:
                    long_fns.append("%s:%d: %d lines" % (f, start + 1, i - start - 1))
            start = None
report(not big_files, "no production .c file over %d lines" % FILE_MAX, big_files)
report(not long_fns, "no function over %d lines without a comment saying why" % FN_MAX, long_fns)
sys.exit(1 if failed else 0)

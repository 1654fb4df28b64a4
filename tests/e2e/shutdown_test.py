"""SIGTERM under load, for test_shutdown.sh.

shutdown_test.py load DIR PORT PID KEY ROUND
    8 threads encrypt until kmsd is gone; SIGTERM after a random moment;
    acknowledged request ids are appended to DIR/acked.txt.
shutdown_test.py files DIR ROUND
    with kmsd stopped, read the region's audit files directly: every
    acknowledged request has its event on disk, and the last signed head
    covers every event (the log was flushed and a final head signed).
"""
import hashlib
import os
import random
import signal
import struct
import sys
import threading
import time

import audit_pb2 as apb
from audit_lib import Client, kpb, leaf_hash, mth

MODE, DIR = sys.argv[1], sys.argv[2]


def records(path):
    """The payloads of a framed audit file: len (4, BE) || check (8) || payload."""
    data = open(path, "rb").read()
    out, pos = [], 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{path}: torn record at {pos}")
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        payload = data[pos + 12:pos + 12 + n]
        if len(payload) != n or hashlib.sha256(b"\x00" + payload).digest()[:8] != data[pos + 4:pos + 12]:
            raise ValueError(f"{path}: bad record at {pos}")
        out.append(payload)
        pos += 12 + n
    return out


if MODE == "load":
    PORT, PID, KEY, ROUND = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
    acked, lock, stop = [], threading.Lock(), threading.Event()
    errors = [0]

    def worker():
        c = Client(PORT, f"{DIR}/credentials/demo-broker.key")
        while not stop.is_set():
            try:
                s, m, rid = c.call("KeyService", "Encrypt",
                                   kpb.EncryptRequest(key_id=KEY, plaintext=b"term-sentinel"),
                                   kpb.EncryptResponse)
            except Exception:
                return  # kmsd is gone (refused or closed): stop
            with lock:
                if s == 200:
                    acked.append(rid)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(random.uniform(0.3, 0.8))
    os.kill(PID, signal.SIGTERM)
    for t in threads:
        t.join(60)
    stop.set()
    with open(f"{DIR}/acked.txt", "a") as f:
        for rid in acked:
            f.write(rid + "\n")
    print(f"# round {ROUND}: {len(acked)} acknowledged, {errors[0]} refused before the stop")
    sys.exit(0)

ROUND = sys.argv[3]
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {ROUND}{count + 1} - {what}", flush=True)
    failures += 0 if cond else 1


raw = records(f"{DIR}/audit/eu-west.events")
heads = records(f"{DIR}/audit/eu-west.heads")
head = apb.SignedTreeHead()
head.ParseFromString(heads[-1])
rids = {}
for b in raw:
    ev = apb.AuditEvent()
    ev.ParseFromString(b)
    rids[ev.request_id] = rids.get(ev.request_id, 0) + 1
acked = [l.strip() for l in open(f"{DIR}/acked.txt") if l.strip()]
missing = [r for r in acked if rids.get(r) != 1]
check(len(acked) > 50, f"{len(acked)} encryptions acknowledged so far")
check(not missing, f"every acknowledged encryption has exactly one event on disk ({len(missing)} missing)")
check(head.tree_size == len(raw) and mth([leaf_hash(b) for b in raw]) == head.root_hash,
      f"the last signed head covers all {len(raw)} events (flushed, final head signed)")
sys.exit(1 if failures else 0)

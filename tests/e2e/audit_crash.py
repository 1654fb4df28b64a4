"""Load-then-kill and final verification for test_audit_crash.sh.

audit_crash.py load DIR PORT PID KEY ROUND   encrypt from 8 threads, kill -9 kmsd
audit_crash.py verify DIR PORT PID KEY 0     every acknowledged request is audited
"""
import os
import random
import signal
import sys
import threading
import time

from audit_lib import Client, export_all, kpb, leaf_hash, mth
import audit_pb2 as apb

DIR, PORT, PID, KEY, ROUND = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])

if sys.argv[1] == "load":
    acked, lock, stop = [], threading.Lock(), threading.Event()

    def worker():
        c = Client(PORT, f"{DIR}/credentials/demo-broker.key")
        while not stop.is_set():
            try:
                s, m, rid = c.call("KeyService", "Encrypt",
                                   kpb.EncryptRequest(key_id=KEY, plaintext=b"crash-sentinel"),
                                   kpb.EncryptResponse)
            except Exception:
                return
            if s == 200:
                with lock:
                    acked.append(rid)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(random.uniform(0.15, 0.5))
    os.kill(PID, signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    with open(f"{DIR}/acked.txt", "a") as f:
        for rid in acked:
            f.write(rid + "\n")
    sys.exit(0)

count = failures = 0

if sys.argv[1] == "refused":
    broker = Client(PORT, f"{DIR}/credentials/demo-broker.key")
    s, m, _ = broker.call("KeyService", "Encrypt", kpb.EncryptRequest(key_id=KEY, plaintext=b"x"),
                          kpb.EncryptResponse)
    ok = s == 503 and m.get("code") == "unavailable"
    print(f"{'ok' if ok else 'not ok'} 10 - a key of that region answers unavailable", flush=True)
    admin = Client(PORT, f"{DIR}/credentials/demo-admin.key")
    s, m, _ = admin.call("KeyService", "CreateKey",
                         kpb.CreateKeyRequest(region="us-east", spec=kpb.AES_256,
                                              usage=kpb.ENCRYPT_DECRYPT), kpb.CreateKeyResponse)
    ok2 = s == 200
    print(f"{'ok' if ok2 else 'not ok'} 11 - the other region is still served", flush=True)
    s, m, _ = admin.call("KeyService", "CreateKey",
                         kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                              usage=kpb.ENCRYPT_DECRYPT), kpb.CreateKeyResponse)
    ok3 = s == 503
    print(f"{'ok' if ok3 else 'not ok'} 12 - no key is created in the refused region", flush=True)
    sys.exit(0 if ok and ok2 and ok3 else 1)

if sys.argv[1] == "recovered":
    auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
    time.sleep(0.5)
    head, events, raw = export_all(auditor, "eu-west")
    # The crash rounds above may have left torn tails of their own; the one
    # planted by the shell script is named by its offset (passed as ROUND).
    rec = [ev for ev in events if ev.operation == "AuditLogRecovered"
           and f"eu-west.events truncated at offset {ROUND} " in ev.detail]
    ok = (len(rec) == 1 and "torn tail" in rec[0].detail and
          mth([leaf_hash(b) for b in raw]) == head.root_hash)
    print(f"{'ok' if ok else 'not ok'} 8 - the recovery is an audit event and the log still verifies",
          flush=True)
    sys.exit(0 if ok else 1)


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count + 1} - {what}", flush=True)
    failures += 0 if cond else 1


auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
# The head follows the events within head_every_ms; wait for it to cover
# everything written so far.
time.sleep(0.5)
head, events, raw = export_all(auditor, "eu-west")
acked = [l.strip() for l in open(f"{DIR}/acked.txt") if l.strip()]
rids = {}
for ev in events:
    rids[ev.request_id] = rids.get(ev.request_id, 0) + 1
missing = [r for r in acked if rids.get(r, 0) != 1]
check(len(acked) > 100, f"{len(acked)} encryptions were acknowledged across the crashes")
check(not missing, f"every acknowledged encryption has exactly one event ({len(missing)} missing)")
check(all(ev.seq == i for i, ev in enumerate(events)), "sequence numbers run 0..n-1 without gaps")
check(mth([leaf_hash(b) for b in raw]) == head.root_hash,
      f"the signed root is the root of all {head.tree_size} events on disk")
check(not any(b"crash-sentinel" in b for b in raw), "no event contains the plaintext")
recovered = sum(1 for ev in events if ev.operation == "AuditLogRecovered")
print(f"# {recovered} torn tails were truncated and recorded over the crashes")
sys.exit(1 if failures else 0)

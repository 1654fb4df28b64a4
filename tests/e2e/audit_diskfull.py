"""See test_audit_diskfull.sh. Usage: audit_diskfull.py DIR PORT PID KEY"""
import os
import subprocess
import sys
import time

from audit_lib import Client, export_all, kpb, leaf_hash, mth

DIR, PORT, PID, KEY = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1


broker = Client(PORT, f"{DIR}/credentials/demo-broker.key")


def encrypt():
    return broker.call("KeyService", "Encrypt", kpb.EncryptRequest(key_id=KEY, plaintext=b"x"),
                       kpb.EncryptResponse)


acked = []
for _ in range(20):
    s, m, rid = encrypt()
    if s == 200:
        acked.append(rid)
check(len(acked) == 20, "encryptions succeed while the log can be written")

size = os.path.getsize(f"{DIR}/audit/eu-west.events")
subprocess.run(["prlimit", f"--pid={PID}", f"--fsize={size + 3000}:"], check=True)
results = []
for _ in range(200):
    s, m, rid = encrypt()
    results.append(s)
    if s == 200:
        acked.append(rid)
first_fail = results.index(503) if 503 in results else None
check(first_fail is not None, "once the file cannot grow, Encrypt answers 503 unavailable")
check(first_fail is not None and all(r == 503 for r in results[first_fail:]),
      "and keeps failing closed: no success is acknowledged without its event")
s, m, _ = encrypt()
check(s == 503 and m.get("code") == "unavailable", "the refusal is the Twirp code unavailable")

subprocess.run(["prlimit", f"--pid={PID}", "--fsize=unlimited:"], check=True)
ok = False
for _ in range(50):
    time.sleep(0.2)
    s, m, rid = encrypt()
    if s == 200:
        acked.append(rid)
        ok = True
        break
check(ok, "when space returns the log recovers by itself")
for _ in range(20):
    s, m, rid = encrypt()
    if s == 200:
        acked.append(rid)
time.sleep(0.5)
auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
head, events, raw = export_all(auditor, "eu-west")
rids = {ev.request_id for ev in events}
check(all(r in rids for r in acked), f"all {len(acked)} acknowledged operations have their event")
check(all(ev.seq == i for i, ev in enumerate(events)), "no gap in sequence numbers")
check(mth([leaf_hash(b) for b in raw]) == head.root_hash, "the signed root matches the events")
log = open(f"{DIR}/kmsd.log").read()
check("failing closed" in log and "writable again" in log,
      "the operational log says when the audit log failed and recovered")
sys.exit(1 if failures else 0)

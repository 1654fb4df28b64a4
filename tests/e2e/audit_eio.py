"""See test_audit_eio.sh. Usage: audit_eio.py DIR PORT KEY [damage]

kmsd runs with tests/fsfault/fs_fault.so preloaded and
CUSTOS_FSFAULT_CONTROL set; this script writes the control file.

damage: one fdatasync fails, and before the recovery runs a byte of the
last durable event is changed on disk (as a write-back error can tear the
block that holds it): the recovery's read-back must see it and keep the
log failed until a restart, rather than serve on top of damaged history."""
import os
import sys
import threading
import time

from audit_lib import Client, export_all, kpb, leaf_hash, mth

DIR, PORT, KEY = sys.argv[1], int(sys.argv[2]), sys.argv[3]
CTL = os.environ["CUSTOS_FSFAULT_CONTROL"]
LOG = f"{DIR}/kmsd.log"
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1


def set_faults(text):
    with open(CTL + ".tmp", "w") as f:
        f.write(text)
    os.replace(CTL + ".tmp", CTL)


def wait_log(text, since, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if text in open(LOG).read()[since:]:
            return True
        time.sleep(0.05)
    return False


if len(sys.argv) > 4 and sys.argv[4] == "damage":
    broker = Client(PORT, f"{DIR}/credentials/demo-broker.key")

    def encrypt():
        return broker.call("KeyService", "Encrypt",
                           kpb.EncryptRequest(key_id=KEY, plaintext=b"x"), kpb.EncryptResponse)[0]

    check(encrypt() == 200, "damage: an event is durable")
    time.sleep(0.3)  # idle: nothing queued, everything in the file is durable
    path = f"{DIR}/audit/eu-west.events"
    size = os.path.getsize(path)
    since = len(open(LOG).read())
    set_faults("fdatasync .events EIO count=1\n")
    check(encrypt() == 503, "damage: the request whose fdatasync fails is refused")
    # Recovery is at least a second away: change the last durable event's
    # last byte (its page is the one the failed write-back shared).
    with open(path, "r+b") as f:
        f.seek(size - 1)
        b = f.read(1)
        f.seek(size - 1)
        f.write(bytes([b[0] ^ 0xFF]))
    set_faults("")
    # Named either by the frame's own hash or by the tree's inclusion check.
    found = wait_log("stays failed until kmsd is restarted", since, 10)
    text = open(LOG).read()[since:]
    check(found and ("no longer matches its hash" in text or
                     "read back from the device is not the one acknowledged" in text),
          "damage: the recovery reads the durable tail back, sees the damage and stays failed")
    time.sleep(1.5)
    check(encrypt() == 503 and "writable again" not in open(LOG).read()[since:],
          "damage: requests are still refused: nothing is served on top of damaged history")
    sys.exit(1 if failures else 0)

results = []  # (status, code, request id) of every request
lock = threading.Lock()


def load(stop):
    c = Client(PORT, f"{DIR}/credentials/demo-broker.key")
    while not stop.is_set():
        s, m, rid = c.call("KeyService", "Encrypt", kpb.EncryptRequest(key_id=KEY, plaintext=b"x"),
                           kpb.EncryptResponse)
        with lock:
            results.append((s, m.get("code") if s != 200 else "ok", rid))


for rule, what in (("fdatasync .events EIO count=1", "EIO on the events file"),
                   ("fdatasync .events ENOSPC count=1", "ENOSPC on the events file"),
                   ("fdatasync .heads EIO count=1", "EIO on the heads file")):
    since = len(open(LOG).read())
    first = len(results)
    stop = threading.Event()
    ts = [threading.Thread(target=load, args=(stop,)) for _ in range(4)]
    for t in ts:
        t.start()
    time.sleep(0.5)
    set_faults(rule + "\n")
    fired = wait_log("fs_fault: fdatasync(", since, 10)
    recovered = wait_log("writable again", since, 10)
    time.sleep(0.5)
    stop.set()
    for t in ts:
        t.join()
    set_faults("")
    mine = results[first:]
    refused = [r for r in mine if r[0] != 200]
    log = open(LOG).read()[since:]
    check(fired and log.count("fs_fault: fdatasync(") == 1, f"{what}: injected once")
    check(refused and all(r[0] == 503 and r[1] == "unavailable" for r in refused),
          f"{what}: the failed batch and every request until the recovery are refused "
          f"503 unavailable "
          f"({len(refused)} of {len(mine)})")
    check(recovered and "failing closed" in log,
          f"{what}: the log fails closed, then is writable again by itself")
    check(mine[-1][0] == 200, f"{what}: requests succeed again under the same load")

time.sleep(0.5)  # a head over the last events (head_every_ms 100)
auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
head, events, raw = export_all(auditor, "eu-west")
rids = {}
for ev in events:
    rids[ev.request_id] = rids.get(ev.request_id, 0) + 1
acked = [r for r in results if r[0] == 200]
refused = [r for r in results if r[0] != 200]
check(all(rids.get(r[2]) == 1 for r in acked),
      f"every one of the {len(acked)} acknowledged requests has exactly one event")
check(not any(r[2] in rids for r in refused),
      f"none of the {len(refused)} refused requests has an event (their batch was cut off)")
encrypts = [ev for ev in events if ev.operation == "Encrypt" and
            ev.request_id in {r[2] for r in results}]
check(len(encrypts) == len(acked),
      f"acknowledged requests == their events on disk ({len(acked)} == {len(encrypts)})")
check(all(ev.seq == i for i, ev in enumerate(events)), "no gap in sequence numbers")
check(mth([leaf_hash(b) for b in raw]) == head.root_hash, "the signed root matches the events")
rec = [ev for ev in events if ev.operation == "AuditLogRecovered"]
check(len(rec) == 3 and all("reopened, tail re-read from the device" in ev.detail for ev in rec)
      and "Input/output error" in rec[0].detail and "No space left" in rec[1].detail,
      f"each recovery is an AuditLogRecovered event naming the failure ({len(rec)}: "
      f"{[ev.detail[:90] for ev in rec]})")
sys.exit(1 if failures else 0)

"""Load-then-kill and verification for test_key_crash.sh: kill -9 of kmsd at
a random instant while keys are created, rotated and imported (BYOK),
created and rotated with escrow at birth (the escrow tenant "bank"), and
while Encrypts append to the audit log.

key_crash.py load DIR PORT PID ROUND    run the load from 6 threads, kill -9
                                        kmsd after a random 0.3..1.5 s;
                                        append every acknowledged operation,
                                        with its request id, to
                                        DIR/acked.jsonl
key_crash.py verify DIR PORT PID ROUND  after a restart (reconcile ran):
                                        every acknowledged operation is
                                        visible (over HTTP those of ROUND,
                                        in the store all of them) and has
                                        exactly one audit event; no
                                        half-created key is visible; the
                                        token holds no orphan and no
                                        extractable key; no escrow row
                                        without its version and no version
                                        of an escrow tenant without its
                                        escrow blob; the signed root is the
                                        root of the events on disk. ROUND 0
                                        (the end): everything over HTTP, and
                                        `kmsctl audit verify` offline.

Prints "ok N - ..." / "not ok N - ..." (verify); exits 1 on failure.
"""
import http.client
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time

import subprocess

import PyKCS11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

import key_pb2 as pb
from audit_lib import Client, export_all, leaf_hash, mth

MODE, DIR, PORT, PID = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ACKED = f"{DIR}/acked.jsonl"
KEYS = {who: open(f"{DIR}/credentials/{who}.key").read().strip()
        for who in ("demo-admin", "demo-broker", "bank-admin")}
ESCROW_TENANT = "bank"


def call(method, req, resp_cls, who="demo-admin", conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    c.request("POST", f"/twirp/custos.v1.KeyService/{method}", req.SerializeToString(),
              {"Content-Type": "application/protobuf", "Authorization": "Bearer " + KEYS[who]})
    r = c.getresponse()
    data = r.read()
    rid = r.getheader("X-Request-Id")
    if conn is None:
        c.close()
    if r.status != 200:
        return r.status, json.loads(data), rid
    return 200, resp_cls.FromString(data), rid


if MODE == "load":
    rnd = int(sys.argv[5])
    random.seed(rnd * 7919 + os.getpid())
    lock = threading.Lock()
    acked = []
    stop = threading.Event()

    def ack(rec):
        with lock:
            acked.append(rec)

    def creator(who):
        # who = bank-admin: the tenant requires escrow, so every version is
        # wrapped under the region's escrow key at birth, then locked.
        while not stop.is_set():
            try:
                s, m, rid = call("CreateKey", pb.CreateKeyRequest(
                    region="eu-west", spec=pb.AES_256, usage=pb.ENCRYPT_DECRYPT),
                    pb.CreateKeyResponse, who)
                if s == 200:
                    ack({"op": "create", "key": m.key.key_id, "version": 1, "rid": rid,
                         "who": who})
                    s, r, rid = call("RotateKey", pb.RotateKeyRequest(key_id=m.key.key_id),
                                     pb.RotateKeyResponse, who)
                    if s == 200:
                        ack({"op": "rotate", "key": m.key.key_id,
                             "version": r.key.current_version, "rid": rid, "who": who})
            except (OSError, http.client.HTTPException, ValueError):
                return

    enc_key = open(f"{DIR}/enc.key").read().strip()

    def encryptor():
        # Audit appends under load: each acknowledged Encrypt must have its
        # event after the restart. Paced, so the log does not grow without
        # bound over a long soak.
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        while not stop.is_set():
            try:
                s, _, rid = call("Encrypt", pb.EncryptRequest(key_id=enc_key, plaintext=b"m"),
                                 pb.EncryptResponse, "demo-broker", conn)
                if s == 200:
                    ack({"op": "encrypt", "rid": rid})
                time.sleep(0.005)
            except (OSError, http.client.HTTPException, ValueError):
                return

    def importer():
        while not stop.is_set():
            try:
                s, m, _ = call("CreateKey", pb.CreateKeyRequest(
                    region="eu-west", spec=pb.AES_256, usage=pb.ENCRYPT_DECRYPT,
                    origin=pb.EXTERNAL), pb.CreateKeyResponse)
                if s != 200:
                    continue
                kid = m.key.key_id
                s, p, _ = call("GetImportParameters", pb.GetImportParametersRequest(key_id=kid),
                            pb.GetImportParametersResponse)
                if s != 200:
                    continue
                eph, material = os.urandom(32), os.urandom(32)
                md = hashes.SHA1 if pb.RSA_AES_KEY_WRAP_SHA_1 in p.wrapping_algorithms \
                    else hashes.SHA256
                oaep = load_der_public_key(p.public_key).encrypt(
                    eph, padding.OAEP(mgf=padding.MGF1(md()), algorithm=md(), label=None))
                alg = p.wrapping_algorithms[0]
                s, r, rid = call("ImportKeyMaterial", pb.ImportKeyMaterialRequest(
                    key_id=kid, import_token=p.import_token, algorithm=alg,
                    wrapped_material=oaep + aes_key_wrap_with_padding(eph, material)),
                    pb.ImportKeyMaterialResponse)
                if s == 200:
                    ack({"op": "import", "key": kid, "version": r.key_version, "rid": rid})
            except (OSError, http.client.HTTPException, ValueError):
                return

    ts = [threading.Thread(target=creator, args=("demo-admin",)),
          threading.Thread(target=creator, args=("bank-admin",)),
          threading.Thread(target=creator, args=("bank-admin",)),
          threading.Thread(target=encryptor)] + \
        [threading.Thread(target=importer) for _ in range(2)]
    for t in ts:
        t.start()
    time.sleep(random.uniform(0.3, 1.5))
    os.kill(PID, signal.SIGKILL)
    stop.set()
    for t in ts:
        t.join()
    with open(ACKED, "a") as f:
        for rec in acked:
            rec["round"] = rnd
            f.write(json.dumps(rec) + "\n")
    sys.exit(0)

# ---- verify ------------------------------------------------------------------------------------
ROUND = int(sys.argv[5]) if len(sys.argv) > 5 else 0
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1


acked = [json.loads(line) for line in open(ACKED)] if os.path.exists(ACKED) else []
keyops = [r for r in acked if "key" in r]
want, owner = {}, {}
for rec in keyops:
    want[rec["key"]] = max(want.get(rec["key"], 0), rec["version"])
    owner[rec["key"]] = rec.get("who", "demo-admin")
# Over HTTP: the keys of this round (ROUND 0: all); in the store: all.
fresh = {r["key"] for r in keyops if ROUND == 0 or r.get("round") == ROUND}
missing, behind = [], []
for kid in fresh:
    s, m, _ = call("DescribeKey", pb.DescribeKeyRequest(key_id=kid), pb.DescribeKeyResponse,
                   owner[kid])
    if s != 200:
        missing.append((kid, s))
    elif max(x.version for x in m.key.versions) < want[kid]:
        behind.append((kid, want[kid]))
db = sqlite3.connect(f"{DIR}/kmsd.db")
versions = {}
for k, v, st in db.execute("SELECT key_id, version, state FROM key_versions"):
    versions[(k, v)] = st
lost = [(k, v) for k, v in want.items() if versions.get((k, v)) != 1]
check(not missing and not behind and not lost,
      f"every acknowledged operation is visible ({len(keyops)} acknowledged on {len(want)} keys,"
      f" {len(fresh)} described; missing {missing[:3]}, behind {behind[:3]}, not active in the "
      f"store {lost[:3]})")

# Half-created: a key or version in a state that only a creation in flight
# has, an enabled key whose current version is not active, or a version
# whose HSM object is absent.
creating = db.execute("SELECT count(*) FROM key_versions WHERE state = 0").fetchone()[0]
creating_keys = db.execute("SELECT count(*) FROM keys WHERE state = 0").fetchone()[0]
check(creating == 0 and creating_keys == 0,
      f"no key or version is left CREATING after reconcile ({creating_keys}, {creating})")
headless = db.execute(
    "SELECT k.key_id FROM keys k LEFT JOIN key_versions v ON v.key_id = k.key_id AND "
    "v.version = k.current_version WHERE k.state IN (1, 2) AND (v.state IS NOT 1)").fetchall()
check(not headless, f"every enabled or disabled key has an active current version "
      f"({len(headless)}: {headless[:3]})")
rows = {bytes(h).hex(): (k, v) for k, v, h in
        db.execute("SELECT key_id, version, hsm_id FROM key_versions WHERE state = 1")}
dead = {bytes(h).hex() for (h,) in db.execute("SELECT hsm_id FROM key_versions WHERE state <> 1")}
tokens = {bytes(h).hex() for (h,) in db.execute("SELECT hsm_id FROM import_tokens")}
# Escrow: a blob only for a version that exists beyond CREATING, and every
# active version of an escrow tenant's key has its blob.
blob_orphans = db.execute(
    "SELECT b.key_id, b.version FROM escrow_blobs b LEFT JOIN key_versions v ON "
    "v.key_id = b.key_id AND v.version = b.version WHERE v.state IS NULL OR v.state = 0"
).fetchall()
unescrowed = db.execute(
    "SELECT v.key_id, v.version FROM key_versions v JOIN keys k ON k.key_id = v.key_id "
    "LEFT JOIN escrow_blobs b ON b.key_id = v.key_id AND b.version = v.version AND b.part = 0 "
    "WHERE k.tenant = ? AND v.state = 1 AND b.key_id IS NULL", (ESCROW_TENANT,)).fetchall()
escrowed = db.execute(
    "SELECT count(*) FROM escrow_blobs b JOIN keys k ON k.key_id = b.key_id WHERE k.tenant = ?",
    (ESCROW_TENANT,)).fetchone()[0]
db.close()
check(not blob_orphans, f"no escrow blob without its key version ({blob_orphans[:3]})")
check(not unescrowed and (escrowed > 0 or not any(r.get("who") == "bank-admin" for r in keyops)),
      f"every active version of an escrow tenant's key has its escrow blob ({escrowed} blobs; "
      f"without: {unescrowed[:3]})")

lib = PyKCS11.PyKCS11Lib()
lib.load(os.environ.get("CUSTOS_TEST_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
objs, extractable = {}, []
for slot in lib.getSlotList(tokenPresent=True):
    label = lib.getTokenInfo(slot).label.strip()
    if label != "custos-eu-west":
        continue
    s = lib.openSession(slot)
    s.login(open(f"{DIR}/hsm/pins/eu-west.pin").read().strip())
    for o in s.findObjects([(PyKCS11.CKA_TOKEN, True)]):
        cls, lab, oid = s.getAttributeValue(o, [PyKCS11.CKA_CLASS, PyKCS11.CKA_LABEL,
                                                PyKCS11.CKA_ID])
        lab = lab if isinstance(lab, str) else bytes(lab).decode(errors="replace")
        objs.setdefault(bytes(oid).hex(), set()).add(lab)
        if lab.startswith("custos:key:") and cls == PyKCS11.CKO_SECRET_KEY and \
                s.getAttributeValue(o, [PyKCS11.CKA_EXTRACTABLE])[0]:
            extractable.append(bytes(oid).hex())
    s.logout()
    s.closeSession()
without_object = [r for h, r in rows.items() if h not in objs]
check(not without_object,
      f"every active version has its HSM object ({len(rows)} versions; "
      f"without: {without_object[:3]})")
orphans = [(h, sorted(labs)) for h, labs in objs.items()
           if any(l.startswith("custos:key:") for l in labs) and h not in rows]
check(not orphans, f"no key object the store does not name as active ({len(orphans)}: "
      f"{orphans[:3]}; of them destroyed rows: {sum(h in dead for h, _ in orphans)})")
import_orphans = [h for h, labs in objs.items()
                  if any(l.startswith("custos:import:") for l in labs) and h not in tokens]
check(not import_orphans, f"no import wrapping key without its import token row "
      f"({len(import_orphans)})")
check(not extractable, f"no extractable key object: escrow at birth locked every key "
      f"({len(extractable)}: {extractable[:3]})")

# The audit log: every acknowledged operation has exactly one event, the
# sequence has no gap, the signed root is the root of the events on disk.
# The head that covers the events before the kill is signed by the writer
# just after start (head_every_ms is 200 here): export until it is there.
auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
for _ in range(40):
    head, events, raw = export_all(auditor, "eu-west")
    seen = {}
    for ev in events:
        if ev.request_id:
            seen[ev.request_id] = seen.get(ev.request_id, 0) + 1
    no_event = [r for r in acked if seen.get(r["rid"]) != 1]
    if not no_event:
        break
    time.sleep(0.25)
check(not no_event and all(ev.seq == i for i, ev in enumerate(events)) and
      mth([leaf_hash(b) for b in raw]) == head.root_hash,
      f"every one of {len(acked)} acknowledged operations has exactly one audit event, no "
      f"gap, the signed root matches the {len(events)} events (without: {no_event[:2]})")
if ROUND == 0:
    env = dict(os.environ, CUSTOS_API_KEY_FILE=f"{DIR}/credentials/auditor.key",
               CUSTOS_ADDR=f"http://127.0.0.1:{PORT}")
    kmsctl = os.environ["KMSCTL"]
    subprocess.run([kmsctl, "audit", "keys", "--out-dir", f"{DIR}/keys"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([kmsctl, "audit", "export", "--region", "eu-west", "--out", f"{DIR}/all.bin",
                    "--proofs"], env=env, check=True, stdout=subprocess.DEVNULL)
    # One bundle holds at most 10,000 entries (the export limit): a longer
    # soak verifies its first 10,000 offline, the whole log above.
    partial = ["--partial"] if head.tree_size > 9999 else []
    v = subprocess.run([kmsctl, "audit", "verify", f"--keys={DIR}/keys"] + partial +
                       [f"{DIR}/all.bin"], capture_output=True, text=True)
    check(v.returncode == 0, f"kmsctl audit verify accepts the log offline "
          f"({head.tree_size} events{', first 10,000' if partial else ''}) {v.stderr[-300:]}")
print(f"{count - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

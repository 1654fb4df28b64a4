"""Load-then-kill and verification for test_key_crash.sh: kill -9 of kmsd at
a random instant while keys are created, rotated and imported (BYOK).

key_crash.py load DIR PORT PID ROUND   run the load from 4 threads, kill -9
                                       kmsd after a random 0.3..1.5 s; append
                                       every acknowledged operation to
                                       DIR/acked.jsonl
key_crash.py verify DIR PORT PID       after a restart (reconcile ran):
                                       every acknowledged operation is
                                       visible, no half-created key is, and
                                       the tokens hold no orphan object

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

import PyKCS11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

import key_pb2 as pb

MODE, DIR, PORT, PID = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ACKED = f"{DIR}/acked.jsonl"
KEYS = {who: open(f"{DIR}/credentials/{who}.key").read().strip()
        for who in ("demo-admin", "demo-broker")}


def call(method, req, resp_cls, who="demo-admin", conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    c.request("POST", f"/twirp/custos.v1.KeyService/{method}", req.SerializeToString(),
              {"Content-Type": "application/protobuf", "Authorization": "Bearer " + KEYS[who]})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    if r.status != 200:
        return r.status, json.loads(data)
    return 200, resp_cls.FromString(data)


if MODE == "load":
    rnd = int(sys.argv[5])
    random.seed(rnd * 7919 + os.getpid())
    lock = threading.Lock()
    acked = []
    stop = threading.Event()

    def ack(rec):
        with lock:
            acked.append(rec)

    def creator():
        while not stop.is_set():
            try:
                s, m = call("CreateKey", pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256,
                                                             usage=pb.ENCRYPT_DECRYPT),
                            pb.CreateKeyResponse)
                if s == 200:
                    ack({"op": "create", "key": m.key.key_id, "version": 1})
                    s, r = call("RotateKey", pb.RotateKeyRequest(key_id=m.key.key_id),
                                pb.RotateKeyResponse)
                    if s == 200:
                        ack({"op": "rotate", "key": m.key.key_id,
                             "version": r.key.current_version})
            except (OSError, http.client.HTTPException, ValueError):
                return

    def importer():
        while not stop.is_set():
            try:
                s, m = call("CreateKey", pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256,
                                                             usage=pb.ENCRYPT_DECRYPT,
                                                             origin=pb.EXTERNAL),
                            pb.CreateKeyResponse)
                if s != 200:
                    continue
                kid = m.key.key_id
                s, p = call("GetImportParameters", pb.GetImportParametersRequest(key_id=kid),
                            pb.GetImportParametersResponse)
                if s != 200:
                    continue
                eph, material = os.urandom(32), os.urandom(32)
                md = hashes.SHA1 if pb.RSA_AES_KEY_WRAP_SHA_1 in p.wrapping_algorithms \
                    else hashes.SHA256
                oaep = load_der_public_key(p.public_key).encrypt(
                    eph, padding.OAEP(mgf=padding.MGF1(md()), algorithm=md(), label=None))
                alg = p.wrapping_algorithms[0]
                s, r = call("ImportKeyMaterial", pb.ImportKeyMaterialRequest(
                    key_id=kid, import_token=p.import_token, algorithm=alg,
                    wrapped_material=oaep + aes_key_wrap_with_padding(eph, material)),
                    pb.ImportKeyMaterialResponse)
                if s == 200:
                    ack({"op": "import", "key": kid, "version": r.key_version})
            except (OSError, http.client.HTTPException, ValueError):
                return

    ts = [threading.Thread(target=creator) for _ in range(2)] + \
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
            f.write(json.dumps(rec) + "\n")
    sys.exit(0)

# ---- verify ------------------------------------------------------------------------------------
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1


acked = [json.loads(line) for line in open(ACKED)] if os.path.exists(ACKED) else []
want = {}
for rec in acked:
    want[rec["key"]] = max(want.get(rec["key"], 0), rec["version"])
missing, behind = [], []
for kid, v in want.items():
    s, m = call("DescribeKey", pb.DescribeKeyRequest(key_id=kid), pb.DescribeKeyResponse)
    if s != 200:
        missing.append((kid, s))
    elif max(x.version for x in m.key.versions) < v:
        behind.append((kid, v))
check(not missing and not behind,
      f"every acknowledged operation is visible ({len(acked)} acknowledged on {len(want)} keys;"
      f" missing {missing[:3]}, behind {behind[:3]})")

# Half-created: a listed key in a state that only a creation in flight has,
# or a version whose HSM object is absent.
db = sqlite3.connect(f"{DIR}/kmsd.db")
creating = db.execute("SELECT count(*) FROM key_versions WHERE state = 0").fetchone()[0]
check(creating == 0, f"no version is left CREATING after reconcile ({creating})")
rows = {bytes(h).hex(): (k, v) for k, v, h in
        db.execute("SELECT key_id, version, hsm_id FROM key_versions WHERE state = 1")}
dead = {bytes(h).hex() for (h,) in db.execute("SELECT hsm_id FROM key_versions WHERE state <> 1")}
tokens = {bytes(h).hex() for (h,) in db.execute("SELECT hsm_id FROM import_tokens")}
db.close()

lib = PyKCS11.PyKCS11Lib()
lib.load(os.environ.get("CUSTOS_TEST_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
objs = {}
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
print(f"{count - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

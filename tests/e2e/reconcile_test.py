"""Reconcile test phases (see test_reconcile.sh). Objects the store never
knew (a restore) are tests/e2e/restore_test.py's.

Usage: reconcile_test.py DIR PORT create|crash|verify
"""
import http.client
import json
import os
import sqlite3
import sys
import time

import PyKCS11
import key_pb2 as pb

# Rows written behind kmsd name their columns: later schemas add some.
VROW = "INSERT INTO key_versions (key_id, version, hsm_id, state, created_at) VALUES "

DIR, PORT, PHASE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
STATE = f"{DIR}/reconcile-state.json"
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1


def call(method, req, resp_cls, who):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    key = open(f"{DIR}/credentials/{who}.key").read().strip()
    conn.request("POST", f"/twirp/custos.v1.KeyService/{method}", req.SerializeToString(),
                 {"Content-Type": "application/protobuf", "Authorization": "Bearer " + key})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        return r.status, json.loads(data)
    m = resp_cls()
    m.ParseFromString(data)
    return 200, m


def token():
    lib = PyKCS11.PyKCS11Lib()
    lib.load("/usr/lib/softhsm/libsofthsm2.so")
    slot = [s for s in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(s).label.strip() == "custos-eu-west"][0]
    s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    s.login(open(f"{DIR}/hsm/pins/eu-west.pin").read().strip())
    return s


def make_object(s, hsm_id, label, extractable=False):
    # Made as kmsd makes a key version, every usage attribute explicit:
    # SoftHSMv2 defaults WRAP/UNWRAP to true, and the template scan run at
    # the end of the test would rightly flag the object E left in place.
    s.generateKey([(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
                   (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES), (PyKCS11.CKA_VALUE_LEN, 32),
                   (PyKCS11.CKA_TOKEN, True), (PyKCS11.CKA_PRIVATE, True),
                   (PyKCS11.CKA_SENSITIVE, True), (PyKCS11.CKA_EXTRACTABLE, extractable),
                   (PyKCS11.CKA_ENCRYPT, True), (PyKCS11.CKA_DECRYPT, True),
                   (PyKCS11.CKA_WRAP, False), (PyKCS11.CKA_UNWRAP, False),
                   (PyKCS11.CKA_SIGN, False), (PyKCS11.CKA_VERIFY, False),
                   (PyKCS11.CKA_DERIVE, False), (PyKCS11.CKA_ID, tuple(hsm_id)),
                   (PyKCS11.CKA_LABEL, label)],
                  PyKCS11.Mechanism(PyKCS11.CKM_AES_KEY_GEN))


def husks(s):
    """Key objects with neither CKA_ID nor label: what SoftHSMv2 leaves when
    killed inside object creation (test_key_crash.sh met one)."""
    n = 0
    for o in s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY)]):
        oid, lab = s.getAttributeValue(o, [PyKCS11.CKA_ID, PyKCS11.CKA_LABEL])
        n += not oid and not lab
    return n


def objects(s, hsm_id):
    return len(s.findObjects([(PyKCS11.CKA_ID, tuple(hsm_id))]))


if PHASE == "create":
    st, m = call("CreateKey", pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256,
                                                  usage=pb.ENCRYPT_DECRYPT),
                 pb.CreateKeyResponse, "demo-admin")
    st2, e = call("Encrypt", pb.EncryptRequest(key_id=m.key.key_id, plaintext=b"survivor"),
                  pb.EncryptResponse, "demo-broker")
    check(st == 200 and st2 == 200, "a live key exists before the crash")
    json.dump({"live": m.key.key_id, "ct": e.ciphertext.hex()}, open(STATE, "w"))

elif PHASE == "crash":
    state = json.load(open(STATE))
    ids = {n: os.urandom(16) for n in ("A", "B", "C", "D", "G")}
    keys = {n: os.urandom(16).hex() for n in ("A", "B", "D", "G")}
    now = int(time.time())
    db = sqlite3.connect(f"{DIR}/kmsd.db")
    row = ("INSERT INTO keys (key_id, tenant, region, token, spec, usage, origin, state, "
           "description, created_at, deletion_at, current_version, last_version, "
           "escrow_required) VALUES (?, 'demo', 'eu-west', 'custos-eu-west', 1, 1, 1, ?, '', ?, ?, ?, ?, 0)")
    # A, B, G: keys whose creation crashed: A after its HSM object was
    # complete, B before it existed, G while it was still extractable
    # (an escrowable key before its escrow copy was sealed).
    for n in ("A", "B", "G"):
        db.execute(row, (keys[n], 0, now, 0, 0, 1))
        db.execute(VROW + "(?, 1, ?, 0, ?)", (keys[n], ids[n], now))
    # C: a rotation of the live key that crashed after its HSM object.
    db.execute("UPDATE keys SET last_version = 2 WHERE key_id = ?", (state["live"],))
    db.execute(VROW + "(?, 2, ?, 0, ?)", (state["live"], ids["C"], now))
    # D: a key the sweeper marked DESTROYED before it could destroy the object.
    db.execute(row, (keys["D"], 5, now, now, 1, 1))
    db.execute(VROW + "(?, 1, ?, 2, ?)", (keys["D"], ids["D"], now))
    db.commit()
    db.close()
    s = token()
    for n in ("A", "C", "D", "G"):
        v = 2 if n == "C" else 1
        k = state["live"] if n == "C" else keys[n]
        make_object(s, ids[n], f"custos:key:{k}:v{v}", extractable=(n == "G"))
    # F: a husk, as a kill -9 inside C_GenerateKey leaves it (no id, no label).
    s.generateKey([(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
                   (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES), (PyKCS11.CKA_VALUE_LEN, 32),
                   (PyKCS11.CKA_TOKEN, True), (PyKCS11.CKA_PRIVATE, True),
                   (PyKCS11.CKA_SENSITIVE, True), (PyKCS11.CKA_EXTRACTABLE, False),
                   (PyKCS11.CKA_ENCRYPT, False), (PyKCS11.CKA_DECRYPT, False),
                   (PyKCS11.CKA_WRAP, False), (PyKCS11.CKA_UNWRAP, False)],
                  PyKCS11.Mechanism(PyKCS11.CKM_AES_KEY_GEN))
    assert husks(s) == 1
    s.logout()
    state.update({"ids": {n: i.hex() for n, i in ids.items()}, "keys": keys})
    json.dump(state, open(STATE, "w"))
    check(True, "crash states written to the store and the token")

else:
    state = json.load(open(STATE))
    ids = {n: bytes.fromhex(i) for n, i in state["ids"].items()}
    keys = state["keys"]
    s = token()
    # Before this reconcile, A's and C's complete objects were destroyed:
    # a store restored from a hot backup taken mid-creation lost live keys.
    check(objects(s, ids["A"]) == 1, "a half-created key whose HSM object is complete keeps it")
    check(objects(s, ids["C"]) == 1,
          "a half-created version whose HSM object is complete keeps it")
    check(objects(s, ids["G"]) == 0,
          "an incomplete (still extractable) half-created key's object is destroyed")
    check(objects(s, ids["D"]) == 0, "a destroyed key's leftover HSM object is destroyed")
    check(husks(s) == 0, "a key object without CKA_ID and label (a crash husk) is destroyed")
    s.logout()
    db = sqlite3.connect(f"{DIR}/kmsd.db")
    n_bg = db.execute("SELECT count(*) FROM keys WHERE key_id IN (?, ?)",
                      (keys["B"], keys["G"])).fetchone()[0]
    a_state = db.execute("SELECT state, current_version FROM keys WHERE key_id = ?",
                         (keys["A"],)).fetchone()
    c_state = db.execute("SELECT state FROM key_versions WHERE key_id = ? AND version = 2",
                         (state["live"],)).fetchone()
    creating = db.execute("SELECT count(*) FROM key_versions WHERE state = 0").fetchone()[0]
    db.close()
    check(n_bg == 0, "half-created key rows without a complete object are removed")
    check(tuple(a_state) == (1, 1), f"the complete half-created key is finished: ENABLED at v1 "
          f"({a_state})")
    check(c_state is not None and c_state[0] == 1,
          "the complete half-created version is finished: ACTIVE")
    check(creating == 0, "no version is left CREATING")
    for n in ("B", "G"):
        st, m = call("DescribeKey", pb.DescribeKeyRequest(key_id=keys[n]),
                     pb.DescribeKeyResponse, "demo-admin")
        check(st == 404, f"half-created key {n} is not visible")
    st, m = call("DescribeKey", pb.DescribeKeyRequest(key_id=keys["A"]),
                 pb.DescribeKeyResponse, "demo-admin")
    check(st == 200 and m.key.state == pb.ENABLED, "the finished key A is visible and enabled")
    st, e = call("Encrypt", pb.EncryptRequest(key_id=keys["A"], plaintext=b"finished"),
                 pb.EncryptResponse, "demo-broker")
    st2, d = call("Decrypt", pb.DecryptRequest(ciphertext=e.ciphertext if st == 200 else b""),
                  pb.DecryptResponse, "demo-broker")
    check(st == 200 and st2 == 200 and d.plaintext == b"finished",
          "the finished key encrypts and decrypts with its original HSM object")
    st, m = call("DescribeKey", pb.DescribeKeyRequest(key_id=state["live"]),
                 pb.DescribeKeyResponse, "demo-admin")
    check(st == 200 and m.key.current_version == 2 and m.key.state == pb.ENABLED,
          "the live key survives, its finished version 2 current")
    st, d = call("Decrypt", pb.DecryptRequest(ciphertext=bytes.fromhex(state["ct"])),
                 pb.DecryptResponse, "demo-broker")
    check(st == 200 and d.plaintext == b"survivor", "and its acknowledged ciphertext decrypts")
    st, m = call("RotateKey", pb.RotateKeyRequest(key_id=state["live"]), pb.RotateKeyResponse,
                 "demo-admin")
    check(st == 200 and m.key.current_version == 3,
          "the next rotation takes version 3: a number is never reused")
    log = open(f"{DIR}/kmsd.log").read()
    check("removed half-created key" in log and "finished half-created key" in log and
          "incomplete key object" in log and "SAFE MODE" not in log,
          "reconcile reports what it did, and a crash alone is no reason for safe mode")

print(f"{count - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

"""Token and audit facts for test_restore.sh, read with PyKCS11 and over
the auditor's API, never through kmsd's own C code.

restore_tokens.py objects DIR        print "N DUPS": the number of key objects
                                     (custos:key:) in custos-eu-west and how
                                     many labels (key, version) name more than
                                     one object
restore_tokens.py husk DIR plant|count  plant a secret key object with neither
                                     CKA_ID nor CKA_LABEL in custos-eu-west
                                     (not one kmsd made), or print how many
                                     such objects it holds
restore_tokens.py auditcopy AUDITDIR     exit 0 when every region's copied files
                                     would open: the newest whole head covers
                                     no more events than the copy holds, and
                                     .keys lists the key that signed it
restore_tokens.py ops DIR PORT OP... exit 0 when the eu-west audit log holds
                                     an event of each OP (waits for the head)
"""
import os
import sys
import time

import PyKCS11

MODE, DIR = sys.argv[1], sys.argv[2]

if MODE == "objects":
    lib = PyKCS11.PyKCS11Lib()
    lib.load(os.environ.get("CUSTOS_TEST_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
    labels = {}
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() != "custos-eu-west":
            continue
        s = lib.openSession(slot)
        s.login(open(f"{DIR}/hsm/pins/eu-west.pin").read().strip())
        for o in s.findObjects([(PyKCS11.CKA_TOKEN, True)]):
            lab, oid = s.getAttributeValue(o, [PyKCS11.CKA_LABEL, PyKCS11.CKA_ID])
            lab = lab if isinstance(lab, str) else bytes(lab).decode(errors="replace")
            if lab.startswith("custos:key:"):
                labels.setdefault(lab, set()).add(bytes(oid).hex())
        s.logout()
        s.closeSession()
    n = sum(len(v) for v in labels.values())
    dups = sum(1 for v in labels.values() if len(v) > 1)
    print(n, dups)
    sys.exit(0)

if MODE == "auditcopy":
    import hashlib

    import audit_pb2

    def records(path):
        """The whole, check-verified records of a framed file (a torn tail,
        which kmsd cuts at open, is not one)."""
        out = []
        try:
            b = open(path, "rb").read()
        except FileNotFoundError:
            return out
        off = 0
        while off + 12 <= len(b):
            n = int.from_bytes(b[off:off + 4], "big")
            if off + 12 + n > len(b):
                break
            p = b[off + 12:off + 12 + n]
            if hashlib.sha256(b"\x00" + p).digest()[:8] != b[off + 4:off + 12]:
                break
            out.append(p)
            off += 12 + n
        return out

    bad = []
    for name in sorted(os.listdir(DIR)):
        if not name.endswith(".events"):
            continue
        region = name[:-len(".events")]
        events = len(records(f"{DIR}/{region}.events"))
        heads = records(f"{DIR}/{region}.heads")
        keys = set()
        for k in records(f"{DIR}/{region}.keys"):
            m = audit_pb2.AuditKey()
            m.ParseFromString(k)
            keys.add(m.key_id)
        if heads:
            h = audit_pb2.SignedTreeHead()
            h.ParseFromString(heads[-1])
            if h.tree_size > events:
                bad.append(f"{region}: head covers {h.tree_size} events, the copy holds {events}")
            if h.key_id not in keys:
                bad.append(f"{region}: head signed by {h.key_id}, not in the copied .keys")
    if bad:
        print("; ".join(bad))
        sys.exit(1)
    sys.exit(0)

if MODE == "husk":
    lib = PyKCS11.PyKCS11Lib()
    lib.load(os.environ.get("CUSTOS_TEST_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() != "custos-eu-west":
            continue
        s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
        s.login(open(f"{DIR}/hsm/pins/eu-west.pin").read().strip())
        if sys.argv[3] == "plant":
            # Another application's key, made without id or label.
            s.generateKey([(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
                           (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
                           (PyKCS11.CKA_VALUE_LEN, 32), (PyKCS11.CKA_TOKEN, True),
                           (PyKCS11.CKA_PRIVATE, True), (PyKCS11.CKA_ENCRYPT, True)],
                          PyKCS11.Mechanism(PyKCS11.CKM_AES_KEY_GEN, None))
        else:
            n = 0
            for o in s.findObjects([(PyKCS11.CKA_TOKEN, True),
                                    (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY)]):
                lab, oid = s.getAttributeValue(o, [PyKCS11.CKA_LABEL, PyKCS11.CKA_ID])
                n += not lab and not oid
            print(n)
        s.logout()
        s.closeSession()
    sys.exit(0)

sys.path.insert(0, "tests/e2e")
from audit_lib import Client, export_all  # noqa: E402

PORT, OPS = int(sys.argv[3]), sys.argv[4:]
auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
seen = set()
for _ in range(60):
    head, events, raw = export_all(auditor, "eu-west")
    seen = {e.operation for e in events}
    if all(op in seen for op in OPS):
        sys.exit(0)
    time.sleep(0.25)
print("missing from the audit log:", [op for op in OPS if op not in seen], file=sys.stderr)
sys.exit(1)

"""See test_audit_tamper.sh.

  audit_tamper.py keys DIR PORT              create a key in eu-west and us-east, encrypt
                                             with each; prints "EU_KEY US_KEY"
  audit_tamper.py edit HEADS sig|root|size   change the newest head of a .heads file and
                                             frame the record again, so that its check bytes
                                             match (an edit, not a torn write)
  audit_tamper.py edit HEADS sig-inplace     flip a signature byte, frame left as it is
  audit_tamper.py edit HEADS torn            cut the last head short (a torn append)
  audit_tamper.py noleak US_EVENTS EU        us-east's log holds no event of eu-west
  audit_tamper.py refused DIR PORT EU US WHAT   eu-west is not served, us-east is
  audit_tamper.py served DIR PORT EU US         both regions serve
"""
import hashlib
import http.client
import struct
import sys

from audit_lib import Client, kpb
import audit_pb2 as apb

failures = 0


def check(cond, what):
    global failures
    print(f"{'ok' if cond else 'not ok'} - {what}", flush=True)
    failures += 0 if cond else 1


def records(data):
    out, off = [], 0
    while off < len(data):
        n = struct.unpack(">I", data[off:off + 4])[0]
        out.append(data[off + 12:off + 12 + n])
        off += 12 + n
    assert off == len(data), "the heads file does not end on a record"
    return out


def frame(payload):
    return (struct.pack(">I", len(payload)) + hashlib.sha256(b"\x00" + payload).digest()[:8]
            + payload)


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read().decode()


def encrypt(broker, key_id):
    return broker.call("KeyService", "Encrypt",
                       kpb.EncryptRequest(key_id=key_id, plaintext=b"tamper test"),
                       kpb.EncryptResponse)


def main():
    cmd = sys.argv[1]
    if cmd == "edit":
        path, what = sys.argv[2], sys.argv[3]
        data = open(path, "rb").read()
        recs = records(data)
        h = apb.SignedTreeHead()
        h.ParseFromString(recs[-1])
        if what == "sig-inplace":
            # A byte of the signature flipped in the file, the frame left
            # alone: its check bytes no longer match, as after a torn write,
            # but the record is a whole head of this log.
            at = len(data) - len(recs[-1]) + recs[-1].rindex(h.signature) + len(h.signature) - 1
            b = bytearray(data)
            b[at] ^= 0x01
            open(path, "wb").write(bytes(b))
            return 0
        if what == "torn":
            # A real torn append: the last head cut short.
            open(path, "wb").write(data[:-7])
            return 0
        if what == "sig":
            # The last byte of the DER signature is inside s: still DER, no
            # longer the HSM's signature.
            h.signature = h.signature[:-1] + bytes([h.signature[-1] ^ 0x01])
        elif what == "root":
            h.root_hash = bytes([h.root_hash[0] ^ 0x80]) + h.root_hash[1:]
        elif what == "size":
            h.tree_size -= 1
        else:
            raise SystemExit(f"unknown edit {what}")
        recs[-1] = h.SerializeToString()
        open(path, "wb").write(b"".join(frame(r) for r in recs))
        return 0
    if cmd == "noleak":
        # The refused requests for eu-west keys were not written to us-east's log.
        path, eu = sys.argv[2], sys.argv[3]
        evs = []
        for r in records(open(path, "rb").read()):
            ev = apb.AuditEvent()
            ev.ParseFromString(r)
            evs.append(ev)
        bad = [e.seq for e in evs if e.key_id == eu or e.region != "us-east"]
        check(evs and not bad, f"us-east's log holds no event of the eu-west key or region "
              f"({len(evs)} events, wrong: {bad})")
        return 1 if failures else 0
    d, port = sys.argv[2], int(sys.argv[3])
    admin = Client(port, f"{d}/credentials/demo-admin.key")
    broker = Client(port, f"{d}/credentials/demo-broker.key")
    broker_us = Client(port, f"{d}/credentials/demo-broker-us.key")  # home region us-east
    auditor = Client(port, f"{d}/credentials/auditor.key")
    if cmd == "keys":
        ids = []
        for region in ("eu-west", "us-east"):
            s, m, _ = admin.call("KeyService", "CreateKey",
                                 kpb.CreateKeyRequest(region=region, spec=kpb.AES_256,
                                                      usage=kpb.ENCRYPT_DECRYPT),
                                 kpb.CreateKeyResponse)
            assert s == 200, f"CreateKey {region}: {s} {m}"
            ids.append(m.key.key_id)
            s, m, _ = encrypt(broker if region == "eu-west" else broker_us, ids[-1])
            assert s == 200, f"Encrypt {region}: {s} {m}"
        print(*ids)
        return 0
    eu, us = sys.argv[4], sys.argv[5]
    if cmd == "refused":
        what = sys.argv[6]
        s, body = get(port, "/readyz")
        check(s == 503 and "region eu-west: not served" in body and "us-east" not in body,
              f"{what}: /readyz 503 naming eu-west as not served ({s} {body!r})")
        s, body = get(port, "/readyz/eu-west")
        check(s == 503 and "region eu-west: not served: its audit log failed the start-up check"
              in body, f"{what}: /readyz/eu-west 503 with the reason ({s} {body!r})")
        s, body = get(port, "/readyz/us-east")
        check(s == 200 and body == "ready\n", f"{what}: /readyz/us-east 200 ({s} {body!r})")
        s, m, _ = encrypt(broker, eu)
        check(s == 503 and m.get("code") == "unavailable" and "region eu-west is not served"
              in m.get("msg", "") and "retrying will not help" in m.get("msg", ""),
              f"{what}: Encrypt with the eu-west key: 503 unavailable, region not served, "
              f"retrying will not help ({s} {m})")
        s, m, _ = auditor.call("AuditService", "GetSignedTreeHead",
                               apb.GetSignedTreeHeadRequest(region="eu-west"),
                               apb.GetSignedTreeHeadResponse)
        check(s == 503 and m.get("code") == "unavailable" and "region eu-west is not served"
              in m.get("msg", ""), f"{what}: GetSignedTreeHead eu-west: 503 unavailable, the unverified head is not "
              f"handed to auditors ({s} {m})")
        s, m, _ = auditor.call("AuditService", "GetAuditKeys",
                               apb.GetAuditKeysRequest(region="eu-west"), apb.GetAuditKeysResponse)
        check(s == 503 and m.get("code") == "unavailable",
              f"{what}: GetAuditKeys eu-west: 503 unavailable ({s} {m})")
        s, m, _ = encrypt(broker_us, us)
        check(s == 200, f"{what}: Encrypt with the us-east key still serves ({s})")
    elif cmd == "served":
        s, body = get(port, "/readyz")
        check(s == 200 and body == "ready\n", f"restored: /readyz 200 ({s} {body!r})")
        check(get(port, "/readyz/eu-west")[0] == 200, "restored: /readyz/eu-west 200")
        check(get(port, "/readyz/nowhere")[0] == 404, "/readyz/nowhere: 404")
        s, m, _ = encrypt(broker, eu)
        check(s == 200, f"restored: Encrypt with the eu-west key serves again ({s} {m if s != 200 else ''})")
        s, m, _ = encrypt(broker_us, us)
        check(s == 200, f"restored: Encrypt with the us-east key serves ({s})")
        s, m, _ = auditor.call("AuditService", "GetSignedTreeHead",
                               apb.GetSignedTreeHeadRequest(region="eu-west"),
                               apb.GetSignedTreeHeadResponse)
        check(s == 200, f"restored: GetSignedTreeHead eu-west ({s})")
    return 1 if failures else 0


sys.exit(main())

"""See test_audit_tamper.sh.

  audit_tamper.py usadmins DIR              add key administrators homed in us-east to the
                                             dev policy: demo-admin-us, bank-admin-us
  audit_tamper.py keys DIR PORT              create a key in eu-west and us-east, encrypt
                                             with each; a bank key in eu-west with an open
                                             recovery; prints "EU_KEY US_KEY BANK_KEY REC"
  audit_tamper.py edit HEADS sig|root|size   change the newest head of a .heads file and
                                             frame the record again, so that its check bytes
                                             match (an edit, not a torn write)
  audit_tamper.py edit HEADS sig-inplace     flip a signature byte, frame left as it is
  audit_tamper.py edit HEADS torn            cut the last head short (a torn append)
  audit_tamper.py edit EVENTS middle         flip a payload byte of the middle event
  audit_tamper.py homes DIR PORT EU US BANK REC  requests with no key (or no principal) while
                                             eu-west is refused: refused by home region, never
                                             logged in us-east, no eu-west data in replies
  audit_tamper.py homelog US_EVENTS           which of those requests us-east's log holds
  audit_tamper.py noleak US_EVENTS EU        us-east's log holds no event of eu-west
  audit_tamper.py refused DIR PORT EU US WHAT   eu-west is not served, us-east is
  audit_tamper.py served DIR PORT EU US         both regions serve
"""
import hashlib
import http.client
import json
import struct
import sys

from audit_lib import Client, kpb
import audit_pb2 as apb
import escrow_pb2 as epb

# The correlation ids of `homes`, and the log each event must be in.
HOMES = {
    "homes-bad-key": "us-east",      # no principal: the first served region
    "homes-list-keys": None,         # demo-admin, home eu-west: nowhere
    "homes-list-recoveries": None,   # bank-admin, home eu-west: nowhere
    "homes-malformed": None,         # demo-broker, home eu-west, no key known: nowhere
    "homes-us-broker": "us-east",    # demo-broker-us, home us-east, us-east key
    "homes-us-list-keys": "us-east",        # demo-admin-us: eu-west keys left out
    "homes-us-list-recoveries": "us-east",  # bank-admin-us: eu-west recoveries left out
}

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


def post(port, method, body, key, correlation):
    """A raw Twirp call: (status, body bytes)."""
    svc = "EscrowService" if "Recover" in method else "KeyService"
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", f"/twirp/custos.v1.{svc}/{method}", body,
              {"Content-Type": "application/protobuf", "Authorization": "Bearer " + key,
               "X-Correlation-Id": correlation})
    r = c.getresponse()
    return r.status, r.read()


def events_of(path):
    out = []
    for r in records(open(path, "rb").read()):
        ev = apb.AuditEvent()
        ev.ParseFromString(r)
        out.append(ev)
    return out


def main():
    cmd = sys.argv[1]
    if cmd == "edit" and sys.argv[3] == "middle":
        # One byte of the middle event's payload flipped: its check bytes no
        # longer match, and signed heads cover it.
        path = sys.argv[2]
        data = bytearray(open(path, "rb").read())
        recs = records(bytes(data))
        off = 0
        for r in recs[:len(recs) // 2]:
            off += 12 + len(r)
        data[off + 12 + len(recs[len(recs) // 2]) // 2] ^= 0x01
        open(path, "wb").write(bytes(data))
        return 0
    if cmd == "usadmins":
        import os
        import secrets
        d = sys.argv[2]
        pol = json.load(open(f"{d}/policy.json"))
        for tenant, pid in (("demo", "demo-admin-us"), ("bank", "bank-admin-us")):
            key = "ck_" + secrets.token_hex(24)
            path = f"{d}/credentials/{pid}.key"
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(key + "\n")
            t = next(t for t in pol["tenants"] if t["id"] == tenant)
            t["principals"].append({"id": pid, "role": "key-admin", "home_region": "us-east",
                                    "api_key_sha256": hashlib.sha256(key.encode()).hexdigest()})
        json.dump(pol, open(f"{d}/policy.json", "w"), indent=2)
        return 0
    if cmd == "homelog":
        evs = events_of(sys.argv[2])
        for corr, where in HOMES.items():
            got = [e for e in evs if e.correlation_id == corr]
            if where is None:
                check(not got, f"homes: {corr} is in no log of another region "
                      f"(us-east has {[(e.seq, e.principal, e.operation) for e in got]})")
            else:
                check(len(got) == 1 and got[0].region == "us-east",
                      f"homes: {corr} is one event of us-east's log ({len(got)})")
        bad = [e for e in evs if e.correlation_id == "homes-bad-key"]
        check(bad and bad[0].principal == "" and bad[0].outcome == "unauthenticated",
              "homes: the failed authentication carries no principal, outcome unauthenticated")
        lk = [e for e in evs if e.correlation_id == "homes-us-list-keys"]
        check(lk and lk[0].principal == "demo-admin-us" and lk[0].outcome == "ok" and
              lk[0].detail == "left out 1 key(s) of regions not served",
              f"homes: ListKeys by demo-admin-us is logged, saying a key was left out "
              f"({lk[0].detail if lk else None!r})")
        us = [e for e in evs if e.correlation_id == "homes-us-broker"]
        check(us and us[0].principal == "demo-broker-us" and us[0].outcome == "ok",
              "homes: the us-east broker's Encrypt is logged ok under its principal")
        eu_principals = {"demo-admin", "bank-admin", "demo-broker"}
        leaked = [(e.seq, e.principal, e.operation) for e in evs
                  if e.correlation_id.startswith("homes-") and e.principal in eu_principals]
        check(not leaked, f"homes: no event of an eu-west principal's request in us-east "
              f"({leaked})")
        return 1 if failures else 0
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
        bank_admin = Client(port, f"{d}/credentials/bank-admin.key")
        s, m, _ = bank_admin.call("KeyService", "CreateKey",
                                  kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                       usage=kpb.ENCRYPT_DECRYPT),
                                  kpb.CreateKeyResponse)
        assert s == 200, f"CreateKey bank: {s} {m}"
        ids.append(m.key.key_id)
        officer = Client(port, f"{d}/credentials/bank-officer-1.key")
        s, m, _ = officer.call("EscrowService", "RequestRecovery",
                               epb.RequestRecoveryRequest(
                                   key_id=ids[-1], mode=epb.EXPORT_WRAPPED,
                                   recipient="bank-legal-eu",
                                   justification=epb.ACCIDENTAL_DELETION,
                                   justification_text="tamper test", case_reference="T-1"),
                               epb.RequestRecoveryResponse)
        assert s == 200, f"RequestRecovery: {s} {m}"
        ids.append(m.recovery.recovery_id)
        print(*ids)
        return 0
    if cmd == "homes":
        # eu-west is refused. Requests whose event belongs to eu-west (no
        # key named, the caller's home region is eu-west) are refused and
        # not served; the others go on, logged in us-east.
        eu, us, bank, rec = sys.argv[4:8]
        key = lambda who: open(f"{d}/credentials/{who}.key").read().strip()
        not_served = lambda s, b: (s == 503 and json.loads(b).get("code") == "unavailable"
                                   and "region eu-west is not served" in json.loads(b)["msg"]
                                   and "retrying will not help" in json.loads(b)["msg"])
        no_eu = lambda b: all(x.encode() not in b for x in (eu, bank, rec))
        s, b = post(port, "Encrypt", kpb.EncryptRequest(key_id=us, plaintext=b"x")
                    .SerializeToString(), "bogus-key-0123456789", "homes-bad-key")
        check(s == 401 and json.loads(b).get("code") == "unauthenticated",
              f"homes: a bad bearer key: 401 unauthenticated ({s} {b[:200]!r})")
        s, b = post(port, "ListKeys", kpb.ListKeysRequest().SerializeToString(),
                    key("demo-admin"), "homes-list-keys")
        check(not_served(s, b) and no_eu(b), f"homes: ListKeys by demo-admin (home eu-west): "
              f"503 unavailable, region eu-west not served, no key listed ({s} {b[:300]!r})")
        s, b = post(port, "ListRecoveries", epb.ListRecoveriesRequest().SerializeToString(),
                    key("bank-admin"), "homes-list-recoveries")
        check(not_served(s, b) and no_eu(b), f"homes: ListRecoveries by bank-admin (home "
              f"eu-west): 503 unavailable, no recovery or key shown ({s} {b[:300]!r})")
        s, b = post(port, "Encrypt", b"\x0a\xff\xff", key("demo-broker"), "homes-malformed")
        check(not_served(s, b), f"homes: a malformed Encrypt by demo-broker (home eu-west): "
              f"503 unavailable, region eu-west not served ({s} {b[:300]!r})")
        s, b = post(port, "Encrypt", kpb.EncryptRequest(key_id=us, plaintext=b"x")
                    .SerializeToString(), key("demo-broker-us"), "homes-us-broker")
        check(s == 200, f"homes: Encrypt by demo-broker-us with the us-east key: 200 ({s})")
        # Callers homed in us-east are served, without what is eu-west's.
        s, b = post(port, "ListKeys", kpb.ListKeysRequest().SerializeToString(),
                    key("demo-admin-us"), "homes-us-list-keys")
        m = kpb.ListKeysResponse()
        if s == 200:
            m.ParseFromString(b)
        ids = [k.key_id for k in m.keys]
        check(s == 200 and us in ids and eu not in ids and no_eu(b),
              f"homes: ListKeys by demo-admin-us: 200 with the us-east key, the eu-west key "
              f"left out ({s} {ids})")
        s, b = post(port, "ListRecoveries", epb.ListRecoveriesRequest().SerializeToString(),
                    key("bank-admin-us"), "homes-us-list-recoveries")
        m = epb.ListRecoveriesResponse()
        if s == 200:
            m.ParseFromString(b)
        check(s == 200 and len(m.recoveries) == 0 and no_eu(b),
              f"homes: ListRecoveries by bank-admin-us: 200, the eu-west recovery left out "
              f"({s} {[r.recovery_id for r in m.recoveries]})")
        return 1 if failures else 0
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

"""Helpers for test_audit.sh: drive kmsd, read audit bundles, make tampered copies.

  audit_test.py ops DIR PORT OUT.json
      Key operations and refusals over raw HTTP (as a third party would make
      them); records each X-Request-Id with the operation, the outcome the
      caller received, the principal and key, plus the plaintexts sent, the
      data keys received and the bogus credentials tried.
  audit_test.py events OUT.json CORR.txt BUNDLE...
      Every recorded request (and every kmsctl correlation id in CORR.txt,
      lines "ID OPERATION OUTCOME") has exactly one event in the bundles, with
      the right fields. Exit 1 and say why otherwise; exit 3 if some are not
      exported yet (the caller retries).
  audit_test.py secrets OUT.json FILE...
      No plaintext, data key or credential from OUT.json (and DIR/credentials)
      occurs in FILEs.
  audit_test.py tamper MODE IN OUT [ARGS]
      A tampered copy of bundle IN (see tamper() for the modes).
  audit_test.py info BUNDLE
      "tree_size first end count known_tree_size key_id"
  audit_test.py rawlog EVENTS_FILE BUNDLE
      The records of a region's .events file are framed as docs/audit.md says
      and are, byte for byte, the leaves the bundle exported.
  audit_test.py flips KMSCTL KEYS N BUNDLE [OTHER...]
      N copies of BUNDLE with one random bit flipped (seeded): `kmsctl audit
      verify` must refuse each with exit 1 (never accept, never crash).
  audit_test.py setcfg KMSD_JSON KEY VALUE
      Set audit.KEY in a kmsd.json (VALUE as JSON), or delete it for "-".
"""
import hashlib
import http.client
import json
import os
import struct
import sys

import audit_pb2 as apb


def die(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


# ---- ops ----------------------------------------------------------------------


def ops(d, port, out):
    import key_pb2 as pb

    def api_key(who):
        with open(f"{d}/credentials/{who}.key") as f:
            return f.read().strip()

    reqs, plaintexts, datakeys = [], [], []
    bad_key = "ck_" + os.urandom(24).hex()

    def raw(service, method, body, headers, chunked=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        path = f"/twirp/custos.v1.{service}/{method}"
        if chunked is None:
            conn.request("POST", path, body=body, headers=headers)
        else:
            conn.putrequest("POST", path)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            try:
                for c in chunked:
                    conn.send(b"%x\r\n%s\r\n" % (len(c), c))
                conn.send(b"0\r\n\r\n")
            except OSError:
                pass
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, r.getheader("X-Request-Id"), data

    keep = object()

    def call(method, req, resp_cls, who, key_id="", region="", service="KeyService",
             headers=None, body=None, chunked=None, principal=keep):
        h = {"Content-Type": "application/protobuf"}
        if who:
            h["Authorization"] = "Bearer " + api_key(who)
        h.update(headers or {})
        status, rid, data = raw(service, method,
                                req.SerializeToString() if body is None else body, h, chunked)
        if rid is None:
            die(f"{method}: no X-Request-Id")
        outcome = "ok" if status == 200 else json.loads(data)["code"]
        reqs.append({"rid": rid, "op": method, "outcome": outcome,
                     "principal": who if principal is keep else principal,
                     "key_id": key_id, "region": region,
                     "correlation_id": (headers or {}).get("X-Correlation-Id", "")
                     if status == 200 or len((headers or {}).get("X-Correlation-Id", "")) <= 128
                     else ""})
        if status != 200:
            return outcome, None
        m = resp_cls()
        m.ParseFromString(data)
        return outcome, m

    def expect(got, want, what):
        if got != want:
            die(f"ops: {what}: got {got}, want {want}")

    def sentinel():
        p = ("PLAINTEXT-SENTINEL-" + os.urandom(8).hex()).encode()
        plaintexts.append(p.hex())
        return p

    # Key admin.
    o, m = call("CreateKey", pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256,
                                                 usage=pb.ENCRYPT_DECRYPT), pb.CreateKeyResponse,
                "demo-admin", region="eu-west")
    expect(o, "ok", "CreateKey eu-west")
    k1 = m.key.key_id
    reqs[-1]["key_id"] = k1
    o, m = call("CreateKey", pb.CreateKeyRequest(region="us-east", spec=pb.AES_256,
                                                 usage=pb.ENCRYPT_DECRYPT), pb.CreateKeyResponse,
                "demo-admin", region="us-east")
    expect(o, "ok", "CreateKey us-east")
    k2 = m.key.key_id
    reqs[-1]["key_id"] = k2
    o, m = call("CreateKey", pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256,
                                                 usage=pb.ENCRYPT_DECRYPT), pb.CreateKeyResponse,
                "demo-admin", region="eu-west")
    k3 = m.key.key_id
    reqs[-1]["key_id"] = k3
    expect(call("DescribeKey", pb.DescribeKeyRequest(key_id=k1), pb.DescribeKeyResponse,
                "demo-admin", k1, "eu-west")[0], "ok", "DescribeKey")
    expect(call("ListKeys", pb.ListKeysRequest(), pb.ListKeysResponse, "demo-admin")[0], "ok",
           "ListKeys")
    expect(call("RotateKey", pb.RotateKeyRequest(key_id=k1), pb.RotateKeyResponse, "demo-admin",
                k1, "eu-west")[0], "ok", "RotateKey")
    expect(call("ScheduleKeyDeletion", pb.ScheduleKeyDeletionRequest(key_id=k3,
                                                                     pending_window_days=30),
                pb.ScheduleKeyDeletionResponse, "demo-admin", k3, "eu-west")[0], "ok",
           "ScheduleKeyDeletion")
    expect(call("CancelKeyDeletion", pb.CancelKeyDeletionRequest(key_id=k3),
                pb.CancelKeyDeletionResponse, "demo-admin", k3, "eu-west")[0], "ok",
           "CancelKeyDeletion")

    # Broker: envelope encryption, allowed and refused.
    ctx = {"conversation": "conv-1"}
    p1 = sentinel()
    o, enc = call("Encrypt", pb.EncryptRequest(key_id=k1, plaintext=p1, encryption_context=ctx),
                  pb.EncryptResponse, "demo-broker", k1, "eu-west",
                  headers={"X-Correlation-Id": "e2e-audit-conv-42"})
    expect(o, "ok", "Encrypt")
    o, dec = call("Decrypt", pb.DecryptRequest(ciphertext=enc.ciphertext, encryption_context=ctx),
                  pb.DecryptResponse, "demo-broker", k1, "eu-west")
    expect((o, dec.plaintext), ("ok", p1), "Decrypt")
    o, _ = call("Decrypt", pb.DecryptRequest(ciphertext=enc.ciphertext,
                                             encryption_context={"conversation": "other"}),
                pb.DecryptResponse, "demo-broker", k1, "eu-west")
    expect(o != "ok", True, "Decrypt with the wrong context is refused")
    o, dk = call("GenerateDataKey", pb.GenerateDataKeyRequest(key_id=k1),
                 pb.GenerateDataKeyResponse, "demo-broker", k1, "eu-west")
    expect(o, "ok", "GenerateDataKey")
    datakeys.append(dk.plaintext.hex())
    o, dd = call("DecryptDataKey", pb.DecryptDataKeyRequest(ciphertext_blob=dk.ciphertext_blob),
                 pb.DecryptDataKeyResponse, "demo-broker", k1, "eu-west")
    expect((o, dd.plaintext), ("ok", dk.plaintext), "DecryptDataKey")
    o, _ = call("ReEncrypt", pb.ReEncryptRequest(ciphertext=enc.ciphertext,
                                                 source_encryption_context=ctx,
                                                 destination_key_id=k3,
                                                 destination_encryption_context=ctx),
                pb.ReEncryptResponse, "demo-broker", "", "eu-west")
    expect(o != "ok", True, "ReEncrypt to a disabled key is refused")
    expect(call("EnableKey", pb.EnableKeyRequest(key_id=k3), pb.EnableKeyResponse,
                "demo-admin", k3, "eu-west")[0], "ok", "EnableKey")
    o, _ = call("ReEncrypt", pb.ReEncryptRequest(ciphertext=enc.ciphertext,
                                                 source_encryption_context=ctx,
                                                 destination_key_id=k3,
                                                 destination_encryption_context=ctx),
                pb.ReEncryptResponse, "demo-broker", "", "eu-west")
    expect(o, "ok", "ReEncrypt")
    expect(call("DisableKey", pb.DisableKeyRequest(key_id=k1), pb.DisableKeyResponse,
                "demo-admin", k1, "eu-west")[0], "ok", "DisableKey")
    expect(call("Encrypt", pb.EncryptRequest(key_id=k1, plaintext=sentinel()),
                pb.EncryptResponse, "demo-broker", k1, "eu-west")[0], "failed_precondition",
           "Encrypt under a disabled key")
    expect(call("EnableKey", pb.EnableKeyRequest(key_id=k1), pb.EnableKeyResponse, "demo-admin",
                k1, "eu-west")[0], "ok", "EnableKey")

    # Credentials and policy refusals.
    expect(call("Encrypt", pb.EncryptRequest(key_id=k1, plaintext=sentinel()), pb.EncryptResponse,
                None, headers={"Authorization": "Bearer " + bad_key}, principal="")[0],
           "unauthenticated", "a made-up API key")
    expect(call("Encrypt", pb.EncryptRequest(key_id=k1, plaintext=sentinel()), pb.EncryptResponse,
                None, principal="")[0], "unauthenticated", "no credentials")
    expect(call("Encrypt", pb.EncryptRequest(key_id=k1, plaintext=sentinel()), pb.EncryptResponse,
                None, headers={"Authorization": "Basic " + api_key("demo-broker")},
                principal="")[0], "unauthenticated", "Basic instead of Bearer")
    expect(call("CreateKey", pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256,
                                                 usage=pb.ENCRYPT_DECRYPT),
                pb.CreateKeyResponse, "demo-broker")[0], "permission_denied",
           "a broker may not create keys")
    o, _ = call("Encrypt", pb.EncryptRequest(key_id=k1, plaintext=sentinel()), pb.EncryptResponse,
                "other-broker", k1)
    expect(o in ("permission_denied", "not_found"), True, "another tenant's key")
    expect(call("Encrypt", pb.EncryptRequest(key_id=k2, plaintext=sentinel()), pb.EncryptResponse,
                "demo-broker", k2, "us-east")[0], "permission_denied",
           "residency: an eu-west broker and a us-east key")
    expect(call("Encrypt", pb.EncryptRequest(key_id=k2, plaintext=sentinel()), pb.EncryptResponse,
                "demo-broker-us", k2, "us-east")[0], "ok", "the us-east broker")
    o, _ = call("Encrypt", pb.EncryptRequest(key_id=k1, plaintext=sentinel()), pb.EncryptResponse,
                "auditor", k1)
    expect(o in ("permission_denied", "not_found"), True, "an auditor may not encrypt")
    expect(call("ExportAuditLog", apb.ExportAuditLogRequest(region="eu-west"),
                apb.ExportAuditLogResponse, "demo-broker", service="AuditService")[0],
           "permission_denied", "a broker may not export the audit log")
    expect(call("DescribeKey", pb.DescribeKeyRequest(key_id="0" * 32), pb.DescribeKeyResponse,
                "demo-admin", "0" * 32)[0], "not_found", "an unknown key")

    # Hostile HTTP that still reached a route.
    body = pb.EncryptRequest(key_id=k1, plaintext=sentinel()).SerializeToString()
    # Refused before authentication: whether the event names a principal
    # is the server's business (None: not checked).
    expect(call("Encrypt", None, None, "demo-broker", body=body, principal=None,
                headers={"Content-Type": "text/plain"})[0], "bad_route",
           "wrong Content-Type")
    expect(call("Encrypt", None, None, "demo-broker", body=b"\xff\xff\xff\xff\x0f")[0],
           "malformed", "garbage protobuf")
    big = sentinel() * (120000 // 35)
    expect(call("Encrypt", None, None, "demo-broker", body=b"",
                chunked=[big[i:i + 16384] for i in range(0, len(big), 16384)])[0],
           "invalid_argument", "a chunked body over the limit")
    expect(call("Encrypt", pb.EncryptRequest(key_id=k1, plaintext=sentinel()), pb.EncryptResponse,
                "demo-broker", headers={"X-Correlation-Id": "x" * 129}, principal=None)[0],
           "invalid_argument", "an over-long correlation id")
    with open(out, "w") as f:
        json.dump({"dir": d, "requests": reqs, "plaintexts": plaintexts, "datakeys": datakeys,
                   "bad_keys": [bad_key], "keys": {"k1": k1, "k2": k2, "k3": k3}}, f, indent=1)
    print(f"{len(reqs)} requests made")


# ---- reading bundles ---------------------------------------------------------------


def load(path):
    b = apb.ExportAuditLogResponse()
    with open(path, "rb") as f:
        b.ParseFromString(f.read())
    return b


def events_of(paths):
    for p in paths:
        b = load(p)
        for e in b.entries:
            ev = apb.AuditEvent()
            ev.ParseFromString(e.event)
            yield ev


def events(out, corr_file, paths):
    with open(out) as f:
        rec = json.load(f)
    by_rid, by_corr = {}, {}
    for ev in events_of(paths):
        by_rid.setdefault(ev.request_id, []).append(ev)
        if ev.correlation_id:
            by_corr.setdefault(ev.correlation_id, []).append(ev)
    missing = [r for r in rec["requests"] if r["rid"] not in by_rid]
    corr = []
    with open(corr_file) as f:
        for line in f:
            if line.strip():
                corr.append(line.split())
    missing_corr = [c for c in corr if c[0] not in by_corr]
    if missing or missing_corr:
        print(f"{len(missing)} requests and {len(missing_corr)} kmsctl calls not exported yet",
              file=sys.stderr)
        sys.exit(3)
    bad = []
    for r in rec["requests"]:
        evs = by_rid[r["rid"]]
        if len(evs) != 1:
            bad.append(f"request {r['rid']} ({r['op']}) has {len(evs)} events")
            continue
        ev = evs[0]
        want = {"operation": r["op"], "outcome": r["outcome"]}
        if r["principal"] is not None:
            want["principal"] = r["principal"] or ""
        if r["key_id"] and r["outcome"] == "ok":
            want["key_id"] = r["key_id"]
        if r["region"] and r["outcome"] == "ok":
            want["region"] = r["region"]
        if r["correlation_id"]:
            want["correlation_id"] = r["correlation_id"]
        for k, v in want.items():
            if getattr(ev, k) != v:
                bad.append(f"request {r['rid']} ({r['op']}): event {k} is {getattr(ev, k)!r}, "
                           f"want {v!r}")
        if ev.time_ms <= 0:
            bad.append(f"request {r['rid']}: no time")
    for c in corr:
        evs = by_corr[c[0]]
        if len(evs) != 1:
            bad.append(f"kmsctl call {c[0]} has {len(evs)} events")
        elif (evs[0].operation, evs[0].outcome) != (c[1], c[2]):
            bad.append(f"kmsctl call {c[0]}: event {evs[0].operation}/{evs[0].outcome}, "
                       f"want {c[1]}/{c[2]}")
    if bad:
        die("\n".join(bad))
    print(f"{len(rec['requests'])} requests and {len(corr)} kmsctl calls: one event each")


def secrets(out, files):
    with open(out) as f:
        rec = json.load(f)
    needles = [("plaintext", bytes.fromhex(p)) for p in rec["plaintexts"]]
    # The prefix alone, too: a truncated or partial copy is still a leak.
    needles.append(("plaintext prefix", b"PLAINTEXT-SENTINEL"))
    needles += [("data key", bytes.fromhex(k)) for k in rec["datakeys"]]
    needles += [("bogus API key", k.encode()) for k in rec["bad_keys"]]
    cred = os.path.join(rec["dir"], "credentials")
    for name in sorted(os.listdir(cred)):
        if name.endswith(".key"):
            with open(os.path.join(cred, name)) as f:
                needles.append((f"API key {name}", f.read().strip().encode()))
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        for what, n in needles:
            if n in data:
                die(f"{path}: holds a {what}")
    print(f"{len(files)} files, {len(needles)} secrets: none found")


# ---- tampering ------------------------------------------------------------------------


def flip_rid(event_bytes):
    """Flip one byte inside the event's request id (the event still decodes)."""
    ev = apb.AuditEvent()
    ev.ParseFromString(event_bytes)
    rid = (ev.request_id or ev.operation).encode()
    i = event_bytes.index(rid) + len(rid) // 2
    b = bytearray(event_bytes)
    b[i] ^= 0x01
    return bytes(b)


def tamper(mode, src, dst, args):
    b = load(src)
    raw = open(src, "rb").read()
    out = None
    if mode == "flip-entry":            # K: one byte of entry K's event
        k = int(args[0])
        b.entries[k].event = flip_rid(b.entries[k].event)
    elif mode == "flip-file":           # K: the same, on the file's bytes as they are
        k = int(args[0])
        ev = b.entries[k].event
        at = raw.index(ev)
        out = raw[:at] + flip_rid(ev) + raw[at + len(ev):]
    elif mode == "flip-sig":            # one byte of the head's signature
        s = bytearray(b.head.signature)
        s[-1] ^= 0x01
        b.head.signature = bytes(s)
    elif mode == "flip-root":           # one byte of the head's root
        s = bytearray(b.head.root_hash)
        s[0] ^= 0x80
        b.head.root_hash = bytes(s)
    elif mode == "flip-consistency":    # one byte of the consistency proof
        s = bytearray(b.consistency_proof[0])
        s[5] ^= 0x01
        b.consistency_proof[0] = bytes(s)
    elif mode == "drop":                # K: remove entry K
        del b.entries[int(args[0])]
    elif mode == "reorder":             # K: swap entries K and K+1
        k = int(args[0])
        e1, e2 = apb.AuditEntry(), apb.AuditEntry()
        e1.CopyFrom(b.entries[k])
        e2.CopyFrom(b.entries[k + 1])
        b.entries[k].CopyFrom(e2)
        b.entries[k + 1].CopyFrom(e1)
    elif mode == "drop-tail":           # N: remove the last N entries
        del b.entries[len(b.entries) - int(args[0]):]
    elif mode == "cut":                 # N: cut the last N bytes of the file
        out = raw[:len(raw) - int(args[0])]
    elif mode == "splice":              # OTHER K N: entries K..K+N-1 from bundle OTHER
        other = load(args[0])
        k, n = int(args[1]), int(args[2])
        theirs = {e.seq: e for e in other.entries}
        for e in b.entries:
            if k <= e.seq < k + n:
                e.CopyFrom(theirs[e.seq])
    else:
        die(f"unknown tamper mode {mode}")
    with open(dst, "wb") as f:
        f.write(out if out is not None else b.SerializeToString())


def info(path):
    b = load(path)
    first = b.entries[0].seq if b.entries else 0
    end = b.entries[-1].seq + 1 if b.entries else 0
    print(b.head.tree_size, first, end, len(b.entries), b.known_tree_size, b.head.key_id)


def rawlog(events_file, bundle):
    data = open(events_file, "rb").read()
    leaves, off = [], 0
    while off < len(data):
        if off + 12 > len(data):
            die(f"{events_file}: torn record at {off}")
        n = struct.unpack(">I", data[off:off + 4])[0]
        check, payload = data[off + 4:off + 12], data[off + 12:off + 12 + n]
        if len(payload) != n:
            die(f"{events_file}: torn record at {off}")
        if hashlib.sha256(b"\x00" + payload).digest()[:8] != check:
            die(f"{events_file}: record {len(leaves)} at offset {off}: check bytes differ")
        ev = apb.AuditEvent()
        ev.ParseFromString(payload)
        if ev.seq != len(leaves):
            die(f"{events_file}: record {len(leaves)} has seq {ev.seq}")
        leaves.append(payload)
        off += 12 + n
    b = load(bundle)
    for e in b.entries:
        if e.seq >= len(leaves) or leaves[e.seq] != e.event:
            die(f"exported entry {e.seq} is not record {e.seq} of {events_file}")
    print(f"{len(leaves)} records, the {len(b.entries)} exported ones identical")


def flips(kmsctl, keys, n, bundle, others):
    import random
    import subprocess
    rnd = random.Random(9162)
    raw = open(bundle, "rb").read()
    out = bundle + ".flip"
    for _ in range(n):
        b = bytearray(raw)
        pos = rnd.randrange(len(b))
        bit = rnd.randrange(8)
        b[pos] ^= 1 << bit
        with open(out, "wb") as f:
            f.write(b)
        r = subprocess.run([kmsctl, "audit", "verify", "--keys", keys] + others + [out],
                           capture_output=True, text=True)
        if r.returncode != 1 or "FAILED" not in r.stderr:
            die(f"bit {bit} of byte {pos} flipped: exit {r.returncode}\n{r.stdout}{r.stderr}")
    print(f"{n} flips refused")


def setcfg(path, key, value):
    with open(path) as f:
        c = json.load(f)
    if value == "-":
        c["audit"].pop(key, None)
    else:
        c["audit"][key] = json.loads(value)
    with open(path, "w") as f:
        json.dump(c, f, indent=2)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ops":
        ops(args[0], int(args[1]), args[2])
    elif cmd == "events":
        events(args[0], args[1], args[2:])
    elif cmd == "secrets":
        secrets(args[0], args[1:])
    elif cmd == "tamper":
        tamper(args[0], args[1], args[2], args[3:])
    elif cmd == "info":
        info(args[0])
    elif cmd == "rawlog":
        rawlog(args[0], args[1])
    elif cmd == "flips":
        flips(args[0], args[1], int(args[2]), args[3], args[4:])
    elif cmd == "setcfg":
        setcfg(*args)
    else:
        die(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

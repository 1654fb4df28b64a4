"""Ciphertext kinds and ReEncrypt residency against a running kmsd.

Usage: blob_kinds_test.py DIR PORT KMSD_PID BYOK_KEY_ID   (run by test_blob_kinds.sh)

DIR/byok-key.bin is the material of BYOK_KEY_ID (an eu-west key of tenant
demo): format 1 blobs are made with it here, byte for byte as releases
before format 2 made them in the HSM.

Prints "ok N - what" / "not ok N - what" per check; exits 1 on any failure.
"""
import hashlib
import http.client
import json
import os
import signal
import sys
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import audit_pb2 as apb
import fields_pb2 as fpb
import key_pb2 as kpb

DIR, PORT, PID, BYOK = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
count = failures = 0
CTX = {"conversation": "c-7", "tenant": "demo"}
PT = b"kinds-sentinel: +14155550123"


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    if not cond:
        failures += 1
    return cond


def api_key(who):
    with open(f"{DIR}/credentials/{who}.key") as f:
        return f.read().strip()


def call(service, method, req, resp_cls, who):
    """(status, message or error dict, request id)."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    conn.request("POST", f"/twirp/custos.v1.{service}/{method}", body=req.SerializeToString(),
                 headers={"Content-Type": "application/protobuf",
                          "Authorization": "Bearer " + api_key(who)})
    r = conn.getresponse()
    data = r.read()
    rid = r.getheader("X-Request-Id")
    conn.close()
    if r.status == 200:
        m = resp_cls()
        m.ParseFromString(data)
        return r.status, m, rid
    return r.status, json.loads(data), rid


def kcall(method, req, resp_cls, who="demo-broker"):
    return call("KeyService", method, req, resp_cls, who)


def refused(res, status, code):
    return res[0] == status and isinstance(res[1], dict) and res[1].get("code") == code


# ---- the operations ----------------------------------------------------------

def encrypt(key_id, pt=PT, who="demo-broker"):
    return kcall("Encrypt", kpb.EncryptRequest(key_id=key_id, plaintext=pt,
                                               encryption_context=CTX), kpb.EncryptResponse, who)


def gdk(key_id, who="demo-broker"):
    return kcall("GenerateDataKey", kpb.GenerateDataKeyRequest(key_id=key_id,
                                                               encryption_context=CTX),
                 kpb.GenerateDataKeyResponse, who)


def decrypt(blob, who="demo-broker"):
    return kcall("Decrypt", kpb.DecryptRequest(ciphertext=blob, encryption_context=CTX),
                 kpb.DecryptResponse, who)


def ddk(blob, who="demo-broker"):
    return kcall("DecryptDataKey", kpb.DecryptDataKeyRequest(ciphertext_blob=blob,
                                                             encryption_context=CTX),
                 kpb.DecryptDataKeyResponse, who)


def reencrypt(blob, dst, who="demo-broker"):
    return kcall("ReEncrypt", kpb.ReEncryptRequest(ciphertext=blob, source_encryption_context=CTX,
                                                   destination_key_id=dst,
                                                   destination_encryption_context=CTX),
                 kpb.ReEncryptResponse, who)


def enc_fields(key_id, value=PT, who="demo-broker"):
    return call("FieldService", "EncryptFields",
                fpb.EncryptFieldsRequest(key_id=key_id, encryption_context=CTX, fields=[
                    fpb.PlaintextField(name="msisdn", value=value,
                                       mode=fpb.FIELD_MODE_RANDOMIZED)]),
                fpb.EncryptFieldsResponse, who)


def dec_fields(key_id, blob, who="demo-broker"):
    return call("FieldService", "DecryptFields",
                fpb.DecryptFieldsRequest(key_id=key_id, encryption_context=CTX, fields=[
                    fpb.EncryptedField(name="msisdn", ciphertext=blob)]),
                fpb.DecryptFieldsResponse, who)


def kind_of(blob):
    """(format, kind) of a KeyService blob; kind None for format 1."""
    return blob[1], (blob[35 + blob[2]] if blob[1] == 2 else None)


# ---- policy ------------------------------------------------------------------

def load_policy():
    with open(f"{DIR}/policy.json") as f:
        return json.load(f)


def reload(policy):
    """Write the policy, SIGHUP kmsd, wait for the log line naming its digest."""
    text = json.dumps(policy, indent=2).encode()
    with open(f"{DIR}/policy.json.new", "wb") as f:
        f.write(text)
    os.rename(f"{DIR}/policy.json.new", f"{DIR}/policy.json")
    digest = hashlib.sha256(text).hexdigest()
    os.kill(PID, signal.SIGHUP)
    for _ in range(300):
        with open(f"{DIR}/kmsd.log") as f:
            log = f.read()
        if f"(sha256 {digest})" in log:
            return True
        if "refused, keeping the current policy" in log[-2000:]:
            break
        time.sleep(0.1)
    return False


def demo(policy):
    return next(t for t in policy["tenants"] if t["id"] == "demo")


def new_principal(policy, pid, **extra):
    key = "ck_" + os.urandom(24).hex()
    with open(f"{DIR}/credentials/{pid}.key", "w") as f:
        f.write(key + "\n")
    p = {"id": pid, "role": "broker", "home_region": "eu-west",
         "api_key_sha256": hashlib.sha256(key.encode()).hexdigest()}
    p.update(extra)
    demo(policy)["principals"].append(p)


def create_key(region="eu-west", spec=kpb.AES_256, usage=kpb.ENCRYPT_DECRYPT):
    s, m, _ = kcall("CreateKey", kpb.CreateKeyRequest(region=region, spec=spec, usage=usage),
                    kpb.CreateKeyResponse, "demo-admin")
    assert s == 200, (s, m)
    return m.key.key_id


# ---- audit -------------------------------------------------------------------

def audit_events(rids, seconds=30):
    """The audit events of the given request ids, from both regions' logs
    (exported by the global auditor); waits until every one is exported."""
    found = {}
    deadline = time.time() + seconds
    while time.time() < deadline:
        for region in ("eu-west", "us-east"):
            start = 0
            while True:
                s, m, _ = call("AuditService", "ExportAuditLog",
                               apb.ExportAuditLogRequest(region=region, start=start, count=10000),
                               apb.ExportAuditLogResponse, "auditor")
                if s != 200 or not m.entries:
                    break
                for e in m.entries:
                    ev = apb.AuditEvent()
                    ev.ParseFromString(e.event)
                    if ev.request_id in rids:
                        found[ev.request_id] = ev
                start += len(m.entries)
                if start >= m.head.tree_size:
                    break
        if all(r in found for r in rids):
            return found
        time.sleep(0.5)
    return found


def main():
    # Principals: dk-broker may only make and unwrap data keys (on the keys
    # whose grants say so), dec-broker only encrypt and decrypt messages,
    # geo-broker serves both regions.
    policy = load_policy()
    new_principal(policy, "dk-broker")
    new_principal(policy, "dec-broker")
    new_principal(policy, "geo-broker", allowed_regions=["us-east"])
    check(reload(policy), "policy with the test's principals loaded")

    K = create_key()
    K2 = create_key()
    K3 = create_key()
    KUS = create_key("us-east")
    KM = create_key(spec=kpb.METADATA_AES_HMAC, usage=kpb.METADATA_FIELDS)
    broker_ops = ["Encrypt", "Decrypt", "GenerateDataKey", "DecryptDataKey", "ReEncrypt"]
    demo(policy)["grants"] = [
        {"sid": f"{name}-full", "key_id": key, "principals": ["demo-broker"],
         "operations": broker_ops} for name, key in (("k", K), ("byok", BYOK))
    ] + [
        {"sid": f"{name}-dk", "key_id": key, "principals": ["dk-broker"],
         "operations": ["GenerateDataKey", "DecryptDataKey"]} for name, key in (("k", K),
                                                                               ("byok", BYOK))
    ] + [
        {"sid": f"{name}-dec", "key_id": key, "principals": ["dec-broker"],
         "operations": ["Encrypt", "Decrypt"]} for name, key in (("k", K), ("byok", BYOK))
    ]
    check(reload(policy), "policy with per-key grants loaded")

    # ---- the reported bypass ---------------------------------------------------
    s, e, _ = encrypt(K)
    assert s == 200, e
    check(kind_of(e.ciphertext) == (2, 1), "Encrypt writes format 2, kind 1 (data)")
    s, g, _ = gdk(K)
    assert s == 200, g
    check(kind_of(g.ciphertext_blob) == (2, 2), "GenerateDataKey writes format 2, kind 2 (data key)")
    r = ddk(e.ciphertext, "dk-broker")
    check(refused(r, 400, "invalid_argument") and PT not in json.dumps(r[1]).encode(),
          "a principal granted only GenerateDataKey/DecryptDataKey cannot read an Encrypt "
          "ciphertext through DecryptDataKey")
    bypass_rid = r[2]
    r = ddk(g.ciphertext_blob, "dk-broker")
    check(r[0] == 200 and r[1].plaintext == g.plaintext, "... and still unwraps its data keys")
    check(refused(decrypt(e.ciphertext, "dk-broker"), 403, "permission_denied"),
          "... and Decrypt stays refused to it (grant)")
    r = decrypt(g.ciphertext_blob, "dec-broker")
    check(refused(r, 400, "invalid_argument"),
          "the reverse: a Decrypt-only principal cannot unwrap a data key through Decrypt")
    check(r[1].get("msg") == "this ciphertext was made by GenerateDataKey: open it with "
          "DecryptDataKey", "the refusal says which operation opens it")

    # ---- every producer x every consumer ---------------------------------------
    s, re_e, _ = reencrypt(e.ciphertext, K2)
    s2, re_g, _ = reencrypt(g.ciphertext_blob, K2)
    s3, f, _ = enc_fields(KM)
    assert s == 200 and s2 == 200 and s3 == 200, (re_e, re_g, f)
    check(kind_of(re_e.ciphertext) == (2, 1) and kind_of(re_g.ciphertext) == (2, 2),
          "ReEncrypt keeps the kind of its source")
    producers = [
        ("Encrypt", e.ciphertext, "data", PT),
        ("GenerateDataKey", g.ciphertext_blob, "data key", g.plaintext),
        ("ReEncrypt(Encrypt)", re_e.ciphertext, "data", PT),
        ("ReEncrypt(GenerateDataKey)", re_g.ciphertext, "data key", g.plaintext),
        ("EncryptFields", f.fields[0].ciphertext, "field", PT),
    ]
    consumers = {
        "Decrypt": (lambda b: decrypt(b), "data"),
        "DecryptDataKey": (lambda b: ddk(b), "data key"),
        "ReEncrypt": (lambda b: reencrypt(b, K3), ("data", "data key")),
        "DecryptFields": (lambda b: dec_fields(KM, b), "field"),
    }
    for pname, blob, kind, want in producers:
        for cname, (fn, accepts) in consumers.items():
            r = fn(blob)
            must = kind in accepts if isinstance(accepts, tuple) else kind == accepts
            if not must:
                check(refused(r, 400, "invalid_argument"),
                      f"{cname} refuses what {pname} made (400)")
                continue
            if cname == "ReEncrypt":
                ok = r[0] == 200 and kind_of(r[1].ciphertext)[1] == {"data": 1, "data key": 2}[kind]
                opener = decrypt if kind == "data" else ddk
                o = opener(r[1].ciphertext) if ok else None
                ok = ok and o[0] == 200 and o[1].plaintext == want
            elif cname == "DecryptFields":
                ok = r[0] == 200 and r[1].fields[0].value == want
            else:
                ok = r[0] == 200 and r[1].plaintext == want
            check(ok, f"{cname} accepts what {pname} made, and gives back the original")

    # ---- a changed kind byte ------------------------------------------------------
    def with_kind(blob, k):
        b = bytearray(blob)
        b[35 + b[2]] = k
        return bytes(b)

    def as_format1(blob):
        r = blob[2]
        return bytes(blob[:1]) + b"\x01" + bytes(blob[2:35 + r]) + bytes(blob[36 + r:])

    check(refused(ddk(with_kind(e.ciphertext, 2), "dk-broker"), 400, "invalid_argument"),
          "an Encrypt blob relabelled 'data key' is refused by DecryptDataKey (tag)")
    check(refused(decrypt(with_kind(g.ciphertext_blob, 1), "dec-broker"), 400, "invalid_argument"),
          "a data key blob relabelled 'data' is refused by Decrypt (tag)")
    for name, blob in (("Encrypt", e.ciphertext), ("GenerateDataKey", g.ciphertext_blob)):
        for k in (0, 1, 2):
            if k == kind_of(blob)[1]:
                continue
            b = with_kind(blob, k)
            check(all(refused(x, 400, "invalid_argument") for x in
                      (decrypt(b), ddk(b), reencrypt(b, K3))),
                  f"{name}'s blob with kind byte {k}: Decrypt, DecryptDataKey, ReEncrypt refuse it")
        b = as_format1(blob)
        check(all(refused(x, 400, "invalid_argument") for x in
                  (decrypt(b), ddk(b), reencrypt(b, K3))),
              f"{name}'s blob relabelled format 1 (kind byte removed) is refused everywhere")
    for k in (3, 0x80, 0xFF):
        check(refused(decrypt(with_kind(e.ciphertext, k)), 400, "invalid_argument"),
              f"an unknown kind byte {k:#x} is refused")

    # ---- format 1 blobs --------------------------------------------------------
    with open(f"{DIR}/byok-key.bin", "rb") as fh:
        material = fh.read()

    def canonical(ctx):
        out = len(ctx).to_bytes(2, "big")
        for k in sorted(ctx, key=lambda x: x.encode()):
            kb, vb = k.encode(), ctx[k].encode()
            out += len(kb).to_bytes(2, "big") + kb + len(vb).to_bytes(2, "big") + vb
        return out

    def format1(pt, version=1):
        region = b"eu-west"
        iv = os.urandom(12)
        header = (b"\xc5\x01" + bytes([len(region)]) + region + bytes.fromhex(BYOK) +
                  version.to_bytes(4, "big") + iv)
        return header + AESGCM(material).encrypt(iv, pt, header + canonical(CTX))

    s, eb, _ = encrypt(BYOK)
    hl = 36 + eb.ciphertext[2]
    check(s == 200 and AESGCM(material).decrypt(eb.ciphertext[hl - 13:hl - 1],
                                                eb.ciphertext[hl:],
                                                eb.ciphertext[:hl] + canonical(CTX)) == PT,
          "a format 2 blob of the BYOK key decrypts outside Custos (header 36 + R, IV at 23 + R)")
    v1 = format1(PT)
    v1_dk = format1(os.urandom(32))
    r = decrypt(v1)
    check(r[0] == 200 and r[1].plaintext == PT,
          "format 1: Decrypt by a principal holding Decrypt and DecryptDataKey")
    r = ddk(v1_dk)
    check(r[0] == 200 and len(r[1].plaintext) == 32,
          "format 1: DecryptDataKey by a principal holding both")
    r1 = ddk(v1, "dk-broker")
    check(refused(r1, 403, "permission_denied"),
          "format 1: DecryptDataKey refused to a principal without Decrypt (the bypass stays "
          "closed for old blobs)")
    r2 = decrypt(v1, "dec-broker")
    check(refused(r2, 403, "permission_denied"),
          "format 1: Decrypt refused to a principal without DecryptDataKey")
    s, up, _ = reencrypt(v1, BYOK)
    check(s == 200 and kind_of(up.ciphertext) == (2, 0),
          "ReEncrypt turns a format 1 blob into format 2 of unknown kind (0)")
    r = decrypt(up.ciphertext)
    check(r[0] == 200 and r[1].plaintext == PT, "... which the holder of both grants decrypts")
    r3 = ddk(up.ciphertext, "dk-broker")
    check(refused(r3, 403, "permission_denied") and
          refused(decrypt(up.ciphertext, "dec-broker"), 403, "permission_denied"),
          "... and which stays closed to a principal holding only one of them")
    check(refused(decrypt(with_kind(up.ciphertext, 1), "dec-broker"), 400, "invalid_argument"),
          "... and cannot be relabelled 'data' to pass (tag)")
    for pos in (1 + 1 + 1 + 7 + 16 + 3, len(v1) - 20, len(v1) - 1):  # key version, body, tag
        b = bytearray(v1)
        b[pos] ^= 1
        check(refused(decrypt(bytes(b)), 400, "invalid_argument"),
              f"a format 1 blob with byte {pos} changed is refused")

    # ---- ReEncrypt across regions ------------------------------------------------
    s, src, _ = encrypt(K2, who="geo-broker")
    s2, src_us, _ = encrypt(KUS, who="geo-broker")
    assert s == 200 and s2 == 200, (src, src_us)
    res_refused = reencrypt(src.ciphertext, KUS, "geo-broker")
    check(refused(res_refused, 403, "permission_denied"),
          "a broker allowed in eu-west and us-east cannot ReEncrypt eu-west data under a us-east "
          "key (no route in the policy)")
    back_refused = reencrypt(src_us.ciphertext, K2, "geo-broker")
    check(refused(back_refused, 403, "permission_denied"), "... nor us-east data under an eu-west key")
    r = reencrypt(src.ciphertext, K3, "geo-broker")
    check(r[0] == 200, "same-region ReEncrypt is unaffected")
    r = reencrypt(src_us.ciphertext, KUS, "geo-broker")
    check(r[0] == 200, "same-region ReEncrypt in us-east is unaffected")

    demo(policy)["cross_region_re_encrypt"] = [{"from": "eu-west", "to": "us-east",
                                                "description": "test route"}]
    check(reload(policy), "policy naming the route eu-west -> us-east loaded")
    r = reencrypt(src.ciphertext, KUS, "geo-broker")
    ok = r[0] == 200 and r[1].key_id == KUS
    if ok:
        d = decrypt(r[1].ciphertext, "geo-broker")
        ok = d[0] == 200 and d[1].plaintext == PT
    check(ok, "with the route named, eu-west -> us-east ReEncrypt is allowed and decrypts in us-east")
    back_refused2 = reencrypt(src_us.ciphertext, K2, "geo-broker")
    check(refused(back_refused2, 403, "permission_denied"),
          "the route is one direction: us-east -> eu-west stays refused")
    check(reencrypt(src.ciphertext, K3, "geo-broker")[0] == 200,
          "same-region ReEncrypt still allowed")
    check(refused(reencrypt(src.ciphertext, KUS, "demo-broker"), 403, "permission_denied"),
          "the route does not widen a broker's regions (demo-broker is eu-west only)")

    # ---- the audit events ----------------------------------------------------------
    want = {
        bypass_rid: ("DecryptDataKey", "invalid_argument", "ciphertext.kind", "dk-broker"),
        r1[2]: ("DecryptDataKey", "permission_denied", "ciphertext.format1", "dk-broker"),
        r2[2]: ("Decrypt", "permission_denied", "ciphertext.format1", "dec-broker"),
        r3[2]: ("DecryptDataKey", "permission_denied", "ciphertext.format1", "dk-broker"),
        res_refused[2]: ("ReEncrypt", "permission_denied", "residency.re_encrypt", "geo-broker"),
        back_refused[2]: ("ReEncrypt", "permission_denied", "residency.re_encrypt", "geo-broker"),
        back_refused2[2]: ("ReEncrypt", "permission_denied", "residency.re_encrypt", "geo-broker"),
    }
    found = audit_events(set(want))
    for rid, (op, outcome, rule, who) in want.items():
        ev = found.get(rid)
        check(ev is not None and (ev.operation, ev.outcome, ev.rule, ev.principal) ==
              (op, outcome, rule, who),
              f"audit: {op} refused {outcome} by {who} carries rule {rule}"
              + ("" if ev is None else f" (got {ev.operation} {ev.outcome} {ev.rule!r})"))
    ev = found.get(res_refused[2])
    check(ev is not None and ev.key_id == KUS and ev.region == "us-east",
          "audit: the refused cross-region ReEncrypt names the destination key and region")

    print(f"{count - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


main()

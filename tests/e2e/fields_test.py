"""End-to-end test of FieldService through raw HTTP and Python protobuf.

Usage: fields_test.py DIR PORT KMSD_PID main|crash|after   (run by test_fields.sh)

  main   every behaviour against a running kmsd; saves what must survive a
         restart to DIR/fields-state.json
  crash  kmsd is down: write crash states of metadata keys (a half-made
         version with both HSM objects; a key marked DESTROYED whose two
         objects remain) into the store and the token
  after  kmsd restarted: indexes and deterministic ciphertexts are the same
         as before, old blobs decrypt, reconcile removed both objects of each
         crash state

Prints "ok N - what" / "not ok N - what" per check; exits 1 on any failure.
"""
import base64
import http.client
import json
import os
import sqlite3
import sys
import threading
import time

import fields_pb2 as fpb
import key_pb2 as kpb

# Rows written behind kmsd name their columns: later schemas add some.
VROW = "INSERT INTO key_versions (key_id, version, hsm_id, state, created_at) VALUES "

DIR, PORT, PID, PHASE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
STATE = f"{DIR}/fields-state.json"
SENTINEL = "+19995550100"  # a value that must never appear in any log or file
count = failures = 0

DET = fpb.FIELD_MODE_DETERMINISTIC
RND = fpb.FIELD_MODE_RANDOMIZED


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


def raw(path, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


CORR = {"id": None}  # when set, sent as X-Correlation-Id (to find the audit event)


def call(service, method, req, resp_cls, who="demo-broker", body=None):
    """(status, message or error dict)."""
    h = {"Content-Type": "application/protobuf"}
    if who:
        h["Authorization"] = "Bearer " + api_key(who)
    if CORR["id"]:
        h["X-Correlation-Id"] = CORR["id"]
    status, data = raw(f"/twirp/custos.v1.{service}/{method}",
                       req.SerializeToString() if body is None else body, h)
    if status == 200:
        m = resp_cls()
        m.ParseFromString(data)
        return status, m
    return status, json.loads(data)


def refused(res, status, code, msg_part=None):
    ok = res[0] == status and isinstance(res[1], dict) and res[1].get("code") == code
    if ok and msg_part is not None:
        ok = msg_part in res[1].get("msg", "")
    return ok


def create_key(spec=kpb.METADATA_AES_HMAC, region="eu-west", who="demo-admin", **kw):
    usage = kpb.METADATA_FIELDS if spec == kpb.METADATA_AES_HMAC else kpb.ENCRYPT_DECRYPT
    return call("KeyService", "CreateKey",
                kpb.CreateKeyRequest(region=region, spec=spec, usage=kw.pop("usage", usage),
                                     description="fields e2e", **kw),
                kpb.CreateKeyResponse, who)


def new_key(**kw):
    s, m = create_key(**kw)
    assert s == 200, (s, m)
    return m.key.key_id


def admin(method, req_cls, resp_cls, key_id, **kw):
    return call("KeyService", method, req_cls(key_id=key_id, **kw), resp_cls, "demo-admin")


def fields(*triples, canon=None):
    out = []
    for t in triples:
        name, value, mode = t[:3]
        f = fpb.PlaintextField(name=name, value=value if isinstance(value, bytes) else
                               value.encode(), mode=mode)
        if len(t) > 3:
            f.canonicalizer = t[3]
        out.append(f)
    return out


def enc(key_id, flds, ctx=None, who="demo-broker"):
    return call("FieldService", "EncryptFields",
                fpb.EncryptFieldsRequest(key_id=key_id, encryption_context=ctx or {},
                                         fields=flds), fpb.EncryptFieldsResponse, who)


def dec(key_id, efs, ctx=None, who="demo-broker"):
    return call("FieldService", "DecryptFields",
                fpb.DecryptFieldsRequest(key_id=key_id, encryption_context=ctx or {},
                                         fields=efs), fpb.DecryptFieldsResponse, who)


def ef(name, ct):
    return fpb.EncryptedField(name=name, ciphertext=ct)


def bidx(key_id, field, values, canon, bits=0, all_versions=False, who="demo-broker"):
    return call("FieldService", "BlindIndex",
                fpb.BlindIndexRequest(key_id=key_id, field=field, canonicalizer=canon,
                                      values=[v if isinstance(v, bytes) else v.encode()
                                              for v in values],
                                      length_bits=bits, all_versions=all_versions),
                fpb.BlindIndexResponse, who)


def one_index(key_id, field, value, canon, **kw):
    s, m = bidx(key_id, field, [value], canon, **kw)
    assert s == 200, (s, m)
    return m.versions[0].indexes[0]


def alive():
    try:
        os.kill(PID, 0)
        return True
    except OSError:
        return False


def token(region="eu-west"):
    import PyKCS11
    lib = PyKCS11.PyKCS11Lib()
    lib.load("/usr/lib/softhsm/libsofthsm2.so")
    slot = [s for s in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(s).label.strip() == f"custos-{region}"][0]
    s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    s.login(open(f"{DIR}/hsm/pins/{region}.pin").read().strip())
    return PyKCS11, s


def objects_by_label(label):
    P, s = token()
    hs = s.findObjects([(P.CKA_LABEL, label)])
    out = []
    for h in hs:
        a = s.getAttributeValue(h, [P.CKA_KEY_TYPE, P.CKA_ID, P.CKA_ENCRYPT, P.CKA_DECRYPT,
                                    P.CKA_SIGN, P.CKA_VERIFY, P.CKA_WRAP, P.CKA_UNWRAP,
                                    P.CKA_SENSITIVE, P.CKA_EXTRACTABLE, P.CKA_TOKEN])
        out.append({"type": a[0], "id": bytes(a[1]), "encrypt": a[2], "decrypt": a[3],
                    "sign": a[4], "verify": a[5], "wrap": a[6], "unwrap": a[7],
                    "sensitive": a[8], "extractable": a[9], "token": a[10]})
    s.logout()
    return P, out


def objects_by_id(hsm_id):
    P, s = token()
    n = len(s.findObjects([(P.CKA_ID, tuple(hsm_id))]))
    s.logout()
    return n


CTX = {"conversation": "c-1", "tenant": "demo"}

# ============================================================================

if PHASE == "main":
    # ---- keys -----------------------------------------------------------------
    s, m = create_key()
    check(s == 200 and m.key.spec == kpb.METADATA_AES_HMAC and m.key.usage == kpb.METADATA_FIELDS
          and m.key.state == kpb.ENABLED and m.key.current_version == 1,
          "CreateKey makes an ENABLED METADATA_AES_HMAC key, version 1")
    K = m.key.key_id
    s, d = admin("DescribeKey", kpb.DescribeKeyRequest, kpb.DescribeKeyResponse, K)
    check(s == 200 and d.key.spec == kpb.METADATA_AES_HMAC, "DescribeKey reports the spec")
    check(refused(create_key(origin=kpb.EXTERNAL), 400, "invalid_argument"),
          "a metadata key cannot be EXTERNAL (BYOK imports single AES keys)")
    check(refused(create_key(usage=kpb.ENCRYPT_DECRYPT), 400, "invalid_argument"),
          "a metadata key with usage ENCRYPT_DECRYPT is refused")
    check(refused(create_key(spec=kpb.AES_256, usage=kpb.METADATA_FIELDS), 400,
                  "invalid_argument"), "an AES_256 key with usage METADATA_FIELDS is refused")
    s, m = create_key(usage=kpb.KEY_USAGE_UNSPECIFIED)
    check(s == 200 and m.key.usage == kpb.METADATA_FIELDS,
          "usage may be left unset for a metadata key")

    P, objs = objects_by_label(f"custos:key:{K}:v1")
    types = sorted(o["type"] for o in objs)
    aes = [o for o in objs if o["type"] == P.CKK_AES]
    mac = [o for o in objs if o["type"] == P.CKK_GENERIC_SECRET]
    check(len(objs) == 2 and types == sorted([P.CKK_AES, P.CKK_GENERIC_SECRET]) and
          objs[0]["id"] == objs[1]["id"],
          "version 1 is two token objects under one CKA_ID: an AES key and a generic secret")
    check(len(aes) == 1 and aes[0]["encrypt"] and aes[0]["decrypt"] and not aes[0]["sign"] and
          not aes[0]["wrap"] and not aes[0]["unwrap"] and len(mac) == 1 and mac[0]["sign"] and
          mac[0]["verify"] and not mac[0]["encrypt"] and not mac[0]["decrypt"] and
          not mac[0]["wrap"],
          "the AES key only encrypts/decrypts, the HMAC key only signs/verifies")
    check(all(o["sensitive"] and not o["extractable"] and o["token"] for o in objs),
          "both are sensitive, non-extractable token objects")

    # ---- EncryptFields / DecryptFields ---------------------------------------
    eight = fields(("to", "+14155550123", DET), ("from", "+14155550123", DET),
                   ("rcs.session_id", "e2ee-7f3a", DET), ("sent_at", "1764150000", RND),
                   ("conversation", "c-1", RND), ("subject", SENTINEL, RND),
                   ("device", "pixel-9", RND), ("empty", b"", DET))
    s, e1 = enc(K, eight, CTX)
    check(s == 200 and e1.key_version == 1 and len(e1.fields) == 8 and
          [f.name for f in e1.fields] == [f.name for f in eight],
          "EncryptFields encrypts 8 fields in one call, in request order")
    check(all(f.ciphertext[0] == 0xF1 and len(f.ciphertext) == len(p.value) + 34 and
              f.ciphertext[1] == p.mode and f.ciphertext[2:6] == b"\0\0\0\1"
              for f, p in zip(e1.fields, eight)),
          "each blob is format 0xF1, its mode, key version 1, and 34 bytes of overhead")
    check(all(p.value not in f.ciphertext for f, p in zip(e1.fields, eight) if p.value),
          "no blob contains its plaintext")
    s, d1 = dec(K, e1.fields, CTX)
    check(s == 200 and [f.value for f in d1.fields] == [p.value for p in eight] and
          [f.mode for f in d1.fields] == [p.mode for p in eight] and
          all(f.key_version == 1 for f in d1.fields),
          "DecryptFields returns every value, mode and key version")
    s, d1r = dec(K, e1.fields, dict(reversed(list(CTX.items()))))
    check(s == 200 and d1r.fields[0].value == b"+14155550123",
          "the order of context pairs does not matter")

    s, e2 = enc(K, eight, CTX)
    same = [a.ciphertext == b.ciphertext for a, b in zip(e1.fields, e2.fields)]
    check(same == [p.mode == DET for p in eight],
          "deterministic fields repeat exactly; randomized fields never do")
    check(e1.fields[0].ciphertext != e1.fields[1].ciphertext and
          e1.fields[0].ciphertext[6:18] != e1.fields[1].ciphertext[6:18],
          "one value in two fields ('to', 'from'): different IVs and ciphertexts")
    s, e3 = enc(K, fields(("to", "+14155550123", DET)), {"conversation": "c-2", "tenant": "demo"})
    check(s == 200 and e3.fields[0].ciphertext != e1.fields[0].ciphertext,
          "another context gives another deterministic ciphertext")
    K2 = new_key()
    s, e4 = enc(K2, fields(("to", "+14155550123", DET)), CTX)
    check(s == 200 and e4.fields[0].ciphertext != e1.fields[0].ciphertext,
          "another key gives another deterministic ciphertext")
    KO = new_key(who="other-admin")
    s, e5 = enc(KO, fields(("to", "+14155550123", DET)), CTX, who="other-broker")
    check(s == 200 and e5.fields[0].ciphertext not in (e1.fields[0].ciphertext,
                                                        e4.fields[0].ciphertext),
          "another tenant's key gives another deterministic ciphertext")
    s, e6 = enc(K, fields(("to", "+1 (415) 555-0123", DET, fpb.CANONICALIZER_E164),
                          ("from", "tel:+1-415-555-0123", DET, fpb.CANONICALIZER_E164)), CTX)
    s2, d6 = dec(K, e6.fields, CTX)
    check(s == 200 and e6.fields[0].ciphertext == e1.fields[0].ciphertext and
          e6.fields[1].ciphertext == e1.fields[1].ciphertext and
          d6.fields[0].value == b"+14155550123",
          "canonicalised before encryption: any spelling of the number gives the same "
          "deterministic blob, and decrypts to the canonical form")
    check(refused(enc(K, fields(("to", "415-555-0123", DET, fpb.CANONICALIZER_E164)), CTX), 400,
                  "invalid_argument", "field 0: not an E.164 number"),
          "a value its canonicalizer refuses is refused, by index")

    # ---- tampering, wrong inputs ---------------------------------------------
    three = list(e1.fields[:2]) + [e1.fields[3]]
    bad = 0
    total = 0
    for i in range(3):
        for pos in range(len(three[i].ciphertext)):
            t = bytearray(three[i].ciphertext)
            t[pos] ^= 0x01
            fl = [ef(f.name, f.ciphertext) for f in three]
            fl[i] = ef(three[i].name, bytes(t))
            r = dec(K, fl, CTX)
            total += 1
            if not (r[0] == 400 and r[1].get("code") == "invalid_argument" and
                    r[1].get("msg", "").startswith(f"field {i}:")):
                bad += 1
    check(bad == 0, f"a flipped bit in any of {total} bytes of any field is refused, naming "
                    "that field's index")
    check(refused(dec(K, three, {"conversation": "c-2", "tenant": "demo"}), 400,
                  "invalid_argument", "ciphertext or encryption context does not match") and
          refused(dec(K, three, {}), 400, "invalid_argument") and
          refused(dec(K, three, dict(CTX, extra="x")), 400, "invalid_argument"),
          "a different, missing or extra context is refused")
    check(refused(dec(K, [ef("cc", e1.fields[0].ciphertext)], CTX), 400, "invalid_argument"),
          "a blob presented under another field name is refused")
    check(refused(dec(K, [ef("to", e1.fields[1].ciphertext), ef("from", e1.fields[0].ciphertext)],
                      CTX), 400, "invalid_argument", "field 0:"),
          "swapping two fields' blobs is refused")
    check(refused(dec(K, [ef("to", e1.fields[0].ciphertext[:-1])], CTX), 400,
                  "invalid_argument") and
          refused(dec(K, [ef("to", e1.fields[0].ciphertext[:33])], CTX), 400,
                  "invalid_argument") and
          refused(dec(K, [ef("to", b"")], CTX), 400, "invalid_argument"),
          "truncated and empty blobs are refused")
    check(refused(dec(K2, [ef("to", e1.fields[0].ciphertext)], CTX), 400, "invalid_argument",
                  "does not match"),
          "a blob offered to another key is refused like a tampered one")
    s, m = enc(K, fields(("to", "x", DET)), CTX)
    t = bytearray(m.fields[0].ciphertext)
    t[5] = 9  # a version the key does not have
    check(refused(dec(K, [ef("to", bytes(t))], CTX), 400, "invalid_argument", "does not match"),
          "a blob naming a version the key lacks is refused")

    # ---- key separation between services --------------------------------------
    A = new_key(spec=kpb.AES_256)
    check(refused(enc(A, fields(("to", "x", DET))), 400, "invalid_argument") and
          refused(bidx(A, "to", ["x"], fpb.CANONICALIZER_RAW), 400, "invalid_argument"),
          "an AES_256 key is refused by FieldService")
    r = call("KeyService", "Encrypt", kpb.EncryptRequest(key_id=K, plaintext=b"x"),
             kpb.EncryptResponse)
    r2 = call("KeyService", "GenerateDataKey", kpb.GenerateDataKeyRequest(key_id=K),
              kpb.GenerateDataKeyResponse)
    check(refused(r, 400, "invalid_argument") and refused(r2, 400, "invalid_argument"),
          "a metadata key is refused by KeyService's Encrypt and GenerateDataKey")

    # ---- limits ---------------------------------------------------------------
    def many(n, size=1, name="f"):
        return [fpb.PlaintextField(name=f"{name}{i}", value=b"v" * size, mode=RND)
                for i in range(n)]
    s, m32 = enc(K, many(32), CTX)
    check(s == 200 and len(m32.fields) == 32 and dec(K, m32.fields, CTX)[0] == 200,
          "32 fields per call are accepted both ways")
    check(refused(enc(K, many(33)), 400, "invalid_argument", "1..32") and
          refused(enc(K, []), 400, "invalid_argument", "1..32") and
          refused(dec(K, list(m32.fields) + [m32.fields[0]], CTX), 400, "invalid_argument") and
          refused(dec(K, [], CTX), 400, "invalid_argument"),
          "33 or 0 fields are refused both ways")
    check(enc(K, fields(("n" * 64, "v", RND)))[0] == 200 and
          refused(enc(K, fields(("n" * 65, "v", RND))), 400, "invalid_argument", "field 0:") and
          refused(enc(K, fields(("", "v", RND))), 400, "invalid_argument") and
          refused(enc(K, fields(("a b", "v", RND))), 400, "invalid_argument") and
          refused(enc(K, fields(("caf\u00e9", "v", RND))), 400, "invalid_argument"),
          "field names: 64 bytes of [A-Za-z0-9._:/-] at most; empty or others refused")
    check(enc(K, many(1, 4096))[0] == 200 and
          refused(enc(K, many(2, 1) + many(1, 4097, "g")), 400, "invalid_argument",
                  "field 2: value longer than 4096"),
          "values up to 4096 bytes; 4097 refused, by index")
    check(refused(enc(K, many(17, 4096)), 400, "invalid_argument", "65536"),
          "more than 65536 value bytes in one call are refused")
    check(refused(enc(K, [fpb.PlaintextField(name="to", value=b"x")]), 400, "invalid_argument",
                  "mode") and
          refused(enc(K, [fpb.PlaintextField(name="to", value=b"x", mode=7)]), 400,
                  "invalid_argument"),
          "a field without a valid mode is refused")
    check(refused(enc(K, fields(("to", "x", DET)), {f"k{i}": "v" for i in range(65)}), 400,
                  "invalid_argument"), "context limits apply as for Encrypt")
    v32 = [f"+1415555{i:04d}" for i in range(32)]
    s, b32 = bidx(K, "to", v32, fpb.CANONICALIZER_E164)
    check(s == 200 and len(b32.versions[0].indexes) == 32 and
          refused(bidx(K, "to", v32 + ["+14155550000"], fpb.CANONICALIZER_E164), 400,
                  "invalid_argument") and
          refused(bidx(K, "to", [], fpb.CANONICALIZER_E164), 400, "invalid_argument"),
          "BlindIndex takes 1..32 values")
    lens = {b: bidx(K, "to", ["x"], fpb.CANONICALIZER_RAW, bits=b) for b in (8, 20, 256, 0)}
    check(all(lens[b][0] == 200 for b in lens) and
          len(lens[8][1].versions[0].indexes[0]) == 1 and
          len(lens[20][1].versions[0].indexes[0]) == 3 and
          lens[20][1].versions[0].indexes[0][2] & 0x0F == 0 and
          len(lens[256][1].versions[0].indexes[0]) == 32 and
          len(lens[0][1].versions[0].indexes[0]) == 16 and lens[0][1].length_bits == 128,
          "index lengths 8..256 bits (default 128), unused low bits zero")
    check(refused(bidx(K, "to", ["x"], fpb.CANONICALIZER_RAW, bits=7), 400, "invalid_argument") and
          refused(bidx(K, "to", ["x"], fpb.CANONICALIZER_RAW, bits=257), 400,
                  "invalid_argument") and
          refused(bidx(K, "to", ["x"], fpb.CANONICALIZER_UNSPECIFIED), 400,
                  "invalid_argument") and
          refused(bidx(K, "to", ["x" * 4097], fpb.CANONICALIZER_RAW), 400, "invalid_argument") and
          refused(bidx(K, "", ["x"], fpb.CANONICALIZER_RAW), 400, "invalid_argument"),
          "BlindIndex refuses bad lengths, a missing canonicalizer, big values, no field")

    # ---- blind indexes ----------------------------------------------------------
    spellings = ["+14155550123", "+1 (415) 555-0123", "+1-415-555-0123", "tel:+1.415.555.0123",
                 " +1 415 555 0123 "]
    s, bs = bidx(K, "to", spellings, fpb.CANONICALIZER_E164)
    check(s == 200 and len(set(bs.versions[0].indexes)) == 1 and bs.versions[0].key_version == 1,
          "every spelling of +1 415 555 0123 gives one index, under version 1")
    IDX_TO_V1 = bs.versions[0].indexes[0]
    for bad_num in ("4155550123", "+1 415 FLOWERS", "+1 415 555 0123 ext 7", "00 1 415 555 0123",
                    "+123"):
        r = bidx(K, "to", ["+14155550123", bad_num], fpb.CANONICALIZER_E164)
        if not refused(r, 400, "invalid_argument", "value 1: not an E.164 number"):
            check(False, f"'{bad_num}' should be refused as value 1")
            break
    else:
        check(True, "non-numbers are refused, naming the value's index and never the value")
    check(one_index(K, "from", "+14155550123", fpb.CANONICALIZER_E164) != IDX_TO_V1,
          "one number in two fields: different indexes")
    check(one_index(K, "to", "+14155550123", fpb.CANONICALIZER_RAW) != IDX_TO_V1,
          "one value under two canonicalizers: different indexes")
    check(one_index(K2, "to", "+14155550123", fpb.CANONICALIZER_E164) != IDX_TO_V1 and
          one_index(KO, "to", "+14155550123", fpb.CANONICALIZER_E164,
                    who="other-broker") != IDX_TO_V1,
          "another key or another tenant: different indexes")
    check(one_index(K, "to", "+14155550123", fpb.CANONICALIZER_E164, bits=32) == IDX_TO_V1[:4],
          "a 32-bit index is the prefix of the 128-bit one (truncation, documented)")
    e_a = one_index(K, "email", "Alice@Example.COM", fpb.CANONICALIZER_EMAIL)
    e_b = one_index(K, "email", "Alice@example.com", fpb.CANONICALIZER_EMAIL)
    e_c = one_index(K, "email", "alice@example.com", fpb.CANONICALIZER_EMAIL)
    check(e_a == e_b and e_a != e_c,
          "EMAIL: the domain's case does not matter, the local part's does")
    ci = [one_index(K, "email", x, fpb.CANONICALIZER_EMAIL_CASE_INSENSITIVE)
          for x in ("Alice@Example.COM", "alice@example.com", "ALICE@EXAMPLE.COM.")]
    check(len(set(ci)) == 1 and ci[0] != e_c,
          "EMAIL_CASE_INSENSITIVE: one index for every case (and not EMAIL's index)")
    check(refused(bidx(K, "email", ["alice"], fpb.CANONICALIZER_EMAIL), 400, "invalid_argument",
                  "value 0: not an email address"), "a non-address is refused")
    raw_v = bytes(range(256))
    check(len(one_index(K, "blob", raw_v, fpb.CANONICALIZER_RAW)) == 16,
          "RAW indexes any bytes")
    # One round trip per message: ciphertexts and indexes together.
    withidx = [fpb.PlaintextField(name="to", value=b"+1 (415) 555-0123", mode=RND,
                                  canonicalizer=fpb.CANONICALIZER_E164, index_length_bits=128),
               fpb.PlaintextField(name="email", value=b"Alice@Example.COM", mode=RND,
                                  canonicalizer=fpb.CANONICALIZER_EMAIL, index_length_bits=64),
               fpb.PlaintextField(name="blob", value=raw_v, mode=DET, index_length_bits=20),
               fpb.PlaintextField(name="note", value=b"no index", mode=RND)]
    s, wi = enc(K, withidx, CTX)
    check(s == 200 and wi.fields[0].blind_index == IDX_TO_V1 and
          wi.fields[1].blind_index == e_a[:8] and
          wi.fields[2].blind_index == one_index(K, "blob", raw_v, fpb.CANONICALIZER_RAW,
                                                bits=20) and
          wi.fields[3].blind_index == b"",
          "EncryptFields returns, on request, exactly BlindIndex's index in the same round trip")
    check(s == 200 and dec(K, wi.fields, CTX)[0] == 200,
          "DecryptFields takes those fields back as they are (the index is ignored)")
    check(refused(enc(K, [fpb.PlaintextField(name="to", value=b"x", mode=RND,
                                             index_length_bits=7)]), 400, "invalid_argument",
                  "field 0: index_length_bits") and
          refused(enc(K, [fpb.PlaintextField(name="to", value=b"x", mode=RND,
                                             index_length_bits=257)]), 400, "invalid_argument"),
          "an index length outside 8..256 is refused")

    # ---- rotation -----------------------------------------------------------------
    s, m = admin("RotateKey", kpb.RotateKeyRequest, kpb.RotateKeyResponse, K)
    check(s == 200 and m.key.current_version == 2, "RotateKey adds version 2")
    P, objs2 = objects_by_label(f"custos:key:{K}:v2")
    check(len(objs2) == 2 and objs2[0]["id"] == objs2[1]["id"] and objs2[0]["id"] != objs[0]["id"],
          "version 2 is again two objects under one new CKA_ID")
    s, e7 = enc(K, fields(("to", "+14155550123", DET)), CTX)
    check(s == 200 and e7.key_version == 2 and e7.fields[0].ciphertext[5] == 2 and
          e7.fields[0].ciphertext != e1.fields[0].ciphertext,
          "after rotation EncryptFields uses version 2 (another deterministic ciphertext)")
    s, d7 = dec(K, [e1.fields[0], e7.fields[0], e1.fields[3]], CTX)
    check(s == 200 and [f.key_version for f in d7.fields] == [1, 2, 1] and
          d7.fields[0].value == d7.fields[1].value == b"+14155550123",
          "one DecryptFields call decrypts fields of versions 1 and 2 together")
    s, cur = bidx(K, "to", ["+1 415 555 0123"], fpb.CANONICALIZER_E164)
    s2, both = bidx(K, "to", ["+1 415 555 0123", "+442079460958"], fpb.CANONICALIZER_E164,
                    all_versions=True)
    check(s == 200 and [v.key_version for v in cur.versions] == [2] and
          cur.versions[0].indexes[0] != IDX_TO_V1,
          "BlindIndex answers under the current version by default")
    check(s2 == 200 and [v.key_version for v in both.versions] == [2, 1] and
          both.versions[0].indexes[0] == cur.versions[0].indexes[0] and
          both.versions[1].indexes[0] == IDX_TO_V1 and len(both.versions[1].indexes) == 2,
          "all_versions: newest first, the old version's index unchanged (dual-write, query both)")

    # A key with many versions: versions x values is bounded.
    K3 = new_key()
    for _ in range(8):
        admin("RotateKey", kpb.RotateKeyRequest, kpb.RotateKeyResponse, K3)
    vals = [f"v{i}" for i in range(32)]
    s, m9 = bidx(K3, "f", vals[:28], fpb.CANONICALIZER_RAW, all_versions=True)
    check(s == 200 and [v.key_version for v in m9.versions] == list(range(9, 0, -1)),
          "9 versions x 28 values = 252 indexes in one call")
    check(refused(bidx(K3, "f", vals, fpb.CANONICALIZER_RAW, all_versions=True), 400,
                  "invalid_argument", "256"),
          "9 versions x 32 values = 288 indexes: refused (limit 256)")

    # ---- policy, residency ------------------------------------------------------------
    other = enc(K, fields(("to", "x", DET)), who="other-broker")
    missing = enc(os.urandom(16).hex(), fields(("to", "x", DET)), who="other-broker")
    check(refused(other, 404, "not_found") and other[1] == missing[1] and
          refused(dec(K, e1.fields, CTX, who="other-broker"), 404, "not_found") and
          refused(bidx(K, "to", ["x"], fpb.CANONICALIZER_RAW, who="other-broker"), 404,
                  "not_found"),
          "another tenant's broker: every method answers exactly as for a missing key")
    check(refused(enc(K, fields(("to", "x", DET)), who="demo-admin"), 403, "permission_denied")
          and refused(bidx(K, "to", ["x"], fpb.CANONICALIZER_RAW, who="demo-admin"), 403,
                      "permission_denied"),
          "a key admin may not use FieldService")
    check(refused(enc(K, fields(("to", "x", DET)), who=None), 401, "unauthenticated"),
          "no credentials: unauthenticated")
    KU = new_key(region="us-east")
    check(refused(enc(KU, fields(("to", "x", DET))), 403, "permission_denied") and
          refused(bidx(KU, "to", ["x"], fpb.CANONICALIZER_RAW), 403, "permission_denied"),
          "residency: an eu-west broker may not use a us-east metadata key")
    s, eu = enc(KU, fields(("to", "x", DET)), who="demo-broker-us")
    check(s == 200 and dec(KU, eu.fields, who="demo-broker-us")[0] == 200,
          "residency: the us-east broker may")

    # ---- states ------------------------------------------------------------------------
    admin("DisableKey", kpb.DisableKeyRequest, kpb.DisableKeyResponse, K2)
    check(refused(enc(K2, fields(("to", "x", DET))), 412, "failed_precondition") and
          refused(dec(K2, e4.fields, CTX), 412, "failed_precondition") and
          refused(bidx(K2, "to", ["x"], fpb.CANONICALIZER_RAW), 412, "failed_precondition"),
          "a disabled metadata key refuses all three methods")
    admin("EnableKey", kpb.EnableKeyRequest, kpb.EnableKeyResponse, K2)
    check(dec(K2, e4.fields, CTX)[0] == 200, "enabled again, it decrypts")

    KD = new_key()
    admin("RotateKey", kpb.RotateKeyRequest, kpb.RotateKeyResponse, KD)
    s, ed = enc(KD, fields(("to", "x", DET)))
    s, m = admin("ScheduleKeyDeletion", kpb.ScheduleKeyDeletionRequest,
                 kpb.ScheduleKeyDeletionResponse, KD, pending_window_days=1)
    deadline, state = time.time() + 20, None
    while time.time() < deadline:
        s, m = admin("DescribeKey", kpb.DescribeKeyRequest, kpb.DescribeKeyResponse, KD)
        state = m.key.state if s == 200 else None
        if state == kpb.DESTROYED:
            break
        time.sleep(0.5)
    left = objects_by_label(f"custos:key:{KD}:v1")[1] + objects_by_label(f"custos:key:{KD}:v2")[1]
    check(state == kpb.DESTROYED and left == [],
          "the sweeper destroys a metadata key: all four objects of its two versions are gone")
    check(refused(dec(KD, ed.fields), 412, "failed_precondition"),
          "a destroyed metadata key's blobs no longer decrypt")

    # ---- hostile bodies ------------------------------------------------------------------
    auth = {"Authorization": "Bearer " + api_key("demo-broker"),
            "Content-Type": "application/protobuf"}
    st, data = raw("/twirp/custos.v1.FieldService/EncryptFields", b"\xff\xff\xff\xff\x0f", auth)
    st2, data2 = raw("/twirp/custos.v1.FieldService/Nope", b"", auth)
    check(st == 400 and json.loads(data)["code"] == "malformed" and st2 == 404 and
          json.loads(data2)["code"] == "bad_route",
          "garbage protobuf: malformed; unknown FieldService method: bad_route")

    # ---- concurrency ------------------------------------------------------------------------
    errs, ops = [0], [0]
    lock = threading.Lock()

    def worker(i):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        h = dict(auth)
        le = lo = 0
        end = time.time() + 4
        while time.time() < end:
            try:
                v = os.urandom(8).hex().encode()
                req = fpb.EncryptFieldsRequest(key_id=K, encryption_context={"w": str(i)},
                                               fields=fields(("a", v, DET), ("b", v, RND)))
                conn.request("POST", "/twirp/custos.v1.FieldService/EncryptFields",
                             req.SerializeToString(), h)
                r = conn.getresponse()
                d = r.read()
                if r.status != 200:
                    le += 1
                    continue
                e = fpb.EncryptFieldsResponse.FromString(d)
                conn.request("POST", "/twirp/custos.v1.FieldService/DecryptFields",
                             fpb.DecryptFieldsRequest(key_id=K, encryption_context={"w": str(i)},
                                                      fields=e.fields).SerializeToString(), h)
                r = conn.getresponse()
                d = r.read()
                out = fpb.DecryptFieldsResponse.FromString(d) if r.status == 200 else None
                if out is None or [f.value for f in out.fields] != [v, v]:
                    le += 1
                lo += 2
            except Exception:
                le += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        with lock:
            errs[0] += le
            ops[0] += lo

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    check(errs[0] == 0 and ops[0] > 50,
          f"8 concurrent clients for 4 s: {ops[0]} calls, {errs[0]} errors")
    check(alive(), "kmsd is alive after all of the above")

    # ---- audit: every call is an event with key and version, never a value -------
    def tagged(tag, fn, *args, **kw):
        CORR["id"] = tag
        try:
            return fn(*args, **kw)
        finally:
            CORR["id"] = None
    tagged("fa-enc", enc, K, fields(("to", SENTINEL, DET)), CTX)
    tagged("fa-dec", dec, K, [e1.fields[0], e7.fields[0]], CTX)
    tagged("fa-idx", bidx, K, "to", [SENTINEL], fpb.CANONICALIZER_E164)
    tagged("fa-idx-all", bidx, K, "to", [SENTINEL], fpb.CANONICALIZER_E164, all_versions=True)
    t = bytearray(e1.fields[0].ciphertext)
    t[-1] ^= 1
    tagged("fa-bad", dec, K, [ef("to", bytes(t))], CTX)
    tagged("fa-other", enc, K, fields(("to", SENTINEL, DET)), who="other-broker")
    tagged("fa-limit", enc, K, fields(("to", SENTINEL + "x" * 4096, DET)))
    import audit_lib
    import audit_pb2 as apb
    auditor = audit_lib.Client(PORT, f"{DIR}/credentials/auditor.key")
    want = {"fa-enc", "fa-dec", "fa-idx", "fa-idx-all", "fa-bad", "fa-other", "fa-limit"}
    got, raw_events = {}, []
    for _ in range(40):  # the signed head trails the log by up to a second
        _, evs, raw_events = audit_lib.export_all(auditor, "eu-west")
        got = {e.correlation_id: e for e in evs if e.correlation_id in want}
        if set(got) == want:
            break
        time.sleep(0.25)
    ev = lambda tag: got.get(tag, apb.AuditEvent())  # noqa: E731
    check(set(got) == want, f"every tagged FieldService call has an audit event ({len(got)}/7)")
    check(ev("fa-enc").operation == "EncryptFields" and ev("fa-enc").key_id == K and
          ev("fa-enc").key_version == 2 and ev("fa-enc").outcome == "ok" and
          ev("fa-enc").principal == "demo-broker" and ev("fa-enc").token == "custos-eu-west" and
          ev("fa-enc").rule,
          "EncryptFields: operation, principal, key, token, rule, and the version that encrypted")
    check(ev("fa-dec").operation == "DecryptFields" and ev("fa-dec").key_version == 1 and
          ev("fa-idx").operation == "BlindIndex" and ev("fa-idx").key_version == 2 and
          ev("fa-idx-all").key_version == 1,
          "DecryptFields and BlindIndex(all_versions) record the oldest version used, "
          "BlindIndex the current one")
    check(ev("fa-bad").outcome == "invalid_argument" and ev("fa-bad").key_id == K and
          ev("fa-bad").detail.startswith("field 0:") and
          ev("fa-other").outcome == "not_found" and ev("fa-other").key_id == K and
          ev("fa-other").rule == "tenant" and ev("fa-limit").outcome == "invalid_argument",
          "refusals are audited with the key (even another tenant's) and the rule or reason")
    check(not any(SENTINEL.encode() in r or b"4155550123" in r for r in raw_events),
          "no audit event holds a field value")

    # What must survive a restart, and a key for the crash states.
    KX = new_key()
    s, ix = enc(K, fields(("to", "+14155550123", DET)), CTX)
    json.dump({"K": K, "KX": KX, "e1": [[f.name, f.ciphertext.hex()] for f in e1.fields],
               "e7": e7.fields[0].ciphertext.hex(), "idx_v1": IDX_TO_V1.hex(),
               "both": [[v.key_version, [i.hex() for i in v.indexes]] for v in both.versions]},
              open(STATE, "w"))

# ============================================================================

elif PHASE == "crash":
    st = json.load(open(STATE))
    now = int(time.time())
    db = sqlite3.connect(f"{DIR}/kmsd.db")
    # A rotation of K that crashed after both HSM objects were made, before
    # they were locked (escrow at birth seals, then locks): incomplete, so
    # never acknowledged. (A complete half-made version is finished at
    # start instead: test_reconcile.)
    last = db.execute("SELECT last_version FROM keys WHERE key_id = ?", (st["K"],)).fetchone()[0]
    half_id = os.urandom(16)
    db.execute("UPDATE keys SET last_version = ? WHERE key_id = ?", (last + 1, st["K"]))
    db.execute(VROW + "(?, ?, ?, 0, ?)",
               (st["K"], last + 1, half_id, now))
    # KX: the sweeper marked it DESTROYED, then crashed before the HSM.
    kx_id = db.execute("SELECT hsm_id FROM key_versions WHERE key_id = ?",
                       (st["KX"],)).fetchone()[0]
    db.execute("UPDATE keys SET state = 5, deletion_at = ? WHERE key_id = ?", (now, st["KX"]))
    db.execute("UPDATE key_versions SET state = 2 WHERE key_id = ?", (st["KX"],))
    db.commit()
    db.close()
    P, s = token()
    label = f"custos:key:{st['K']}:v{last + 1}"
    base = [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_VALUE_LEN, 32), (P.CKA_TOKEN, True),
            (P.CKA_PRIVATE, True), (P.CKA_SENSITIVE, True), (P.CKA_ID, tuple(half_id)),
            (P.CKA_LABEL, label), (P.CKA_EXTRACTABLE, True)]
    s.generateKey(base + [(P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_ENCRYPT, True)],
                  P.Mechanism(P.CKM_AES_KEY_GEN))
    s.generateKey(base + [(P.CKA_KEY_TYPE, P.CKK_GENERIC_SECRET), (P.CKA_SIGN, True)],
                  P.Mechanism(P.CKM_GENERIC_SECRET_KEY_GEN))
    s.logout()
    st.update({"half_id": half_id.hex(), "half_version": last + 1, "kx_id": bytes(kx_id).hex()})
    json.dump(st, open(STATE, "w"))
    check(objects_by_id(half_id) == 2 and objects_by_id(bytes(kx_id)) == 2,
          "crash states written: a half-made metadata version and a destroyed key, "
          "two objects each")

# ============================================================================

else:
    st = json.load(open(STATE))
    K = st["K"]
    check(objects_by_id(bytes.fromhex(st["half_id"])) == 0,
          "reconcile destroyed both objects of the half-made metadata version")
    check(objects_by_id(bytes.fromhex(st["kx_id"])) == 0,
          "reconcile destroyed both leftover objects of the destroyed metadata key")
    s, m = admin("DescribeKey", kpb.DescribeKeyRequest, kpb.DescribeKeyResponse, K)
    check(s == 200 and m.key.current_version == 2 and len(m.key.versions) == 2,
          "the live key is still at version 2")
    s, both = bidx(K, "to", ["+1 415 555 0123", "+442079460958"], fpb.CANONICALIZER_E164,
                   all_versions=True)
    check(s == 200 and [[v.key_version, [i.hex() for i in v.indexes]] for v in both.versions]
          == st["both"], "indexes under both versions are the same after a restart")
    s, e = enc(K, fields(("to", "+14155550123", DET)), CTX)
    check(s == 200 and e.fields[0].ciphertext.hex() == st["e7"],
          "a deterministic ciphertext is the same after a restart")
    s, d = dec(K, [ef(n, bytes.fromhex(c)) for n, c in st["e1"]], CTX)
    check(s == 200 and d.fields[0].value == b"+14155550123" and d.fields[5].value ==
          SENTINEL.encode(), "blobs made before the restart (version 1) decrypt")
    s, m = admin("RotateKey", kpb.RotateKeyRequest, kpb.RotateKeyResponse, K)
    check(s == 200 and m.key.current_version == st["half_version"] + 1,
          "the next rotation skips the discarded version number")
    check(alive(), "kmsd is alive")

print(f"{count - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

"""Field values end to end: undefined enum values and unsafe free text.

Usage: values_test.py DIR PORT   (run by test_values.sh)

1. Enums. proto3 decoders keep an enum value the schema does not define,
   and protobuf-c handed it to the handlers as it was: CreateKey with
   origin=99 (or origin=2^40, which protobuf-c reads as 0) made an HSM key.
   kmsd now refuses, in its decoder, every enum field whose value is not
   one its enum defines (docs/api.md, "Enum fields"). The methods and their
   enum fields are found by walking Python's protobuf descriptors (every
   service of every proto/ file, enums at any depth), not from a list; each
   is sent, in protobuf and in JSON (the number), set to one past the
   largest value of its enum; each must be refused 400 invalid_argument
   naming the field, and nothing may change.
2. Free text that ends up in a signed recovery statement or in front of a
   person (justification_text, case_reference, the cancel reason, a key's
   description) with a control, format or separator character (NEL, LINE
   SEPARATOR, RLO...) is refused 400 invalid_argument and changes nothing.

Prints "ok N - what" / "not ok N - what" per check; exits 1 on any failure.
"""
import glob
import http.client
import importlib
import json
import os
import sys

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor as FD

import escrow_pb2 as epb
import fields_pb2 as fpb
import key_pb2 as kpb

DIR, PORT = sys.argv[1], int(sys.argv[2])
MODULES = {}
for py in sorted(glob.glob(f"{DIR}/py/*_pb2.py")):
    mod = importlib.import_module(os.path.basename(py)[:-3])
    MODULES[mod.DESCRIPTOR.name] = mod
count = failures = 0
BROKER_METHODS = {"Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "DecryptDataKey"}


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


def post(service, method, body, who, ctype="application/protobuf"):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    h = {"Content-Type": ctype, "Authorization": "Bearer " + api_key(who)}
    conn.request("POST", f"/twirp/{service}/{method}", body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def cls_of(desc):
    return getattr(MODULES[desc.file.name], desc.name)


def call(service, method, req, who):
    m = service.methods_by_name[method]
    s, data = post(service.full_name, method, req.SerializeToString(), who)
    if s == 200:
        resp = cls_of(m.output_type)()
        resp.ParseFromString(data)
        return s, resp
    return s, json.loads(data)


SERVICES = {svc.name: svc for mod in MODULES.values()
            for svc in mod.DESCRIPTOR.services_by_name.values()}
KS, FS, AS, ES = (SERVICES[n] for n in ("KeyService", "FieldService", "AuditService",
                                        "EscrowService"))


def who_for(service, method):
    if service is FS or method in BROKER_METHODS:
        return "demo-broker"
    if service is AS:
        return "auditor"
    if service is ES:
        return "bank-officer-1"
    return "demo-admin"


def snapshot():
    """Every key of the tenants the test acts in, and every recovery."""
    out = []
    for admin in ("demo-admin", "bank-admin"):
        s, r = call(KS, "ListKeys", kpb.ListKeysRequest(page_size=1000), admin)
        assert s == 200, (s, r)
        for k in sorted(r.keys, key=lambda k: k.key_id):
            s, d = call(KS, "DescribeKey", kpb.DescribeKeyRequest(key_id=k.key_id), admin)
            assert s == 200, (s, d)
            out.append(d.SerializeToString(deterministic=True))
    s, r = call(ES, "ListRecoveries", epb.ListRecoveriesRequest(), "bank-officer-1")
    assert s == 200, (s, r)
    out.append(r.SerializeToString(deterministic=True))
    return out


def must(res, what):
    if not check(res[0] == 200, f"setup: {what}"):
        print(f"# {res}", flush=True)
        sys.exit(1)
    return res[1]


K = must(call(KS, "CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                    usage=kpb.ENCRYPT_DECRYPT),
              "demo-admin"), "an AES key").key.key_id
KM = must(call(KS, "CreateKey", kpb.CreateKeyRequest(region="eu-west",
                                                     spec=kpb.METADATA_AES_HMAC,
                                                     usage=kpb.METADATA_FIELDS),
               "demo-admin"), "a metadata key").key.key_id
BK = must(call(KS, "CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                     usage=kpb.ENCRYPT_DECRYPT),
               "bank-admin"), "an escrowed bank key").key.key_id
REC = must(call(ES, "RequestRecovery", epb.RequestRecoveryRequest(
    key_id=BK, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu",
    justification=epb.LAWFUL_REQUEST, justification_text="values e2e",
    case_reference="CASE-1"), "bank-officer-1"), "RequestRecovery").recovery.recovery_id

# Requests that would act if the value got through.
BASES = {
    "CreateKey": kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                      usage=kpb.ENCRYPT_DECRYPT),
    "EncryptFields": fpb.EncryptFieldsRequest(
        key_id=KM, fields=[fpb.PlaintextField(name="to", value=b"v",
                                              mode=fpb.FIELD_MODE_RANDOMIZED)]),
    "BlindIndex": fpb.BlindIndexRequest(key_id=KM, field="to", values=[b"v"],
                                        canonicalizer=fpb.CANONICALIZER_RAW),
    "GetImportParameters": kpb.GetImportParametersRequest(key_id=K),
    "ImportKeyMaterial": kpb.ImportKeyMaterialRequest(key_id=K),
    "RequestRecovery": epb.RequestRecoveryRequest(
        key_id=BK, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu",
        justification=epb.LAWFUL_REQUEST, justification_text="again",
        case_reference="CASE-2", target_region="eu-west"),
    "ListRecoveries": epb.ListRecoveriesRequest(key_id=BK),
}


def enum_paths(desc, prefix=(), depth=0):
    for f in desc.fields:
        p = prefix + (f,)
        if f.type == FD.TYPE_ENUM:
            yield p
        elif f.type == FD.TYPE_MESSAGE and depth < 6:
            yield from enum_paths(f.message_type, p, depth + 1)


def set_enum(msg, path, v):
    """Set the enum at path (element 0 of repeated ones, added if none)."""
    f = path[0]
    if len(path) == 1:
        if f.label == FD.LABEL_REPEATED:
            lst = getattr(msg, f.name)
            if lst:
                lst[0] = v
            else:
                lst.append(v)
        else:
            setattr(msg, f.name, v)
        return
    sub = getattr(msg, f.name)
    if f.label == FD.LABEL_REPEATED:
        sub = sub[0] if sub else sub.add()
    set_enum(sub, path[1:], v)


def name_of(path):
    return ".".join(f.name for f in path)


def to_json(req):
    # An undefined value is written as its number by json_format.
    return json.dumps(json_format.MessageToDict(req, preserving_proto_field_name=True))


# ---- 1. the defect's concrete cases ------------------------------------------------------

before = snapshot()
ORIGIN = kpb.CreateKeyRequest.DESCRIPTOR.fields_by_name["origin"].number
want = 'field "origin" is not a defined KeyOrigin value'
req = kpb.CreateKeyRequest(region="eu-west", spec=1, usage=1)
req.origin = 99
s, r = call(KS, "CreateKey", req, "demo-admin")
check(s == 400 and r.get("code") == "invalid_argument" and r.get("msg") == want,
      f"CreateKey origin=99: 400 invalid_argument '{want}' ({s} {r if s != 200 else r.key})")


def varint(v):
    out = b""
    while True:
        b = v & 0x7f
        v >>= 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


body = (kpb.CreateKeyRequest(region="eu-west", spec=1, usage=1).SerializeToString() +
        varint(ORIGIN << 3) + varint(1 << 40))
s, data = post(KS.full_name, "CreateKey", body, "demo-admin")
r = json.loads(data) if s != 200 else {}
check(s == 400 and r.get("code") == "invalid_argument" and r.get("msg") == want,
      f"CreateKey origin=2^40 as a varint: 400 invalid_argument ({s} {r})")
s, data = post(KS.full_name, "CreateKey",
               b'{"region":"eu-west","spec":1,"usage":1,"origin":99}', "demo-admin",
               "application/json")
r = json.loads(data)
check(s == 400 and r.get("code") == "invalid_argument" and r.get("msg") == want,
      f"CreateKey in JSON \"origin\":99: 400 invalid_argument ({s} {r})")
# Out of int32 (no enum value can be) is a JSON integer out of range: malformed.
s, data = post(KS.full_name, "CreateKey",
               b'{"region":"eu-west","spec":1,"usage":1,"origin":1099511627776}', "demo-admin",
               "application/json")
r = json.loads(data)
check(s == 400 and r.get("code") == "malformed" and "origin" in r.get("msg", ""),
      f"CreateKey in JSON \"origin\":2^40: 400 malformed, out of range ({s} {r})")
check(snapshot() == before, "... and no key was created")

# ---- 1. the walk: every enum field of every method ---------------------------------------

before = snapshot()
methods_seen = fields_seen = 0
for svc in SERVICES.values():
    for m in svc.methods:
        methods_seen += 1
        base = BASES.get(m.name, cls_of(m.input_type)())
        who = who_for(svc, m.name)
        for path in enum_paths(m.input_type):
            fields_seen += 1
            ed = path[-1].enum_type
            bad = max(v.number for v in ed.values) + 1
            req = cls_of(m.input_type)()
            req.CopyFrom(base)
            set_enum(req, path, bad)
            want = f'field "{name_of(path)}" is not a defined {ed.name} value'
            for enc, body, ct in [("protobuf", req.SerializeToString(), "application/protobuf"),
                                  ("JSON", to_json(req).encode(), "application/json")]:
                s, data = post(svc.full_name, m.name, body, who, ct)
                err = json.loads(data) if s != 200 else {}
                good = (s == 400 and err.get("code") == "invalid_argument" and
                        err.get("msg") == want)
                check(good, f"{m.name} in {enc} with {name_of(path)} = {bad}: 400 "
                            f"invalid_argument '{want}'" +
                      ("" if good else f" (got {s} {err or 'a reply'})"))
check(methods_seen >= 27 and fields_seen >= 8 and set(BASES) <= {
    x for sv in SERVICES.values() for x in sv.methods_by_name},
      f"the walk covered every method ({methods_seen}) and enum field ({fields_seen})")
check(snapshot() == before, "nothing changed: every key and every recovery as before the walk")

# ---- 1b. 32-bit integers: the whole varint must fit ---------------------------------------
# protobuf-c keeps the low 32 bits of a uint32 varint: Sign with version
# 2^32+1 signed with (and audited) version 1, and GenerateDataKey with
# number_of_bytes 2^32+32 made a 32-byte key. JSON refuses the same number
# ("integer out of range"); protobuf must refuse it too, naming the field.

TOO_BIG = (1 << 32) + 1
SK = must(call(KS, "CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.EC_P256,
                                                     usage=kpb.SIGN_VERIFY),
               "demo-admin"), "a signing key").key.key_id
BASES_U32 = dict(BASES)
BASES_U32.update({
    "Sign": kpb.SignRequest(key_id=SK, message=b"u32", algorithm=kpb.ECDSA_SHA_256),
    "Verify": kpb.VerifyRequest(key_id=SK, message=b"u32", algorithm=kpb.ECDSA_SHA_256,
                                signature=b"\x30\x06\x02\x01\x01\x02\x01\x01"),
    "GetPublicKey": kpb.GetPublicKeyRequest(key_id=SK),
    "GenerateDataKey": kpb.GenerateDataKeyRequest(key_id=K),
    "Encrypt": kpb.EncryptRequest(key_id=K, plaintext=b"p"),
})


def u32_paths(desc, prefix=(), depth=0):
    for f in desc.fields:
        p = prefix + (f,)
        if f.type == FD.TYPE_UINT32:
            yield p
        elif f.type == FD.TYPE_MESSAGE and depth < 6:
            yield from u32_paths(f.message_type, p, depth + 1)


def wire_at(path, v):
    """The wire bytes of the field at path = v (varint), each enclosing
    message holding just the next one; appended to a body, protobuf merges
    it into (or, repeated, adds it to) what is there."""
    out = varint(path[-1].number << 3) + varint(v)
    for f in reversed(path[:-1]):
        out = varint(f.number << 3 | 2) + varint(len(out)) + out
    return out


def json_at(d, path, v):
    f = path[0]
    if len(path) == 1:
        d[f.name] = [v] if f.label == FD.LABEL_REPEATED else v
        return
    if f.label == FD.LABEL_REPEATED:
        lst = d.setdefault(f.name, [])
        if not lst:
            lst.append({})
        json_at(lst[0], path[1:], v)
    else:
        json_at(d.setdefault(f.name, {}), path[1:], v)


before = snapshot()
methods_seen = fields_seen = nested_seen = 0
for svc in SERVICES.values():
    for m in svc.methods:
        methods_seen += 1
        base = BASES_U32.get(m.name, cls_of(m.input_type)())
        who = who_for(svc, m.name)
        for path in u32_paths(m.input_type):
            fields_seen += 1
            nested_seen += len(path) > 1
            want = f'field "{name_of(path)}" is out of range for a uint32'
            for v in (TOO_BIG, 1 << 32, 1 << 63):
                s, data = post(svc.full_name, m.name, base.SerializeToString() + wire_at(path, v),
                               who)
                err = json.loads(data) if s != 200 else {}
                good = (s == 400 and err.get("code") == "invalid_argument" and
                        err.get("msg") == want)
                check(good, f"{m.name} in protobuf with {name_of(path)} = {v}: 400 "
                            f"invalid_argument '{want}'" +
                      ("" if good else f" (got {s} {err or 'a reply'})"))
            d = json_format.MessageToDict(base, preserving_proto_field_name=True)
            json_at(d, path, TOO_BIG)
            s, data = post(svc.full_name, m.name, json.dumps(d).encode(), who,
                           "application/json")
            err = json.loads(data) if s != 200 else {}
            good = s == 400 and err.get("code") in ("malformed", "invalid_argument") and \
                path[-1].name in err.get("msg", "")
            check(good, f"{m.name} in JSON with {name_of(path)} = {TOO_BIG}: 400 naming the field" +
                  ("" if good else f" (got {s} {err or 'a reply'})"))
check(methods_seen >= 27 and fields_seen >= 10 and nested_seen >= 1,
      f"the walk covered every method ({methods_seen}) and uint32 field ({fields_seen}, "
      f"{nested_seen} nested)")
check(snapshot() == before, "nothing changed: every key and every recovery as before the uint32 walk")

# In range, the same requests still work: 0xFFFFFFFF is a (missing) version,
# not a refusal, and version 1 signs.
s, r = call(KS, "GetPublicKey", kpb.GetPublicKeyRequest(key_id=SK, version=0xFFFFFFFF),
            "demo-broker")
check(s == 404 and r.get("code") == "not_found",
      f"GetPublicKey version 0xFFFFFFFF: 404 not_found, decoded in full ({s} {r})")
s, r = call(KS, "Sign", kpb.SignRequest(key_id=SK, version=1, message=b"u32",
                                        algorithm=kpb.ECDSA_SHA_256), "demo-broker")
check(s == 200 and r.version == 1, f"Sign version 1: 200 ({s})")

# ---- 2. free text -------------------------------------------------------------------------

BAD_TEXT = {
    "NEL (U+0085)": "a\u0085b",
    "LINE SEPARATOR (U+2028)": "a\u2028b",
    "PARAGRAPH SEPARATOR (U+2029)": "a\u2029b",
    "RLO (U+202E)": "a\u202eb",
    "LRI (U+2066)": "a\u2066b",
    "RLM (U+200F)": "a\u200fb",
    "ZERO WIDTH SPACE (U+200B)": "a\u200bb",
    "WORD JOINER (U+2060)": "a\u2060b",
    "BOM (U+FEFF)": "a\ufeffb",
    "ALM (U+061C)": "a\u061cb",
    "MVS (U+180E)": "a\u180eb",
    "a newline": "a\nrequester: forged",
    "ESC": "a\x1b[31mb",
    "DEL": "a\x7fb",
}

before = snapshot()
for what, text in BAD_TEXT.items():
    for field in ("justification_text", "case_reference"):
        req = epb.RequestRecoveryRequest()
        req.CopyFrom(BASES["RequestRecovery"])
        setattr(req, field, text)
        s, r = call(ES, "RequestRecovery", req, "bank-officer-1")
        check(s == 400 and r.get("code") == "invalid_argument" and
              r.get("msg", "").startswith(field),
              f"RequestRecovery with {what} in {field}: 400 invalid_argument "
              f"({s} {r if s != 200 else 'created ' + r.recovery.recovery_id})")
    s, r = call(ES, "CancelRecovery", epb.CancelRecoveryRequest(recovery_id=REC, reason=text),
                "bank-officer-1")
    check(s == 400 and r.get("code") == "invalid_argument" and
          r.get("msg", "").startswith("reason"),
          f"CancelRecovery with {what} in reason: 400 invalid_argument ({s} {r if s != 200 else ''})")
    s, r = call(KS, "CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                      usage=kpb.ENCRYPT_DECRYPT,
                                                      description=text), "demo-admin")
    check(s == 400 and r.get("code") == "invalid_argument" and
          r.get("msg", "").startswith("description") and "store" not in r.get("msg", ""),
          f"CreateKey with {what} in description: 400 invalid_argument ({s} {r if s != 200 else ''})")
check(snapshot() == before, "... and no recovery or key was created, none cancelled")

# Honest text in any script still passes, right-to-left letters included.
ok_text = "Gerichtsbeschluss \u00fc \u05e9\u05dc\u05d5\u05dd \U0001f511"
req = epb.RequestRecoveryRequest()
req.CopyFrom(BASES["RequestRecovery"])
req.justification_text = ok_text
s, r = call(ES, "RequestRecovery", req, "bank-officer-1")
check(s == 200 and r.recovery.justification_text == ok_text and
      ("justification-text: " + ok_text) in r.recovery.statement,
      f"printable UTF-8 (umlaut, Hebrew, emoji) is accepted and in the statement ({s})")

print(f"# {count} checks, {failures} failed", flush=True)
sys.exit(1 if failures else 0)

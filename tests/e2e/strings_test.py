"""String fields end to end: NUL bytes and invalid UTF-8, every method.

Usage: strings_test.py DIR PORT   (run by test_strings.sh)

protobuf-c hands kmsd's handlers NUL-terminated strings, so a string with an
embedded NUL used to arrive cut short: a context value "alice\\0mallory"
decrypted what was bound to "alice", "<key id>\\0junk" named the key, region
"eu-west\\0us-east" made an eu-west key. kmsd now refuses, in its decoder,
every string field that holds a NUL byte or is not valid UTF-8 (docs/api.md,
"String fields").

The methods and their string fields are found by walking Python's protobuf
descriptors (every service of every proto/ file, every string field at any
depth: map keys and values, strings in nested and repeated messages), not
from a list. For each method a base request is built that would do
something real (a valid key id, context, ciphertext...), and each string
field in turn is replaced by its base value + "\\0mallory" (which, cut at the
NUL, is the base value again) and by its base value + invalid UTF-8. Each
must be refused 400 invalid_argument naming the field without echoing it,
and none of it may change anything (keys, versions, states, recoveries).
The defect's concrete cases come first, on keys the walk has not touched.

Prints "ok N - what" / "not ok N - what" per check; exits 1 on any failure.
"""
import glob
import http.client
import importlib
import json
import os
import sys
import time

from google.protobuf.descriptor import FieldDescriptor as FD

import audit_pb2 as apb
import escrow_pb2 as epb
import fields_pb2 as fpb
import key_pb2 as kpb

DIR, PORT = sys.argv[1], int(sys.argv[2])
# Every module protoc made from proto/*.proto (test_strings.sh), so that a
# service added later is walked too.
MODULES = {}
for py in sorted(glob.glob(f"{DIR}/py/*_pb2.py")):
    mod = importlib.import_module(os.path.basename(py)[:-3])
    MODULES[mod.DESCRIPTOR.name] = mod
count = failures = 0

# Who calls each service's methods: a principal whose role may, so that the
# request would reach the key and act if the decoder let it through.
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


CORR = {"id": None}  # when set, sent as X-Correlation-Id (to find the audit event)


def post(service, method, body, who):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    h = {"Content-Type": "application/protobuf", "Authorization": "Bearer " + api_key(who)}
    if CORR["id"]:
        h["X-Correlation-Id"] = CORR["id"]
    conn.request("POST", f"/twirp/{service}/{method}", body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def got(s, r):
    return f"{s} {r if isinstance(r, dict) else 'a reply'}"


def cls_of(desc):
    return getattr(MODULES[desc.file.name], desc.name)


def call(service, method, req, who):
    """(status, response message or error dict)."""
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


# ---- the state a request could change -------------------------------------------

def snapshot():
    """Every key (metadata, versions, states) of the tenants the walk acts
    in, and every recovery: what a refused request must leave as it was."""
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


# ---- setup: keys, ciphertexts, a recovery ------------------------------------------

def must(res, what):
    if not check(res[0] == 200, f"setup: {what}"):
        print(f"# {res}", flush=True)
        sys.exit(1)
    return res[1]


K = must(call(KS, "CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                    usage=kpb.ENCRYPT_DECRYPT,
                                                    description="strings e2e"),
              "demo-admin"), "an AES key").key.key_id
KM = must(call(KS, "CreateKey", kpb.CreateKeyRequest(region="eu-west",
                                                     spec=kpb.METADATA_AES_HMAC,
                                                     usage=kpb.METADATA_FIELDS,
                                                     description="strings e2e"),
               "demo-admin"), "a metadata key").key.key_id
BK = must(call(KS, "CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                     usage=kpb.ENCRYPT_DECRYPT,
                                                     description="strings e2e"),
               "bank-admin"), "an escrowed bank key").key.key_id
CTX = {"user": "alice", "conv": "42"}
CT = must(call(KS, "Encrypt", kpb.EncryptRequest(key_id=K, plaintext=b"strings-sentinel",
                                                 encryption_context=CTX),
               "demo-broker"), "Encrypt under {user: alice, conv: 42}").ciphertext
DK = must(call(KS, "GenerateDataKey", kpb.GenerateDataKeyRequest(key_id=K,
                                                                 encryption_context=CTX),
               "demo-broker"), "GenerateDataKey").ciphertext_blob
EF = must(call(FS, "EncryptFields", fpb.EncryptFieldsRequest(
    key_id=KM, encryption_context=CTX,
    fields=[fpb.PlaintextField(name="to", value=b"+14155550123",
                               mode=fpb.FIELD_MODE_RANDOMIZED)]),
    "demo-broker"), "EncryptFields").fields
REC = must(call(ES, "RequestRecovery", epb.RequestRecoveryRequest(
    key_id=BK, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu",
    justification=epb.LAWFUL_REQUEST, justification_text="strings e2e",
    case_reference="CASE-1"), "bank-officer-1"), "RequestRecovery").recovery.recovery_id

# A request per method that would act if it got through; methods without
# one are walked from the empty message (their string fields still are).
BASES = {
    "CreateKey": kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                      usage=kpb.ENCRYPT_DECRYPT, description="ok"),
    "DescribeKey": kpb.DescribeKeyRequest(key_id=K),
    "ListKeys": kpb.ListKeysRequest(page_size=10),
    "RotateKey": kpb.RotateKeyRequest(key_id=K),
    "EnableKey": kpb.EnableKeyRequest(key_id=K),
    "DisableKey": kpb.DisableKeyRequest(key_id=K),
    "ScheduleKeyDeletion": kpb.ScheduleKeyDeletionRequest(key_id=K, pending_window_days=7),
    "CancelKeyDeletion": kpb.CancelKeyDeletionRequest(key_id=K),
    "Encrypt": kpb.EncryptRequest(key_id=K, plaintext=b"x", encryption_context=CTX),
    "Decrypt": kpb.DecryptRequest(ciphertext=CT, encryption_context=CTX, key_id=K),
    "ReEncrypt": kpb.ReEncryptRequest(ciphertext=CT, source_encryption_context=CTX,
                                      destination_key_id=K,
                                      destination_encryption_context=CTX),
    "GenerateDataKey": kpb.GenerateDataKeyRequest(key_id=K, encryption_context=CTX),
    "DecryptDataKey": kpb.DecryptDataKeyRequest(ciphertext_blob=DK, encryption_context=CTX,
                                                key_id=K),
    "GetImportParameters": kpb.GetImportParametersRequest(key_id=K),
    "ImportKeyMaterial": kpb.ImportKeyMaterialRequest(key_id=K),
    "EncryptFields": fpb.EncryptFieldsRequest(
        key_id=KM, encryption_context=CTX,
        fields=[fpb.PlaintextField(name="to", value=b"v", mode=fpb.FIELD_MODE_RANDOMIZED)]),
    "DecryptFields": fpb.DecryptFieldsRequest(key_id=KM, encryption_context=CTX, fields=EF),
    "BlindIndex": fpb.BlindIndexRequest(key_id=KM, field="to", values=[b"v"],
                                        canonicalizer=fpb.CANONICALIZER_RAW),
    "GetSignedTreeHead": apb.GetSignedTreeHeadRequest(region="eu-west"),
    "ExportAuditLog": apb.ExportAuditLogRequest(region="eu-west", count=1),
    "GetAuditKeys": apb.GetAuditKeysRequest(region="eu-west"),
    "RequestRecovery": epb.RequestRecoveryRequest(
        key_id=BK, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu",
        justification=epb.LAWFUL_REQUEST, justification_text="again",
        case_reference="CASE-2", target_region="eu-west"),
    "GetRecovery": epb.GetRecoveryRequest(recovery_id=REC),
    "ApproveRecovery": epb.ApproveRecoveryRequest(recovery_id=REC, signature=b"sig"),
    "ExecuteRecovery": epb.ExecuteRecoveryRequest(recovery_id=REC),
    "CancelRecovery": epb.CancelRecoveryRequest(recovery_id=REC, reason="done"),
    "ListRecoveries": epb.ListRecoveriesRequest(key_id=BK),
}


# ---- the walk ---------------------------------------------------------------------

def is_map(f):
    return f.type == FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def string_paths(desc, prefix=(), depth=0):
    """Every string field under desc, as the tuple of fields leading to it."""
    for f in desc.fields:
        p = prefix + (f,)
        if f.type == FD.TYPE_STRING:
            yield p
        elif f.type == FD.TYPE_MESSAGE and depth < 6:
            yield from string_paths(f.message_type, p, depth + 1)


def set_path(msg, path, bad):
    """Replace the string at path in msg by bad(its value): element 0 of a
    repeated message (one is added when there is none); the first entry's
    key or value of a map."""
    f = path[0]
    if is_map(f):
        mp = getattr(msg, f.name)
        leaf = path[1].name
        k = next(iter(sorted(mp)), None)
        if leaf == "key":
            v = mp[k] if k is not None else "v"
            if k is not None:
                del mp[k]
            mp[bad(k or "k")] = v
        else:
            mp[k or "k"] = bad(mp[k] if k is not None else "v")
        return
    if len(path) == 1:
        if f.label == FD.LABEL_REPEATED:
            lst = getattr(msg, f.name)
            if lst:
                lst[0] = bad(lst[0])
            else:
                lst.append(bad("s"))
        else:
            setattr(msg, f.name, bad(getattr(msg, f.name) or "s"))
        return
    if f.label == FD.LABEL_REPEATED:
        lst = getattr(msg, f.name)
        set_path(lst[0] if lst else lst.add(), path[1:], bad)
    else:
        set_path(getattr(msg, f.name), path[1:], bad)


def field_name(path):
    if len(path) > 1 and is_map(path[-2]):
        return '"' + ".".join(f.name for f in path[:-1]) + f'" (a map {path[-1].name})'
    return '"' + ".".join(f.name for f in path) + '"'


# Invalid UTF-8 cannot be set through Python's str: a private-use
# placeholder is serialized and its bytes swapped for as many that are not
# UTF-8 (a surrogate, a stray continuation byte, an overlong '/'). Same
# length, so every enclosing length prefix stays right.
PLACEHOLDER = "\ue000\ue001\ue002"
PLACEHOLDER_UTF8 = PLACEHOLDER.encode()
NOT_UTF8 = b"\xed\xa0\x80" + b"\x80ab" + b"\xc0\xafz"
assert len(NOT_UTF8) == len(PLACEHOLDER_UTF8)

KINDS = [
    ("a NUL byte", lambda v: v + "\0mallory", None, "contains a NUL byte"),
    ("invalid UTF-8", lambda v: v + PLACEHOLDER, NOT_UTF8, "is not valid UTF-8"),
]

# ---- the defect's concrete cases ----------------------------------------------------

CORR["id"] = "strings-nul"
s, r = call(KS, "Decrypt", kpb.DecryptRequest(ciphertext=CT, key_id=K, encryption_context={
    "user": "alice\0mallory", "conv": "42"}), "demo-broker")
CORR["id"] = None
check(s == 400 and r.get("code") == "invalid_argument" and
      r.get("msg") == 'field "encryption_context" (a map value) contains a NUL byte',
      f"a blob bound to {{user: alice}} does not decrypt under {{user: alice\\0mallory}} ({got(s, r)})")
s, r = call(KS, "Decrypt", kpb.DecryptRequest(ciphertext=CT, key_id=K, encryption_context=CTX),
            "demo-broker")
check(s == 200 and r.plaintext == b"strings-sentinel",
      "... while it decrypts under its own context")
s, r = call(KS, "Encrypt", kpb.EncryptRequest(key_id=K, plaintext=b"x",
                                              encryption_context={"a\0b": "v"}), "demo-broker")
check(s == 400 and r.get("code") == "invalid_argument" and
      r.get("msg") == 'field "encryption_context" (a map key) contains a NUL byte',
      f"a context key a\\0b is refused, not bound as \"a\" ({got(s, r)})")
for method, req in [("Encrypt", kpb.EncryptRequest(key_id=K + "\0junk", plaintext=b"x")),
                    ("Decrypt", kpb.DecryptRequest(ciphertext=CT, key_id=K + "\0junk",
                                                   encryption_context=CTX)),
                    ("DescribeKey", kpb.DescribeKeyRequest(key_id=K + "\0junk"))]:
    s, r = call(KS, method, req, "demo-broker" if method != "DescribeKey" else "demo-admin")
    check(s == 400 and r.get("code") == "invalid_argument" and
          r.get("msg") == 'field "key_id" contains a NUL byte',
          f"{method}: key_id = a valid id + \\0junk is refused ({got(s, r)})")
keys_before = snapshot()
for what, req in [("region eu-west\\0us-east", kpb.CreateKeyRequest(
                      region="eu-west\0us-east", spec=kpb.AES_256, usage=kpb.ENCRYPT_DECRYPT)),
                  ("description ok\\0hidden", kpb.CreateKeyRequest(
                      region="eu-west", spec=kpb.AES_256, usage=kpb.ENCRYPT_DECRYPT,
                      description="ok\0hidden"))]:
    s, r = call(KS, "CreateKey", req, "demo-admin")
    field = what.split()[0]
    check(s == 400 and r.get("code") == "invalid_argument" and
          r.get("msg") == f'field "{field}" contains a NUL byte',
          f"CreateKey with {what}: refused ({got(s, r)})")
check(snapshot() == keys_before, "... and no key was created")

# Valid UTF-8 is carried in full, multi-byte characters included.
desc = "caf\u00e9 \u20ac \U0001f511"
s, r = call(KS, "CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                  usage=kpb.ENCRYPT_DECRYPT, description=desc),
            "demo-admin")
check(s == 200 and r.key.description == desc,
      f"a description in 2-, 3- and 4-byte UTF-8 is stored whole ({s})")
ctx = {"user": "z\u00f6e", "note": "\u20ac"}
s, r = call(KS, "Encrypt", kpb.EncryptRequest(key_id=K, plaintext=b"x", encryption_context=ctx),
            "demo-broker")
s2, r2 = (call(KS, "Decrypt", kpb.DecryptRequest(ciphertext=r.ciphertext,
                                                 encryption_context=ctx), "demo-broker")
          if s == 200 else (s, r))
s3, _ = (call(KS, "Decrypt", kpb.DecryptRequest(ciphertext=r.ciphertext,
                                                encryption_context={"user": "z\u00f6",
                                                                    "note": "\u20ac"}),
              "demo-broker") if s == 200 else (s, r))
check(s2 == 200 and r2.plaintext == b"x" and s3 == 400,
      f"a UTF-8 context round-trips, and a prefix of it does not decrypt ({s} {s2} {s3})")

before = snapshot()
methods_seen = 0
for svc in SERVICES.values():
    for m in svc.methods:
        methods_seen += 1
        base = BASES.get(m.name, cls_of(m.input_type)())
        who = who_for(svc, m.name)
        paths = list(string_paths(m.input_type))
        check(paths, f"{m.name}: has string fields ({', '.join(field_name(p) for p in paths)})")
        for path in paths:
            for kind, bad, swap, why in KINDS:
                req = cls_of(m.input_type)()
                req.CopyFrom(base)
                set_path(req, path, bad)
                body = req.SerializeToString()
                if swap is not None:
                    assert body.count(PLACEHOLDER_UTF8) == 1, (m.name, path)
                    body = body.replace(PLACEHOLDER_UTF8, swap)
                s, data = post(svc.full_name, m.name, body, who)
                want = f"field {field_name(path)} {why}"
                err = json.loads(data) if s != 200 else {}
                if m.name == "RedeemLinkToken" and field_name(path) == '"token"':
                    # the one opaque field (kms_pbuf.h): the decoder lets it
                    # through for the handler's one answer to every refused
                    # token (links_test.py checks that 403 on a real key);
                    # here the base request has no key, so the handler
                    # refuses the request's own key_id first, never the token
                    good = (s == 400 and "token" not in err.get("msg", "") and
                            b"mallory" not in data)
                    check(good, f"{m.name} with {kind} in the token: not refused by the decoder"
                          + ("" if good else f" (got {s} {err or 'a reply'})"))
                    continue
                good = (s == 400 and err.get("code") == "invalid_argument" and
                        err.get("msg") == want and b"mallory" not in data)
                check(good, f"{m.name} with {kind} in {field_name(path)}: 400 invalid_argument "
                            f"'{want}'" + ("" if good else f" (got {s} {err or 'a reply'})"))

# The bases name real methods (a typo would walk an empty message instead),
# and the walk met at least the 27 methods of today's four services.
check(methods_seen >= 27 and set(BASES) <= {m for s in SERVICES.values()
                                            for m in s.methods_by_name},
      f"the walk covered every method of every service in proto/ ({methods_seen})")
after = snapshot()
check(after == before, "nothing changed: every key's metadata, versions and state, "
                       "and every recovery, as before the walk")

# The refusals are audit events that name the field, never the value.
import audit_lib  # noqa: E402  (tests/e2e, next to this file)

auditor = audit_lib.Client(PORT, f"{DIR}/credentials/auditor.key")
ev, raw_events = None, []
for _ in range(40):  # the signed head trails the log by up to a second
    _, evs, raw_events = audit_lib.export_all(auditor, "eu-west")
    ev = next((e for e in evs if e.correlation_id == "strings-nul"), None)
    if ev is not None:
        break
    time.sleep(0.25)
check(ev is not None and ev.operation == "Decrypt" and ev.outcome == "invalid_argument" and
      'field "encryption_context" (a map value) contains a NUL byte' in ev.detail,
      "the refused Decrypt is an audit event: invalid_argument, the field named")
check(raw_events and not any(b"mallory" in r for r in raw_events),
      "no audit event holds a refused string's value")

print(f"# {count} checks, {failures} failed", flush=True)
sys.exit(1 if failures else 0)

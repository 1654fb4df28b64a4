"""Every route of every service, as every role (docs/policy.md, "Roles and
operations").

roles_test.py DIR PORT

The routes come from the proto descriptors (every method of every service in
proto/*.proto), the expectations from the role table of docs/policy.md,
parsed here; nothing is listed by hand except how to make a plausible request
for a method (a method without one fails the test). Each method is called by
one principal of each role of the dev setup (tenant "bank" and the global
auditor and operator) and the test asserts:

  - never a 5xx;
  - a role the table gives the method: neither 401 nor 403 (the request may
    still fail on the key's state, e.g. 412);
  - any other role: exactly 403 permission_denied, or 404 not_found for an
    operation on one key by a principal of no or another tenant (rule 1 of
    "How a request is judged");
  - every request, allowed or refused, is one audit event with its request
    id and outcome, and every refusal names the rule that refused it.
"""
import glob
import http.client
import json
import os
import re
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

import audit_pb2 as apb
import escrow_pb2 as epb
import fields_pb2 as fpb
import key_pb2 as kpb
import links_pb2 as lpb
from audit_lib import Client, export_all

DIR, PORT = sys.argv[1], int(sys.argv[2])
count = failures = 0

# One principal per role, all of tenant "bank" (escrow, quorum) or global.
ROLES = {"broker": "bank-broker", "key-admin": "bank-admin", "officer": "bank-officer-1",
         "auditor": "auditor", "operator": "operator"}
GLOBAL = {"auditor", "operator"}


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1
    return cond


def call(service, method, req, who, resp_cls=None):
    key = open(f"{DIR}/credentials/{who}.key").read().strip()
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    conn.request("POST", f"/twirp/{service}/{method}", req.SerializeToString(),
                 {"Content-Type": "application/protobuf", "Authorization": "Bearer " + key})
    r = conn.getresponse()
    data = r.read()
    rid = r.getheader("X-Request-Id")
    conn.close()
    if r.status == 200:
        m = None
        if resp_cls is not None:
            m = resp_cls()
            m.ParseFromString(data)
        return r.status, m, rid
    try:
        body = json.loads(data)
    except ValueError:
        body = {"code": "?", "msg": data[:200].decode("latin-1")}
    return r.status, body, rid


def must(service, method, req, who, resp_cls):
    s, m, _ = call(service, method, req, who, resp_cls)
    if s != 200:
        raise RuntimeError(f"set-up {method} as {who}: {s} {m}")
    return m


# ---- the role table of docs/policy.md -------------------------------------------

def role_table():
    """{method: (set of roles, scope)} from the table under "Roles and operations"."""
    text = open("docs/policy.md").read()
    start = text.index("| role | operations | acts on |")
    table = {}
    role = None
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0]:
            role = cells[0].strip("`")
        if cells[2] in ("—", "-", ""):
            continue  # the operator's row: no operation
        scope = "key" if cells[2] == "one key" else "other"
        # Method names; parenthesised remarks are not names.
        for m in re.findall(r"\b([A-Z][A-Za-z]+)\b", re.sub(r"\([^)]*\)", "", cells[1])):
            roles, s = table.get(m, (set(), scope))
            roles.add(role)
            table[m] = (roles, s)
    return table


# ---- fixtures ---------------------------------------------------------------------

KS, ES, FS, AS = ("custos.v1.KeyService", "custos.v1.EscrowService", "custos.v1.FieldService",
                  "custos.v1.AuditService")


def fixtures():
    f = {}
    admin, broker = "bank-admin", "bank-broker"
    new = lambda spec=kpb.AES_256, usage=kpb.ENCRYPT_DECRYPT, origin=kpb.HSM: must(
        KS, "CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=spec, usage=usage,
                                              origin=origin), admin, kpb.CreateKeyResponse
    ).key.key_id
    f["key"] = new()
    f["dest"] = new()
    f["meta"] = new(kpb.METADATA_AES_HMAC, kpb.METADATA_FIELDS)
    f["ext"] = new(origin=kpb.EXTERNAL)
    # A signing key of the escrow tenant: escrowed at birth (docs/signing.md).
    f["sign"] = new(kpb.EC_P256, kpb.SIGN_VERIFY)
    # A link-token key of the escrow tenant, and a token the broker redeems.
    f["link"] = new(kpb.LINK_TOKEN_HMAC, kpb.LINK_TOKEN)
    f["ltok"] = must("custos.v1.LinkService", "MintLinkToken", lpb.MintLinkTokenRequest(
        key_id=f["link"], phone="+447700900999", device_value=b"roles", purpose="roles"),
        broker, lpb.MintLinkTokenResponse).token
    f["ct"] = must(KS, "Encrypt", kpb.EncryptRequest(key_id=f["key"], plaintext=b"roles"), broker,
                   kpb.EncryptResponse).ciphertext
    f["dk"] = must(KS, "GenerateDataKey", kpb.GenerateDataKeyRequest(key_id=f["key"],
                                                                     number_of_bytes=32),
                   broker, kpb.GenerateDataKeyResponse).ciphertext_blob
    ef = must(FS, "EncryptFields",
              fpb.EncryptFieldsRequest(key_id=f["meta"],
                                       fields=[fpb.PlaintextField(name="msisdn", value=b"+4412", mode=fpb.FIELD_MODE_RANDOMIZED)]),
              broker, fpb.EncryptFieldsResponse)
    f["fields"] = list(ef.fields)
    # A recovery to watch, approve, execute and cancel, requested by another
    # officer than the one of the matrix (the requester never approves).
    rec = must(ES, "RequestRecovery",
               epb.RequestRecoveryRequest(key_id=f["key"], mode=epb.EXPORT_WRAPPED,
                                          justification=epb.LAWFUL_REQUEST,
                                          justification_text="role matrix",
                                          case_reference="ROLES-1", recipient="bank-legal-eu"),
               "bank-officer-2", epb.RequestRecoveryResponse).recovery
    f["rec"] = rec.recovery_id
    pem = open(f"{DIR}/credentials/bank-officer-1.key.pem", "rb").read()
    officer = serialization.load_pem_private_key(pem, None)
    from cryptography.hazmat.primitives.asymmetric import ec
    f["sig"] = officer.sign(rec.statement.encode(), ec.ECDSA(hashes.SHA256()))
    return f


def wrapped_import(f):
    """A fresh import token for the external key, and a key wrapped for it."""
    p = must(KS, "GetImportParameters", kpb.GetImportParametersRequest(key_id=f["ext"]),
             "bank-admin", kpb.GetImportParametersResponse)
    pub = serialization.load_der_public_key(p.public_key)
    eph = os.urandom(32)
    oaep = pub.encrypt(eph, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                         algorithm=hashes.SHA1(), label=None))
    return p.import_token, oaep + aes_key_wrap_with_padding(eph, os.urandom(32))


def plausible(method, f):
    """A request the role that owns method would send."""
    k = f["key"]
    reqs = {
        "CreateKey": lambda: kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                  usage=kpb.ENCRYPT_DECRYPT),
        "DescribeKey": lambda: kpb.DescribeKeyRequest(key_id=k),
        "ListKeys": lambda: kpb.ListKeysRequest(page_size=10),
        "RotateKey": lambda: kpb.RotateKeyRequest(key_id=k),
        "UpdateKeyRotation": lambda: kpb.UpdateKeyRotationRequest(key_id=k,
                                                                  rotation_period_s=86400),
        "EnableKey": lambda: kpb.EnableKeyRequest(key_id=k),
        "DisableKey": lambda: kpb.DisableKeyRequest(key_id=f["dest"]),
        "ScheduleKeyDeletion": lambda: kpb.ScheduleKeyDeletionRequest(key_id=f["dest"],
                                                                      pending_window_days=7),
        "CancelKeyDeletion": lambda: kpb.CancelKeyDeletionRequest(key_id=f["dest"]),
        "Encrypt": lambda: kpb.EncryptRequest(key_id=k, plaintext=b"hello"),
        "Decrypt": lambda: kpb.DecryptRequest(ciphertext=f["ct"]),
        "ReEncrypt": lambda: kpb.ReEncryptRequest(ciphertext=f["ct"], destination_key_id=k),
        "GenerateDataKey": lambda: kpb.GenerateDataKeyRequest(key_id=k, number_of_bytes=32),
        "DecryptDataKey": lambda: kpb.DecryptDataKeyRequest(ciphertext_blob=f["dk"]),
        "GetImportParameters": lambda: kpb.GetImportParametersRequest(key_id=f["ext"]),
        "ImportKeyMaterial": lambda: kpb.ImportKeyMaterialRequest(
            key_id=f["ext"], import_token=f["imp"][0], wrapped_material=f["imp"][1]),
        "EncryptFields": lambda: fpb.EncryptFieldsRequest(
            key_id=f["meta"], fields=[fpb.PlaintextField(name="msisdn", value=b"+4412", mode=fpb.FIELD_MODE_RANDOMIZED)]),
        "DecryptFields": lambda: fpb.DecryptFieldsRequest(key_id=f["meta"], fields=f["fields"]),
        "BlindIndex": lambda: fpb.BlindIndexRequest(key_id=f["meta"], field="msisdn",
                                                    values=[b"+4412"]),
        "GetPublicKey": lambda: kpb.GetPublicKeyRequest(key_id=f["sign"]),
        "Sign": lambda: kpb.SignRequest(key_id=f["sign"], message=b"roles",
                                        algorithm=kpb.ECDSA_SHA_256),
        "Verify": lambda: kpb.VerifyRequest(key_id=f["sign"], version=1, message=b"roles",
                                            algorithm=kpb.ECDSA_SHA_256, signature=b"\x30\x00"),
        "MintLinkToken": lambda: lpb.MintLinkTokenRequest(
            key_id=f["link"], phone="+447700900999", device_value=b"roles", purpose="roles"),
        "RedeemLinkToken": lambda: lpb.RedeemLinkTokenRequest(
            key_id=f["link"], token=f["ltok"], phone="+447700900999", device_value=b"roles",
            purpose="roles"),
        "RevokeLinkTokens": lambda: lpb.RevokeLinkTokensRequest(key_id=f["link"],
                                                                message_ref="roles"),
        "GetSignedTreeHead": lambda: apb.GetSignedTreeHeadRequest(region="eu-west"),
        "ExportAuditLog": lambda: apb.ExportAuditLogRequest(region="eu-west", count=1),
        "GetAuditKeys": lambda: apb.GetAuditKeysRequest(region="eu-west"),
        "RequestRecovery": lambda: epb.RequestRecoveryRequest(
            key_id=k, mode=epb.EXPORT_WRAPPED, justification=epb.LAWFUL_REQUEST,
            justification_text="role matrix", case_reference="ROLES-2",
            recipient="bank-legal-eu"),
        "GetRecovery": lambda: epb.GetRecoveryRequest(recovery_id=f["rec"]),
        "ApproveRecovery": lambda: epb.ApproveRecoveryRequest(recovery_id=f["rec"],
                                                              signature=f["sig"]),
        "ExecuteRecovery": lambda: epb.ExecuteRecoveryRequest(recovery_id=f["rec"]),
        "CancelRecovery": lambda: epb.CancelRecoveryRequest(recovery_id=f["rec"],
                                                            reason="role matrix"),
        "ListRecoveries": lambda: epb.ListRecoveriesRequest(),
    }
    fn = reqs.get(method)
    return fn() if fn else None


# Methods that change what later calls see run last, in this order, so that
# the others meet the fixtures as made.
LAST = ["ImportKeyMaterial", "ApproveRecovery", "ExecuteRecovery", "CancelRecovery",
        "DisableKey", "EnableKey", "ScheduleKeyDeletion", "CancelKeyDeletion"]


def routes():
    out = []
    for mod in (kpb, fpb, epb, apb, lpb):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out.append((svc.full_name, m.name, m.input_type.full_name))
    return sorted(out, key=lambda r: (r[1] in LAST, LAST.index(r[1]) if r[1] in LAST else 0))


def main():
    table = role_table()
    rs = routes()
    check(len(rs) >= 27, f"{len(rs)} routes found in the proto descriptors")
    missing = [m for _, m, _ in rs if m not in table]
    check(not missing, f"docs/policy.md's role table names every method ({missing or 'all'})")
    f = fixtures()
    calls = []  # (request id, method, role, status, code, refused)
    for service, method, input_type in rs:
        for role, who in ROLES.items():
            if method == "ImportKeyMaterial" and "imp" not in f:
                f["imp"] = wrapped_import(f)  # the role that owns it spends it
            req = plausible(method, f)
            if not check(req is not None and req.DESCRIPTOR.full_name == input_type,
                         f"{method}: a plausible {input_type}"):
                continue
            s, body, rid = call(service, method, req, who)
            code = "ok" if s == 200 else body.get("code")
            roles, scope = table.get(method, (set(), "other"))
            allowed = role in roles
            if allowed:
                good = s < 500 and s not in (401, 403)
                want = "not 401/403/5xx"
            else:
                # Rule 1: a key of another tenant, or a caller with none,
                # looks exactly like a missing key.
                nf = scope == "key" and role in GLOBAL
                want = "404 not_found" if nf else "403 permission_denied"
                good = (s, code) == ((404, "not_found") if nf else (403, "permission_denied"))
            check(good, f"{method} as {role} ({who}): {s} {code}, want {want}"
                  + ("" if good else f" [{body}]"))
            calls.append((rid, method, role, code, not allowed))

    # Every request is an event; every refusal names its rule.
    auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
    want = {c[0]: c for c in calls}
    seen = {}
    deadline = time.time() + 30
    while time.time() < deadline:
        _, events, _ = export_all(auditor, "eu-west")
        seen = {e.request_id: e for e in events if e.request_id in want}
        if len(seen) == len(want):
            break
        time.sleep(0.3)
    check(len(seen) == len(want), f"every one of the {len(want)} requests is in the eu-west "
          f"audit log ({len(seen)} found)")
    bad = []
    for rid, (_, method, role, code, refused) in want.items():
        e = seen.get(rid)
        if e is None:
            continue
        if e.operation != method or e.outcome != code or (refused and not e.rule):
            bad.append(f"{method}/{role}: event {e.operation} {e.outcome} rule '{e.rule}'")
    check(not bad, "each event names the method and outcome, each refusal its rule"
          + (": " + "; ".join(bad[:5]) if bad else ""))
    refusals = [c for c in calls if c[4]]
    check(len(refusals) > 60, f"{len(refusals)} refusals were exercised")
    log = open(f"{DIR}/kmsd.log").read()
    check("needs a tenant" not in log and "usage" not in re.findall(r'rule (\w+)', log),
          "no refusal reached kmsd's log as a misuse (\"a tenant operation needs a tenant\")")
    print(f"# {count} checks, {failures} failed")
    sys.exit(1 if failures else 0)


main()

"""Escrow at birth and M-of-N recovery, end to end (docs/escrow-recovery.md).

escrow_test.py DIR PORT PID PHASE
  main     the whole flow and every refusal (kmsd as set up by test_escrow.sh)
  timing   expiry, time lock, key-admin visibility and cancellation, after the
           test script reloaded a policy with request_ttl_s 3, time_lock_s 3600

Every refusal is checked to leave both tokens holding exactly the objects
they held before. Officers sign with their own P-256 keys (files the dev
setup made), here with the cryptography package, exactly as `openssl dgst
-sha256 -sign` or `kmsctl officer sign` would.
"""
import http.client
import json
import os
import sys
import time

import PyKCS11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding, \
    aes_key_wrap_with_padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

import audit_pb2 as apb
import escrow_pb2 as epb
import key_pb2 as kpb
from audit_lib import Client, export_all

DIR, PORT, PID, PHASE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
count = failures = 0
request_ids = []  # (request id, method, expected outcome) of calls to check in the audit log


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1
    return cond


def call(service, method, req, resp_cls, who):
    key = open(f"{DIR}/credentials/{who}.key").read().strip()
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    conn.request("POST", f"/twirp/custos.v1.{service}/{method}", req.SerializeToString(),
                 {"Content-Type": "application/protobuf", "Authorization": "Bearer " + key})
    r = conn.getresponse()
    data = r.read()
    rid = r.getheader("X-Request-Id")
    conn.close()
    if r.status == 200:
        m = resp_cls()
        m.ParseFromString(data)
        request_ids.append((rid, method, "ok"))
        return r.status, m
    body = json.loads(data)
    request_ids.append((rid, method, body.get("code")))
    return r.status, body


def key_call(method, req, resp, who):
    return call("KeyService", method, req, resp, who)


def esc(method, req, resp, who):
    return call("EscrowService", method, req, resp, who)


def refused(res, status, code, fragment=""):
    s, body = res
    ok = s == status and isinstance(body, dict) and body.get("code") == code and \
        fragment in body.get("msg", "")
    if not ok:
        print(f"# got {s} {body}", flush=True)
    return ok


# ---- the tokens, seen from outside kmsd -------------------------------------------

# With the module's initialisation string, if it needs one (NSS).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p11_module  # noqa: E402

lib = p11_module.pykcs11(os.environ.get("CUSTOS_TEST_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))


class Token:
    def __init__(self, region):
        slot = [s for s in lib.getSlotList(tokenPresent=True)
                if lib.getTokenInfo(s).label.strip() == f"custos-{region}"][0]
        self.sess = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
        with open(f"{DIR}/hsm/pins/{region}.pin") as f:
            self.sess.login(f.read().strip())

    def objects(self, label=None):
        tmpl = [(PyKCS11.CKA_TOKEN, True)]
        if label is not None:
            tmpl.append((PyKCS11.CKA_LABEL, label))
        return self.sess.findObjects(tmpl)

    def bools(self, obj, names):
        return [bool(v) for v in self.sess.getAttributeValue(obj, names)]


eu, us = Token("eu-west"), Token("us-east")


def counts():
    return len(eu.objects()), len(us.objects())


def bad(what, fn, status, code, fragment=""):
    before = counts()
    res = fn()
    check(refused(res, status, code, fragment) and counts() == before,
          f"{what}: {status} {code}, tokens unchanged")


# ---- helpers ------------------------------------------------------------------------

def officer_key(who):
    with open(f"{DIR}/credentials/{who}.key.pem", "rb") as f:
        return serialization.load_pem_private_key(f.read(), None)


def sign(who, statement):
    return officer_key(who).sign(statement.encode(), ec.ECDSA(hashes.SHA256()))


def request(who="bank-officer-1", **kw):
    args = dict(mode=epb.RESTORE, justification=epb.ACCIDENTAL_DELETION,
                justification_text="deleted by mistake in change CHG-1", case_reference="CASE-1")
    args.update(kw)
    return esc("RequestRecovery", epb.RequestRecoveryRequest(**args),
               epb.RequestRecoveryResponse, who)


def approve(rid, who, sig):
    return esc("ApproveRecovery", epb.ApproveRecoveryRequest(recovery_id=rid, signature=sig),
               epb.ApproveRecoveryResponse, who)


def execute(rid, who="bank-officer-1"):
    return esc("ExecuteRecovery", epb.ExecuteRecoveryRequest(recovery_id=rid),
               epb.ExecuteRecoveryResponse, who)


def get(rid, who="bank-officer-1"):
    return esc("GetRecovery", epb.GetRecoveryRequest(recovery_id=rid), epb.GetRecoveryResponse,
               who)


def create(who="bank-admin", region="eu-west", origin=kpb.HSM):
    s, m = key_call("CreateKey", kpb.CreateKeyRequest(region=region, spec=kpb.AES_256,
                                                      usage=kpb.ENCRYPT_DECRYPT, origin=origin),
                    kpb.CreateKeyResponse, who)
    assert s == 200, (s, m)
    return m.key.key_id


def encrypt(key_id, pt, who="bank-broker"):
    s, m = key_call("Encrypt", kpb.EncryptRequest(key_id=key_id, plaintext=pt),
                    kpb.EncryptResponse, who)
    assert s == 200, (s, m)
    return m.ciphertext


def decrypt(ct, who="bank-broker"):
    return key_call("Decrypt", kpb.DecryptRequest(ciphertext=ct), kpb.DecryptResponse, who)


def describe(key_id, who="bank-admin"):
    return key_call("DescribeKey", kpb.DescribeKeyRequest(key_id=key_id),
                    kpb.DescribeKeyResponse, who)


def leave(key, blob):
    """Decrypt a Custos blob with a key held outside, by the public format
    (docs/ciphertext-format.md, format 2) and OpenSSL alone; no encryption
    context."""
    r = blob[2]
    hl = 36 + r
    return AESGCM(key).decrypt(blob[23 + r:35 + r], blob[hl:], blob[:hl] + b"\x00\x00")


def recipient_unwrap(name, wrapped, algorithm):
    with open(f"{DIR}/credentials/{name}.rsa.pem", "rb") as f:
        priv = serialization.load_pem_private_key(f.read(), None)
    md = hashes.SHA256 if algorithm.endswith("SHA_256") else hashes.SHA1
    n = priv.key_size // 8
    eph = priv.decrypt(wrapped[:n], padding.OAEP(mgf=padding.MGF1(md()), algorithm=md(), label=None))
    return aes_key_unwrap_with_padding(eph, wrapped[n:])


def wait_state(key_id, state, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        s, m = describe(key_id)
        if s == 200 and m.key.state == state:
            return True
        time.sleep(0.3)
    return False


# ---- main phase -------------------------------------------------------------------------

def main():
    # Escrow keys and escrow at birth, seen in the tokens.
    for tok, region in ((eu, "eu-west"), (us, "us-east")):
        objs = tok.objects(f"custos:escrow:{region}")
        ok = len(objs) == 1
        if ok:
            enc, dec, wrap, unwrap, sens, extr = tok.bools(objs[0], [
                PyKCS11.CKA_ENCRYPT, PyKCS11.CKA_DECRYPT, PyKCS11.CKA_WRAP, PyKCS11.CKA_UNWRAP,
                PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_EXTRACTABLE])
            ok = wrap and unwrap and not enc and not dec and sens and not extr
        check(ok, f"{region} has one escrow key: wrap/unwrap only, sensitive, never extractable")

    key = create()
    objs = eu.objects(f"custos:key:{key}:v1")
    extr, never, sens, always = eu.bools(objs[0], [
        PyKCS11.CKA_EXTRACTABLE, PyKCS11.CKA_NEVER_EXTRACTABLE, PyKCS11.CKA_SENSITIVE,
        PyKCS11.CKA_ALWAYS_SENSITIVE]) if objs else (True, True, False, False)
    check(len(objs) == 1 and not extr and sens and always and not never,
          "an escrowed key is locked (non-extractable) after its one wrap at birth")
    plain = create("demo-admin")
    objs = eu.objects(f"custos:key:{plain}:v1")
    check(objs and eu.bools(objs[0], [PyKCS11.CKA_NEVER_EXTRACTABLE])[0],
          "a key of a tenant without escrow was never extractable")

    ct1 = encrypt(key, b"escrow-sentinel v1")
    s, m = key_call("RotateKey", kpb.RotateKeyRequest(key_id=key), kpb.RotateKeyResponse,
                    "bank-admin")
    check(s == 200 and m.key.current_version == 2, "an escrowed key rotates (v2 escrowed too)")
    ct2 = encrypt(key, b"escrow-sentinel v2")

    bad("RESTORE of a key that is not destroyed", lambda: request(key_id=key),
        412, "failed_precondition", "DESTROYED")

    s, _ = key_call("ScheduleKeyDeletion", kpb.ScheduleKeyDeletionRequest(key_id=key, pending_window_days=1),
                    kpb.ScheduleKeyDeletionResponse, "bank-admin")
    check(s == 200 and wait_state(key, kpb.DESTROYED), "the sweeper destroys the key")
    check(len(eu.objects(f"custos:key:{key}:v1")) == 0 and len(eu.objects(f"custos:key:{key}:v2")) == 0,
          "its HSM objects are gone")
    s, _ = decrypt(ct1)
    check(s != 200, "old ciphertexts no longer decrypt")

    # Refusals of RequestRecovery.
    bad("an officer of another tenant", lambda: request("officer-1", key_id=key), 404, "not_found")
    bad("a key admin", lambda: request("bank-admin", key_id=key), 403, "permission_denied")
    bad("no justification", lambda: request(key_id=key, justification=0), 400, "invalid_argument")
    bad("a control character in the text",
        lambda: request(key_id=key, justification_text="a\nrecovery: forged"), 400,
        "invalid_argument")
    bad("a target in another region", lambda: request(key_id=key, target_region="us-east"),
        403, "permission_denied", "never targets another region")
    bad("an unregistered recipient",
        lambda: request(key_id=key, mode=epb.EXPORT_WRAPPED, recipient="mallory"),
        403, "permission_denied", "not registered")
    bad("a recipient registered for another region",
        lambda: request(key_id=key, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-us"),
        403, "permission_denied", "never leaves its region")
    bad("a version without a blob", lambda: request(key_id=key, versions=[7]), 412,
        "failed_precondition", "no escrow blob")
    bad("a tenant without escrow", lambda: request("officer-1", key_id=plain,
                                                   mode=epb.EXPORT_WRAPPED, recipient="x"),
        412, "failed_precondition", "no escrow blobs")

    # The request.
    s, m = request(key_id=key, restore_state=epb.RESTORE_ENABLED)
    check(s == 200 and m.recovery.state == epb.PENDING_APPROVAL and
          m.recovery.approvals_required == 2 and list(m.recovery.versions) == [1, 2],
          "RequestRecovery: PENDING_APPROVAL, 2 approvals needed, versions 1 and 2")
    rec = m.recovery
    st = rec.statement
    check(all(x in st for x in (f"recovery: {rec.recovery_id}\n", f"key: {key}\n",
                                "tenant: bank\n", "mode: RESTORE\n", "versions: 1,2\n",
                                "region: eu-west\n", f"expires: {rec.expires_at}\n",
                                "requester: bank-officer-1\n")),
          "the statement binds id, tenant, key, versions, mode, region, requester, expiry")
    s, m2 = request(key_id=key, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu",
                    justification=epb.LAWFUL_REQUEST, case_reference="COURT-7")
    check(s == 200 and "recipient bank-legal-eu sha256:" in m2.recovery.statement,
          "an EXPORT_WRAPPED request binds the recipient's key hash")
    exp = m2.recovery

    # Refused approvals.
    bad("the requester approving", lambda: approve(rec.recovery_id, "bank-officer-1",
                                                   sign("bank-officer-1", st)),
        403, "permission_denied", "requester")
    bad("a tampered statement", lambda: approve(rec.recovery_id, "bank-officer-2",
                                                sign("bank-officer-2", st.replace("1,2", "1"))),
        403, "permission_denied", "does not verify")
    bad("another officer's signature", lambda: approve(rec.recovery_id, "bank-officer-2",
                                                       sign("bank-officer-3", st)),
        403, "permission_denied")
    bad("an approval replayed onto another request",
        lambda: approve(exp.recovery_id, "bank-officer-2", sign("bank-officer-2", st)),
        403, "permission_denied", "does not verify")
    bad("an officer of another tenant", lambda: approve(rec.recovery_id, "other-officer",
                                                        sign("other-officer", st)),
        404, "not_found")
    bad("garbage instead of a signature", lambda: approve(rec.recovery_id, "bank-officer-2",
                                                          b"\x30" * 70),
        403, "permission_denied")

    s, m = approve(rec.recovery_id, "bank-officer-2", sign("bank-officer-2", st))
    check(s == 200 and m.counted and m.recovery.state == epb.PENDING_APPROVAL and
          len(m.recovery.approvals) == 1, "one valid approval: counted, still pending")
    bad("execution with M-1 approvals", lambda: execute(rec.recovery_id), 412,
        "failed_precondition", "1 of 2")
    s, m = approve(rec.recovery_id, "bank-officer-2", sign("bank-officer-2", st))
    check(s == 200 and not m.counted and len(m.recovery.approvals) == 1,
          "the same officer twice counts once")
    s, m = approve(rec.recovery_id, "bank-officer-3", sign("bank-officer-3", st))
    check(s == 200 and m.counted and m.recovery.state == epb.APPROVED and m.recovery.quorum_at > 0,
          "the second officer completes the quorum: APPROVED")
    s, m = get(rec.recovery_id, "bank-admin")
    check(s == 200 and m.recovery.state == epb.APPROVED,
          "the tenant's key admin can see the recovery")
    bad("a key admin executing", lambda: execute(rec.recovery_id, "bank-admin"), 403,
        "permission_denied")

    before = counts()
    s, m = execute(rec.recovery_id)
    check(s == 200 and m.recovery.state == epb.EXECUTED and m.key_state == "ENABLED" and
          m.current_version == 2, "ExecuteRecovery RESTORE: the key is ENABLED again at v2")
    check(counts() == (before[0] + 2, before[1]),
          "exactly the two versions' objects came back, in the key's own region")
    ok = True
    for v in (1, 2):
        objs = eu.objects(f"custos:key:{key}:v{v}")
        ok = ok and len(objs) == 1 and eu.bools(objs[0], [PyKCS11.CKA_EXTRACTABLE,
                                                          PyKCS11.CKA_SENSITIVE]) == [False, True]
    check(ok, "restored objects are sensitive and non-extractable")
    s1, d1 = decrypt(ct1)
    s2, d2 = decrypt(ct2)
    check(s1 == 200 and d1.plaintext == b"escrow-sentinel v1" and s2 == 200 and
          d2.plaintext == b"escrow-sentinel v2", "old ciphertexts of both versions decrypt again")
    bad("executing twice", lambda: execute(rec.recovery_id), 412, "failed_precondition")

    # EXPORT_WRAPPED: the recipient unwraps with OpenSSL and reads old data.
    est = exp.statement
    approve(exp.recovery_id, "bank-officer-2", sign("bank-officer-2", est))
    approve(exp.recovery_id, "bank-officer-3", sign("bank-officer-3", est))
    before = counts()
    s, m = execute(exp.recovery_id)
    check(s == 200 and len(m.wrapped) == 2 and m.recovery.state == epb.EXECUTED,
          "ExecuteRecovery EXPORT_WRAPPED: one wrapped key per version")
    check(counts() == before, "the export left no object in the tokens")
    try:
        k1 = recipient_unwrap("bank-legal-eu", m.wrapped[0].wrapped_key, m.wrapped[0].algorithm)
        k2 = recipient_unwrap("bank-legal-eu", m.wrapped[1].wrapped_key, m.wrapped[1].algorithm)
        ok = leave(k1, ct1) == b"escrow-sentinel v1" and leave(k2, ct2) == b"escrow-sentinel v2"
    except Exception as e:  # noqa: BLE001 - any failure is the test failing
        print(f"# {e!r}")
        ok = False
    check(ok, "the recipient unwraps with its RSA key and decrypts old ciphertexts by the "
              "public format")

    # BYOK + escrow: the exported key is exactly the material the tenant imported.
    ext = create(origin=kpb.EXTERNAL)
    s, p = key_call("GetImportParameters", kpb.GetImportParametersRequest(key_id=ext),
                    kpb.GetImportParametersResponse, "bank-admin")
    material = os.urandom(32)
    eph = os.urandom(32)
    pub = load_der_public_key(p.public_key)
    wrapped = pub.encrypt(eph, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                            algorithm=hashes.SHA1(), label=None)) + \
        aes_key_wrap_with_padding(eph, material)
    s, _ = key_call("ImportKeyMaterial",
                    kpb.ImportKeyMaterialRequest(key_id=ext, import_token=p.import_token,
                                                 algorithm=kpb.RSA_AES_KEY_WRAP_SHA_1,
                                                 wrapped_material=wrapped),
                    kpb.ImportKeyMaterialResponse, "bank-admin")
    objs = eu.objects(f"custos:key:{ext}:v1")
    check(s == 200 and len(objs) == 1 and not eu.bools(objs[0], [PyKCS11.CKA_EXTRACTABLE])[0],
          "an imported key of an escrow tenant is escrowed and locked")
    s, m = request(key_id=ext, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu",
                   justification=epb.TENANT_EXIT)
    st3 = m.recovery.statement
    approve(m.recovery.recovery_id, "bank-officer-2", sign("bank-officer-2", st3))
    approve(m.recovery.recovery_id, "bank-officer-3", sign("bank-officer-3", st3))
    s, m = execute(m.recovery.recovery_id)
    check(s == 200 and recipient_unwrap("bank-legal-eu", m.wrapped[0].wrapped_key,
                                        m.wrapped[0].algorithm) == material,
          "the escrow of an imported key returns exactly the tenant's material")

    # Cancellation.
    s, m = request(key_id=ext, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu")
    cid = m.recovery.recovery_id
    s, m = esc("CancelRecovery", epb.CancelRecoveryRequest(recovery_id=cid, reason="raised in error"),
               epb.CancelRecoveryResponse, "bank-officer-2")
    check(s == 200 and m.recovery.state == epb.CANCELLED and m.recovery.cancelled_by == "bank-officer-2",
          "CancelRecovery: CANCELLED, who is recorded")
    bad("approving a cancelled recovery",
        lambda: approve(cid, "bank-officer-3", sign("bank-officer-3", m.recovery.statement)),
        412, "failed_precondition")
    # At most 8 open recoveries per key (one is cancelled above).
    opened = [request(key_id=ext, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu")[1]
              for _ in range(8)]
    check(all(not isinstance(o, dict) for o in opened), "8 open recoveries of one key are taken")
    bad("a ninth open recovery of one key",
        lambda: request(key_id=ext, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu"),
        429, "resource_exhausted", "at most 8")
    for o in opened:
        esc("CancelRecovery", epb.CancelRecoveryRequest(recovery_id=o.recovery.recovery_id),
            epb.CancelRecoveryResponse, "bank-officer-1")
    bad("an unknown recovery id", lambda: get("0" * 32), 404, "not_found")
    bad("a malformed recovery id", lambda: get("../../etc"), 404, "not_found")

    audit_checks()


def audit_checks():
    auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
    time.sleep(0.4)  # the signed head follows within head_every_ms
    _, events, raw = export_all(auditor, "eu-west")
    by_rid = {}
    for ev in events:
        by_rid.setdefault(ev.request_id, []).append(ev)
    esc_calls = [r for r in request_ids if r[1] in ("RequestRecovery", "ApproveRecovery",
                                                    "ExecuteRecovery", "CancelRecovery",
                                                    "GetRecovery")]
    missing = [r for r in esc_calls
               if not any(e.operation == r[1] and e.outcome == r[2] for e in by_rid.get(r[0], []))]
    check(esc_calls and not missing,
          f"every one of {len(esc_calls)} recovery requests, refused or not, is an audit event "
          f"with its outcome ({len(missing)} missing)")
    bad_sig = [e for e in events if e.operation == "ApproveRecovery" and
               "invalid approval signature" in e.detail]
    check(len(bad_sig) >= 3, "invalid approvals are audited as such")
    check(any(e.operation == "ExecuteRecovery" and e.outcome == "ok" and "executed" in e.detail
              for e in events), "executions are audited with the recovery id")
    check(not any(b"escrow-sentinel" in b for b in raw), "no plaintext in the audit log")


# ---- timing phase: expiry, time lock --------------------------------------------------

def timing():
    key = create()
    s, _ = key_call("ScheduleKeyDeletion", kpb.ScheduleKeyDeletionRequest(key_id=key, pending_window_days=1),
                    kpb.ScheduleKeyDeletionResponse, "bank-admin")
    check(wait_state(key, kpb.DESTROYED), "a second key is destroyed")
    s, m = request(key_id=key)
    rec = m.recovery
    check(s == 200 and rec.expires_at - rec.created_at == 3, "request_ttl_s from policy (3 s)")
    approve(rec.recovery_id, "bank-officer-2", sign("bank-officer-2", rec.statement))
    time.sleep(4)
    bad("an approval after expiry", lambda: approve(rec.recovery_id, "bank-officer-3",
                                                    sign("bank-officer-3", rec.statement)),
        412, "failed_precondition", "expired")
    s, m = get(rec.recovery_id)
    check(s == 200 and m.recovery.state == epb.EXPIRED, "the recovery is EXPIRED")
    bad("executing an expired recovery", lambda: execute(rec.recovery_id), 412,
        "failed_precondition")
    auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
    time.sleep(0.4)
    _, events, _ = export_all(auditor, "eu-west")
    check(sum(1 for e in events if e.operation == "RecoveryExpired" and
              rec.recovery_id in e.detail) == 1, "expiry is one audit event")


def timelock():
    key = create()
    s, _ = key_call("ScheduleKeyDeletion", kpb.ScheduleKeyDeletionRequest(key_id=key, pending_window_days=1),
                    kpb.ScheduleKeyDeletionResponse, "bank-admin")
    wait_state(key, kpb.DESTROYED)
    s, m = request(key_id=key)
    rec = m.recovery
    approve(rec.recovery_id, "bank-officer-2", sign("bank-officer-2", rec.statement))
    s, m = approve(rec.recovery_id, "bank-officer-3", sign("bank-officer-3", rec.statement))
    check(s == 200 and m.recovery.state == epb.APPROVED and
          m.recovery.executable_at == m.recovery.quorum_at + 3600,
          "with a time lock, quorum sets executable_at = quorum_at + time_lock_s")
    bad("execution inside the time lock", lambda: execute(rec.recovery_id), 412,
        "failed_precondition", "time lock")
    s, m = esc("ListRecoveries", epb.ListRecoveriesRequest(key_id=key, open_only=True),
               epb.ListRecoveriesResponse, "bank-admin")
    check(s == 200 and [r.recovery_id for r in m.recoveries] == [rec.recovery_id],
          "the key's administrators list the pending recovery during the time lock")
    s, m = esc("ListRecoveries", epb.ListRecoveriesRequest(), epb.ListRecoveriesResponse,
               "demo-admin")
    check(s == 200 and all(r.tenant == "demo" for r in m.recoveries),
          "another tenant's administrator sees none of them")


if PHASE == "main":
    main()
elif PHASE == "timing":
    timing()
elif PHASE == "timelock":
    timelock()
sys.exit(1 if failures else 0)

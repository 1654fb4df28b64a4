"""See test_recovery_race.sh.

  recovery_race.py DIR PORT ROUNDS

Per round, for an AES_256 and an EC_P256 key of the escrow tenant `bank`
(2 versions each, destroyed through a 1-dev-day deletion):
  same  one approved RESTORE recovery, ExecuteRecovery sent 3 times at once
  two   two different approved RESTORE recoveries, executed at once
Exactly one execute is 200 EXECUTED, the others 412 failed_precondition;
afterwards the key is ENABLED, every version has its objects in the token
(counted with PyKCS11 by label), the old ciphertexts decrypt and the old
signatures verify with the restored key, which still signs.
"""
import sys
import threading
import time

import PyKCS11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit_lib import Client, kpb
import escrow_pb2 as epb

DIR, PORT, ROUNDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
failures = 0


def check(cond, what):
    global failures
    print(f"{'ok' if cond else 'not ok'} - {what}", flush=True)
    failures += 0 if cond else 1
    return cond


def client(who):
    return Client(PORT, f"{DIR}/credentials/{who}.key")


def must(who, method, req, resp_cls, service="KeyService"):
    s, m, _ = client(who).call(service, method, req, resp_cls)
    if s != 200:
        raise SystemExit(f"not ok - {method} as {who}: {s} {m}")
    return m


lib = PyKCS11.PyKCS11Lib()
lib.load("/usr/lib/softhsm/libsofthsm2.so")
slot = [s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == "custos-eu-west"][0]
sess = lib.openSession(slot)
sess.login(open(f"{DIR}/hsm/pins/eu-west.pin").read().strip())


def objects(key_id, version):
    return len(sess.findObjects([(PyKCS11.CKA_TOKEN, True),
                                 (PyKCS11.CKA_LABEL, f"custos:key:{key_id}:v{version}")]))


def make_key(spec):
    """A 2-version key with a ciphertext / signature per version; destroyed."""
    usage = kpb.SIGN_VERIFY if spec == kpb.EC_P256 else kpb.ENCRYPT_DECRYPT
    k = must("bank-admin", "CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=spec,
                                                             usage=usage),
             kpb.CreateKeyResponse).key
    old = {}
    for v in (1, 2):
        if v == 2:
            must("bank-admin", "RotateKey", kpb.RotateKeyRequest(key_id=k.key_id),
                 kpb.RotateKeyResponse)
        msg = f"before destruction v{v}".encode()
        if spec == kpb.EC_P256:
            old[v] = (msg, must("bank-broker", "Sign", kpb.SignRequest(
                key_id=k.key_id, message=msg, algorithm=kpb.ECDSA_SHA_256),
                kpb.SignResponse).signature)
        else:
            old[v] = (msg, must("bank-broker", "Encrypt", kpb.EncryptRequest(
                key_id=k.key_id, plaintext=msg), kpb.EncryptResponse).ciphertext)
    must("bank-admin", "ScheduleKeyDeletion",
         kpb.ScheduleKeyDeletionRequest(key_id=k.key_id, pending_window_days=1),
         kpb.ScheduleKeyDeletionResponse)
    return k.key_id, spec, old


def wait_destroyed(key_id):
    for _ in range(300):
        d = must("bank-admin", "DescribeKey", kpb.DescribeKeyRequest(key_id=key_id),
                 kpb.DescribeKeyResponse).key
        if d.state == kpb.DESTROYED:
            return True
        time.sleep(0.1)
    return False


def approved_restore(key_id, requester, case):
    rec = must(requester, "RequestRecovery", epb.RequestRecoveryRequest(
        key_id=key_id, mode=epb.RESTORE, restore_state=epb.RESTORE_ENABLED,
        justification=epb.ACCIDENTAL_DELETION, justification_text="concurrent execute test",
        case_reference=case), epb.RequestRecoveryResponse, "EscrowService").recovery
    for who in ("bank-officer-1", "bank-officer-2", "bank-officer-3"):
        if who == requester:
            continue
        okey = serialization.load_pem_private_key(
            open(f"{DIR}/credentials/{who}.key.pem", "rb").read(), None)
        must(who, "ApproveRecovery", epb.ApproveRecoveryRequest(
            recovery_id=rec.recovery_id,
            signature=okey.sign(rec.statement.encode(), ec.ECDSA(hashes.SHA256()))),
            epb.ApproveRecoveryResponse, "EscrowService")
    return rec.recovery_id


def execute_at_once(calls):
    """[(officer, recovery id)] released together; [(status, body)]."""
    out = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i, who, rid):
        c = client(who)
        start.wait()
        try:
            s, m, _ = c.call("EscrowService", "ExecuteRecovery",
                             epb.ExecuteRecoveryRequest(recovery_id=rid),
                             epb.ExecuteRecoveryResponse)
            out[i] = (s, m)
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            out[i] = (0, {"code": repr(e)})

    ts = [threading.Thread(target=run, args=(i, w, r)) for i, (w, r) in enumerate(calls)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def intact(key_id, spec, old):
    """Every version's objects exist; old outputs decrypt / verify; it still works."""
    want = 2 if spec == kpb.EC_P256 else 1
    bad = []
    for v, (msg, out) in old.items():
        if objects(key_id, v) != want:
            bad.append(f"v{v} has {objects(key_id, v)} objects")
        if spec == kpb.EC_P256:
            s, r, _ = client("bank-broker").call("KeyService", "Verify", kpb.VerifyRequest(
                key_id=key_id, version=v, message=msg, algorithm=kpb.ECDSA_SHA_256,
                signature=out), kpb.VerifyResponse)
            if s != 200 or not r.valid:
                bad.append(f"v{v} old signature: {s} {r}")
        else:
            s, r, _ = client("bank-broker").call("KeyService", "Decrypt", kpb.DecryptRequest(
                ciphertext=out), kpb.DecryptResponse)
            if s != 200 or r.plaintext != msg:
                bad.append(f"v{v} old ciphertext: {s} {r}")
    if spec == kpb.EC_P256:
        s, r, _ = client("bank-broker").call("KeyService", "Sign", kpb.SignRequest(
            key_id=key_id, message=b"after", algorithm=kpb.ECDSA_SHA_256), kpb.SignResponse)
    else:
        s, r, _ = client("bank-broker").call("KeyService", "Encrypt", kpb.EncryptRequest(
            key_id=key_id, plaintext=b"after"), kpb.EncryptResponse)
    if s != 200:
        bad.append(f"new operation: {s} {r}")
    return bad


def outcome(res, key_id, spec, old, what):
    ok = [r for r in res if r[0] == 200]
    refused = [r for r in res if r[0] == 412 and r[1].get("code") == "failed_precondition"]
    check(len(ok) == 1 and len(refused) == len(res) - 1,
          f"{what}: exactly one EXECUTED, the others failed_precondition "
          f"({[(s, m.get('msg') if isinstance(m, dict) else m.key_state) for s, m in res]})")
    d = must("bank-admin", "DescribeKey", kpb.DescribeKeyRequest(key_id=key_id),
             kpb.DescribeKeyResponse).key
    bad = intact(key_id, spec, old)
    check(d.state == kpb.ENABLED and not bad,
          f"{what}: the key is ENABLED, every version's objects are in the token, old "
          f"outputs open, new ones are made ({bad})")


def main():
    specs = [(kpb.AES_256, "AES_256"), (kpb.EC_P256, "EC_P256")]
    for rnd in range(ROUNDS):
        same = {name: make_key(spec) for spec, name in specs}
        two = {name: make_key(spec) for spec, name in specs}
        for key_id, _, _ in list(same.values()) + list(two.values()):
            if not wait_destroyed(key_id):
                raise SystemExit(f"not ok - key {key_id} was not destroyed")
        for name, (key_id, spec, old) in same.items():
            rid = approved_restore(key_id, "bank-officer-1", f"SAME-{rnd}")
            res = execute_at_once([("bank-officer-2", rid)] * 3)
            outcome(res, key_id, spec, old,
                    f"round {rnd + 1} {name}: one RESTORE recovery executed 3 times at once")
            st = must("bank-officer-1", "GetRecovery", epb.GetRecoveryRequest(recovery_id=rid),
                      epb.GetRecoveryResponse, "EscrowService").recovery.state
            check(st == epb.EXECUTED, f"round {rnd + 1} {name}: the recovery is EXECUTED")
        for name, (key_id, spec, old) in two.items():
            a = approved_restore(key_id, "bank-officer-1", f"TWO-A-{rnd}")
            b = approved_restore(key_id, "bank-officer-2", f"TWO-B-{rnd}")
            res = execute_at_once([("bank-officer-3", a), ("bank-officer-3", b)])
            outcome(res, key_id, spec, old,
                    f"round {rnd + 1} {name}: two RESTORE recoveries of one key executed at once")
    s, body = 0, ""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    c.request("GET", "/readyz")
    r = c.getresponse()
    s, body = r.status, r.read().decode()
    check(s == 200, f"/readyz is ready afterwards ({s} {body.strip()})")
    return 1 if failures else 0


sys.exit(main())

"""See test_pg_nodes.sh.

  pg_nodes_race.py DIR PORT_A PORT_B ROUNDS

Two kmsd nodes on one PostgreSQL store and one SoftHSMv2 token directory;
every race sends the same request to node A and node B at the same instant
(a barrier releases both threads):
  byok      one import token used on A and on B at once: exactly one 200,
            the other a clear refusal; the key has exactly one version
            object, the wrapping key pair is gone, the token holds no
            object more than the winner's (counted with PyKCS11);
  approve   the same officer's approval sent to A and B at once: one 200,
            the recovery counts it once (still PENDING_APPROVAL with 1 of 2);
  execute   the same RESTORE recovery executed on A and B at once: exactly
            one EXECUTED, the other failed_precondition; the key is ENABLED
            with its object in the token and the old ciphertext decrypts on
            both nodes (the loser's rollback must not destroy the winner's
            object: the rotation lock is per process);
  invalidate  a key disabled, one scheduled for deletion and one rotated
            through A: B, which had them cached, refuses / uses the new
            version; the time to the flip is printed;
  gcm       A and B encrypt with one key at once: the store's count of the
            version is at least the encryptions both acknowledged.
Prints "ok - ..." / "not ok - ..."; exits 1 if a check failed. Writes the
recovery key ids to DIR/t/recovered.txt for the audit count.
"""
import os
import sys
import threading
import time

import PyKCS11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

import p11_module
from audit_lib import Client, kpb
import escrow_pb2 as epb

DIR, PORT_A, PORT_B, ROUNDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
PORTS = {"A": PORT_A, "B": PORT_B}
MODULE = os.environ.get("CUSTOS_TEST_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
failures = 0


def check(cond, what):
    global failures
    print(f"{'ok' if cond else 'not ok'} - {what}", flush=True)
    failures += 0 if cond else 1
    return cond


def client(node, who):
    return Client(PORTS[node], f"{DIR}/credentials/{who}.key")


def must(node, who, method, req, resp_cls, service="KeyService"):
    s, m, _ = client(node, who).call(service, method, req, resp_cls)
    if s != 200:
        raise SystemExit(f"not ok - {method} as {who} on {node}: {s} {m}")
    return m


def at_once(calls):
    """[(node, who, service, method, req, resp_cls)] released together by a
    barrier, each on its own connection; [(status, body)] in order."""
    out = [None] * len(calls)
    conns = [client(c[0], c[1]) for c in calls]
    # Connect first: the barrier then releases requests, not handshakes.
    for c in conns:
        c.call("KeyService", "ListKeys", kpb.ListKeysRequest(), kpb.ListKeysResponse)
    start = threading.Barrier(len(calls))

    def run(i):
        _, _, service, method, req, resp_cls = calls[i]
        start.wait()
        try:
            s, m, _ = conns[i].call(service, method, req, resp_cls)
            out[i] = (s, m)
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            out[i] = (0, {"code": repr(e)})

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def brief(res):
    return [(s, m.get("code"), m.get("msg", "")[:90]) if isinstance(m, dict) else (s, "ok")
            for s, m in res]


lib = p11_module.pykcs11(MODULE)
slot = [s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == "custos-eu-west"][0]


# The key the sweepers rotate meanwhile: its new versions are not counted.
ROTATING = ""


def label_of(sess, obj):
    v = sess.getAttributeValue(obj, [PyKCS11.CKA_LABEL])[0]
    return v if isinstance(v, str) else bytes(v).decode()


def labels():
    """The labels of the token's objects, with their counts (a diff of two
    says what changed)."""
    sess = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    try:
        sess.login(open(f"{DIR}/hsm/pins/eu-west.pin").read().strip())
        out = {}
        for o in sess.findObjects([(PyKCS11.CKA_TOKEN, True)]):
            try:
                lab = label_of(sess, o)
            except (PyKCS11.PyKCS11Error, TypeError, ValueError) as e:
                lab = f"<{e!r}>"
            out[lab] = out.get(lab, 0) + 1
        return out
    finally:
        try:
            sess.logout()
        except PyKCS11.PyKCS11Error:
            pass
        sess.closeSession()


def label_diff(a, b):
    return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b) if a.get(k, 0) != b.get(k, 0)}


def count(label=None):
    """Objects in the eu-west token now (a fresh session: SoftHSMv2 reads
    the token directory other processes write), but the rotating key's."""
    sess = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    try:
        sess.login(open(f"{DIR}/hsm/pins/eu-west.pin").read().strip())
        tmpl = [(PyKCS11.CKA_TOKEN, True)]
        if label is not None:
            tmpl.append((PyKCS11.CKA_LABEL, label))
        objs = sess.findObjects(tmpl)
        if label is not None or not ROTATING:
            return len(objs)
        skip = f"custos:key:{ROTATING}:"
        n = 0
        for o in objs:
            try:
                lab = label_of(sess, o)
            except (PyKCS11.PyKCS11Error, TypeError, ValueError):
                lab = ""
            n += not lab.startswith(skip)
        return n
    finally:
        try:
            sess.logout()
        except PyKCS11.PyKCS11Error:
            pass
        sess.closeSession()


# ---- byok ------------------------------------------------------------------------------

def byok_round(rnd):
    k = must("A", "demo-admin", "CreateKey", kpb.CreateKeyRequest(
        region="eu-west", spec=kpb.AES_256, usage=kpb.ENCRYPT_DECRYPT, origin=kpb.EXTERNAL,
        description="byok race"), kpb.CreateKeyResponse).key
    p = must("A", "demo-admin", "GetImportParameters",
             kpb.GetImportParametersRequest(key_id=k.key_id), kpb.GetImportParametersResponse)
    material, eph = os.urandom(32), os.urandom(32)
    oaep = load_der_public_key(p.public_key).encrypt(
        eph, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    wrapped = oaep + aes_key_wrap_with_padding(eph, material)
    before = count()
    before_labels = labels()
    wrapping = count(f"custos:import:{k.key_id}")
    req = kpb.ImportKeyMaterialRequest(key_id=k.key_id, import_token=p.import_token,
                                       algorithm=kpb.RSA_AES_KEY_WRAP_SHA_1,
                                       wrapped_material=wrapped)
    res = at_once([(n, "demo-admin", "KeyService", "ImportKeyMaterial", req,
                    kpb.ImportKeyMaterialResponse) for n in ("A", "B")])
    ok = [r for r in res if r[0] == 200]
    lost = [r for r in res if r[0] != 200]
    clear = all(isinstance(m, dict) and m.get("code") == "failed_precondition" and
                "import token" in m.get("msg", "") for _, m in lost)
    check(len(ok) == 1 and len(lost) == 1 and clear,
          f"byok round {rnd}: one import token on A and B at once: exactly one imports, the "
          f"other is refused failed_precondition naming the import token {brief(res)}")
    # The winner destroys the wrapping pair after its commit; the loser
    # made nothing, or destroyed what it made. SoftHSMv2 in this process
    # sees other processes' changes to the token directory with a delay:
    # wait (bounded) for the counts to settle where they must end.
    deadline = time.time() + 10
    while True:
        objs = count(f"custos:key:{k.key_id}:v1")
        after = count()
        if (objs == 1 and count(f"custos:import:{k.key_id}") == 0 and
                after == before - wrapping + 1) or time.time() > deadline:
            break
        time.sleep(0.2)
    if not check(objs == 1 and count(f"custos:import:{k.key_id}") == 0 and
                 after == before - wrapping + 1,
                 f"byok round {rnd}: one version object, the wrapping pair gone, nothing left "
                 f"by the loser (token {before} -> {after} objects, {wrapping} wrapping, "
                 f"{objs} version)"):
        print(f"# labels changed: {label_diff(before_labels, labels())}", flush=True)
    d = must("B", "demo-admin", "DescribeKey", kpb.DescribeKeyRequest(key_id=k.key_id),
             kpb.DescribeKeyResponse).key
    check(d.state == kpb.ENABLED and [v.version for v in d.versions] == [1],
          f"byok round {rnd}: the key is ENABLED with one version (state {d.state}, "
          f"versions {[v.version for v in d.versions]})")


# ---- escrow: approvals and executions ----------------------------------------------------

def destroyed_key(node):
    """An escrowed AES key of tenant bank with a ciphertext, destroyed
    through a 1-dev-day deletion by whichever node's sweeper holds the lease."""
    k = must(node, "bank-admin", "CreateKey", kpb.CreateKeyRequest(
        region="eu-west", spec=kpb.AES_256, usage=kpb.ENCRYPT_DECRYPT),
        kpb.CreateKeyResponse).key
    ct = must(node, "bank-broker", "Encrypt", kpb.EncryptRequest(
        key_id=k.key_id, plaintext=b"before destruction"), kpb.EncryptResponse).ciphertext
    must(node, "bank-admin", "ScheduleKeyDeletion", kpb.ScheduleKeyDeletionRequest(
        key_id=k.key_id, pending_window_days=1), kpb.ScheduleKeyDeletionResponse)
    return k.key_id, ct


def wait_destroyed(key_id):
    for _ in range(300):
        d = must("B", "bank-admin", "DescribeKey", kpb.DescribeKeyRequest(key_id=key_id),
                 kpb.DescribeKeyResponse).key
        if d.state == kpb.DESTROYED:
            return True
        time.sleep(0.1)
    return False


def sign_approval(who, rec):
    okey = serialization.load_pem_private_key(
        open(f"{DIR}/credentials/{who}.key.pem", "rb").read(), None)
    return epb.ApproveRecoveryRequest(
        recovery_id=rec.recovery_id,
        signature=okey.sign(rec.statement.encode(), ec.ECDSA(hashes.SHA256())))


def get_recovery(rid):
    return must("A", "bank-officer-1", "GetRecovery", epb.GetRecoveryRequest(recovery_id=rid),
                epb.GetRecoveryResponse, "EscrowService").recovery


def escrow_round(rnd, recovered):
    key_id, ct = destroyed_key("A" if rnd % 2 else "B")
    if not check(wait_destroyed(key_id), f"escrow round {rnd}: the key is destroyed by a sweeper"):
        return
    check(count(f"custos:key:{key_id}:v1") == 0,
          f"escrow round {rnd}: its object left the token")
    rec = must("A", "bank-officer-1", "RequestRecovery", epb.RequestRecoveryRequest(
        key_id=key_id, mode=epb.RESTORE, restore_state=epb.RESTORE_ENABLED,
        justification=epb.ACCIDENTAL_DELETION, justification_text="two-node race",
        case_reference=f"NODES-{rnd}"), epb.RequestRecoveryResponse, "EscrowService").recovery
    appr = sign_approval("bank-officer-2", rec)
    res = at_once([(n, "bank-officer-2", "EscrowService", "ApproveRecovery", appr,
                    epb.ApproveRecoveryResponse) for n in ("A", "B")])
    r = get_recovery(rec.recovery_id)
    check(sum(1 for s, _ in res if s == 200) >= 1 and len(r.approvals) == 1 and
          r.state == epb.PENDING_APPROVAL,
          f"escrow round {rnd}: one approval sent to A and B at once is counted once "
          f"({len(r.approvals)} of {r.approvals_required}, state "
          f"{epb.RecoveryState.Name(r.state)}; {brief(res)})")
    must("B", "bank-officer-3", "ApproveRecovery", sign_approval("bank-officer-3", rec),
         epb.ApproveRecoveryResponse, "EscrowService")
    check(get_recovery(rec.recovery_id).state == epb.APPROVED,
          f"escrow round {rnd}: a second officer's approval makes it APPROVED")
    ex = epb.ExecuteRecoveryRequest(recovery_id=rec.recovery_id)
    res = at_once([(n, "bank-officer-2", "EscrowService", "ExecuteRecovery", ex,
                    epb.ExecuteRecoveryResponse) for n in ("A", "B")])
    ok = [x for x in res if x[0] == 200]
    refused = [x for x in res if x[0] == 412 and x[1].get("code") == "failed_precondition"]
    check(len(ok) == 1 and len(refused) == 1,
          f"escrow round {rnd}: one recovery executed on A and B at once: exactly one "
          f"EXECUTED, the other failed_precondition {brief(res)}")
    recovered.append(key_id)
    # The node that lost still has the key cached as DESTROYED for up to the
    # key cache's 1 s (the invalidation bound): poll, print the time.
    bad = []
    for n in ("A", "B"):
        last = []

        def opens():
            s, m, _ = client(n, "bank-broker").call("KeyService", "Decrypt", kpb.DecryptRequest(
                ciphertext=ct), kpb.DecryptResponse)
            last[:] = [s, m]
            return s == 200 and m.plaintext == b"before destruction"
        t = flip("restored", opens)
        if t is None:
            bad.append(f"{n}: {last}")
        else:
            print(f"# escrow round {rnd}: node {n} decrypts {t * 1000:.0f} ms after the "
                  f"execution", flush=True)
    d = must("A", "bank-admin", "DescribeKey", kpb.DescribeKeyRequest(key_id=key_id),
             kpb.DescribeKeyResponse).key
    objs = count(f"custos:key:{key_id}:v1")
    check(d.state == kpb.ENABLED and objs == 1 and not bad and
          get_recovery(rec.recovery_id).state == epb.EXECUTED,
          f"escrow round {rnd}: the key is ENABLED, its object is in the token once ({objs}), "
          f"the old ciphertext decrypts on both nodes {bad}")


# ---- cross-node invalidation -------------------------------------------------------------

def flip(what, probe, limit_s=20.0):
    """Poll node B until probe() is true; the seconds it took, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if probe():
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def invalidation():
    b = client("B", "demo-broker")

    def enc(key_id):
        return b.call("KeyService", "Encrypt", kpb.EncryptRequest(
            key_id=key_id, plaintext=b"x"), kpb.EncryptResponse)

    keys = {}
    for what in ("disable", "delete", "rotate"):
        k = must("A", "demo-admin", "CreateKey", kpb.CreateKeyRequest(
            region="eu-west", spec=kpb.AES_256, usage=kpb.ENCRYPT_DECRYPT),
            kpb.CreateKeyResponse).key
        s, _, _ = enc(k.key_id)  # B has it cached now
        check(s == 200, f"invalidation: node B encrypts with a key created on A ({what})")
        keys[what] = k.key_id
    times = {}
    must("A", "demo-admin", "DisableKey", kpb.DisableKeyRequest(key_id=keys["disable"]),
         kpb.DisableKeyResponse)
    times["disable"] = flip("disable", lambda: enc(keys["disable"])[0] == 412)
    must("A", "demo-admin", "ScheduleKeyDeletion", kpb.ScheduleKeyDeletionRequest(
        key_id=keys["delete"], pending_window_days=30), kpb.ScheduleKeyDeletionResponse)
    times["delete"] = flip("delete", lambda: enc(keys["delete"])[0] == 412)
    must("A", "demo-admin", "RotateKey", kpb.RotateKeyRequest(key_id=keys["rotate"]),
         kpb.RotateKeyResponse)

    def rotated():
        s, m, _ = enc(keys["rotate"])
        return s == 200 and m.key_version == 2
    times["rotate"] = flip("rotate", rotated)
    for what, t in times.items():
        check(t is not None, f"invalidation: a key {what}d on A is "
              f"{'used at version 2' if what == 'rotate' else 'refused'} by B "
              f"(after {t if t is None else round(t, 3)} s; documented bound: the key cache's "
              f"1 s)")
        if t is not None:
            print(f"# invalidation {what}: {t * 1000:.0f} ms", flush=True)


# ---- GCM counts ----------------------------------------------------------------------------

def gcm(n):
    k = must("A", "demo-admin", "CreateKey", kpb.CreateKeyRequest(
        region="eu-west", spec=kpb.AES_256, usage=kpb.ENCRYPT_DECRYPT),
        kpb.CreateKeyResponse).key
    acked = {"A": 0, "B": 0}

    def run(node):
        c = client(node, "demo-broker")
        for i in range(n):
            s, _, _ = c.call("KeyService", "Encrypt", kpb.EncryptRequest(
                key_id=k.key_id, plaintext=f"{node}{i}".encode()), kpb.EncryptResponse)
            acked[node] += s == 200
    ts = [threading.Thread(target=run, args=(nd,)) for nd in ("A", "B")]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    counts = []
    for nd in ("A", "B"):
        d = must(nd, "demo-admin", "DescribeKey", kpb.DescribeKeyRequest(key_id=k.key_id),
                 kpb.DescribeKeyResponse).key
        counts.append(sum(v.encryptions for v in d.versions))
    total = acked["A"] + acked["B"]
    check(total == 2 * n and min(counts) >= total,
          f"gcm: A and B encrypt with one key at once ({acked['A']} + {acked['B']} "
          f"acknowledged); the store's count, read through A and B, is at least that "
          f"({counts})")
    print(f"# {k.key_id}", file=open(f"{DIR}/t/gcm_key.txt", "w"))


def main():
    # The import races first, with no other process writing the token: in
    # one CI run a round's claiming node had its RSA-AES unwrap refused as
    # invalid while the rotating key below was being rotated by the other
    # node's sweeper, so nobody imported. That was SoftHSMv2 racing itself
    # within one process after another process changed the shared token
    # directory; the nodes now run with pkcs11.serialize_calls
    # (docs/pkcs11.md). The token claim this checks is the store's.
    for rnd in range(1, ROUNDS + 1):
        byok_round(rnd)
    # Rotated by the sweepers every 2 s while the rest runs; checked by the
    # shell script at the end.
    rk = must("B", "demo-admin", "CreateKey", kpb.CreateKeyRequest(
        region="eu-west", spec=kpb.AES_256, usage=kpb.ENCRYPT_DECRYPT, rotation_period_s=2),
        kpb.CreateKeyResponse).key.key_id
    with open(f"{DIR}/t/rotating_key.txt", "w") as f:
        f.write(rk)
    global ROTATING
    ROTATING = rk
    recovered = []
    for rnd in range(1, ROUNDS + 1):
        escrow_round(rnd, recovered)
    with open(f"{DIR}/t/recovered.txt", "w") as f:
        f.write("".join(k + "\n" for k in recovered))
    invalidation()
    gcm(60)
    return 1 if failures else 0


sys.exit(main())

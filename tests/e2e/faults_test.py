"""HSM faults through the fault-injecting PKCS#11 shim (tests/p11fault), a
real kmsd over HTTP: lost sessions, PIN errors, device errors, removed
tokens and slow calls. Started by test_faults.sh, which writes
DIR/kmsd-faults.json (module: the shim; heads only at start and stop, so
no background HSM call disturbs the counts) and exports
CUSTOS_P11FAULT_CONTROL and CUSTOS_P11FAULT_STATS.

Usage: faults_test.py DIR PORT KMSD
Leaves DIR/faults-requests.json: every request made, with its request id
and outcome, for the audit check the script runs at the end.
"""
import http.client
import json
import os
import subprocess
import sys
import time

import audit_pb2 as apb
import key_pb2 as kpb
from audit_lib import Client, export_all

DIR, PORT, KMSD = sys.argv[1], int(sys.argv[2]), sys.argv[3]
CTL = os.environ["CUSTOS_P11FAULT_CONTROL"]
STATS = os.environ["CUSTOS_P11FAULT_STATS"]
CONFIG = f"{DIR}/kmsd-faults.json"
LOG = f"{DIR}/kmsd-faults.log"
PINS = [open(f"{DIR}/hsm/pins/{r}.pin").read().strip() for r in ("eu-west", "us-east")]
count = failures = 0
requests = []  # (request id, method, outcome): every request, for the audit check


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1
    return cond


def cred(name):
    return open(f"{DIR}/credentials/{name}.key").read().strip()


class Reply:
    def __init__(self, status, body, ctype, rid, msg=None):
        self.status, self.body, self.ctype, self.rid, self.msg = status, body, ctype, rid, msg

    def err(self):
        """The Twirp error of a failed call: (code, msg), or None when the
        body is anything but exactly the JSON error object."""
        if self.status == 200 or not self.ctype.startswith("application/json"):
            return None
        try:
            e = json.loads(self.body)
        except ValueError:
            return None
        return (e.get("code"), e.get("msg")) if set(e) == {"code", "msg"} else None


def rpc(method, req, resp_cls, who, service="KeyService"):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    try:
        conn.request("POST", f"/twirp/custos.v1.{service}/{method}", req.SerializeToString(),
                     {"Content-Type": "application/protobuf",
                      "Authorization": "Bearer " + cred(who)})
        r = conn.getresponse()
        body = r.read()
        rep = Reply(r.status, body, r.getheader("Content-Type", ""), r.getheader("X-Request-Id"))
    finally:
        conn.close()
    if rep.status == 200:
        rep.msg = resp_cls.FromString(body)
        outcome = "ok"
    else:
        e = rep.err()
        outcome = e[0] if e else f"http-{rep.status}"
    requests.append((rep.rid, method, outcome))
    return rep


def get(path):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def set_faults(text):
    # A new inode each time, so the shim sees a change within one mtime
    # tick; then wait past its 10 ms check interval.
    with open(CTL + ".tmp", "w") as f:
        f.write(text)
    os.replace(CTL + ".tmp", CTL)
    time.sleep(0.05)


def stats():
    """Call counters of the shim, once kmsd is idle and the file settled."""
    def read():
        try:
            return dict((k, int(v)) for k, v in
                        (line.split() for line in open(STATS) if line.strip()))
        except (OSError, ValueError):
            return None
    prev = read()
    for _ in range(100):
        time.sleep(0.06)
        cur = read()
        if cur is not None and cur == prev:
            return cur
        prev = cur
    raise RuntimeError("the shim's stats file does not settle")


def delta(a, b, name):
    return b.get(name, 0) - a.get(name, 0)


def log_text():
    return open(LOG).read()


proc = None


def start(expect_ready=True):
    global proc
    out = open(LOG, "a")
    proc = subprocess.Popen([KMSD, "--config", CONFIG], stdout=out, stderr=out)
    if not expect_ready:
        return proc
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"kmsd exited {proc.returncode}:\n{log_text()[-2000:]}")
        try:
            if get("/livez")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("kmsd did not start")


def stop():
    proc.terminate()
    return proc.wait(60)


def encrypt(key, pt=b"payload", who="demo-broker"):
    return rpc("Encrypt", kpb.EncryptRequest(key_id=key, plaintext=pt), kpb.EncryptResponse, who)


def decrypt(blob, who="demo-broker"):
    return rpc("Decrypt", kpb.DecryptRequest(ciphertext=blob), kpb.DecryptResponse, who)


def gdk(key, who="demo-broker"):
    return rpc("GenerateDataKey", kpb.GenerateDataKeyRequest(key_id=key),
               kpb.GenerateDataKeyResponse, who)


def create(who="demo-admin"):
    return rpc("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                 usage=kpb.ENCRYPT_DECRYPT),
               kpb.CreateKeyResponse, who)


def list_keys():
    r = rpc("ListKeys", kpb.ListKeysRequest(page_size=1000), kpb.ListKeysResponse, "demo-admin")
    return sorted(k.key_id for k in r.msg.keys) if r.status == 200 else None


set_faults("")
start()
try:
    r = create()
    key = r.msg.key.key_id if check(r.status == 200, "a key to work with") else ""
    ct = encrypt(key, b"hello").msg.ciphertext

    # ---- a. lost session: one retry, the key found again by CKA_ID -----------------
    for fn, rv, effect in (("C_Encrypt", "CKR_SESSION_HANDLE_INVALID", " close_all"),
                           ("C_EncryptInit", "CKR_SESSION_HANDLE_INVALID", ""),
                           ("C_EncryptInit", "CKR_OBJECT_HANDLE_INVALID", "")):
        encrypt(key)  # warm: a session and the key's handle are cached
        s0 = stats()
        set_faults(f"{fn} {rv}{effect} count=1\n")
        r = encrypt(key, b"after a lost session")
        s1 = stats()
        set_faults("")
        what = f"{fn} {rv}{' + C_CloseAllSessions' if effect else ''} once"
        ok = r.status == 200
        if ok:
            d = decrypt(r.msg.ciphertext)
            ok = d.status == 200 and d.msg.plaintext == b"after a lost session"
        check(ok, f"{what}: Encrypt still succeeds (and decrypts)")
        check(delta(s0, s1, fn) == 2,
              f"{what}: exactly one retry ({fn} called {delta(s0, s1, fn)} times)")
        check(delta(s0, s1, "C_FindObjectsInit+CKA_ID") >= 1 and
              delta(s0, s1, "C_FindObjectsInit+CKA_ID") <= 2,
              f"{what}: the key is looked up again by CKA_ID "
              f"({delta(s0, s1, 'C_FindObjectsInit+CKA_ID')} C_FindObjectsInit with CKA_ID)")
        # After C_CloseAllSessions the application is logged out: one login.
        # Otherwise at most one: closing the broken session logs the
        # application out when it was the token's last.
        n = delta(s0, s1, "C_Login")
        check(n == 1 if effect else n <= 1,
              f"{what}: C_Login called {n} time(s) ({'exactly' if effect else 'at most'} once)")

    # A session that stays lost: the one retry is all there is.
    encrypt(key)
    s0 = stats()
    set_faults("C_Encrypt CKR_SESSION_HANDLE_INVALID\n")
    r = encrypt(key)
    s1 = stats()
    set_faults("")
    check(r.status == 503 and r.err() and r.err()[0] == "unavailable" and
          delta(s0, s1, "C_Encrypt") == 2,
          f"a session lost on every call: 503 unavailable after one retry "
          f"({r.status}, C_Encrypt x{delta(s0, s1, 'C_Encrypt')})")
    check(encrypt(key).status == 200, "and the next request, fault cleared, succeeds")

    # ---- c. device errors, removed tokens, slow calls -------------------------------
    # (rule, request, expected HTTP status and Twirp code). CKR_GENERAL_ERROR on
    # C_Decrypt itself is SoftHSMv2's failed-tag code, read as bad ciphertext
    # for that module (docs/pkcs11.md), so the general error is injected on
    # C_DecryptInit.
    cases = []
    for rv, status, code in (("CKR_DEVICE_ERROR", 500, "internal"),
                             ("CKR_GENERAL_ERROR", 500, "internal"),
                             ("CKR_DEVICE_REMOVED", 503, "unavailable"),
                             ("CKR_TOKEN_NOT_PRESENT", 503, "unavailable")):
        cases += [(f"C_Encrypt {rv}", "Encrypt", status, code),
                  (f"C_DecryptInit {rv}", "Decrypt", status, code),
                  (f"C_GenerateRandom {rv}", "GenerateDataKey", status, code),
                  # A transient creation failure (CKR_GENERAL_ERROR) is retried
                  # up to 4 times in all (p11_key_generate): fail every try.
                  (f"C_GenerateKey {rv}" + (" count=4" if rv == "CKR_GENERAL_ERROR" else ""),
                   "CreateKey", status, code)]
    cases += [("C_Decrypt CKR_DEVICE_ERROR", "Decrypt", 500, "internal")]
    ops = {"Encrypt": lambda: encrypt(key, b"secret plaintext"),
           "Decrypt": lambda: decrypt(ct),
           "GenerateDataKey": lambda: gdk(key),
           "CreateKey": create}
    keys_before = list_keys()
    bad = []
    for rule, op, status, code in cases:
        set_faults(rule + ("" if "count=" in rule else " count=1") + "\n")
        r = ops[op]()
        set_faults("")
        e = r.err()
        if r.status != status or e is None or e[0] != code:
            bad.append((rule, op, r.status, r.body[:120]))
            continue
        if b"secret plaintext" in r.body or b"hello" in r.body:
            bad.append((rule, op, "plaintext in the error body"))
        again = ops[op]()
        if again.status != 200:
            bad.append((rule, op, "not served again after the fault", again.status))
        elif op == "CreateKey":
            keys_before.append(again.msg.key.key_id)
    check(not bad, f"{len(cases)} injected errors on Encrypt/Decrypt/GenerateDataKey/CreateKey: "
          f"the right Twirp code, a body that is only the JSON error, and the next request "
          f"succeeds ({bad[:3]})")
    check(list_keys() == sorted(keys_before),
          "a CreateKey failed by the HSM leaves no key behind (ListKeys)")
    check(proc.poll() is None, "kmsd is still running after every injected error")

    set_faults("C_Encrypt delay_ms=400\nC_GenerateKey delay_ms=400\nC_DecryptInit delay_ms=400\n")
    t = time.monotonic()
    slow = [encrypt(key, b"slow"), decrypt(ct), gdk(key), create()]
    took = time.monotonic() - t
    set_faults("")
    check(all(r.status == 200 for r in slow) and took >= 1.2,
          f"slow HSM calls (400 ms each): requests succeed, only slower "
          f"({[r.status for r in slow]}, {took:.2f} s)")
    check(decrypt(slow[0].msg.ciphertext).msg.plaintext == b"slow",
          "the slowly made ciphertext decrypts")

    # A token that stays away: health says so, requests are 503, it comes back.
    set_faults("* CKR_DEVICE_REMOVED\n")
    r = encrypt(key)
    rz = get("/readyz")
    set_faults("")
    check(r.status == 503 and r.err() and r.err()[0] == "unavailable" and rz[0] == 503,
          f"a removed token: 503 unavailable and /readyz 503 ({r.status}, {rz[0]})")
    back = False
    for _ in range(50):
        if encrypt(key).status == 200:
            back = True
            break
        time.sleep(0.1)
    check(back and get("/readyz")[0] == 200, "the token returns: served and ready again")

    # ---- b. PIN errors at run time: no login storm --------------------------------
    # Every session closed underneath kmsd (a token reset), and the PIN is
    # now refused: kmsd must log in again, once, and then stop trying.
    encrypt(key)
    s0 = stats()
    set_faults("C_Encrypt CKR_SESSION_HANDLE_INVALID close_all count=1\n"
               "C_Login CKR_PIN_INCORRECT\n")
    results = [encrypt(key) for _ in range(200)]
    rz = get("/readyz")
    s1 = stats()
    codes = {(r.status, r.err()[0] if r.err() else None) for r in results}
    check(codes == {(503, "unavailable")},
          f"after the PIN is refused, 200 Encrypts all answer 503 unavailable ({codes})")
    msgs = {r.err()[1] for r in results if r.err()}
    check(msgs and all("PIN" in m and "retrying will not help" in m for m in msgs),
          f"with a message that says why ({sorted(msgs)[:2]})")
    check(delta(s0, s1, "C_Login") == 1,
          f"C_Login was called once for 200 requests, not per request "
          f"({delta(s0, s1, 'C_Login')})")
    check(rz[0] == 503, "/readyz reports the token unusable")
    set_faults("")
    rs = [encrypt(key) for _ in range(5)]
    s2 = stats()
    check(all(r.status == 503 for r in rs) and delta(s1, s2, "C_Login") == 0,
          "clearing the fault does not re-enable logins by itself: still 503, no C_Login "
          "(a PIN error waits for an operator)")
    check(stop() == 0, "kmsd stops cleanly (exit 0) with its token's PIN refused")

    # PIN errors at start: refused, C_Login once, exit 3 (not restarted by systemd).
    for rv in ("CKR_PIN_LOCKED", "CKR_PIN_INCORRECT"):
        set_faults(f"C_Login {rv}\n")
        os.unlink(STATS)
        p = start(expect_ready=False)
        rc = p.wait(120)
        s = stats()
        check(rc == 3 and f"C_Login failed on token 'custos-eu-west': {rv}" in log_text(),
              f"{rv} at start: kmsd refuses to start, exit 3, naming token and error (rc {rc})")
        check(s.get("C_Login", 0) == 1, f"{rv} at start: C_Login called once ({s.get('C_Login')})")
    set_faults("")
    logs = log_text()
    bodies = b"".join(r.body for r in results)
    check(all(p not in logs for p in PINS) and all(p.encode() not in bodies for p in PINS),
          "no PIN in kmsd's log or in any error body")

    start()
    r = encrypt(key, b"back again")
    check(r.status == 200 and decrypt(r.msg.ciphertext).msg.plaintext == b"back again",
          "restarted with the faults cleared: served again")
    check(stop() == 0, "kmsd stops cleanly")

    # ---- the audit log: one event per request, failures with their code --------------
    start()
    auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
    head, events, raw = export_all(auditor, "eu-west")
    by_rid = {}
    for ev in events:
        if ev.request_id:
            by_rid.setdefault(ev.request_id, []).append(ev)
    # Requests refused while the token's PIN was refused could not reach a
    # usable log only if the log itself failed; kmsd's log stayed writable
    # (its writer has its own session), so every request is audited.
    made = [x for x in requests if x[0]]
    wrong = []
    for rid, method, outcome in made:
        evs = by_rid.get(rid, [])
        if len(evs) != 1 or evs[0].operation != method or evs[0].outcome != outcome:
            wrong.append((rid, method, outcome, [(e.operation, e.outcome) for e in evs]))
    failed = [x for x in made if x[2] != "ok"]
    check(not wrong, f"each of the {len(made)} requests has exactly one audit event with its "
          f"outcome ({len(failed)} failed ones among them; wrong: {wrong[:3]})")
    check(len(made) == len(requests), "every request got a request id")
    check(sum(1 for ev in events if ev.request_id in {x[0] for x in made}) == len(made),
          f"audit events of these requests == requests made ({len(made)})")
    json.dump(requests, open(f"{DIR}/faults-requests.json", "w"))
    check(stop() == 0, "kmsd stops cleanly")
finally:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
sys.exit(1 if failures else 0)

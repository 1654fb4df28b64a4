"""End-to-end test of kmsd's KeyService through raw HTTP and Python protobuf.

Usage: api_test.py DIR PORT KMSD_PID   (run by test_api_python.sh)

Prints "ok N - what" / "not ok N - what" per check; exits 1 on any failure.
"""
import hashlib
import http.client
import json
import os
import re
import signal
import sys
import threading
import time

import key_pb2 as pb

DIR, PORT, PID = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
count = 0
failures = 0


def check(cond, what):
    global count, failures
    count += 1
    if cond:
        print(f"ok {count} - {what}", flush=True)
    else:
        failures += 1
        print(f"not ok {count} - {what}", flush=True)
    return cond


def api_key(who):
    with open(f"{DIR}/credentials/{who}.key") as f:
        return f.read().strip()


def raw(path, body, headers, method="POST"):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, r.getheader("Content-Type"), r.getheader("X-Request-Id"), data


def call(method, req, resp_cls, who="demo-broker", body=None, headers=None):
    """Returns (status, message-or-error-dict, request id)."""
    h = {"Content-Type": "application/protobuf"}
    if who:
        h["Authorization"] = "Bearer " + api_key(who)
    h.update(headers or {})
    status, ctype, rid, data = raw(f"/twirp/custos.v1.KeyService/{method}",
                                   req.SerializeToString() if body is None else body, h)
    if status == 200:
        m = resp_cls()
        m.ParseFromString(data)
        return status, m, rid
    return status, json.loads(data), rid


def err_is(res, status, code):
    return res[0] == status and isinstance(res[1], dict) and res[1].get("code") == code


def create_key(region="eu-west", who="demo-admin"):
    s, m, _ = call("CreateKey", pb.CreateKeyRequest(region=region, spec=pb.AES_256,
                                                    usage=pb.ENCRYPT_DECRYPT,
                                                    description="e2e"), pb.CreateKeyResponse, who)
    assert s == 200, (s, m)
    return m.key


def encrypt(key_id, pt, ctx=None, who="demo-broker"):
    return call("Encrypt", pb.EncryptRequest(key_id=key_id, plaintext=pt,
                                             encryption_context=ctx or {}),
                pb.EncryptResponse, who)


def decrypt(ct, ctx=None, who="demo-broker", key_id=""):
    return call("Decrypt", pb.DecryptRequest(ciphertext=ct, encryption_context=ctx or {},
                                             key_id=key_id), pb.DecryptResponse, who)


def alive():
    try:
        os.kill(PID, 0)
        return True
    except OSError:
        return False


# ---- lifecycle -------------------------------------------------------------

k = create_key()
check(re.fullmatch(r"[0-9a-f]{32}", k.key_id) and k.state == pb.ENABLED and
      k.current_version == 1 and k.region == "eu-west" and k.tenant == "demo",
      "CreateKey makes an ENABLED AES-256 key, version 1, in the tenant and region asked")
s, m, rid = call("DescribeKey", pb.DescribeKeyRequest(key_id=k.key_id), pb.DescribeKeyResponse,
                 "demo-admin")
check(s == 200 and m.key.key_id == k.key_id and len(m.key.versions) == 1 and
      m.key.versions[0].state == "ACTIVE", "DescribeKey shows the key and its version")
check(rid is not None and re.fullmatch(r"[0-9a-f]{32}", rid), "responses carry an X-Request-Id")

more = [create_key().key_id for _ in range(3)]
seen, token, pages = [], "", 0
while True:
    s, m, _ = call("ListKeys", pb.ListKeysRequest(page_size=2, page_token=token),
                   pb.ListKeysResponse, "demo-admin")
    if s != 200:
        break
    pages += 1
    seen += [x.key_id for x in m.keys]
    token = m.next_page_token
    if not token:
        break
check(set([k.key_id] + more) <= set(seen) and len(seen) == len(set(seen)) and pages >= 2,
      "ListKeys pages through every key once")
s, m, _ = call("ListKeys", pb.ListKeysRequest(page_token="garbage!"), pb.ListKeysResponse,
               "demo-admin")
check(err_is((s, m, None), 400, "invalid_argument"), "ListKeys refuses a forged page token")
# The refusal says what the caller got wrong, in the API's terms, and names
# no internal layer (it used to be "store: list keys: malformed page token").
check(s == 400 and m.get("msg", "").startswith("page_token is not one this server issued")
      and "store" not in m.get("msg", ""),
      "the forged page token's refusal is client-safe: " + repr(m.get("msg") if s != 200 else m))
for tok in ["k1" + "0" * 48, "k1" + "f" * 48, "x" * 300]:
    s, m, _ = call("ListKeys", pb.ListKeysRequest(page_token=tok), pb.ListKeysResponse,
                   "demo-admin")
    check(s == 400 and m.get("code") == "invalid_argument" and "store" not in m.get("msg", ""),
          f"ListKeys page token of {len(tok)} bytes refused without internals")
s, m, _ = call("ListKeys", pb.ListKeysRequest(), pb.ListKeysResponse, "other-admin")
check(s == 200 and not (set(x.key_id for x in m.keys) & set(seen)),
      "another tenant's ListKeys shows none of demo's keys")

# ---- envelope encryption ---------------------------------------------------

ctx = {"conversation": "c-1", "tenant": "demo"}
pt = b"plaintext-sentinel: +14155550123"
s, enc, _ = encrypt(k.key_id, pt, ctx)
check(s == 200 and enc.key_version == 1 and enc.ciphertext[0] == 0xC5 and
      enc.ciphertext[1] == 2 and enc.ciphertext[3:3 + enc.ciphertext[2]] == b"eu-west" and
      enc.ciphertext[35 + enc.ciphertext[2]] == 0x01,
      "Encrypt returns the public blob (magic, format version 2, region, kind 'data' in the header)")
check(pt not in enc.ciphertext, "the ciphertext does not contain the plaintext")
s, dec, _ = decrypt(enc.ciphertext, ctx)
check(s == 200 and dec.plaintext == pt and dec.key_id == k.key_id, "Decrypt round-trips")
s, dec, _ = decrypt(enc.ciphertext, dict(reversed(list(ctx.items()))))
check(s == 200 and dec.plaintext == pt, "context order does not matter (canonical AAD)")
check(err_is(decrypt(enc.ciphertext, {"conversation": "c-2", "tenant": "demo"}), 400,
             "invalid_argument"), "a different context value is refused")
check(err_is(decrypt(enc.ciphertext, {}), 400, "invalid_argument"), "a missing context is refused")
check(err_is(decrypt(enc.ciphertext, dict(ctx, extra="x")), 400, "invalid_argument"),
      "an extra context pair is refused")
check(err_is(decrypt(enc.ciphertext, ctx, key_id=more[0]), 400, "invalid_argument"),
      "Decrypt with a key_id that is not the blob's key is refused")

bad = 0
for i in range(len(enc.ciphertext)):
    t = bytearray(enc.ciphertext)
    t[i] ^= 0x01
    r = decrypt(bytes(t), ctx)
    if r[0] == 200 or not isinstance(r[1], dict) or r[1].get("code") not in (
            "invalid_argument", "not_found"):
        bad += 1
check(bad == 0, f"a flipped bit at each of {len(enc.ciphertext)} byte positions is refused")
check(err_is(decrypt(enc.ciphertext[:-1], ctx), 400, "invalid_argument") and
      err_is(decrypt(enc.ciphertext[:20], ctx), 400, "invalid_argument") and
      err_is(decrypt(b"", ctx), 400, "invalid_argument"),
      "truncated and empty ciphertexts are refused")
s, e2, _ = encrypt(k.key_id, b"", ctx)
check(s == 200 and decrypt(e2.ciphertext, ctx)[1].plaintext == b"", "empty plaintext works")
s, big, _ = encrypt(k.key_id, os.urandom(65536))
check(s == 200, "a 64 KiB plaintext is accepted")
check(err_is(encrypt(k.key_id, os.urandom(65537)), 400, "invalid_argument"),
      "a plaintext over 64 KiB is refused")
check(err_is(encrypt(k.key_id, b"x", {f"k{i}": "v" for i in range(65)}), 400,
             "invalid_argument"), "more than 64 context pairs are refused")
check(err_is(encrypt(k.key_id, b"x", {"k": "v" * 1025}), 400, "invalid_argument"),
      "a context value over 1024 bytes is refused")
check(err_is(encrypt("nothex", b"x"), 400, "invalid_argument"), "a malformed key id is refused")

# rotation
s, m, _ = call("RotateKey", pb.RotateKeyRequest(key_id=k.key_id), pb.RotateKeyResponse,
               "demo-admin")
check(s == 200 and m.key.current_version == 2 and len(m.key.versions) == 2,
      "RotateKey adds version 2")
s, enc2, _ = encrypt(k.key_id, pt, ctx)
check(s == 200 and enc2.key_version == 2, "after rotation Encrypt uses version 2")
s, dec, _ = decrypt(enc.ciphertext, ctx)
check(s == 200 and dec.plaintext == pt and dec.key_version == 1,
      "a version-1 ciphertext still decrypts after rotation")

# ReEncrypt
s, re_, _ = call("ReEncrypt", pb.ReEncryptRequest(ciphertext=enc.ciphertext,
                                                  source_encryption_context=ctx,
                                                  destination_key_id=more[0],
                                                  destination_encryption_context={"a": "b"}),
                 pb.ReEncryptResponse)
check(s == 200 and re_.source_key_id == k.key_id and re_.key_id == more[0] and
      decrypt(re_.ciphertext, {"a": "b"})[1].plaintext == pt,
      "ReEncrypt moves a ciphertext to another key and context")

# data keys
s, dk, _ = call("GenerateDataKey", pb.GenerateDataKeyRequest(key_id=k.key_id,
                                                            encryption_context=ctx),
                pb.GenerateDataKeyResponse)
check(s == 200 and len(dk.plaintext) == 32 and dk.key_version == 2,
      "GenerateDataKey returns a 32-byte key and its blob")
s, dd, _ = call("DecryptDataKey", pb.DecryptDataKeyRequest(ciphertext_blob=dk.ciphertext_blob,
                                                          encryption_context=ctx),
                pb.DecryptDataKeyResponse)
check(s == 200 and dd.plaintext == dk.plaintext, "DecryptDataKey returns the same key")
sizes = [call("GenerateDataKey", pb.GenerateDataKeyRequest(key_id=k.key_id, number_of_bytes=n),
              pb.GenerateDataKeyResponse)[0] for n in (16, 64, 15, 65)]
check(sizes == [200, 200, 400, 400], "data key sizes 16..64 only")

# ---- states ------------------------------------------------------------------

s, m, _ = call("DisableKey", pb.DisableKeyRequest(key_id=k.key_id), pb.DisableKeyResponse,
               "demo-admin")
check(s == 200 and m.key.state == pb.DISABLED, "DisableKey")
check(err_is(encrypt(k.key_id, pt, ctx), 412, "failed_precondition") and
      err_is(decrypt(enc.ciphertext, ctx), 412, "failed_precondition"),
      "a disabled key refuses to encrypt and decrypt")
check(err_is(call("DisableKey", pb.DisableKeyRequest(key_id=k.key_id), pb.DisableKeyResponse,
                  "demo-admin"), 412, "failed_precondition"), "disabling twice is refused")
s, m, _ = call("EnableKey", pb.EnableKeyRequest(key_id=k.key_id), pb.EnableKeyResponse,
               "demo-admin")
check(s == 200 and m.key.state == pb.ENABLED and decrypt(enc.ciphertext, ctx)[0] == 200,
      "EnableKey restores service")

victim = create_key()
s, venc, _ = encrypt(victim.key_id, b"doomed")
s, m, _ = call("ScheduleKeyDeletion", pb.ScheduleKeyDeletionRequest(key_id=victim.key_id,
                                                                   pending_window_days=600),
               pb.ScheduleKeyDeletionResponse, "demo-admin")
check(s == 200 and m.key.state == pb.PENDING_DELETION and m.key.deletion_at > time.time(),
      "ScheduleKeyDeletion sets PENDING_DELETION and a deletion time")
check(err_is(encrypt(victim.key_id, b"x"), 412, "failed_precondition"),
      "a key pending deletion refuses to encrypt")
s, m, _ = call("CancelKeyDeletion", pb.CancelKeyDeletionRequest(key_id=victim.key_id),
               pb.CancelKeyDeletionResponse, "demo-admin")
check(s == 200 and m.key.state == pb.DISABLED and m.key.deletion_at == 0,
      "CancelKeyDeletion leaves the key DISABLED")
s, m, _ = call("ScheduleKeyDeletion", pb.ScheduleKeyDeletionRequest(key_id=victim.key_id,
                                                                   pending_window_days=2),
               pb.ScheduleKeyDeletionResponse, "demo-admin")
deadline = time.time() + 15
state = None
while time.time() < deadline:
    s, m, _ = call("DescribeKey", pb.DescribeKeyRequest(key_id=victim.key_id),
                   pb.DescribeKeyResponse, "demo-admin")
    state = m.key.state if s == 200 else None
    if state == pb.DESTROYED:
        break
    time.sleep(0.5)
check(state == pb.DESTROYED, "the sweeper destroys the key when its waiting period ends")

try:
    import PyKCS11
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import p11_module
    lib = p11_module.pykcs11(os.environ.get("CUSTOS_TEST_MODULE",
                                            "/usr/lib/softhsm/libsofthsm2.so"))
    slot = [x for x in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(x).label.strip() == "custos-eu-west"][0]
    sess = lib.openSession(slot)
    with open(f"{DIR}/hsm/pins/eu-west.pin") as f:
        sess.login(f.read().strip())
    left = sess.findObjects([(PyKCS11.CKA_LABEL, f"custos:key:{victim.key_id}:v1")])
    live = sess.findObjects([(PyKCS11.CKA_LABEL, f"custos:key:{k.key_id}:v1")])
    attrs = sess.getAttributeValue(live[0], [PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_EXTRACTABLE])
    sess.logout()
    check(len(left) == 0 and len(live) == 1, "the destroyed key's HSM object is gone from the token")
    check(attrs[0] is True and attrs[1] is False,
          "a live key's HSM object is sensitive and not extractable")
except Exception as e:  # pragma: no cover - reported as a failure
    check(False, f"inspect the token with PyKCS11: {e}")
check(err_is(decrypt(venc.ciphertext), 412, "failed_precondition"),
      "a destroyed key's ciphertexts no longer decrypt")

# ---- authentication and authorization ------------------------------------------

check(err_is(encrypt(k.key_id, b"x", who=None), 401, "unauthenticated"),
      "no credentials: unauthenticated")
check(err_is(call("Encrypt", pb.EncryptRequest(key_id=k.key_id), pb.EncryptResponse, None,
                  headers={"Authorization": "Bearer not-a-real-key"}), 401, "unauthenticated"),
      "a wrong API key: unauthenticated")
check(err_is(call("Encrypt", pb.EncryptRequest(key_id=k.key_id), pb.EncryptResponse, None,
                  headers={"Authorization": "Basic " + api_key("demo-broker")}), 401,
             "unauthenticated"), "a non-Bearer scheme: unauthenticated")
check(err_is(call("CreateKey", pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256,
                                                   usage=pb.ENCRYPT_DECRYPT),
                  pb.CreateKeyResponse, "demo-broker"), 403, "permission_denied"),
      "a broker may not create keys")
check(err_is(encrypt(k.key_id, b"x", who="demo-admin"), 403, "permission_denied"),
      "a key admin may not encrypt")
check(err_is(encrypt(k.key_id, b"x", who="auditor"), 404, "not_found") or
      err_is(encrypt(k.key_id, b"x", who="auditor"), 403, "permission_denied"),
      "an auditor may not encrypt")
other = encrypt(k.key_id, b"x", who="other-broker")
missing = encrypt(os.urandom(16).hex(), b"x", who="other-broker")
check(err_is(other, 404, "not_found") and other[1] == missing[1],
      "another tenant's key is reported exactly like a missing key")
check(err_is(decrypt(enc.ciphertext, ctx, who="other-broker"), 404, "not_found"),
      "another tenant cannot decrypt")

us = create_key("us-east")
check(us.region == "us-east", "a key can be created in another allowed region")
check(err_is(encrypt(us.key_id, b"x", who="demo-broker"), 403, "permission_denied"),
      "residency: an eu-west broker may not use a us-east key")
s, usenc, _ = encrypt(us.key_id, b"x", who="demo-broker-us")
check(s == 200 and usenc.ciphertext[3:3 + usenc.ciphertext[2]] == b"us-east",
      "residency: the us-east broker may")
check(err_is(call("CreateKey", pb.CreateKeyRequest(region="us-east", spec=pb.AES_256,
                                                   usage=pb.ENCRYPT_DECRYPT),
                  pb.CreateKeyResponse, "other-admin"), 403, "permission_denied"),
      "residency: a tenant cannot create keys outside its allowed regions")
# A us-east ciphertext relabelled as eu-west (same length) fails: the region
# is authenticated.
t = bytearray(usenc.ciphertext)
t[3:10] = b"eu-west"
check(decrypt(bytes(t), who="demo-broker-us")[0] != 200 and
      decrypt(bytes(t), who="demo-broker")[0] != 200,
      "a ciphertext whose region is rewritten does not decrypt")

# ---- hostile HTTP ---------------------------------------------------------------

auth = {"Authorization": "Bearer " + api_key("demo-broker")}
s, ct, rid, data = raw("/twirp/custos.v1.KeyService/Encrypt", b"\xff\xff\xff\xff\x0f",
                       dict(auth, **{"Content-Type": "application/protobuf"}))
check(s == 400 and json.loads(data)["code"] == "malformed" and ct == "application/json",
      "garbage protobuf: malformed")
whole = pb.EncryptRequest(key_id=k.key_id, plaintext=b"y" * 100).SerializeToString()
s, _, _, data = raw("/twirp/custos.v1.KeyService/Encrypt", whole[:-10],
                    dict(auth, **{"Content-Type": "application/protobuf"}))
check(s == 400 and json.loads(data)["code"] == "malformed", "truncated protobuf: malformed")
s, _, _, data = raw("/twirp/custos.v1.KeyService/Encrypt", whole,
                    dict(auth, **{"Content-Type": "text/plain"}))
check(s == 404 and json.loads(data)["code"] == "bad_route", "wrong content type: bad_route")
s, _, _, data = raw("/twirp/custos.v1.KeyService/Encrypt", whole,
                    dict(auth, **{"Content-Type": "application/json"}))
check(s == 400 and json.loads(data)["code"] == "malformed",
      "protobuf bytes sent as application/json: malformed")
s, _, _, data = raw("/twirp/custos.v1.KeyService/Encrypt", None, auth, method="GET")
check(s == 404 and json.loads(data)["code"] == "bad_route", "GET: bad_route")
for path in ("/twirp/custos.v1.KeyService/Nope", "/twirp/custos.v1.Other/Encrypt", "/",
             "/twirp/custos.v1.KeyService/Encrypt/x"):
    s, _, _, data = raw(path, whole, dict(auth, **{"Content-Type": "application/protobuf"}))
    check(s == 404 and json.loads(data)["code"] == "bad_route", f"unknown route {path}: bad_route")

# Oversized, declared: refused from the headers, before any body byte is sent.
conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
conn.putrequest("POST", "/twirp/custos.v1.KeyService/Encrypt")
conn.putheader("Content-Type", "application/protobuf")
conn.putheader("Authorization", auth["Authorization"])
conn.putheader("Content-Length", str(10 * 1024 * 1024))
conn.endheaders()
r = conn.getresponse()
body = r.read()
conn.close()
check(r.status == 400 and json.loads(body)["code"] == "invalid_argument",
      "a 10 MiB Content-Length is refused before the body is read")
# Oversized, chunked (no length up front).
conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
conn.putrequest("POST", "/twirp/custos.v1.KeyService/Encrypt")
conn.putheader("Content-Type", "application/protobuf")
conn.putheader("Authorization", auth["Authorization"])
conn.putheader("Transfer-Encoding", "chunked")
conn.endheaders()
chunk = b"a" * 16384
try:
    for _ in range(8):
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.send(b"0\r\n\r\n")
    r = conn.getresponse()
    body = r.read()
    check(r.status == 400 and json.loads(body)["code"] == "invalid_argument",
          "a chunked body over the limit is refused")
except OSError as e:
    check(False, f"chunked oversize: {e}")
conn.close()
r = call("Encrypt", pb.EncryptRequest(key_id=k.key_id, plaintext=b"x"), pb.EncryptResponse,
         headers={"X-Correlation-Id": "conv-8e1f/msg-42"})
check(r[0] == 200, "a correlation id is accepted")
r = call("Encrypt", pb.EncryptRequest(key_id=k.key_id, plaintext=b"x"), pb.EncryptResponse,
         headers={"X-Correlation-Id": "x" * 129})
check(err_is(r, 400, "invalid_argument"), "an over-long correlation id is refused")
check(alive(), "kmsd is still serving after the hostile requests")

# ---- concurrency -------------------------------------------------------------------

errors, ops = [0], [0]
lock = threading.Lock()


def worker(i):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    h = dict(auth, **{"Content-Type": "application/protobuf"})
    local_ops = local_err = 0
    end = time.time() + 10
    while time.time() < end:
        try:
            p = os.urandom(256)
            c = {"client": str(i)}
            conn.request("POST", "/twirp/custos.v1.KeyService/Encrypt",
                         pb.EncryptRequest(key_id=k.key_id, plaintext=p,
                                           encryption_context=c).SerializeToString(), h)
            r = conn.getresponse()
            d = r.read()
            if r.status != 200:
                local_err += 1
                continue
            e = pb.EncryptResponse()
            e.ParseFromString(d)
            conn.request("POST", "/twirp/custos.v1.KeyService/Decrypt",
                         pb.DecryptRequest(ciphertext=e.ciphertext,
                                           encryption_context=c).SerializeToString(), h)
            r = conn.getresponse()
            d = r.read()
            out = pb.DecryptResponse()
            if r.status != 200:
                local_err += 1
                continue
            out.ParseFromString(d)
            if out.plaintext != p:
                local_err += 1
            local_ops += 2
        except Exception:
            local_err += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    with lock:
        errors[0] += local_err
        ops[0] += local_ops


threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(errors[0] == 0 and ops[0] > 100,
      f"16 concurrent keep-alive clients for 10 s: {ops[0]} operations, {errors[0]} errors")

# ---- policy reload ------------------------------------------------------------------

with open(f"{DIR}/policy.json") as f:
    policy = json.load(f)
newkey = "ck_reload_" + os.urandom(8).hex()
policy["tenants"][0]["principals"].append({
    "id": "late-broker", "role": "broker", "home_region": "eu-west",
    "api_key_sha256": hashlib.sha256(newkey.encode()).hexdigest()})
check(err_is(call("Encrypt", pb.EncryptRequest(key_id=k.key_id), pb.EncryptResponse, None,
                  headers={"Authorization": "Bearer " + newkey}), 401, "unauthenticated"),
      "a principal not yet in the policy is refused")
with open(f"{DIR}/policy.json.new", "w") as f:
    json.dump(policy, f)
os.rename(f"{DIR}/policy.json.new", f"{DIR}/policy.json")
os.kill(PID, signal.SIGHUP)
ok = False
for _ in range(50):
    time.sleep(0.1)
    r = call("Encrypt", pb.EncryptRequest(key_id=k.key_id, plaintext=b"x"),
             pb.EncryptResponse, None, headers={"Authorization": "Bearer " + newkey})
    if r[0] == 200:
        ok = True
        break
check(ok, "SIGHUP with a good policy: the new principal is served")
with open(f"{DIR}/policy.json", "w") as f:
    f.write('{"version": 1, "tenants": [ { "id": "demo", "principals": [ { "role": "brokr" } ] } ]}')
os.kill(PID, signal.SIGHUP)
time.sleep(1.0)
r = call("Encrypt", pb.EncryptRequest(key_id=k.key_id, plaintext=b"x"), pb.EncryptResponse,
         None, headers={"Authorization": "Bearer " + newkey})
check(r[0] == 200 and encrypt(k.key_id, b"x")[0] == 200,
      "SIGHUP with a bad policy: refused, the previous policy stays in force")
with open(f"{DIR}/kmsd.log") as f:
    log = f.read()
check("refused, keeping the current policy: tenants[0]" in log,
      "the refused policy is logged with the offending path")
check(alive(), "kmsd is alive at the end")

print(f"{count - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

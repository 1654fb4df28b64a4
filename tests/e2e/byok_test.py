"""BYOK end to end through raw HTTP and Python protobuf, with the HSM tokens
inspected directly (PyKCS11) to show that every refusal leaves them exactly
as they were.

Usage: byok_test.py DIR PORT KMSD_PID PHASE    (run by test_byok.sh)
  PHASE main:    the import protocol, every bad input, re-import, rotation,
                 the exit decrypt, kmsd's memory
  PHASE expiry:  with import.token_ttl_s = 2: expiry, the sweep, and the
                 leftovers of simulated crashes (prepared by PHASE crash-prep
                 while kmsd was stopped)
  PHASE crash-prep: kmsd stopped; plant a crashed issue and a crashed import

Prints "ok N - what" / "not ok N - what"; exits 1 on any failure.
"""
import hashlib
import http.client
import json
import os
import re
import sqlite3
import sys
import threading
import time

import PyKCS11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

import key_pb2 as pb  # generated from proto/key.proto by the test script

DIR, PORT, PID, PHASE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
MODULE = os.environ.get("CUSTOS_TEST_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
count = 0
failures = 0
# Every tenant key and ephemeral key this test makes: none may ever appear
# in kmsd's memory.
secrets = []


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


def call(method, req, resp_cls, who="demo-admin"):
    h = {"Content-Type": "application/protobuf", "Authorization": "Bearer " + api_key(who)}
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    conn.request("POST", f"/twirp/custos.v1.KeyService/{method}", req.SerializeToString(), h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    if r.status == 200:
        m = resp_cls()
        m.ParseFromString(data)
        return r.status, m
    return r.status, json.loads(data)


def refused(res, status, code, fragment=""):
    s, body = res
    ok = s == status and isinstance(body, dict) and body.get("code") == code and \
        fragment in body.get("msg", "")
    if not ok:
        print(f"# got {s} {body}", flush=True)
    return ok


SHA1 = pb.RSA_AES_KEY_WRAP_SHA_1
SHA256 = pb.RSA_AES_KEY_WRAP_SHA_256


def create_external(region="eu-west", who="demo-admin"):
    s, m = call("CreateKey", pb.CreateKeyRequest(region=region, spec=pb.AES_256,
                                                 usage=pb.ENCRYPT_DECRYPT, origin=pb.EXTERNAL,
                                                 description="byok"), pb.CreateKeyResponse, who)
    assert s == 200, (s, m)
    return m.key.key_id


def params(key_id, who="demo-admin"):
    return call("GetImportParameters", pb.GetImportParametersRequest(key_id=key_id),
                pb.GetImportParametersResponse, who)


def wrap(spki, key, md=hashes.SHA1, kwp_key=None):
    """RSA-OAEP of a fresh ephemeral key, then RFC 5649 of key: 424 bytes."""
    eph = os.urandom(32)
    secrets.append(eph)
    pub = load_der_public_key(spki)
    oaep = pub.encrypt(eph, padding.OAEP(mgf=padding.MGF1(md()), algorithm=md(), label=None))
    return oaep + aes_key_wrap_with_padding(kwp_key or eph, key)


def new_key():
    k = os.urandom(32)
    secrets.append(k)
    return k


def kcv(key):
    return hashlib.sha256(AESGCM(key).encrypt(b"\0" * 12, b"\0" * 16, b"custos-kcv-v1")).digest()


def imp(key_id, token, wrapped, alg=SHA1, new_version=False, who="demo-admin"):
    return call("ImportKeyMaterial",
                pb.ImportKeyMaterialRequest(key_id=key_id, import_token=token, algorithm=alg,
                                            wrapped_material=wrapped, new_version=new_version),
                pb.ImportKeyMaterialResponse, who)


def encrypt(key_id, pt, ctx=None):
    return call("Encrypt", pb.EncryptRequest(key_id=key_id, plaintext=pt,
                                             encryption_context=ctx or {}),
                pb.EncryptResponse, "demo-broker")


def decrypt(ct, ctx=None):
    return call("Decrypt", pb.DecryptRequest(ciphertext=ct, encryption_context=ctx or {}),
                pb.DecryptResponse, "demo-broker")


def describe(key_id):
    return call("DescribeKey", pb.DescribeKeyRequest(key_id=key_id), pb.DescribeKeyResponse)


def canonical(ctx):
    out = len(ctx).to_bytes(2, "big")
    for k in sorted(ctx, key=lambda x: x.encode()):
        kb, vb = k.encode(), ctx[k].encode()
        out += len(kb).to_bytes(2, "big") + kb + len(vb).to_bytes(2, "big") + vb
    return out


def leave(key, blob, ctx):
    """Decrypt a Custos blob with the tenant's copy, the public format and
    OpenSSL (through the cryptography package) alone."""
    r = blob[2]
    hl = 36 + r  # format 2: the kind byte ends the header
    return AESGCM(key).decrypt(blob[23 + r:35 + r], blob[hl:], blob[:hl] + canonical(ctx))


# ---- the HSM tokens, seen from outside kmsd --------------------------------------

# With the module's initialisation string, if it needs one (NSS).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p11_module  # noqa: E402

lib = p11_module.pykcs11(MODULE)


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

    def count(self, label=None):
        return len(self.objects(label))

    def attrs(self, obj, names):
        return self.sess.getAttributeValue(obj, names)


eu, us = Token("eu-west"), Token("us-east")


def counts():
    return eu.count(), us.count()


def unchanged(fn):
    """Run fn; return (its result, whether both tokens hold the same objects
    after as before)."""
    before = counts()
    res = fn()
    return res, counts() == before


def bad(what, fn, status, code, fragment=""):
    res, same = unchanged(fn)
    check(refused(res, status, code, fragment) and same,
          f"{what}: {status} {code}, and the tokens hold exactly the objects they held")


# =================================================================================

def main_phase():
    # ---- the protocol ----------------------------------------------------------
    kid = create_external()
    s, m = describe(kid)
    check(s == 200 and m.key.state == pb.PENDING_IMPORT and m.key.origin == pb.EXTERNAL and
          len(m.key.versions) == 0, "CreateKey origin EXTERNAL: PENDING_IMPORT, no version")
    check(refused(encrypt(kid, b"x"), 412, "failed_precondition"),
          "a PENDING_IMPORT key does not encrypt")

    wrapping_before = eu.count(f"custos:import:{kid}")
    s, p1 = params(kid)
    check(s == 200 and p1.key_id == kid and p1.region == "eu-west" and
          len(p1.import_token) == 33 and p1.expires_at > time.time() + 86400 - 120 and
          p1.expires_at <= time.time() + 86400 + 5,
          "GetImportParameters: a 33-byte import token that expires in 24 h")
    pub = load_der_public_key(p1.public_key)
    check(pub.key_size == 3072 and pub.public_numbers().e == 65537,
          "the wrapping key is RSA-3072 (DER SubjectPublicKeyInfo)")
    if os.environ.get("CUSTOS_TEST_TOKEN") == "nss":
        check(list(p1.wrapping_algorithms) == [pb.RSA_AES_KEY_WRAP_SHA_256, SHA1],
              "NSS's softoken offers RSA_AES_KEY_WRAP_SHA_256, then _SHA_1 (it takes both)")
    else:
        check(list(p1.wrapping_algorithms) == [SHA1],
              "SoftHSMv2 offers RSA_AES_KEY_WRAP_SHA_1 only (it refuses SHA-256 in OAEP)")
    objs = eu.objects(f"custos:import:{kid}")
    check(len(objs) == 2 and wrapping_before == 0,
          "the wrapping key pair is in the key's region token, labelled custos:import:<key>")
    priv = [o for o in objs if eu.attrs(o, [PyKCS11.CKA_CLASS])[0] == PyKCS11.CKO_PRIVATE_KEY]
    a = eu.attrs(priv[0], [PyKCS11.CKA_UNWRAP, PyKCS11.CKA_DECRYPT, PyKCS11.CKA_SIGN,
                           PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_EXTRACTABLE])
    check(a == [True, False, False, True, False],
          "its private half: unwrap only (no decrypt, no sign), sensitive, not extractable")
    check(us.count(f"custos:import:{kid}") == 0, "and nothing in the other region's token")

    key1 = new_key()
    w1 = wrap(p1.public_key, key1)

    # ---- bad input, one by one: each refused, nothing changes ------------------
    bad("a forged import token", lambda: imp(kid, b"\x01" + os.urandom(32), w1), 400,
        "invalid_argument", "import token is not valid")
    bad("a forged token of the wrong shape", lambda: imp(kid, os.urandom(20), w1), 400,
        "invalid_argument", "import token is not valid")
    bad("an empty import token", lambda: imp(kid, b"", w1), 400, "invalid_argument",
        "import token is not valid")
    tampered = bytearray(p1.import_token)
    tampered[5] ^= 1
    bad("an import token with one bit flipped", lambda: imp(kid, bytes(tampered), w1), 400,
        "invalid_argument", "import token is not valid")
    kid2 = create_external()
    s, p2 = params(kid2)
    bad("another key's import token", lambda: imp(kid, p2.import_token, w1), 400,
        "invalid_argument", "issued for another key")
    bad("this key's token presented for another key", lambda: imp(kid2, p1.import_token, w1),
        400, "invalid_argument", "issued for another key")
    for n in (0, 40, 384, 423, 425, 1000):
        bad(f"wrapped material of {n} bytes", lambda: imp(kid, p1.import_token, w1[:n] if n <= 424
                                                          else w1 + b"\0" * (n - 424)),
            400, "invalid_argument", "wrapped_material must be 424 bytes")
    short = new_key()[:16]
    bad("a 16-byte key (wraps to 24 bytes)", lambda: imp(kid, p1.import_token,
                                                        wrap(p1.public_key, short)),
        400, "invalid_argument", "424 bytes")
    for n in (31, 25):
        k = os.urandom(n)
        secrets.append(k)
        bad(f"a {n}-byte key (wraps to 40 bytes like a 32-byte one)",
            lambda: imp(kid, p1.import_token, wrap(p1.public_key, k)), 400, "invalid_argument",
            "not a 256-bit AES key")
    for i, what in ((10, "in the RSA-OAEP block"), (383, "at the end of the OAEP block"),
                    (384, "in the RFC 5649 integrity block"), (423, "in the wrapped key")):
        t = bytearray(w1)
        t[i] ^= 0x01
        bad(f"corrupted wrapping: a bit flipped {what}",
            lambda: imp(kid, p1.import_token, bytes(t)), 400, "invalid_argument",
            "does not unwrap")
    # An OAEP block not below the wrapping key's modulus (RFC 8017 RSADP,
    # step 1) is refused before the HSM unwraps it: HSMs answer it
    # differently (NSS's softoken with a device error), and wrapping under
    # another key makes one whenever that key's modulus is the larger.
    # It counts as the material's fault: sent with kid2's token, so that
    # kid's token stays below its 10 refusals for the import below.
    over = b"\xff" * 384 + w1[384:]
    bad("an RSA-OAEP block not below the wrapping key's modulus",
        lambda: imp(kid2, p2.import_token, over), 400, "invalid_argument",
        "not below the key's modulus")
    bad("material wrapped with another key's wrapping key (same region)",
        lambda: imp(kid, p1.import_token, wrap(p2.public_key, key1)), 400, "invalid_argument",
        "does not unwrap")
    kid_us = create_external("us-east")
    s, pus = params(kid_us)
    check(s == 200 and pus.region == "us-east" and
          us.count(f"custos:import:{kid_us}") == 2 and eu.count(f"custos:import:{kid_us}") == 0,
          "a us-east key's wrapping key is made in the us-east token")
    bad("material wrapped with another region's wrapping key",
        lambda: imp(kid, p1.import_token, wrap(pus.public_key, key1)), 400, "invalid_argument",
        "does not unwrap")
    bad("another region's import token", lambda: imp(kid, pus.import_token, w1), 400,
        "invalid_argument", "issued for another key")
    if os.environ.get("CUSTOS_TEST_TOKEN") != "nss":  # NSS offers SHA-256 (checked above)
        bad("OAEP with SHA-256 where the token offers only SHA-1",
            lambda: imp(kid, p1.import_token, wrap(p1.public_key, key1, hashes.SHA256), SHA256),
            412, "failed_precondition", "cannot unwrap RSA_AES_KEY_WRAP_SHA_256")
    bad("wrapped with OAEP SHA-256 but declared SHA-1",
        lambda: imp(kid, p1.import_token, wrap(p1.public_key, key1, hashes.SHA256), SHA1), 400,
        "invalid_argument", "does not unwrap")
    # Refused by the decoder, which holds every enum field to its enum's
    # values (docs/api.md, "Enum fields").
    bad("an unknown algorithm", lambda: imp(kid, p1.import_token, w1, 7), 400,
        "invalid_argument", 'field "algorithm" is not a defined WrappingAlgorithm value')
    bad("a broker may not import", lambda: imp(kid, p1.import_token, w1, who="demo-broker"),
        403, "permission_denied")
    bad("another tenant's admin may not import (the key looks absent)",
        lambda: imp(kid, p1.import_token, w1, who="other-admin"), 404, "not_found")
    bad("another tenant's admin gets no import parameters", lambda: params(kid, "other-admin"),
        404, "not_found")
    bad("a broker gets no import parameters", lambda: params(kid, "demo-broker"), 403,
        "permission_denied")
    s, m = describe(kid)
    check(s == 200 and m.key.state == pb.PENDING_IMPORT and len(m.key.versions) == 0,
          "after all of that the key is still PENDING_IMPORT with no version")

    # ---- the import -----------------------------------------------------------------
    before_eu = eu.count()
    s, r = imp(kid, p1.import_token, w1)
    check(s == 200 and r.key_version == 1 and r.key.state == pb.ENABLED and
          r.key.current_version == 1, "ImportKeyMaterial: version 1, key ENABLED")
    check(s == 200 and r.key_check_value == kcv(key1),
          "the key check value is the tenant's own computation from its copy")
    check(eu.count(f"custos:import:{kid}") == 0 and eu.count() == before_eu - 2 + 1,
          "the import made one key object and destroyed the used wrapping key pair")
    obj = eu.objects(f"custos:key:{kid}:v1")
    a = eu.attrs(obj[0], [PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_EXTRACTABLE, PyKCS11.CKA_ENCRYPT,
                          PyKCS11.CKA_DECRYPT, PyKCS11.CKA_WRAP, PyKCS11.CKA_UNWRAP,
                          PyKCS11.CKA_TOKEN, PyKCS11.CKA_VALUE_LEN]) if obj else None
    check(len(obj) == 1 and a[:7] == [True, False, True, True, False, False, True],
          "the imported key: a token object, sensitive, not extractable, encrypt/decrypt only")
    ctx = {"conversation": "c-1", "tenant": "demo"}
    pt = b"byok-sentinel +14155550123"
    s, e1 = encrypt(kid, pt, ctx)
    check(s == 200 and e1.key_version == 1 and decrypt(e1.ciphertext, ctx)[1].plaintext == pt,
          "the imported key encrypts and decrypts in Custos")
    check(leave(key1, e1.ciphertext, ctx) == pt,
          "you can leave: the tenant's copy decrypts Custos's ciphertext without Custos")
    s, dk = call("GenerateDataKey", pb.GenerateDataKeyRequest(key_id=kid, encryption_context=ctx),
                 pb.GenerateDataKeyResponse, "demo-broker")
    check(s == 200 and leave(key1, dk.ciphertext_blob, ctx) == dk.plaintext,
          "data keys too: their blobs open with the tenant's copy")

    bad("the same import token again", lambda: imp(kid, p1.import_token, w1), 412,
        "failed_precondition", "already used")
    bad("RotateKey on an EXTERNAL key", lambda: call("RotateKey", pb.RotateKeyRequest(key_id=kid),
                                                      pb.RotateKeyResponse),
        412, "failed_precondition", "new_version")

    # ---- different material into a key that has material ------------------------------
    s, p3 = params(kid)
    check(s == 200 and eu.count(f"custos:import:{kid}") == 2,
          "an ENABLED EXTERNAL key gets new import parameters")
    key2 = new_key()
    w2 = wrap(p3.public_key, key2)
    bad("different material into a key that already has material", lambda: imp(kid, p3.import_token,
                                                                                w2),
        412, "failed_precondition", "not this key's material")
    bad("the same material as a new version", lambda: imp(kid, p3.import_token,
                                                          wrap(p3.public_key, key1),
                                                          new_version=True),
        412, "failed_precondition", "already version 1")

    # ---- re-import: the same material again ---------------------------------------------
    res, same_keys = unchanged(lambda: imp(kid, p3.import_token, wrap(p3.public_key, key1)))
    s, r = res
    check(s == 200 and r.key_version == 1 and r.key.current_version == 1 and
          len(r.key.versions) == 1, "re-importing the key's own material is accepted, as version 1")
    check(eu.count(f"custos:key:{kid}:v1") == 1 and eu.count(f"custos:import:{kid}") == 0,
          "a re-import with the object present makes nothing (and spends the token)")

    # The material is deleted from the token (out of band): re-import puts it back.
    for o in eu.objects(f"custos:key:{kid}:v1"):
        eu.sess.destroyObject(o)
    check(decrypt(e1.ciphertext, ctx)[0] != 200, "with its HSM object gone the key cannot decrypt")
    s, p4 = params(kid)
    s, r = imp(kid, p4.import_token, wrap(p4.public_key, key1))
    check(s == 200 and r.key_version == 1 and eu.count(f"custos:key:{kid}:v1") == 1,
          "after the material was deleted, the same material is imported again into the same key")
    s, d = decrypt(e1.ciphertext, ctx)
    check(s == 200 and d.plaintext == pt, "and every old ciphertext decrypts again")
    obj = eu.objects(f"custos:key:{kid}:v1")
    a = eu.attrs(obj[0], [PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_EXTRACTABLE])
    check(a == [True, False], "the restored object is sensitive and not extractable too")

    # ---- rotation of an EXTERNAL key: new material, new version ---------------------------
    s, p5 = params(kid)
    s, r = imp(kid, p5.import_token, wrap(p5.public_key, key2), new_version=True)
    check(s == 200 and r.key_version == 2 and r.key.current_version == 2 and
          r.key_check_value == kcv(key2), "new material with new_version becomes version 2")
    s, e2 = encrypt(kid, pt, ctx)
    check(s == 200 and e2.key_version == 2 and leave(key2, e2.ciphertext, ctx) == pt,
          "version 2 encrypts from now on, and its material is the tenant's second key")
    check(decrypt(e1.ciphertext, ctx)[1].plaintext == pt, "version 1 ciphertexts still decrypt")
    s, p6 = params(kid)
    bad("new_version with material the key already has (v1)",
        lambda: imp(kid, p6.import_token, wrap(p6.public_key, key1), new_version=True), 412,
        "failed_precondition", "already version 1")
    call("DisableKey", pb.DisableKeyRequest(key_id=kid), pb.DisableKeyResponse)
    bad("new_version on a DISABLED key", lambda: imp(kid, p6.import_token,
                                                    wrap(p6.public_key, new_key()),
                                                    new_version=True),
        412, "failed_precondition", "DISABLED")
    call("EnableKey", pb.EnableKeyRequest(key_id=kid), pb.EnableKeyResponse)

    # ---- keys that take no material -------------------------------------------------------
    s, hk = call("CreateKey", pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256,
                                                  usage=pb.ENCRYPT_DECRYPT),
                 pb.CreateKeyResponse)
    bad("GetImportParameters on an HSM-generated key", lambda: params(hk.key.key_id), 412,
        "failed_precondition", "origin HSM")
    bad("ImportKeyMaterial into an HSM-generated key",
        lambda: imp(hk.key.key_id, p6.import_token, w1), 412, "failed_precondition", "origin HSM")
    gone = create_external()
    s, pg = params(gone)
    wg = wrap(pg.public_key, new_key())
    s, _ = imp(gone, pg.import_token, wg)
    s, pg2 = params(gone)
    call("ScheduleKeyDeletion", pb.ScheduleKeyDeletionRequest(key_id=gone, pending_window_days=30),
         pb.ScheduleKeyDeletionResponse)
    bad("GetImportParameters on a key pending deletion", lambda: params(gone), 412,
        "failed_precondition", "PENDING_DELETION")
    bad("ImportKeyMaterial into a key pending deletion",
        lambda: imp(gone, pg2.import_token, wrap(pg2.public_key, new_key())), 412,
        "failed_precondition", "PENDING_DELETION")

    # ---- at most 3 live tokens per key -------------------------------------------------------
    many = create_external()
    toks = [params(many)[1] for _ in range(3)]
    bad("a 4th unexpired import token for one key", lambda: params(many), 429,
        "resource_exhausted", "3 unexpired")
    s, r = imp(many, toks[0].import_token, wrap(toks[0].public_key, new_key()))
    check(s == 200, "an import with one of them succeeds")
    s, _ = params(many)
    check(s == 200, "and frees a place for a new token")

    # ---- a token dies after 10 refused attempts ----------------------------------------------
    burn = create_external()
    s, pb_ = params(burn)
    good = wrap(pb_.public_key, new_key())
    t = bytearray(good)
    t[400] ^= 1
    for i in range(9):
        imp(burn, pb_.import_token, bytes(t))
    check(eu.count(f"custos:import:{burn}") == 2, "9 refused attempts: the token still lives")
    s, m = imp(burn, pb_.import_token, bytes(t))
    check(s == 400 and "now void" in m.get("msg", "") and eu.count(f"custos:import:{burn}") == 0,
          "the 10th refused attempt voids the token and destroys its wrapping key")
    bad("a voided token, even with good material", lambda: imp(burn, pb_.import_token, good),
        412, "failed_precondition", "void")

    # ---- one import per token, even concurrently ------------------------------------------------
    race = create_external()
    s, pr = params(race)
    kr = new_key()
    wr = [wrap(pr.public_key, kr) for _ in range(4)]
    results = [None] * 4
    go = threading.Barrier(4)

    def racer(i):
        go.wait()
        results[i] = imp(race, pr.import_token, wr[i])[0]

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    s, m = describe(race)
    check(results.count(200) == 1 and all(x in (200, 412) for x in results) and
          len(m.key.versions) == 1,
          f"4 concurrent imports with one token: exactly one succeeds ({results})")

    # Escrow-required tenants: imports are escrowed at birth, which needs a
    # C_WrapKey the spy in front of this kmsd refuses; test_escrow covers it.

    # ---- kmsd never held a tenant key ---------------------------------------------------------------
    found, scanned = scan_memory(PID, secrets)
    check(scanned > 0 and not found,
          f"no tenant key and no ephemeral key ({len(secrets)} of them) anywhere in kmsd's "
          f"memory ({scanned // (1 << 20)} MiB scanned, SoftHSMv2 included)")


def scan_memory(pid, needles):
    found, scanned = [], 0
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read().splitlines()
    with open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            name = parts[5] if len(parts) > 5 else ""
            # Sanitizer shadow and reserved regions are huge and sparse.
            if "r" not in parts[1] or hi - lo > (256 << 20) or name in ("[vvar]", "[vsyscall]"):
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except (OSError, ValueError, OverflowError):
                continue
            scanned += len(data)
            for n in needles:
                if n in data:
                    found.append((name, hex(lo)))
    return found, scanned


# =================================================================================

def crash_prep_phase():
    """kmsd is stopped. Plant what a crash would leave: a wrapping key whose
    issue never finished (CREATING row + key pair), and one whose import
    never finished (CLAIMED row, expired, + key pair)."""
    db = sqlite3.connect(f"{DIR}/kmsd.db")
    # A key of eu-west, where the leftovers are planted: a key of another
    # region would leave them in a token its sweep never looks at.
    kid = db.execute("SELECT key_id FROM keys WHERE origin = 2 AND state = 3 AND region = 'eu-west'"
                     " LIMIT 1").fetchone()[0]
    now = int(time.time())
    planted = []
    for state, created, expires in ((0, now - 3600, now + 86400), (2, now - 90000, now - 3600)):
        hid = os.urandom(16)
        label = f"custos:import:{kid}"
        pubt = [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), (PyKCS11.CKA_TOKEN, True),
                (PyKCS11.CKA_ID, hid), (PyKCS11.CKA_LABEL, label),
                (PyKCS11.CKA_MODULUS_BITS, 2048), (PyKCS11.CKA_PUBLIC_EXPONENT, (1, 0, 1))]
        privt = [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_TOKEN, True),
                 (PyKCS11.CKA_ID, hid), (PyKCS11.CKA_LABEL, label), (PyKCS11.CKA_PRIVATE, True),
                 (PyKCS11.CKA_SENSITIVE, True), (PyKCS11.CKA_UNWRAP, True),
                 (PyKCS11.CKA_DECRYPT, False)]
        eu.sess.generateKeyPair(pubt, privt, mecha=PyKCS11.MechanismRSAGENERATEKEYPAIR)
        db.execute("INSERT INTO import_tokens (token_id, key_id, token, hsm_id, state, end_reason,"
                   " failures, created_at, expires_at) VALUES (?, ?, 'custos-eu-west', ?, ?, 0, 0,"
                   " ?, ?)", (os.urandom(32), kid, hid, state, created, expires))
        planted.append(hid.hex())
    db.commit()
    db.close()
    with open(f"{DIR}/planted", "w") as f:
        json.dump({"key_id": kid, "hsm_ids": planted}, f)
    check(all(len(eu.sess.findObjects([(PyKCS11.CKA_ID, bytes.fromhex(h))])) == 2
              for h in planted),
          "planted two wrapping keys that crashes left behind (issue, import)")


def expiry_phase():
    with open(f"{DIR}/planted") as f:
        planted = json.load(f)
    kid = create_external()
    s, p = params(kid)
    check(s == 200 and p.expires_at - time.time() <= 3, "with token_ttl_s = 2 a token lives 2 s")
    # The sweep runs in GetImportParameters and in kmsd's sweeper thread (at
    # start, then every sweep_interval_s); when the two overlap, the one that
    # claimed a token finishes it a moment later, so wait a little for both.
    deadline = time.time() + 15
    while True:
        left = [h for h in planted["hsm_ids"]
                if eu.sess.findObjects([(PyKCS11.CKA_ID, bytes.fromhex(h))])]
        db = sqlite3.connect(f"file:{DIR}/kmsd.db?mode=ro", uri=True)
        rows = db.execute("SELECT lower(hex(hsm_id)), state, end_reason FROM import_tokens WHERE "
                          "key_id = ?", (planted["key_id"],)).fetchall()
        db.close()
        by_id = {r[0]: (r[1], r[2]) for r in rows}
        closed = (by_id.get(planted["hsm_ids"][0]) == (4, 4) and
                  by_id.get(planted["hsm_ids"][1]) == (4, 2))
        if (not left and closed) or time.time() > deadline:
            break
        time.sleep(0.2)
    check(not left, "the sweep removed the wrapping keys of the crashed issue and the crashed import")
    check(by_id.get(planted["hsm_ids"][0]) == (4, 4) and by_id.get(planted["hsm_ids"][1]) == (4, 2),
          "and closed their tokens (abandoned while issuing; expired while importing)")
    key = new_key()
    w = wrap(p.public_key, key)
    time.sleep(3)
    bad("an expired import token", lambda: imp(kid, p.import_token, w), 412,
        "failed_precondition", "expired at")
    check(eu.count(f"custos:import:{kid}") == 2,
          "an expired token's wrapping key stays until the sweep (the refusal changed nothing)")
    other = create_external()
    s, _ = params(other)
    check(s == 200 and eu.count(f"custos:import:{kid}") == 0,
          "the next GetImportParameters sweeps it: the expired wrapping key is destroyed")
    bad("the expired token, after the sweep", lambda: imp(kid, p.import_token, w), 412,
        "failed_precondition", "expired at")
    # A token lives 2 s from its issue, and making its RSA-3072 wrapping key
    # can take most of that on a loaded machine: an attempt refused only as
    # expired is retried with a new token (anything else fails the check).
    # (Under ThreadSanitizer on a loaded 2-core machine ten tries were seen
    # to run out; a refusal for any other reason still fails at once.)
    for _ in range(40):
        s, p2 = params(kid)
        s, r = imp(kid, p2.import_token, wrap(p2.public_key, key))
        if not (s == 412 and "expired" in r.get("msg", "")):
            break
    if s != 200:
        print(f"# last import attempt: HTTP {s} {r.get('code')}: {r.get('msg')}")
    check(s == 200 and r.key_version == 1, "a fresh token imports (within its 2 s)")


if PHASE == "main":
    main_phase()
elif PHASE == "crash-prep":
    crash_prep_phase()
elif PHASE == "expiry":
    expiry_phase()
else:
    sys.exit("unknown phase " + PHASE)
print(f"{count - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

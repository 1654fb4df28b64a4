"""Signing keys end to end (docs/signing.md) against a real kmsd on SoftHSMv2.

Usage: signing_test.py DIR PORT KMSD_PID PHASE
  main     every spec (EC_P256, RSA_2048/3072/4096): CreateKey, GetPublicKey (the SPKI
           parses), Sign RAW and DIGEST with every algorithm the key allows, each
           signature checked by the stock openssl CLI and by Verify; tampering is
           valid=false; rotation (old version keeps verifying, new one signs);
           disabled key, another tenant's key, a missing grant (policy reloaded),
           a wrong algorithm, every field boundary; key separation both ways;
           the JSON encoding; one audit event per Sign carrying the message's
           SHA-256 and never the message or the signature
  escrow   the escrow tenant's EC key: escrowed at birth, destroyed, restored by
           an M-of-N recovery, and the restored key signs for its old public key;
           EXPORT_WRAPPED of a signing key is refused
  restart  after a kmsd restart the keys made by `main` still sign

Prints "ok N - what" / "not ok N - what"; exits 1 on any failure.
"""
import base64
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import audit_pb2 as apb
import escrow_pb2 as epb
import key_pb2 as kpb
from audit_lib import Client, export_all

DIR, PORT, PID, PHASE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
W = f"{DIR}/signing"
os.makedirs(W, exist_ok=True)
count = failures = 0
BASE = {"main": 0, "escrow": 500, "restart": 700}[PHASE]


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {BASE + count} - {what}", flush=True)
    failures += 0 if cond else 1
    return cond


CLIENTS = {}


def client(who):
    if who not in CLIENTS:
        CLIENTS[who] = Client(PORT, f"{DIR}/credentials/{who}.key")
    return CLIENTS[who]


def call(method, req, resp_cls, who, service="KeyService"):
    """(status, message or error dict, request id)."""
    return client(who).call(service, method, req, resp_cls)


def must(method, req, resp_cls, who, service="KeyService"):
    s, m, _ = call(method, req, resp_cls, who, service)
    if s != 200:
        raise RuntimeError(f"{method} as {who}: {s} {m}")
    return m


def refused(res, status, code, fragment=""):
    s, m = res[0], res[1]
    return s == status and isinstance(m, dict) and m.get("code") == code and \
        fragment in m.get("msg", "")


def create(spec, who="demo-admin"):
    return must("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=spec,
                                                  usage=kpb.SIGN_VERIFY),
                kpb.CreateKeyResponse, who).key


def pubkey(key_id, version=0, who="demo-broker"):
    return must("GetPublicKey", kpb.GetPublicKeyRequest(key_id=key_id, version=version),
                kpb.GetPublicKeyResponse, who)


def sign(key_id, msg, alg, mtype=kpb.RAW, version=0, who="demo-broker"):
    return call("Sign", kpb.SignRequest(key_id=key_id, message=msg, message_type=mtype,
                                        algorithm=alg, version=version), kpb.SignResponse, who)


def verify(key_id, version, msg, alg, sig, mtype=kpb.RAW, who="demo-broker"):
    return call("Verify", kpb.VerifyRequest(key_id=key_id, version=version, message=msg,
                                            message_type=mtype, algorithm=alg, signature=sig),
                kpb.VerifyResponse, who)


def openssl_verify(spki_der, alg, msg, sig, digest_mode):
    """The stock openssl CLI's verdict: dgst -verify over the message, or
    pkeyutl -verify over its digest (-pkeyopt digest:sha256)."""
    pub = f"{W}/pub.der"
    open(pub, "wb").write(spki_der)
    open(f"{W}/sig.bin", "wb").write(sig)
    pss = ["rsa_padding_mode:pss", "rsa_pss_saltlen:32"] if alg == kpb.RSASSA_PSS_SHA_256 \
        else ["rsa_padding_mode:pkcs1"] if alg == kpb.RSASSA_PKCS1_V1_5_SHA_256 else []
    if digest_mode:
        open(f"{W}/in.bin", "wb").write(hashlib.sha256(msg).digest())
        cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", pub,
               "-in", f"{W}/in.bin", "-sigfile", f"{W}/sig.bin", "-pkeyopt", "digest:sha256"]
        for o in pss:
            cmd += ["-pkeyopt", o]
    else:
        open(f"{W}/in.bin", "wb").write(msg)
        cmd = ["openssl", "dgst", "-sha256", "-keyform", "DER", "-verify", pub,
               "-signature", f"{W}/sig.bin"]
        for o in pss:
            cmd += ["-sigopt", o]
        cmd.append(f"{W}/in.bin")
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode == 0 and "Verified" in r.stdout + r.stderr


ALGS = {kpb.EC_P256: [kpb.ECDSA_SHA_256],
        kpb.RSA_2048: [kpb.RSASSA_PSS_SHA_256, kpb.RSASSA_PKCS1_V1_5_SHA_256],
        kpb.RSA_3072: [kpb.RSASSA_PSS_SHA_256, kpb.RSASSA_PKCS1_V1_5_SHA_256],
        kpb.RSA_4096: [kpb.RSASSA_PSS_SHA_256, kpb.RSASSA_PKCS1_V1_5_SHA_256]}
BITS = {kpb.EC_P256: 256, kpb.RSA_2048: 2048, kpb.RSA_3072: 3072, kpb.RSA_4096: 4096}
SPEC_NAME = {v: kpb.KeySpec.Name(v) for v in ALGS}


def reload_policy(edit):
    """Edit policy.json, SIGHUP kmsd, wait for the reload in its log."""
    path = f"{DIR}/policy.json"
    p = json.load(open(path))
    edit(p)
    json.dump(p, open(path, "w"), indent=2)
    log = f"{DIR}/kmsd.log"
    before = open(log).read().count("policy.json")
    os.kill(PID, signal.SIGHUP)
    for _ in range(100):
        if open(log).read().count("policy.json") > before:
            return
        time.sleep(0.1)
    raise RuntimeError("no policy reload after SIGHUP")


def main():
    sentinels, sign_rids, sig_bytes = {}, [], []
    keys = {}
    for spec in ALGS:
        k = create(spec)
        keys[spec] = k.key_id
        name = SPEC_NAME[spec]
        check(k.spec == spec and k.usage == kpb.SIGN_VERIFY and k.state == kpb.ENABLED and
              k.current_version == 1, f"{name}: CreateKey answers spec {name}, usage "
              f"SIGN_VERIFY, ENABLED, version 1")
        d = must("DescribeKey", kpb.DescribeKeyRequest(key_id=k.key_id), kpb.DescribeKeyResponse,
                 "demo-admin").key
        check(d.spec == spec and d.usage == kpb.SIGN_VERIFY, f"{name}: DescribeKey shows it")
        pk = pubkey(k.key_id)
        pub = serialization.load_der_public_key(pk.public_key)
        want_type = ec.EllipticCurvePublicKey if spec == kpb.EC_P256 else rsa.RSAPublicKey
        check(isinstance(pub, want_type) and pub.key_size == BITS[spec] and pk.version == 1 and
              pk.spec == spec and list(pk.signing_algorithms) == ALGS[spec],
              f"{name}: GetPublicKey is a {BITS[spec]}-bit SPKI that parses, version 1, "
              f"algorithms {[kpb.SigningAlgorithm.Name(a) for a in pk.signing_algorithms]}")
        if spec == kpb.EC_P256:
            check(pub.curve.name == "secp256r1", "EC_P256: the curve is P-256")
        pa = must("GetPublicKey", kpb.GetPublicKeyRequest(key_id=k.key_id),
                  kpb.GetPublicKeyResponse, "demo-admin")
        check(pa.public_key == pk.public_key, f"{name}: key-admin may read the public key too")
        for alg in ALGS[spec]:
            an = kpb.SigningAlgorithm.Name(alg)
            for mode in (kpb.RAW, kpb.DIGEST):
                mn = kpb.MessageType.Name(mode)
                msg = b"SENTINEL-" + os.urandom(12).hex().encode() + b" sign me"
                body = msg if mode == kpb.RAW else hashlib.sha256(msg).digest()
                s, r, rid = sign(k.key_id, body, alg, mode)
                if not check(s == 200, f"{name} {an} {mn}: Sign ({s} {r if s != 200 else ''})"):
                    continue
                sentinels[rid] = (k.key_id, 1, hashlib.sha256(msg).hexdigest(), msg)
                sign_rids.append(rid)
                sig_bytes.append(r.signature)
                sig = r.signature
                check(r.version == 1 and r.key_id == k.key_id and r.algorithm == alg,
                      f"{name} {an} {mn}: the reply names key, version 1 and algorithm")
                if spec == kpb.EC_P256:
                    check(sig[0] == 0x30 and len(sig) <= 72,
                          f"{name} {an} {mn}: the ECDSA signature is DER ({len(sig)} bytes)")
                else:
                    check(len(sig) == BITS[spec] // 8, f"{name} {an} {mn}: {len(sig)} bytes")
                check(openssl_verify(pk.public_key, alg, msg, sig, False),
                      f"{name} {an} {mn}: openssl dgst -sha256 -verify accepts it")
                check(openssl_verify(pk.public_key, alg, msg, sig, True),
                      f"{name} {an} {mn}: openssl pkeyutl -verify (digest) accepts it")
                s, v, _ = verify(k.key_id, 1, body, alg, sig, mode)
                check(s == 200 and v.valid, f"{name} {an} {mn}: Verify says valid")
                s, v, _ = verify(k.key_id, 1, msg if mode == kpb.DIGEST else body + b"!", alg,
                                 sig, kpb.RAW)
                bad = sig[:-1] + bytes([sig[-1] ^ 1])
                s2, v2, _ = verify(k.key_id, 1, body, alg, bad, mode)
                check(s == 200 and s2 == 200 and (mode == kpb.DIGEST or not v.valid) and
                      not v2.valid and not openssl_verify(pk.public_key, alg, msg, bad, False),
                      f"{name} {an} {mn}: another message or a flipped bit: valid=false "
                      f"(200, not an error), and openssl agrees")
        wrong = kpb.RSASSA_PSS_SHA_256 if spec == kpb.EC_P256 else kpb.ECDSA_SHA_256
        check(refused(sign(k.key_id, b"x", wrong), 400, "invalid_argument", "does not suit"),
              f"{name}: Sign with {kpb.SigningAlgorithm.Name(wrong)}: 400 invalid_argument")
        check(refused(verify(k.key_id, 1, b"x", wrong, b"\x30\x00"), 400, "invalid_argument",
                      "does not suit"), f"{name}: Verify with a wrong algorithm: invalid_argument")

    ek, rk = keys[kpb.EC_P256], keys[kpb.RSA_3072]
    ES = kpb.ECDSA_SHA_256

    # ---- boundaries ---------------------------------------------------------------------
    for n in (31, 33, 0):
        check(refused(sign(ek, b"d" * n, ES, kpb.DIGEST), 400, "invalid_argument", "32-byte"),
              f"DIGEST of {n} bytes: 400 invalid_argument")
    check(refused(sign(ek, b"m" * 65537, ES), 400, "invalid_argument", "65536"),
          "RAW message of 65537 bytes: 400 invalid_argument")
    s, r, _ = sign(ek, b"m" * 65536, ES)
    pk = pubkey(ek)
    check(s == 200 and openssl_verify(pk.public_key, ES, b"m" * 65536, r.signature, False),
          "RAW message of exactly 65536 bytes signs and verifies")
    s, r, _ = sign(ek, b"", ES)
    check(s == 200 and openssl_verify(pk.public_key, ES, b"", r.signature, False),
          "an empty RAW message signs (its SHA-256) and verifies")
    s, r, _ = sign(ek, b"unspecified type", ES, kpb.MESSAGE_TYPE_UNSPECIFIED)
    check(s == 200 and openssl_verify(pk.public_key, ES, b"unspecified type", r.signature,
                                      False), "MESSAGE_TYPE_UNSPECIFIED means RAW")
    for field, val in (("algorithm", 4), ("algorithm", 99), ("message_type", 3)):
        req = kpb.SignRequest(key_id=ek, message=b"x", algorithm=ES)
        setattr(req, field, val)
        s, m, _ = call("Sign", req, kpb.SignResponse, "demo-broker")
        check(refused((s, m), 400, "invalid_argument", field),
              f"Sign {field}={val} (undefined): 400 invalid_argument naming the field")
    check(refused(sign(ek, b"x", kpb.SIGNING_ALGORITHM_UNSPECIFIED), 400, "invalid_argument",
                  "algorithm is required"), "Sign without an algorithm: 400 invalid_argument")
    check(refused(sign(ek, b"x", ES, version=99), 404, "not_found", "no version 99"),
          "Sign version 99 (does not exist): 404 not_found")
    check(refused(sign(ek, b"x", ES, version=2 ** 32 - 1), 404, "not_found"),
          "Sign version 2^32-1: 404 not_found")
    check(refused(call("GetPublicKey", kpb.GetPublicKeyRequest(key_id=ek, version=7),
                       kpb.GetPublicKeyResponse, "demo-broker"), 404, "not_found"),
          "GetPublicKey of a version that does not exist: 404 not_found")
    check(refused(verify(ek, 0, b"x", ES, b"\x30\x00"), 400, "invalid_argument",
                  "version is required"), "Verify without a version: 400 invalid_argument")
    check(refused(verify(ek, 1, b"x", ES, b""), 400, "invalid_argument", "signature"),
          "Verify with an empty signature: 400 invalid_argument")
    check(refused(verify(ek, 1, b"x", ES, b"s" * 513), 400, "invalid_argument", "512"),
          "Verify with a 513-byte signature: 400 invalid_argument")
    s, v, _ = verify(ek, 1, b"x", ES, b"\x30" * 512)
    check(s == 200 and not v.valid, "Verify with 512 bytes of garbage: valid=false")
    check(refused(sign("zz" * 16, b"x", ES), 400, "invalid_argument"),
          "Sign with a malformed key id: 400 invalid_argument")
    check(refused(sign("00" * 16, b"x", ES), 404, "not_found"),
          "Sign with a key id that does not exist: 404 not_found")

    # ---- key separation -----------------------------------------------------------------
    aes = must("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                 usage=kpb.ENCRYPT_DECRYPT),
               kpb.CreateKeyResponse, "demo-admin").key.key_id
    check(refused(sign(aes, b"x", ES), 400, "invalid_argument", "not a SIGN_VERIFY key"),
          "Sign with an AES key: 400 invalid_argument")
    check(refused(call("GetPublicKey", kpb.GetPublicKeyRequest(key_id=aes),
                       kpb.GetPublicKeyResponse, "demo-broker"), 400, "invalid_argument"),
          "GetPublicKey of an AES key: 400 invalid_argument")
    check(refused(call("Encrypt", kpb.EncryptRequest(key_id=ek, plaintext=b"x"),
                       kpb.EncryptResponse, "demo-broker"), 400, "invalid_argument",
                  "Sign and Verify"), "Encrypt with a signing key: 400 invalid_argument")
    check(refused(call("GenerateDataKey", kpb.GenerateDataKeyRequest(key_id=rk),
                       kpb.GenerateDataKeyResponse, "demo-broker"), 400, "invalid_argument"),
          "GenerateDataKey with a signing key: 400 invalid_argument")
    for spec, usage in ((kpb.EC_P256, kpb.ENCRYPT_DECRYPT), (kpb.RSA_3072, kpb.KEY_USAGE_UNSPECIFIED),
                        (kpb.AES_256, kpb.SIGN_VERIFY)):
        check(refused(call("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=spec,
                                                             usage=usage),
                           kpb.CreateKeyResponse, "demo-admin"), 400, "invalid_argument", "usage"),
              f"CreateKey {kpb.KeySpec.Name(spec)} with usage {kpb.KeyUsage.Name(usage)}: "
              f"400 invalid_argument")
    check(refused(call("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.EC_P256,
                                                         usage=kpb.SIGN_VERIFY,
                                                         origin=kpb.EXTERNAL),
                       kpb.CreateKeyResponse, "demo-admin"), 400, "invalid_argument", "EXTERNAL"),
          "CreateKey EC_P256 origin EXTERNAL: 400 invalid_argument")
    check(refused(call("GetImportParameters", kpb.GetImportParametersRequest(key_id=ek),
                       kpb.GetImportParametersResponse, "demo-admin"), 412,
                  "failed_precondition"), "GetImportParameters of a signing key: refused")

    # ---- JSON encoding ------------------------------------------------------------------
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    body = json.dumps({"key_id": ek, "message": base64.b64encode(b"json!").decode(),
                       "algorithm": "ECDSA_SHA_256"}).encode()
    conn.request("POST", "/twirp/custos.v1.KeyService/Sign", body,
                 {"Content-Type": "application/json",
                  "Authorization": "Bearer " + client("demo-broker").key})
    r = conn.getresponse()
    j = json.loads(r.read())
    check(r.status == 200 and openssl_verify(pk.public_key, ES, b"json!",
                                             base64.b64decode(j["signature"]), False) and
          j.get("algorithm") == "ECDSA_SHA_256", "Sign in JSON: the signature verifies")

    # ---- rotation -----------------------------------------------------------------------
    s1 = sign(ek, b"before rotation", ES)[1].signature
    pk1 = pubkey(ek).public_key
    rot = must("RotateKey", kpb.RotateKeyRequest(key_id=ek), kpb.RotateKeyResponse, "demo-admin")
    check(rot.new_version == 2, "RotateKey makes version 2")
    pk2 = pubkey(ek)
    check(pk2.version == 2 and pk2.public_key != pk1, "version 2 is a new key pair")
    check(pubkey(ek, 1).public_key == pk1, "GetPublicKey version 1 is still the old public key")
    s, r, _ = sign(ek, b"after rotation", ES)
    check(s == 200 and r.version == 2 and
          openssl_verify(pk2.public_key, ES, b"after rotation", r.signature, False) and
          not openssl_verify(pk1, ES, b"after rotation", r.signature, False),
          "after rotation Sign uses version 2 (verifies with the new key, not the old)")
    s, v, _ = verify(ek, 1, b"before rotation", ES, s1)
    s2, v2, _ = verify(ek, 2, b"before rotation", ES, s1)
    check(s == 200 and v.valid and s2 == 200 and not v2.valid,
          "the old signature still verifies under version 1 (not under 2)")
    s, r, _ = sign(ek, b"old version", ES, version=1)
    check(s == 200 and r.version == 1 and openssl_verify(pk1, ES, b"old version", r.signature,
                                                         False),
          "Sign naming version 1 (ACTIVE) still signs with it")
    rr = must("RotateKey", kpb.RotateKeyRequest(key_id=rk), kpb.RotateKeyResponse, "demo-admin")
    check(rr.new_version == 2 and pubkey(rk).public_key != pubkey(rk, 1).public_key,
          "RSA_3072: RotateKey makes a new pair too")

    # ---- states, tenants, grants ----------------------------------------------------------
    must("DisableKey", kpb.DisableKeyRequest(key_id=ek), kpb.DisableKeyResponse, "demo-admin")
    res = sign(ek, b"disabled", ES)
    check(refused(res, 412, "failed_precondition", "DISABLED"),
          "Sign with a DISABLED key: 412 failed_precondition")
    sign_rids.append(res[2])
    sentinels[res[2]] = (ek, 0, hashlib.sha256(b"disabled").hexdigest(), b"disabled")
    check(refused(verify(ek, 1, b"before rotation", ES, s1), 412, "failed_precondition"),
          "Verify with a DISABLED key: 412 failed_precondition")
    check(pubkey(ek).version == 2, "GetPublicKey of a DISABLED key still answers")
    must("EnableKey", kpb.EnableKeyRequest(key_id=ek), kpb.EnableKeyResponse, "demo-admin")
    check(sign(ek, b"enabled again", ES)[0] == 200, "enabled again: Sign works")
    check(refused(sign(ek, b"x", ES, who="other-broker"), 404, "not_found"),
          "another tenant's broker: Sign 404 not_found")
    check(refused(call("GetPublicKey", kpb.GetPublicKeyRequest(key_id=ek),
                       kpb.GetPublicKeyResponse, "other-broker"), 404, "not_found"),
          "another tenant's broker: GetPublicKey 404 not_found")
    check(refused(sign(ek, b"x", ES, who="demo-admin"), 403, "permission_denied"),
          "a key-admin may not Sign: 403 permission_denied")
    check(refused(sign(ek, b"x", ES, who="demo-broker-us"), 403, "permission_denied"),
          "a broker whose home region is us-east: 403 permission_denied (residency)")
    gk = create(kpb.EC_P256)

    def grant(p):
        for t in p["tenants"]:
            if t["id"] == "demo":
                t.setdefault("grants", []).append(
                    {"sid": "sign-test-public-only", "key_id": gk.key_id,
                     "principals": ["demo-broker"], "operations": ["GetPublicKey", "Verify"]})
    reload_policy(grant)
    denied = sign(gk.key_id, b"x", ES)
    check(refused(denied, 403, "permission_denied"),
          "a grant naming the key without Sign: 403 permission_denied")
    granted = call("GetPublicKey", kpb.GetPublicKeyRequest(key_id=gk.key_id),
                   kpb.GetPublicKeyResponse, "demo-broker")
    check(granted[0] == 200, "... while the granted GetPublicKey works")
    gpub = granted[1].public_key if granted[0] == 200 else b""
    by_role = sign(ek, b"by role", ES)
    check(by_role[0] == 200, "a Sign on a key without grants is allowed by the role")
    # sid of the grant that allowed a request: in the event (docs/policy.md)
    grant_rids = {denied[2]: ("Sign", "permission_denied", "grant", ""),
                  granted[2]: ("GetPublicKey", "ok", "grant", "sign-test-public-only"),
                  by_role[2]: ("Sign", "ok", "role", "")}

    # ---- audit ----------------------------------------------------------------------------
    auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
    found = {}
    raw_all = []
    for _ in range(60):
        _, events, raw_all = export_all(auditor, "eu-west")
        found = {}
        for e in events:
            if e.request_id in sentinels:
                found.setdefault(e.request_id, []).append(e)
        if len(found) == len(sentinels):
            break
        time.sleep(0.3)
    check(len(found) == len(sentinels) and all(len(v) == 1 for v in found.values()),
          f"each of the {len(sentinels)} Sign calls is exactly one audit event")
    good = True
    for rid, evs in found.items():
        key_id, ver, sha, _ = sentinels[rid]
        e = evs[0]
        good &= e.operation == "Sign" and e.key_id == key_id and f"sha256={sha}" in e.detail
        good &= ver == 0 or e.key_version == ver
    check(good, "each event names Sign, the key, the version and the message's SHA-256")
    blob = b"".join(raw_all)
    check(not any(m[3] in blob for m in sentinels.values()) and
          not any(sg in blob for sg in sig_bytes),
          "no event carries a message or a signature")
    gev = {}
    for _ in range(60):
        _, events, _ = export_all(auditor, "eu-west")
        gev = {e.request_id: e for e in events if e.request_id in grant_rids}
        if len(gev) == len(grant_rids):
            break
        time.sleep(0.3)
    got = {rid: (e.operation, e.outcome, e.rule, e.grant_sid) for rid, e in gev.items()}
    check(got == grant_rids,
          "the event of a request a grant allowed names the grant's sid in grant_sid; a "
          f"grant's refusal and a role's allowance leave it empty ({got})")
    check(gpub != b"", "the granted GetPublicKey answered a public key")
    deny = [e for e in found.get(sign_rids[-1], [])]
    check(deny and deny[0].outcome == "failed_precondition" and deny[0].rule,
          "the refused Sign (disabled key) is an event with its outcome")
    json.dump(keys and {SPEC_NAME[s]: k for s, k in keys.items()}, open(f"{W}/keys.json", "w"))
    return 0


def escrow():
    k = create(kpb.EC_P256, who="bank-admin")
    pk = must("GetPublicKey", kpb.GetPublicKeyRequest(key_id=k.key_id), kpb.GetPublicKeyResponse,
              "bank-broker")
    s, r, _ = sign(k.key_id, b"escrowed", kpb.ECDSA_SHA_256, who="bank-broker")
    check(s == 200 and openssl_verify(pk.public_key, kpb.ECDSA_SHA_256, b"escrowed",
                                      r.signature, False),
          "escrow tenant: an EC_P256 key is made (escrowed at birth) and signs")
    s, m, _ = call("RequestRecovery", epb.RequestRecoveryRequest(
        key_id=k.key_id, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu",
        justification=epb.LAWFUL_REQUEST, justification_text="signing key export",
        case_reference="SIGN-1"), epb.RequestRecoveryResponse, "bank-officer-1", "EscrowService")
    check(refused((s, m), 412, "failed_precondition", "AES_256"),
          "EXPORT_WRAPPED of a signing key: 412 failed_precondition (restore it instead)")
    must("ScheduleKeyDeletion", kpb.ScheduleKeyDeletionRequest(key_id=k.key_id,
                                                               pending_window_days=1),
         kpb.ScheduleKeyDeletionResponse, "bank-admin")
    for _ in range(200):
        d = must("DescribeKey", kpb.DescribeKeyRequest(key_id=k.key_id), kpb.DescribeKeyResponse,
                 "bank-admin").key
        if d.state == kpb.DESTROYED:
            break
        time.sleep(0.2)
    check(d.state == kpb.DESTROYED, "the key is destroyed after its waiting period")
    check(refused(call("GetPublicKey", kpb.GetPublicKeyRequest(key_id=k.key_id),
                       kpb.GetPublicKeyResponse, "bank-broker"), 412, "failed_precondition"),
          "GetPublicKey of a DESTROYED key: failed_precondition")
    rec = must("RequestRecovery", epb.RequestRecoveryRequest(
        key_id=k.key_id, mode=epb.RESTORE, restore_state=epb.RESTORE_ENABLED,
        justification=epb.ACCIDENTAL_DELETION, justification_text="signing key deleted",
        case_reference="SIGN-2"), epb.RequestRecoveryResponse, "bank-officer-1",
        "EscrowService").recovery
    for who in ("bank-officer-2", "bank-officer-3"):
        okey = serialization.load_pem_private_key(
            open(f"{DIR}/credentials/{who}.key.pem", "rb").read(), None)
        sig = okey.sign(rec.statement.encode(), ec.ECDSA(hashes.SHA256()))
        must("ApproveRecovery", epb.ApproveRecoveryRequest(recovery_id=rec.recovery_id,
                                                           signature=sig),
             epb.ApproveRecoveryResponse, who, "EscrowService")
    s, ex, _ = call("ExecuteRecovery", epb.ExecuteRecoveryRequest(recovery_id=rec.recovery_id),
                    epb.ExecuteRecoveryResponse, "bank-officer-1", "EscrowService")
    check(s == 200 and ex.key_state == "ENABLED",
          f"M-of-N RESTORE of the signing key: ENABLED again ({s} {ex if s != 200 else ''})")
    pk2 = must("GetPublicKey", kpb.GetPublicKeyRequest(key_id=k.key_id),
                kpb.GetPublicKeyResponse, "bank-broker")
    check(pk2.public_key == pk.public_key, "the restored key has its old public key")
    s, r, _ = sign(k.key_id, b"after restore", kpb.ECDSA_SHA_256, who="bank-broker")
    check(s == 200 and openssl_verify(pk.public_key, kpb.ECDSA_SHA_256, b"after restore",
                                      r.signature, False),
          "the restored key signs, and openssl verifies with the original public key")
    return 0


def restart():
    keys = json.load(open(f"{W}/keys.json"))
    for name, key_id in keys.items():
        spec = kpb.KeySpec.Value(name)
        alg = ALGS[spec][0]
        pk = pubkey(key_id)
        s, r, _ = sign(key_id, b"after restart", alg)
        check(s == 200 and openssl_verify(pk.public_key, alg, b"after restart", r.signature,
                                          False),
              f"{name}: after a restart the key still signs (version {pk.version})")
    return 0


try:
    {"main": main, "escrow": escrow, "restart": restart}[PHASE]()
except Exception as e:  # a crash is a failure with its reason, not a traceback alone
    check(False, f"{PHASE}: {type(e).__name__}: {e}")
print(f"# {count} checks, {failures} failed")
sys.exit(1 if failures else 0)

"""Link tokens end to end (docs/link-tokens.md) against a real kmsd.

Usage: links_test.py DIR PORT KMSD_PID

kmsd runs with link_tokens {min_ttl_s 60, max_ttl_s 900, max_attempts 3,
recipient_limit 150 per 900 s, clock_skew_s 30, keep_expired_s 3600,
test_clock_file DIR/link_clock} (test_link_tokens.sh). Writes every phone
number and device value it used to DIR/personal.txt, one per line, so that
the shell can look for them in the logs and the store.

Prints "ok N - what" / "not ok N - what"; exits 1 on any failure.
"""
import base64
import json
import os
import signal
import sqlite3
import sys
import threading
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import escrow_pb2 as epb
import key_pb2 as kpb
import links_pb2 as lpb
from audit_lib import Client, export_all

DIR, PORT, PID = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
count = failures = 0
PERSONAL = set()
LS = "LinkService"
REFUSED = "link token not accepted"


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1
    return cond


def client(who):
    return Client(PORT, f"{DIR}/credentials/{who}.key")


CL = {}


def call(method, req, resp_cls, who="demo-broker", service=LS):
    if who not in CL:
        CL[who] = client(who)
    return CL[who].call(service, method, req, resp_cls)


def must(method, req, resp_cls, who="demo-broker", service=LS):
    s, m, _ = call(method, req, resp_cls, who, service)
    if s != 200:
        raise RuntimeError(f"{method} as {who}: {s} {m}")
    return m


def set_clock(offset):
    open(f"{DIR}/link_clock", "w").write(f"{offset}\n")


def create(region="eu-west", who="demo-admin"):
    return must("CreateKey", kpb.CreateKeyRequest(region=region, spec=kpb.LINK_TOKEN_HMAC,
                                                  usage=kpb.LINK_TOKEN),
                kpb.CreateKeyResponse, who, "KeyService").key


def phone(n):
    # UK drama numbers (+44 7700 900xxx), written the way a user types them.
    p = f"+44 7700 900{n:03d}"
    PERSONAL.add(f"7700900{n:03d}")
    return p


def device(tag):
    d = f"app-instance-{tag}-{os.urandom(6).hex()}"
    PERSONAL.add(d)
    return d.encode()


def mint(key, ph, dev, purpose="view-message", ttl=0, ref="", who="demo-broker"):
    return call("MintLinkToken", lpb.MintLinkTokenRequest(key_id=key, phone=ph, device_value=dev,
                                                         purpose=purpose, ttl_s=ttl,
                                                         message_ref=ref),
                lpb.MintLinkTokenResponse, who)


def redeem(key, tok, ph, dev, purpose="view-message", who="demo-broker", cl=None):
    req = lpb.RedeemLinkTokenRequest(key_id=key, token=tok, phone=ph, device_value=dev,
                                     purpose=purpose)
    if cl is not None:
        return cl.call(LS, "RedeemLinkToken", req, lpb.RedeemLinkTokenResponse)
    return call("RedeemLinkToken", req, lpb.RedeemLinkTokenResponse, who)


def is_refusal(res):
    s, m = res[0], res[1]
    return s == 403 and isinstance(m, dict) and m == {"code": "permission_denied", "msg": REFUSED}


REASONS = {}  # request id -> the audit reason the test expects


def expect_refused(res, reason, what):
    ok = is_refusal(res)
    check(ok, f"{what}: 403 permission_denied '{REFUSED}', nothing else"
          + ("" if ok else f" [{res[0]} {res[1]}]"))
    REASONS[res[2]] = reason


def reload_policy(edit):
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


def b64d(t):
    return base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def main():
    set_clock(0)
    k = create()
    check(k.spec == kpb.LINK_TOKEN_HMAC and k.usage == kpb.LINK_TOKEN and k.current_version == 1,
          "CreateKey LINK_TOKEN_HMAC: usage LINK_TOKEN, version 1")
    K = k.key_id
    s, m, _ = call("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.LINK_TOKEN_HMAC,
                                                    usage=kpb.ENCRYPT_DECRYPT),
                   kpb.CreateKeyResponse, "demo-admin", "KeyService")
    check(s == 400, "LINK_TOKEN_HMAC with usage ENCRYPT_DECRYPT: 400")
    s, m, _ = call("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.LINK_TOKEN_HMAC,
                                                    origin=kpb.EXTERNAL),
                   kpb.CreateKeyResponse, "demo-admin", "KeyService")
    check(s == 400, "LINK_TOKEN_HMAC of origin EXTERNAL: 400")
    s, m, _ = call("Encrypt", kpb.EncryptRequest(key_id=K, plaintext=b"x"), kpb.EncryptResponse,
                   "demo-broker", "KeyService")
    check(s == 400 and "LinkService" in m.get("msg", ""), "Encrypt with a link key: 400")

    # ---- round trip ----------------------------------------------------------------
    P1, D1 = phone(101), device("one")
    s, mt, rid_mint = mint(K, P1, D1, ref="msg-0001", ttl=600)
    check(s == 200 and len(mt.token) == 48 and len(mt.token_id) == 24 and mt.key_version == 1,
          "MintLinkToken: a 48-character token, a 24-hex id, version 1")
    raw = b64d(mt.token)
    check(len(raw) == 36 and raw[0] == 1 and raw[1:3] == b"\x00\x01"
          and raw[3:15].hex() == mt.token_id
          and int.from_bytes(raw[15:20], "big") == mt.expires_at,
          "the token's bytes are format 1, version, id and expiry as docs/link-tokens.md says")
    check(abs(mt.expires_at - (int(time.time()) + 600)) <= 5, "expires_at is now + ttl_s")
    check(all(c.isalnum() or c in "-_" for c in mt.token), "the token is base64url, no padding")
    check(b"7700900101" not in raw and b"+44" not in raw, "the token carries no phone number")
    # The broker's phone in another spelling is the same recipient.
    s, rd, rid_ok = redeem(K, mt.token, "tel:+44-7700-900-101", D1)
    check(s == 200 and rd.token_id == mt.token_id and rd.message_ref == "msg-0001"
          and rd.key_version == 1, "RedeemLinkToken: accepted, with the message_ref and id")
    expect_refused(redeem(K, mt.token, P1, D1), "used", "a second redemption")

    # ---- every failure reason: one answer, its own audit reason ------------------------------
    P2, D2 = phone(102), device("two")
    _, t2, _ = mint(K, P2, D2, ref="msg-0002")
    expect_refused(redeem(K, t2.token, phone(103), D2), "wrong_phone", "wrong phone")
    expect_refused(redeem(K, t2.token, P2, device("other")), "wrong_device", "wrong device value")
    _, t3, _ = mint(K, P2, D2)
    expect_refused(redeem(K, t3.token, P2, D2, purpose="login"), "wrong_purpose", "wrong purpose")
    # Forged: a flipped MAC byte, and an expiry moved later (the MAC does not
    # follow).
    r3 = bytearray(b64d(t3.token))
    r3[-1] ^= 1
    expect_refused(redeem(K, b64e(bytes(r3)), P2, D2), "forged", "a token with a flipped MAC bit")
    _, t4, _ = mint(K, P2, D2)
    r4 = bytearray(b64d(t4.token))
    r4[19] = (r4[19] + 100) % 256
    expect_refused(redeem(K, b64e(bytes(r4)), P2, D2), "forged", "a token with a later expiry")
    # Unknown: a well-formed token no one minted.
    fake = bytes([1, 0, 1]) + os.urandom(12) + (int(time.time()) + 300).to_bytes(5, "big") \
        + os.urandom(16)
    expect_refused(redeem(K, b64e(fake), P2, D2), "unknown", "a token no one minted")
    expect_refused(redeem(K, "x" * 47, P2, D2), "malformed", "47 characters")
    expect_refused(redeem(K, t4.token[:-1] + "=", P2, D2), "malformed", "padding character")
    v9 = bytearray(b64d(t4.token))
    v9[1:3] = b"\x00\x09"
    expect_refused(redeem(K, b64e(bytes(v9)), P2, D2), "unknown_version", "a version the key lacks")
    # Revoked by id.
    _, t5, _ = mint(K, P2, D2, ref="msg-0005")
    rv = must("RevokeLinkTokens", lpb.RevokeLinkTokensRequest(key_id=K, token_ids=[t5.token_id]),
              lpb.RevokeLinkTokensResponse)
    check(rv.revoked == 1, "RevokeLinkTokens by id: 1 revoked")
    expect_refused(redeem(K, t5.token, P2, D2), "revoked", "a revoked token")
    rv = must("RevokeLinkTokens", lpb.RevokeLinkTokensRequest(key_id=K, token_ids=[t5.token_id]),
              lpb.RevokeLinkTokensResponse)
    check(rv.revoked == 0, "revoking it again changes nothing (0)")
    # By message reference: both tokens of one message.
    _, t6, _ = mint(K, P2, D2, ref="msg-0006")
    _, t7, _ = mint(K, phone(104), D2, ref="msg-0006")
    rv = must("RevokeLinkTokens", lpb.RevokeLinkTokensRequest(key_id=K, message_ref="msg-0006"),
              lpb.RevokeLinkTokensResponse)
    check(rv.revoked == 2, "RevokeLinkTokens by message_ref: both tokens of the message")
    expect_refused(redeem(K, t6.token, P2, D2), "revoked", "a token revoked by message_ref")
    s, m, _ = call("RevokeLinkTokens", lpb.RevokeLinkTokensRequest(key_id=K, message_ref="a",
                                                                   token_ids=[t6.token_id]),
                   lpb.RevokeLinkTokensResponse)
    check(s == 400, "RevokeLinkTokens with both ids and a message_ref: 400")

    # ---- attempt limit (3) ----------------------------------------------------------------
    P8, D8 = phone(108), device("eight")
    _, t8, _ = mint(K, P8, D8)
    expect_refused(redeem(K, t8.token, phone(109), D8), "wrong_phone", "attempt 1 (wrong phone)")
    expect_refused(redeem(K, t8.token, P8, device("x")), "wrong_device", "attempt 2 (wrong device)")
    expect_refused(redeem(K, t8.token, P8, D8, purpose="x"), "wrong_purpose", "attempt 3")
    expect_refused(redeem(K, t8.token, P8, D8), "attempts_exhausted",
                   "the right binding after 3 failed attempts: the token is void")

    # ---- expiry on the test clock, with the 30 s skew -------------------------------------
    P9, D9 = phone(110), device("nine")
    _, ta, _ = mint(K, P9, D9, ttl=60)
    _, tb, _ = mint(K, P9, D9, ttl=60)
    s, m, _ = mint(K, P9, D9, ttl=59)
    check(s == 400 and "ttl_s" in m.get("msg", ""), "ttl_s below min_ttl_s (60): 400")
    s, m, _ = mint(K, P9, D9, ttl=901)
    check(s == 400, "ttl_s above max_ttl_s (900): 400")
    set_clock(80)
    s, _, _ = redeem(K, ta.token, P9, D9)
    check(s == 200, "20 s past expiry, within the 30 s skew: accepted")
    set_clock(95)
    expect_refused(redeem(K, tb.token, P9, D9), "expired", "35 s past expiry")
    set_clock(0)

    # ---- 100 concurrent redemptions of one token --------------------------------------------
    PC, DC = phone(111), device("race")
    _, tc, _ = mint(K, PC, DC)
    clients = [client("demo-broker") for _ in range(100)]
    results = [None] * 100
    go = threading.Barrier(100)

    def worker(i):
        go.wait()
        results[i] = redeem(K, tc.token, PC, DC, cl=clients[i])

    th = [threading.Thread(target=worker, args=(i,)) for i in range(100)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wins = [r for r in results if r[0] == 200]
    refusals = [r for r in results if is_refusal(r)]
    check(len(wins) == 1 and len(refusals) == 99,
          f"100 concurrent redemptions: exactly 1 accepted, 99 refused "
          f"({len(wins)} / {len(refusals)})")
    for r in refusals:
        REASONS[r[2]] = "used"

    # ---- per-recipient rate limit (150 per window) ----------------------------------------
    PR, DR = phone(112), device("rate")
    _, tr, _ = mint(K, PR, DR)
    for i in range(150):
        fake = bytes([1, 0, 1]) + os.urandom(12) + (int(time.time()) + 300).to_bytes(5, "big") \
            + os.urandom(16)
        redeem(K, b64e(fake), PR, DR)
    expect_refused(redeem(K, tr.token, PR, DR), "rate_limited",
                   "the recipient's 151st attempt in the window, with its real token")
    s, _, _ = redeem(K, tr.token, PR, DR)
    check(s == 403, "... and the next one too")
    db = sqlite3.connect(f"file:{DIR}/kmsd.db?mode=ro", uri=True)
    st = db.execute("SELECT state, attempts FROM link_tokens WHERE token_id = ?",
                    (bytes.fromhex(tr.token_id),)).fetchone()
    check(st == (0, 0), f"a rate-limited attempt never touches the token's row {st}")
    set_clock(901)
    s, _, _ = redeem(K, tr.token, PR, DR)
    check(s == 403, "a new window, but the token (ttl 300) has expired meanwhile")
    set_clock(0)
    cols = [r[1] for r in db.execute("PRAGMA table_info(link_tokens)")] + \
        [r[1] for r in db.execute("PRAGMA table_info(link_recipients)")]
    check(not any("phone" in c or "device" in c for c in cols),
          f"the store's link tables have no phone or device column ({cols})")

    # ---- the token field's own flaws and early refusals ------------------------------------
    # A token the decoder cannot carry as a string (a NUL byte, invalid
    # UTF-8; protobuf and JSON) gets the same 403 as every other refusal,
    # its audit reason malformed; the request's own fields stay 400. And a
    # malformed token or one naming no version counts against the recipient
    # like any other attempt (docs/link-tokens.md).
    PF, DF = phone(120), device("flaws")
    _, tf, _ = mint(K, PF, DF)
    rcp = db.execute("SELECT recipient FROM link_tokens WHERE token_id = ?",
                     (bytes.fromhex(tf.token_id),)).fetchone()[0]

    def rcount():
        r = db.execute("SELECT attempts FROM link_recipients WHERE key_id = ? AND recipient = ?",
                       (K, rcp)).fetchone()
        return r[0] if r else 0

    class Raw:  # a RedeemLinkTokenRequest whose token is given as raw bytes
        def __init__(self, tok):
            self.tok = tok

        def SerializeToString(self):
            head = lpb.RedeemLinkTokenRequest(key_id=K, phone=PF, device_value=DF,
                                              purpose="view-message").SerializeToString()
            return head + b"\x12" + bytes([len(self.tok)]) + self.tok

    before = rcount()
    expect_refused(redeem(K, tf.token[:47] + "\0", PF, DF), "malformed (a NUL byte)",
                   "47 characters and a NUL byte (protobuf)")
    expect_refused(redeem(K, tf.token + "\0x", PF, DF), "malformed (a NUL byte)",
                   "the whole token, a NUL and more (protobuf): not the token")
    expect_refused(call("RedeemLinkToken", Raw(tf.token[:46].encode() + b"\xc3\x28"),
                        lpb.RedeemLinkTokenResponse), "malformed (not UTF-8)",
                   "a token with invalid UTF-8 (protobuf)")
    import http.client as hc
    jc = hc.HTTPConnection("127.0.0.1", PORT, timeout=30)
    jc.request("POST", "/twirp/custos.v1.LinkService/RedeemLinkToken",
               json.dumps({"keyId": K, "token": tf.token[:47] + "\u0000", "phone": PF,
                           "deviceValue": base64.b64encode(DF).decode(),
                           "purpose": "view-message"}),
               {"Content-Type": "application/json",
                "Authorization": "Bearer " + open(f"{DIR}/credentials/demo-broker.key").read().strip()})
    jr = jc.getresponse()
    expect_refused((jr.status, json.loads(jr.read()), jr.getheader("X-Request-Id")),
                   "malformed (a NUL byte)", "a token with an escaped NUL (JSON)")
    vf = bytearray(b64d(tf.token))
    vf[1:3] = b"\x00\x09"
    expect_refused(redeem(K, b64e(bytes(vf)), PF, DF), "unknown_version",
                   "a version the key lacks")
    expect_refused(redeem(K, "x" * 47, PF, DF), "malformed", "47 characters")
    check(rcount() == before + 6,
          f"each of those 6 refusals counted against the recipient ({before} -> {rcount()})")
    s, m, _ = redeem(K, tf.token, "+1", DF)
    check(s == 400 and m.get("code") == "invalid_argument",
          f"the request's own phone malformed: still 400 invalid_argument ({s})")
    check(rcount() == before + 6, "... and not counted")
    s, _, _ = redeem(K, tf.token, PF, DF)
    check(s == 200, "the token itself still redeems afterwards")

    # ---- rotation: the old version still redeems -------------------------------------------
    PV, DV = phone(113), device("rot")
    _, old, _ = mint(K, PV, DV)
    rk = must("RotateKey", kpb.RotateKeyRequest(key_id=K), kpb.RotateKeyResponse, "demo-admin",
              "KeyService")
    check(rk.key.current_version == 2, "RotateKey: version 2")
    _, new, _ = mint(K, PV, DV)
    check(new.key_version == 2 and b64d(new.token)[1:3] == b"\x00\x02",
          "a token minted after rotation names version 2")
    check(redeem(K, old.token, PV, DV)[0] == 200, "a version-1 token minted before rotation redeems")
    check(redeem(K, new.token, PV, DV)[0] == 200, "the version-2 token redeems")

    # ---- residency ------------------------------------------------------------------------
    US = create("us-east").key_id
    PU, DU = phone(114), device("us")
    _, tu, _ = mint(K, PU, DU)
    s, m, _ = redeem(K, tu.token, PU, DU, who="demo-broker-us")
    check(s == 403 and m.get("msg") != REFUSED,
          "a broker of us-east redeeming with the eu-west key: refused by residency "
          f"(policy), not reaching the token [{m}]")
    s, m, _ = mint(US, PU, DU, who="demo-broker-us")
    check(s == 200, "the us-east broker mints with the us-east key")
    s, _, _ = redeem(US, m.token, PU, DU, who="demo-broker-us")
    check(s == 200, "... and redeems in us-east")

    # ---- roles and grants --------------------------------------------------------------------
    _, tg, _ = mint(K, PU, DU)
    s, m, _ = call("MintLinkToken", lpb.MintLinkTokenRequest(key_id=K, phone=PU, device_value=DU,
                                                             purpose="x"),
                   lpb.MintLinkTokenResponse, "demo-admin")
    check(s == 403 and m.get("code") == "permission_denied", "a key-admin may not mint")
    s, m, _ = redeem(K, tg.token, PU, DU, who="demo-admin")
    check(s == 403 and m.get("msg") != REFUSED, "a key-admin may not redeem (role, not the token)")
    s, m, _ = redeem(K, tg.token, PU, DU, who="other-broker")
    check(s == 404, "another tenant's broker: 404 not_found, as for any key of another tenant")
    s, m, _ = call("RevokeLinkTokens", lpb.RevokeLinkTokensRequest(key_id=K,
                                                                   token_ids=[tg.token_id]),
                   lpb.RevokeLinkTokensResponse, "auditor")
    check(s in (403, 404), f"an auditor may not revoke ({s})")
    G = create().key_id

    def grant(p):
        for t in p["tenants"]:
            if t["id"] == "demo":
                t.setdefault("grants", []).append(
                    {"sid": "links-mint-only", "key_id": G, "principals": ["demo-broker"],
                     "operations": ["MintLinkToken"]})
                t["grants"].append(
                    {"sid": "links-redeem-us", "key_id": G, "principals": ["demo-broker-us"],
                     "operations": ["RedeemLinkToken", "RevokeLinkTokens"]})
                # The tenant's own, narrower bounds on a token's life.
                t["link_tokens"] = {"min_ttl_s": 120, "max_ttl_s": 240}
                for pr in t["principals"]:
                    if pr["id"] == "demo-broker-us":
                        pr["allowed_regions"] = ["eu-west"]
                    if pr["id"] == "demo-broker":
                        pr["allowed_regions"] = ["us-east"]
    reload_policy(grant)
    _, tgm, _ = mint(G, PU, DU)
    check(bool(tgm.token), "a grant of MintLinkToken lets demo-broker mint")
    check(abs(tgm.expires_at - (int(time.time()) + 240)) <= 5,
          "the default life (300 s) held to the tenant's max_ttl_s (240)")
    s, m, _ = mint(G, PU, DU, ttl=100)
    check(s == 400 and "120..240" in m.get("msg", ""),
          f"ttl_s below the tenant's min_ttl_s (120), inside the service's: 400 [{m}]")
    s, m, _ = mint(G, PU, DU, ttl=600)
    check(s == 400, "ttl_s above the tenant's max_ttl_s: 400")
    s, m, _ = redeem(G, tgm.token, PU, DU)
    check(s == 403 and m.get("msg") != REFUSED, "... but not redeem (grant)")
    s, m, _ = redeem(G, tgm.token, PU, DU, who="demo-broker-us")
    check(s == 200, "the principal granted RedeemLinkToken redeems")
    s, m, _ = mint(G, PU, DU, who="demo-broker-us")
    check(s == 403, "... and may not mint")
    # A broker allowed in both regions: a token minted in eu-west does not
    # redeem through the tenant's us-east key.
    # (us-east's key rotated too, so that the version exists there: what
    # refuses the token is that it is not that key's.)
    must("RotateKey", kpb.RotateKeyRequest(key_id=US), kpb.RotateKeyResponse, "demo-admin",
         "KeyService")
    _, tu2, _ = mint(K, PU, DU)
    expect_refused(redeem(US, tu2.token, PU, DU), "unknown",
                   "an eu-west token presented with the tenant's us-east link key")
    check(redeem(K, tu2.token, PU, DU)[0] == 200, "... and still redeems in eu-west afterwards")

    # ---- escrow tenant: the link key is escrowed at birth -----------------------------------
    bk = create(who="bank-admin").key_id
    db2 = sqlite3.connect(f"file:{DIR}/kmsd.db?mode=ro", uri=True)
    rows = db2.execute("SELECT version, part FROM escrow_blobs WHERE key_id = ?", (bk,)).fetchall()
    check(rows == [(1, 1)], f"a bank (escrow) link key: one escrow blob, part 1 (HMAC) {rows}")
    PB, DB = phone(115), device("bank")
    _, tbk, _ = mint(bk, PB, DB, who="bank-broker")
    check(redeem(bk, tbk.token, PB, DB, who="bank-broker")[0] == 200,
          "the escrowed link key mints and redeems")
    # Destroyed, then restored by M-of-N officers from its escrow blob: a
    # token minted before the destruction redeems with the restored key.
    _, tkeep, _ = mint(bk, PB, DB, ttl=900, who="bank-broker")
    must("ScheduleKeyDeletion", kpb.ScheduleKeyDeletionRequest(key_id=bk, pending_window_days=1),
         kpb.ScheduleKeyDeletionResponse, "bank-admin", "KeyService")
    for _ in range(200):
        d = must("DescribeKey", kpb.DescribeKeyRequest(key_id=bk), kpb.DescribeKeyResponse,
                 "bank-admin", "KeyService").key
        if d.state == kpb.DESTROYED:
            break
        time.sleep(0.2)
    check(d.state == kpb.DESTROYED, "the escrowed link key is destroyed after its waiting period")
    s, m, _ = redeem(bk, tkeep.token, PB, DB, who="bank-broker")
    check(s == 412, f"redeeming with a DESTROYED key: failed_precondition ({s})")
    rec = must("RequestRecovery", epb.RequestRecoveryRequest(
        key_id=bk, mode=epb.RESTORE, restore_state=epb.RESTORE_ENABLED,
        justification=epb.ACCIDENTAL_DELETION, justification_text="link key deleted",
        case_reference="LINK-1"), epb.RequestRecoveryResponse, "bank-officer-1",
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
          f"M-of-N RESTORE of the link key: ENABLED again ({s} {ex if s != 200 else ''})")
    check(redeem(bk, tkeep.token, PB, DB, who="bank-broker")[0] == 200,
          "a token minted before the destruction redeems with the restored HMAC key")

    # ---- the sweep ----------------------------------------------------------------------------
    PS, DS = phone(116), device("sweep")
    _, ts, _ = mint(K, PS, DS, ttl=120)
    n_before = db.execute("SELECT count(*) FROM link_tokens").fetchone()[0]
    set_clock(120 + 3600 + 5)
    gone = False
    for _ in range(100):
        row = db.execute("SELECT count(*) FROM link_tokens WHERE token_id = ?",
                         (bytes.fromhex(ts.token_id),)).fetchone()[0]
        if row == 0:
            gone = True
            break
        time.sleep(0.1)
    check(gone and n_before > 0, "a row keep_expired_s past its expiry is swept")
    expect_refused(redeem(K, ts.token, PS, DS), "unknown", "a swept token")
    set_clock(0)

    # ---- the audit log: each refusal's own reason, the token id, no personal data ------------
    auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
    deadline = time.time() + 30
    evs = {}
    while time.time() < deadline:
        # The event of a redemption through a us-east key is in us-east's log.
        evs = {e.request_id: e for region in ("eu-west", "us-east")
               for e in export_all(auditor, region)[1]}
        if all(r in evs for r in REASONS) and rid_mint in evs and rid_ok in evs:
            break
        time.sleep(0.3)
    bad = []
    for rid, reason in REASONS.items():
        e = evs.get(rid)
        if e is None or e.operation != "RedeemLinkToken" or e.outcome != "permission_denied" \
                or f"refused: {reason}:" not in e.detail:
            bad.append(f"{reason}: {e.detail if e else 'no event'}")
    check(not bad, f"each of {len(REASONS)} refusals has its own reason in its audit event"
          + ("" if not bad else f": {bad[:4]}"))
    reasons = set(REASONS.values())
    check(len(reasons) >= 12, f"{len(reasons)} distinct reasons exercised: {sorted(reasons)}")
    em, eo = evs.get(rid_mint), evs.get(rid_ok)
    check(em is not None and em.outcome == "ok" and mt.token_id in em.detail
          and em.key_id == K and em.key_version == 1,
          "the mint's event names the key, version and token id")
    check(eo is not None and eo.outcome == "ok" and f"link token {mt.token_id} redeemed"
          in eo.detail, "the redemption's event names the token id")

    open(f"{DIR}/personal.txt", "w").write("\n".join(sorted(PERSONAL)) + "\n")
    # The tokens themselves, for the shell's search.
    with open(f"{DIR}/personal.txt", "a") as f:
        for t in (mt, t2, t3, t4, t5, t6, t7, t8, ta, tb, tc, tr, old, new, tu, tg, tgm, tbk, ts):
            f.write(t.token + "\n")
    print(f"# {count} checks, {failures} failed")
    sys.exit(1 if failures else 0)


main()

"""TLS / mTLS checks against a kmsd started by test_tls.sh.

Usage: tls_test.py DIR PORT mtls|tls
"""
import http.client
import json
import socket
import ssl
import sys

import key_pb2 as pb

DIR, PORT, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
PKI = f"{DIR}/pki"
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1


def ctx(cert=None):
    c = ssl.create_default_context(cafile=f"{PKI}/ca.pem")
    if cert:
        c.load_cert_chain(f"{PKI}/{cert}.pem", f"{PKI}/{cert}.key")
    return c


def call(method, req, cert=None, bearer=None, headers=None):
    conn = http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx(cert), timeout=10)
    h = {"Content-Type": "application/protobuf"}
    h.update(headers or {})
    if bearer:
        h["Authorization"] = "Bearer " + open(f"{DIR}/credentials/{bearer}.key").read().strip()
    try:
        conn.request("POST", f"/twirp/custos.v1.KeyService/{method}", req.SerializeToString(), h)
        r = conn.getresponse()
        return r.status, r.read()
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return -1, str(e).encode()
    finally:
        conn.close()


def code(res):
    try:
        return json.loads(res[1])["code"]
    except Exception:
        return None


create = pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256, usage=pb.ENCRYPT_DECRYPT)
if MODE == "mtls":
    s, body = call("CreateKey", create, cert="admin")
    check(s == 200, "a key admin authenticated by client certificate creates a key")
    key = pb.CreateKeyResponse()
    key.ParseFromString(body)
    s, body = call("Encrypt", pb.EncryptRequest(key_id=key.key.key_id, plaintext=b"hi"),
                   cert="broker")
    check(s == 200, "a broker authenticated by client certificate encrypts")
    s, body = call("Encrypt", pb.EncryptRequest(key_id=key.key.key_id, plaintext=b"hi"),
                   cert="admin")
    check(s == 403 and code((s, body)) == "permission_denied",
          "the certificate's principal is the one authorized (admin may not encrypt)")
    res = call("Encrypt", pb.EncryptRequest(key_id=key.key.key_id, plaintext=b"hi"))
    check(res[0] == 401 and code(res) == "unauthenticated", "no client certificate: unauthenticated")
    res = call("Encrypt", pb.EncryptRequest(key_id=key.key.key_id, plaintext=b"hi"),
               bearer="demo-broker")
    check(res[0] == 401 and code(res) == "unauthenticated",
          "a bearer key does not replace a required client certificate")
    res = call("Encrypt", pb.EncryptRequest(key_id=key.key.key_id, plaintext=b"hi"),
               cert="stranger")
    check(res[0] == 401 and code(res) == "unauthenticated",
          "a valid certificate of an unknown subject: unauthenticated")
    res = call("Encrypt", pb.EncryptRequest(key_id=key.key.key_id, plaintext=b"hi"),
               cert="rogue")
    check(res[0] != 200 and (res[0] == -1 or code(res) == "unauthenticated"),
          "a certificate from another CA with a known subject is refused")
    # Hostile certificates, each with a subject the policy knows (so only
    # verification stands between it and the broker's rights). Each is
    # refused: at the handshake (-1) or as unauthenticated; those refused
    # over HTTP must be audit events, checked in tls mode below.
    refused_http = {}
    for case in ("none", "selfsigned", "expired", "rogue", "cyclic"):
        corr = f"mtls-{case}"
        res = call("Encrypt", pb.EncryptRequest(key_id=key.key.key_id, plaintext=b"hi"),
                   cert=None if case == "none" else case, headers={"X-Correlation-Id": corr})
        refused = res[0] == -1 or (res[0] == 401 and code(res) == "unauthenticated")
        check(refused, f"client certificate '{case}': refused "
                       f"({'handshake' if res[0] == -1 else res[0]})")
        if res[0] == 401:
            refused_http[corr] = case
    with open(f"{DIR}/mtls-refusals.json", "w") as f:
        json.dump(refused_http, f)
    s, body = call("Encrypt", pb.EncryptRequest(key_id=key.key.key_id, plaintext=b"hi"),
                   cert="broker")
    check(s == 200, "the honest broker is still served after the hostile handshakes")
    # Plain HTTP to the TLS port gets no service.
    s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    s.sendall(b"POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nHost: x\r\n"
              b"Content-Length: 0\r\n\r\n")
    try:
        data = s.recv(100)
    except OSError:
        data = b""
    s.close()
    check(not data.startswith(b"HTTP/1.1 200"), "plain HTTP on the TLS port is not served")
else:
    s, body = call("CreateKey", create, bearer="demo-admin")
    check(s == 200, "over TLS without client CA, bearer keys authenticate")
    res = call("CreateKey", create)
    check(res[0] == 401, "and no credentials is still unauthenticated")
    # The refusals of the mtls run are in the audit log (exported by the
    # global auditor over this bearer-key configuration).
    import audit_pb2 as apb
    want = json.load(open(f"{DIR}/mtls-refusals.json"))
    found = {}
    for region in ("eu-west", "us-east"):
        start = 0
        while True:
            conn = http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx(), timeout=10)
            conn.request("POST", "/twirp/custos.v1.AuditService/ExportAuditLog",
                         apb.ExportAuditLogRequest(region=region, start=start,
                                                   count=1000).SerializeToString(),
                         {"Content-Type": "application/protobuf", "Authorization": "Bearer " +
                          open(f"{DIR}/credentials/auditor.key").read().strip()})
            r = conn.getresponse()
            data = r.read()
            conn.close()
            if r.status != 200:
                check(False, f"export of {region}: {r.status} {data[:80]!r}")
                break
            m = apb.ExportAuditLogResponse.FromString(data)
            for e in m.entries:
                ev = apb.AuditEvent.FromString(e.event)
                if ev.correlation_id in want:
                    found[ev.correlation_id] = ev
            if not m.entries or m.entries[-1].seq + 1 >= m.head.tree_size:
                break
            start = m.entries[-1].seq + 1
    # The event says why: GnuTLS's verification status, by case.
    reason = {"none": "required", "selfsigned": "issuer is unknown", "expired": "expired",
              "rogue": "issuer is unknown", "cyclic": "issuer is unknown"}
    for corr, case in want.items():
        ev = found.get(corr)
        check(ev is not None and ev.outcome != "ok" and ev.principal == "" and
              reason[case] in ev.detail,
              f"the refusal of client certificate '{case}' is an audit event saying why"
              + (f" ({ev.outcome}: {ev.detail})" if ev else ""))
    others = sorted(set(reason) - set(want.values()))
    print(f"# refused over HTTP and audited: {sorted(want.values())}; refused in the TLS "
          f"handshake (no request to audit): {others or 'none'}")

print(f"{count - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

"""Request framing and header hygiene against a kmsd started by test_http_framing.sh.

Usage: http_framing.py DIR PORT

Every shape here is what an attacker sends or what a proxy in front of kmsd
may forward: Content-Length with Transfer-Encoding in every order, casing
and placement of the smuggled request; Transfer-Encoding spellings that are
not exactly "chunked"; repeated credential and framing headers; NUL, CR, LF
and other control bytes inside each header; folded (obs-fold) lines and
bare LF line ends. Behind each one a second request is hidden where either
reading of the framing would find it (a GET /livez or a valid Encrypt, both
of which would be answered 200). Each connection is read until the server
closes it, and the check is always the same: exactly one refusal (400), the
connection closed, and nothing else ever answered (no 200 anywhere in the
stream). A server that hangs instead (waiting for a body it framed
differently) closes at the idle timeout without any answer, which fails the
"one refusal" check; no timing is asserted.

Then the legitimate shapes must still work: a chunked body with
Transfer-Encoding: chunked alone, keep-alive pipelining, header casing and
optional whitespace. Routed refusals are audit events that carry the request
id the client received and no (truncated) correlation id.

Prints "ok N - what" / "not ok N - what" and a closing "N passed, N failed".
"""
import http.client
import json
import os
import socket
import sys

import audit_pb2 as apb
import key_pb2 as pb

DIR, PORT = sys.argv[1], int(sys.argv[2])
ROUTE = "/twirp/custos.v1.KeyService/Encrypt"
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1
    return cond


def api_key(who):
    with open(f"{DIR}/credentials/{who}.key") as f:
        return f.read().strip()


BROKER_KEY = api_key("demo-broker")
BROKER = "Bearer " + BROKER_KEY
ADMIN = "Bearer " + api_key("demo-admin")


def call(service, method, msg, auth, resp_cls):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    conn.request("POST", f"/twirp/custos.v1.{service}/{method}", msg.SerializeToString(),
                 {"Content-Type": "application/protobuf", "Authorization": auth})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    assert r.status == 200, (method, r.status, data)
    return resp_cls.FromString(data)


KEY = call("KeyService", "CreateKey",
           pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256, usage=pb.ENCRYPT_DECRYPT),
           ADMIN, pb.CreateKeyResponse).key.key_id
BODY = pb.EncryptRequest(key_id=KEY, plaintext=b"framing").SerializeToString()


def req(headers, body=b"", target=ROUTE, method="POST", version="HTTP/1.1"):
    """A raw request: the request line, the given header lines (bytes, each
    without its CRLF), CRLF, body."""
    out = f"{method} {target} {version}\r\n".encode()
    for h in headers:
        out += h + b"\r\n"
    return out + b"\r\n" + body


def encrypt_req(extra=(), body=BODY):
    return req([b"Host: kms", b"Content-Type: application/protobuf",
                b"Authorization: " + BROKER.encode(),
                b"Content-Length: %d" % len(body)] + list(extra), body)


# The hidden requests: each would be answered 200 if kmsd ever parsed it.
LIVEZ = b"GET /livez HTTP/1.1\r\nHost: kms\r\n\r\n"
ENCRYPT = encrypt_req()
HIDDEN = [("GET /livez", LIVEZ), ("an Encrypt call", ENCRYPT)]


def exchange(data, timeout=30.0):
    """Send data on a fresh connection and read until the server closes it.
    Returns (bytes received, closed by the server)."""
    s = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
    out, closed = b"", False
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before all of it was sent: still read the answer
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            out += chunk
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    finally:
        s.close()
    return out, closed


def responses(stream):
    """Parse consecutive HTTP/1.1 responses framed by Content-Length.
    Returns ([(status, {header: value}, body)], bytes left unparsed)."""
    out = []
    while stream.startswith(b"HTTP/1."):
        head, sep, rest = stream.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            hdrs[k.strip().lower().decode()] = v.strip().decode("latin1")
        n = int(hdrs.get("content-length", "0"))
        out.append((status, hdrs, rest[:n]))
        stream = rest[n:]
    return out, stream


def code(body):
    try:
        return json.loads(body)["code"]
    except Exception:
        return None


ROUTED = []  # (request id, what) of refusals that named the Encrypt route


def refused(data, what, msg=None, routed=True):
    """The request is refused by kmsd: one 400 invalid_argument with
    Connection: close, then the connection is closed; nothing behind it is
    ever answered."""
    stream, closed = exchange(data)
    rs, rest = responses(stream)
    ok = (closed and len(rs) == 1 and not rest and rs[0][0] == 400 and
          code(rs[0][2]) == "invalid_argument" and
          rs[0][1].get("connection", "").lower() == "close" and
          (msg is None or msg.encode() in rs[0][2]) and b" 200 " not in stream)
    check(ok, f"{what}: one 400 invalid_argument, closed, nothing behind it answered "
              f"({len(rs)} response(s), closed={closed}, "
              f"{rs[0][2][:90] if rs else stream[:60]!r})")
    if ok and routed:
        ROUTED.append((rs[0][1].get("x-request-id"), what))


def refused_early(data, what):
    """Refused by libmicrohttpd itself before kmsd sees the request (its own
    400 page; on a malformed Content-Length 0.9.75 even writes its status
    line twice): only 400s, closed, and the hidden request never answered."""
    stream, closed = exchange(data)
    statuses = [l.split(b" ")[1] for l in stream.split(b"\r\n") if l.startswith(b"HTTP/1.")]
    ok = closed and statuses and all(s in (b"400", b"413") for s in statuses) and \
        b"\r\n\r\nok\n" not in stream and b" 200 " not in stream
    check(ok, f"{what}: 400 or 413 ({statuses}), closed, nothing behind it answered")


# ---- Content-Length together with Transfer-Encoding ---------------------------------------

def cl_te_bodies(hidden):
    """(label, CL value, body): CL.TE, the hidden request after the chunked
    body's end, inside the CL; TE.CL, the hidden request inside a chunk, after
    a short CL."""
    cl_te = b"0\r\n\r\n" + hidden
    chunk = b"%x\r\n" % len(hidden) + hidden + b"\r\n0\r\n\r\n"
    return [("CL.TE", len(cl_te), cl_te), ("TE.CL", 4, chunk)]


for cl_name in (b"Content-Length", b"content-length", b"CONTENT-LENGTH"):
    for te_name in (b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING"):
        for te_value in (b"chunked", b"Chunked", b"CHUNKED"):
            for hidden_name, hidden in HIDDEN:
                for label, n, body in cl_te_bodies(hidden):
                    for order in ("CL first", "TE first"):
                        cl = cl_name + b": %d" % n
                        te = te_name + b": " + te_value
                        hs = [b"Host: kms", b"Content-Type: application/protobuf",
                              b"Authorization: " + BROKER.encode()]
                        hs += [cl, te] if order == "CL first" else [te, cl]
                        refused(req(hs, body),
                                f"{label} {cl_name.decode()} + {te_name.decode()}: "
                                f"{te_value.decode()} ({order}) hiding {hidden_name}",
                                "both Content-Length and Transfer-Encoding")

# The same on an unknown route and on an operational endpoint: refused
# before routing, not audited (no operation), still closed.
for target, method in (("/twirp/custos.v1.KeyService/Nope", "POST"), ("/livez", "GET"),
                       ("/metrics", "GET")):
    for label, n, body in cl_te_bodies(LIVEZ):
        refused(req([b"Host: kms", b"Content-Length: %d" % n, b"Transfer-Encoding: chunked"],
                    body, target=target, method=method),
                f"{label} on {method} {target} hiding GET /livez",
                "both Content-Length and Transfer-Encoding", routed=False)

# Transfer-Encoding with a Content-Length that libmicrohttpd itself cannot
# parse, or with a second, folded or misspelt Transfer-Encoding.
for cl in (b"Content-Length: 5", b"Content-Length: 0"):
    refused(req([b"Host: kms", b"Content-Type: application/protobuf", cl,
                 b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
                b"0\r\n\r\n" + LIVEZ),
            f"{cl.decode()} + two Transfer-Encoding: chunked hiding GET /livez")

# ---- Transfer-Encoding other than exactly "chunked" ----------------------------------------

for te in (b"chunked ", b"chunked\t", b"xchunked", b"chunkedx", b"chunk", b"gzip, chunked",
           b"chunked, gzip", b"chunked,chunked", b"chunked;q=1", b"chunked ;q=1", b"identity",
           b"gzip", b"deflate", b",chunked", b"chunked,", b"", b"\"chunked\"", b"chunked\x0b",
           b"ch\xc3\xbcnked"):
    for hidden_name, hidden in HIDDEN:
        refused(req([b"Host: kms", b"Content-Type: application/protobuf",
                     b"Authorization: " + BROKER.encode(), b"Transfer-Encoding: " + te],
                    b"0\r\n\r\n" + hidden),
                f"Transfer-Encoding: {te!r} hiding {hidden_name}")
for a, b in ((b"gzip", b"chunked"), (b"chunked", b"chunked"), (b"chunked", b"identity"),
             (b"chunked", b"Chunked")):
    refused(req([b"Host: kms", b"Content-Type: application/protobuf",
                 b"Transfer-Encoding: " + a, b"transfer-encoding: " + b], b"0\r\n\r\n" + LIVEZ),
            f"two Transfer-Encoding headers ({a.decode()}, {b.decode()}) hiding GET /livez")
refused(req([b"Host: kms", b"Content-Type: application/protobuf", b"Transfer-Encoding: chunked"],
            b"0\r\n\r\n" + LIVEZ, version="HTTP/1.0"),
        "Transfer-Encoding: chunked in an HTTP/1.0 request hiding GET /livez")
# "Transfer-Encoding : chunked": libmicrohttpd reads the name with its
# space and would frame by Content-Length; a lenient proxy reads chunked.
for n, body in ((len(b"0\r\n\r\n" + LIVEZ), b"0\r\n\r\n" + LIVEZ), (0, b"0\r\n\r\n" + LIVEZ)):
    refused(req([b"Host: kms", b"Content-Type: application/protobuf",
                 b"Transfer-Encoding : chunked", b"Content-Length: %d" % n], body),
            f"'Transfer-Encoding : chunked' (space before the colon) + Content-Length: {n}")
refused(req([b"Host: kms", b"Content-Type: application/protobuf", b"Content-Length: 0",
             b"Transfer-Encoding\t: chunked"], b"0\r\n\r\n" + LIVEZ),
        "'Transfer-Encoding<TAB>: chunked' + Content-Length: 0")

# Content-Length spellings: libmicrohttpd refuses those it cannot parse
# before kmsd sees them; kmsd's own check refuses the rest.
for cl in (b"+5", b"-5", b"5,5", b"5, 5", b"0x5", b"5 5", b"99999999999999999999", b"5a"):
    refused_early(req([b"Host: kms", b"Content-Type: application/protobuf",
                       b"Content-Length: " + cl], b"12345" + LIVEZ),
                  f"Content-Length: {cl.decode()} hiding GET /livez")
refused_early(req([b"Host: kms", b"Content-Type: application/protobuf", b"Content-Length: 5 ",
                   b"Authorization: " + BROKER.encode()], b"12345" + LIVEZ),
              "Content-Length with a trailing space hiding GET /livez")

# ---- repeated headers ----------------------------------------------------------------------

BOGUS = b"Bearer ck_not_a_key_of_anyone_at_all"
for first, second, what in ((BROKER.encode(), BOGUS, "valid then bogus"),
                            (BOGUS, BROKER.encode(), "bogus then valid"),
                            (BROKER.encode(), BROKER.encode(), "the same twice")):
    for name2 in (b"Authorization", b"authorization"):
        refused(req([b"Host: kms", b"Content-Type: application/protobuf",
                     b"Authorization: " + first, name2 + b": " + second,
                     b"Content-Length: %d" % len(BODY)], BODY + LIVEZ),
                f"two Authorization headers, {what} ({name2.decode()})",
                "more than one Authorization header")
for name, v1, v2 in ((b"Content-Type", b"application/protobuf", b"application/protobuf"),
                     (b"Content-Type", b"application/protobuf", b"text/plain"),
                     (b"X-Correlation-Id", b"corr-a", b"corr-b"),
                     (b"X-Correlation-Id", b"corr-a", b"corr-a"),
                     (b"Host", b"kms", b"other"),
                     (b"Content-Length", str(len(BODY)).encode(), b"0")):
    hs = [b"Authorization: " + BROKER.encode()]
    if name != b"Host":
        hs.append(b"Host: kms")
    if name != b"Content-Type":
        hs.append(b"Content-Type: application/protobuf")
    if name != b"Content-Length":
        hs.append(b"Content-Length: %d" % len(BODY))
    hs += [name + b": " + v1, name.lower() + b": " + v2]
    refused(req(hs, BODY + LIVEZ), f"two {name.decode()} headers ({v1.decode()}, {v2.decode()})",
            f"more than one {name.decode()} header")

# ---- NUL and control bytes inside each header; folds; bare LF -----------------------------

def with_header(name, value):
    """An Encrypt request whose `name` header has `value` (others normal)."""
    base = {b"Host": b"kms", b"Content-Type": b"application/protobuf",
            b"Authorization": BROKER.encode(), b"Content-Length": str(len(BODY)).encode(),
            b"X-Correlation-Id": b"corr-ctl", b"X-Other": b"other"}
    base[name] = value
    return req([k + b": " + v for k, v in base.items()], BODY + LIVEZ)


for name in (b"Host", b"Authorization", b"Content-Type", b"Content-Length", b"X-Correlation-Id",
             b"X-Other"):
    good = {b"Host": b"kms", b"Authorization": BROKER.encode(),
            b"Content-Type": b"application/protobuf",
            b"Content-Length": str(len(BODY)).encode(), b"X-Correlation-Id": b"corr-ctl",
            b"X-Other": b"other"}[name]
    for byte in (b"\x00", b"\r", b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1b", b"\x1f", b"\x7f"):
        for label, value in (("inside", good + byte + b"junk"), ("at the end", good + byte)):
            if byte == b"\r" and label == "at the end":
                value = good + b"\r" + b"\r"  # a lone CR before the CRLF
            # libmicrohttpd parses Content-Length itself (up to a NUL):
            # other bytes there it refuses before kmsd sees the request.
            check_fn = refused_early if name == b"Content-Length" and byte != b"\x00" else refused
            check_fn(with_header(name, value), f"{byte!r} {label} of {name.decode()}")
    # A NUL followed by more NULs, and a NUL before the line's CRLF.
    refused(with_header(name, good + b"\x00\x00\x00"), f"three NULs at the end of {name.decode()}")
# The credential itself: Bearer <key>\0junk must not authenticate as <key>.
refused(with_header(b"Authorization", BROKER.encode() + b"\x00junk"),
        "Bearer <valid key>\\0junk", "NUL")
# A bare LF inside a value is a line end to libmicrohttpd: a header the
# proxy sees as part of a value would reach kmsd.
for inject in (b"Transfer-Encoding: chunked", b"X-Injected: 1", b"Authorization: " + BOGUS):
    refused(with_header(b"X-Other", b"a\n" + inject), f"bare LF injecting {inject[:30]!r}")
refused(req([b"Host: kms", b"Content-Type: application/protobuf",
             b"Authorization: " + BROKER.encode(),
             b"Content-Length: %d\n" % len(BODY)], BODY + LIVEZ),
        "the last header line ended by a bare LF")
# obs-fold: libmicrohttpd 0.9.75 glues the folded line onto the header NAME.
for fold_of, cont in ((b"X-Other: a", b" b"), (b"X-Other: a", b"\tTransfer-Encoding: chunked"),
                      (b"Transfer-Encoding: gzip", b" chunked"), (b"Transfer-Encoding:", b" chunked"),
                      (b"Authorization: " + BROKER.encode(), b" junk"),
                      (b"Content-Length: %d" % len(BODY), b" 0")):
    hs = [b"Host: kms", b"Content-Type: application/protobuf"]
    if not fold_of.startswith(b"Authorization"):
        hs.append(b"Authorization: " + BROKER.encode())
    if not fold_of.startswith(b"Content-Length"):
        hs.append(b"Content-Length: %d" % len(BODY))
    refused(req(hs + [fold_of, cont], BODY + LIVEZ), f"obs-fold: {fold_of[:24]!r} + {cont!r}",
            "obs-fold")
    refused(req(hs[:1] + [fold_of, cont] + hs[1:], BODY + LIVEZ),
            f"obs-fold not last: {fold_of[:24]!r} + {cont!r}", "obs-fold")
# A NUL in the request target: libmicrohttpd routes by what precedes it.
refused(req([b"Host: kms", b"Content-Type: application/protobuf",
             b"Authorization: " + BROKER.encode(), b"Content-Length: %d" % len(BODY)],
            BODY + LIVEZ, target=ROUTE + "\x00/../Decrypt"),
        "a NUL in the request target", "request target")
refused(req([b"Host: kms"], b"", target="/livez?probe=1", method="GET"),
        "a query string (kmsd reads none)", "request target", routed=False)

# A NUL in X-Correlation-Id is refused and the audit event does not carry
# the part before it.
TRUNC = b"corr-nul-visible-part"
refused(with_header(b"X-Correlation-Id", TRUNC + b"\x00hidden"), "X-Correlation-Id with a NUL",
        "NUL")

# ---- the legitimate shapes still work --------------------------------------------------------

def served(data, n, what, keep_open=True):
    """n responses, all 200 with an EncryptResponse; then the connection is
    still usable (a GET /livez sent after them on it is answered), or, with
    keep_open False, closed by the server with nothing more."""
    s = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    s.sendall(data)
    stream = b""
    rs = []
    while len(rs) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        stream += chunk
        rs, _ = responses(stream)
    after = b""
    try:
        if keep_open:
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: kms\r\nConnection: close\r\n\r\n")
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            after += chunk
    except OSError:
        pass
    s.close()
    _, extra = responses(stream)
    after = extra + after
    then = (after.startswith(b"HTTP/1.1 200") and after.endswith(b"\r\n\r\nok\n")) if keep_open \
        else after == b""
    ok = len(rs) == n and all(r[0] == 200 for r in rs) and then
    for r in rs:
        try:
            ok = ok and pb.EncryptResponse.FromString(r[2]).ciphertext != b""
        except Exception:
            ok = False
    check(ok, f"{what}: {n} x 200, then the connection "
              f"{'still serves a request' if keep_open else 'is closed'} "
              f"(got {[r[0] for r in rs]}, then {after[:20]!r})")


def chunked(body, sizes):
    out, i = b"", 0
    for n in sizes:
        out += b"%x\r\n" % n + body[i:i + n] + b"\r\n"
        i += n
    return out + b"%x\r\n" % (len(body) - i) + body[i:] + b"\r\n0\r\n\r\n"


# Unique per run: the test runs twice against one audit log.
LEGIT_CORR = f"corr-legit-{os.getpid()}"
CHUNKED = req([b"Host: kms", b"Content-Type: application/protobuf",
               b"Authorization: " + BROKER.encode(), b"Transfer-Encoding: chunked"],
              chunked(BODY, [5, 7]))
served(CHUNKED, 1, "Transfer-Encoding: chunked alone, body in three chunks")
served(CHUNKED.replace(b"Transfer-Encoding: chunked", b"transfer-encoding: CHUNKED"), 1,
       "transfer-encoding: CHUNKED (case-insensitive)")
served(CHUNKED.replace(b"Transfer-Encoding: chunked", b"Transfer-Encoding:  \tchunked"), 1,
       "Transfer-Encoding with optional whitespace before the value")
served(CHUNKED + ENCRYPT, 2, "a chunked request then a Content-Length one, pipelined")
served(ENCRYPT * 3, 3, "three Content-Length requests pipelined on one connection")
served(ENCRYPT + CHUNKED + ENCRYPT, 3, "Content-Length, chunked, Content-Length pipelined")
served(req([b"host: kms", b"content-type: application/protobuf",
            b"authorization: " + BROKER.encode(), b"content-length: %d" % len(BODY),
            b"X-Other: a\tb \t", b"X-Empty:", b"X-Correlation-Id:\t" + LEGIT_CORR.encode()], BODY), 1,
       "lower-case names, HTAB inside a value, an empty value, optional whitespace")
served(req([b"Host: kms", b"Content-Type: application/protobuf",
            b"Authorization: " + BROKER.encode(), b"Content-Length: %d" % len(BODY),
            b"Connection: close"], BODY), 1, "Connection: close is honoured", keep_open=False)
served(req([b"Host: kms", b"Content-Type: application/protobuf",
            b"Authorization: " + BROKER.encode(), b"Content-Length: %d" % len(BODY),
            b"Accept: a", b"Accept: b", b"X-Forwarded-For: 10.0.0.1", b"X-Forwarded-For: 10.0.0.2"],
           BODY), 1, "repeatable headers (Accept, X-Forwarded-For) may repeat")
# kmsd is still answering on a fresh connection.
stream, _ = exchange(b"GET /livez HTTP/1.1\r\nHost: kms\r\nConnection: close\r\n\r\n")
check(stream.startswith(b"HTTP/1.1 200") and stream.endswith(b"ok\n"), "kmsd still answers /livez")

# ---- the audit log: one event per routed refusal, nothing truncated -----------------------

AUDITOR = "Bearer " + api_key("auditor")


def export(region):
    events, start = [], 0
    while True:
        m = call("AuditService", "ExportAuditLog",
                 apb.ExportAuditLogRequest(region=region, start=start, count=10000), AUDITOR,
                 apb.ExportAuditLogResponse)
        for e in m.entries:
            ev = apb.AuditEvent()
            ev.ParseFromString(e.event)
            events.append(ev)
        start += len(m.entries)
        if not m.entries or start >= m.head.tree_size:
            return events


# Events are durable before the answer, but the export serves up to the
# last signed head: wait for one past our refusals (the dev config signs
# every CUSTOS_DEV_HEAD_MS).
import time  # noqa: E402
want = {rid for rid, _ in ROUTED}
deadline = time.monotonic() + 60
while True:
    evs = export("eu-west") + export("us-east")
    by_rid = {}
    for ev in evs:
        by_rid.setdefault(ev.request_id, []).append(ev)
    # The legitimate call came last: wait for its event too.
    legit = any(ev.correlation_id == LEGIT_CORR for ev in evs)
    if (want <= set(by_rid) and legit) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
bad = [what for rid, what in ROUTED
       if len(by_rid.get(rid, [])) != 1 or by_rid[rid][0].operation != "Encrypt" or
       by_rid[rid][0].outcome != "invalid_argument" or by_rid[rid][0].correlation_id != ""]
check(ROUTED and not bad,
      f"each of the {len(ROUTED)} refusals on the Encrypt route is one audit event "
      f"(Encrypt, invalid_argument, the client's request id, no correlation id) {bad[:3]}")
check(not any(ev.correlation_id.startswith(TRUNC.decode()) for ev in evs),
      "no audit event carries the part of a NUL-cut X-Correlation-Id")
check(any(ev.correlation_id == LEGIT_CORR and ev.outcome == "ok" for ev in evs),
      "a legitimate X-Correlation-Id is audited whole")

print(f"{count - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

"""Helpers for the audit end-to-end tests: an HTTP client, a full export of a
region's log, and an RFC 9162 root computed independently of kmsd's C code."""
import hashlib
import http.client
import json

import audit_pb2 as apb
import key_pb2 as kpb  # noqa: F401  (re-exported for the tests)


class Client:
    def __init__(self, port, key_file):
        self.port = port
        self.key = open(key_file).read().strip()
        self.conn = None

    def call(self, service, method, req, resp_cls):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request("POST", f"/twirp/custos.v1.{service}/{method}",
                                  req.SerializeToString(),
                                  {"Content-Type": "application/protobuf",
                                   "Authorization": "Bearer " + self.key})
                r = self.conn.getresponse()
                data = r.read()
                rid = r.getheader("X-Request-Id")
                if r.status == 200:
                    m = resp_cls()
                    m.ParseFromString(data)
                    return 200, m, rid
                return r.status, json.loads(data), rid
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")


def mth(hashes):
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(hashes[:k]) + mth(hashes[k:])).digest()


def leaf_hash(b):
    return hashlib.sha256(b"\x00" + b).digest()


def export_all(client, region):
    """All entries up to the current signed head: (head, [AuditEvent], [raw bytes])."""
    events, raw, start, head = [], [], 0, None
    while True:
        s, m, _ = client.call("AuditService", "ExportAuditLog",
                              apb.ExportAuditLogRequest(region=region, start=start, count=10000),
                              apb.ExportAuditLogResponse)
        if s != 200:
            raise RuntimeError(f"export failed: {s} {m}")
        # Exporting is itself audited, so later pages may come with a newer
        # head; collect up to the first page's head, which the caller checks.
        head = m.head if head is None else head
        for e in m.entries:
            if e.seq >= head.tree_size:
                break
            ev = apb.AuditEvent()
            ev.ParseFromString(e.event)
            events.append(ev)
            raw.append(e.event)
        start += len(m.entries)
        if start >= head.tree_size or not m.entries:
            return head, events, raw

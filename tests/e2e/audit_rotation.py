"""See test_audit_rotation.sh. Usage: audit_rotation.py DIR PORT"""
import hashlib
import struct
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit_lib import Client, kpb
import audit_pb2 as apb

DIR, PORT = sys.argv[1], int(sys.argv[2])
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1


def signed_bytes(h):
    r = h.region.encode()
    return (b"CUSTOS-STH-V1" + bytes([len(r)]) + r + struct.pack(">QQ", h.tree_size, h.timestamp_ms)
            + h.root_hash)


auditor = Client(PORT, f"{DIR}/credentials/auditor.key")
admin = Client(PORT, f"{DIR}/credentials/demo-admin.key")
heads = []
end = time.time() + 3.5
while time.time() < end:
    admin.call("KeyService", "ListKeys", kpb.ListKeysRequest(), kpb.ListKeysResponse)
    s, m, _ = auditor.call("AuditService", "GetSignedTreeHead",
                           apb.GetSignedTreeHeadRequest(region="eu-west"),
                           apb.GetSignedTreeHeadResponse)
    if s == 200 and (not heads or heads[-1].tree_size != m.head.tree_size):
        heads.append(m.head)
    time.sleep(0.15)
s, keys, _ = auditor.call("AuditService", "GetAuditKeys", apb.GetAuditKeysRequest(region="eu-west"),
                          apb.GetAuditKeysResponse)
check(s == 200 and len(keys.keys) >= 3, f"keys rotated: {len(keys.keys)} audit keys listed")
check(all(k.not_after_ms == keys.keys[i + 1].not_before_ms for i, k in enumerate(keys.keys[:-1]))
      and keys.keys[-1].not_after_ms == 0,
      "each old key ends where its successor starts; the current key has no end")
by_id = {k.key_id: serialization.load_pem_public_key(k.public_key_pem.encode()) for k in keys.keys}
used = {h.key_id for h in heads}
check(len(used) >= 2, f"heads were signed by {len(used)} different keys over 3.5 s")
ok = True
for h in heads:
    key = by_id.get(h.key_id)
    meta = [k for k in keys.keys if k.key_id == h.key_id]
    try:
        key.verify(h.signature, signed_bytes(h), ec.ECDSA(hashes.SHA256()))
    except Exception:
        ok = False
    if meta and not (meta[0].not_before_ms <= h.timestamp_ms and
                     (meta[0].not_after_ms == 0 or h.timestamp_ms <= meta[0].not_after_ms + 1000)):
        ok = False
check(ok and len(heads) >= 5, f"all {len(heads)} heads verify with the key they name, within its validity")
# Residency of the audit trail: an auditor bound to eu-west reads eu-west only.
eu = Client(PORT, f"{DIR}/credentials/auditor-eu.key")
s1, _, _ = eu.call("AuditService", "GetSignedTreeHead", apb.GetSignedTreeHeadRequest(region="eu-west"),
                   apb.GetSignedTreeHeadResponse)
s2, m2, _ = eu.call("AuditService", "GetSignedTreeHead",
                    apb.GetSignedTreeHeadRequest(region="us-east"), apb.GetSignedTreeHeadResponse)
s3, m3, _ = eu.call("AuditService", "ExportAuditLog", apb.ExportAuditLogRequest(region="us-east"),
                    apb.ExportAuditLogResponse)
check(s1 == 200 and s2 == 403 and s3 == 403 and m2.get("code") == "permission_denied",
      "an auditor bound to eu-west reads eu-west and is refused us-east")
s4, k4, _ = eu.call("AuditService", "GetAuditKeys", apb.GetAuditKeysRequest(),
                    apb.GetAuditKeysResponse)
s5, k5, _ = auditor.call("AuditService", "GetAuditKeys", apb.GetAuditKeysRequest(),
                         apb.GetAuditKeysResponse)
check(s4 == 200 and {k.region for k in k4.keys} == {"eu-west"} and
      {k.region for k in k5.keys} == {"eu-west", "us-east"},
      "listing audit keys of every region shows only the regions the auditor may read")
sys.exit(1 if failures else 0)

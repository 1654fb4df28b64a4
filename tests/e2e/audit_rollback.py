"""See test_audit_rollback.sh. Usage: audit_rollback.py DIR PORT KNOWN_SIZE

Against a log that was rolled back below KNOWN_SIZE (a head the auditor
holds): the API's alarm is failed_precondition (412), whatever else the
request says, from ExportAuditLog and GetSignedTreeHead alike."""
import sys

from audit_lib import Client
import audit_pb2 as apb

DIR, PORT, KNOWN = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
failures = 0


def check(cond, what):
    global failures
    print(f"{'ok' if cond else 'not ok'} - {what}", flush=True)
    failures += 0 if cond else 1


def alarm(s, m):
    return (s == 412 and m.get("code") == "failed_precondition" and
            "shorter than a head you already hold" in m.get("msg", "") and
            f"yours {KNOWN}" in m.get("msg", ""))


a = Client(PORT, f"{DIR}/credentials/auditor.key")
s, m, _ = a.call("AuditService", "GetSignedTreeHead", apb.GetSignedTreeHeadRequest(region="eu-west"),
                 apb.GetSignedTreeHeadResponse)
size = m.head.tree_size if s == 200 else -1
check(0 < size < KNOWN, f"the rolled-back log's head ({size}) is smaller than the one held ({KNOWN})")
# kmsctl --known-state starts where the state verified: beyond this tree.
s, m, _ = a.call("AuditService", "ExportAuditLog",
                 apb.ExportAuditLogRequest(region="eu-west", start=KNOWN, known_tree_size=KNOWN),
                 apb.ExportAuditLogResponse)
check(alarm(s, m), f"ExportAuditLog start={KNOWN} known_tree_size={KNOWN}: 412 failed_precondition, "
      f"the log is shorter than a head you hold, not invalid_argument ({s} {m})")
s, m, _ = a.call("AuditService", "ExportAuditLog",
                 apb.ExportAuditLogRequest(region="eu-west", start=0, known_tree_size=KNOWN),
                 apb.ExportAuditLogResponse)
check(alarm(s, m), f"ExportAuditLog start=0 known_tree_size={KNOWN}: 412 failed_precondition ({s} {m})")
s, m, _ = a.call("AuditService", "GetSignedTreeHead",
                 apb.GetSignedTreeHeadRequest(region="eu-west", known_tree_size=KNOWN),
                 apb.GetSignedTreeHeadResponse)
check(alarm(s, m), f"GetSignedTreeHead known_tree_size={KNOWN}: 412 failed_precondition ({s} {m})")
s, m, _ = a.call("AuditService", "GetSignedTreeHead",
                 apb.GetSignedTreeHeadRequest(region="eu-west", known_tree_size=size),
                 apb.GetSignedTreeHeadResponse)
check(s == 200 and m.head.tree_size >= size,
      f"GetSignedTreeHead with a known size the log still has: 200 ({s})")
# Without a known head, a start beyond the tree is still a usage error.
s, m, _ = a.call("AuditService", "ExportAuditLog",
                 apb.ExportAuditLogRequest(region="eu-west", start=KNOWN + 1000),
                 apb.ExportAuditLogResponse)
check(s == 400 and m.get("code") == "invalid_argument",
      f"ExportAuditLog start beyond the tree, no known head: 400 invalid_argument ({s} {m})")
sys.exit(1 if failures else 0)

"""Count the Sign events of one key in eu-west's audit log (test_provider.sh).

provider_audit.py DIR PORT KEY_ID  ->  prints the number
"""
import sys

from audit_lib import Client, export_all

d, port, key_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
auditor = Client(port, f"{d}/credentials/auditor.key")
_, events, _ = export_all(auditor, "eu-west")
print(sum(1 for e in events if e.operation == "Sign" and e.key_id == key_id))

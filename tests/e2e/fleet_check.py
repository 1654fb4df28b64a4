#!/usr/bin/python3
"""After load on a fleet (fleet_load.py): is every acknowledged operation
there, and audited exactly once? (tests/e2e/test_fleet_*.sh)

    fleet_check.py ADDR BROKER_KEY ADMIN_KEY EVENTS LOAD...

EVENTS: `kmsctl audit events` of the region's export (one JSON per line).
LOAD: fleet_load.py outputs. Asserts, printing one summary line:
  - the events' seq are 0..n-1 and no request id appears twice;
  - every acknowledged (HTTP 200) request's id is in the events exactly
    once, with the operation it had;
  - every acknowledged CreateKey's key is served (DescribeKey through ADDR);
  - every acknowledged Encrypt's ciphertext decrypts through ADDR to its
    plaintext (with its encryption context).
Exits 1 with the first problems on stderr.
"""
import collections
import http.client
import json
import sys
import threading


def main():
    addr, broker_f, admin_f, events_f = sys.argv[1:5]
    loads = sys.argv[5:]
    host, port = addr.split("//", 1)[1].rsplit(":", 1)
    broker = open(broker_f).read().strip()
    admin = open(admin_f).read().strip()
    evs = [json.loads(l) for l in open(events_f) if l.strip()]
    recs = [json.loads(l) for f in loads for l in open(f) if l.strip()]
    bad = []
    seqs = [int(e.get("seq", -1)) for e in evs]
    if seqs != list(range(len(evs))):
        bad.append("event seqs are not 0..n-1")
    rids = collections.Counter(e.get("request_id", "") for e in evs if e.get("request_id"))
    dup = [r for r, c in rids.items() if c > 1]
    if dup:
        bad.append(f"{len(dup)} request ids audited more than once, e.g. {dup[:3]}")
    op_of = {e.get("request_id"): e.get("operation") for e in evs}
    acked = [r for r in recs if r["status"] == 200]
    if any(not r["rid"] for r in acked):
        bad.append("an acknowledged answer without X-Request-Id")
    missing = [r["rid"] for r in acked if rids[r["rid"]] != 1]
    if missing:
        bad.append(f"{len(missing)} acknowledged requests not audited exactly once, e.g. {missing[:3]}")
    wrong = [r["rid"] for r in acked if rids[r["rid"]] == 1 and op_of[r["rid"]] != r["op"]]
    if wrong:
        bad.append(f"{len(wrong)} acknowledged requests audited as another operation: {wrong[:3]}")

    # Served afterwards: through the balancer, a few persistent connections.
    creates = [r for r in acked if r["op"] == "CreateKey"]
    encs = [r for r in acked if r["op"] == "Encrypt"]
    lock = threading.Lock()
    failures = []

    def call(conn, method, tok, body):
        conn.request("POST", "/twirp/custos.v1.KeyService/" + method, json.dumps(body).encode(),
                     {"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")

    def work(items):
        conn = http.client.HTTPConnection(host, int(port), timeout=15)
        for r in items:
            try:
                if r["op"] == "CreateKey":
                    st, j = call(conn, "DescribeKey", admin, {"keyId": r["key"]})
                    ok = st == 200 and j.get("key", {}).get("keyId", j.get("key", {}).get("key_id")) == r["key"]
                else:
                    st, j = call(conn, "Decrypt", broker,
                                 {"ciphertext": r["ct"], "encryptionContext": {"fleet": str(r["w"])}})
                    ok = st == 200 and j.get("plaintext") == r["pt"]
            except (OSError, http.client.HTTPException, ValueError) as e:
                ok, st = False, type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=15)
            if not ok:
                with lock:
                    failures.append(f"{r['op']} {r['rid']}: {st}")
        conn.close()

    items = creates + encs
    ts = [threading.Thread(target=work, args=(items[i::4],)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if failures:
        bad.append(f"{len(failures)} acknowledged operations not served afterwards, e.g. {failures[:3]}")
    refused = collections.Counter((r["status"], r["code"]) for r in recs if r["status"] != 200)
    print(f"{len(recs)} answers: {len(acked)} acknowledged ({len(encs)} Encrypt, {len(creates)} CreateKey), "
          f"each audited exactly once among {len(evs)} events, every key served, every ciphertext "
          f"decrypts; refused/failed: {dict(refused) or 'none'}")
    if bad:
        for b in bad:
            print(b, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""See test_recovery_limit.sh.

  recovery_limit.py DIR PORT race ROUNDS N   ROUNDS times: a fresh bank key, N concurrent
                                             RequestRecovery on it
  recovery_limit.py DIR PORT pair TIMES      TIMES times: a fresh key, 7 requests one after
                                             another, then 2 at once
"""
import http.client
import json
import sys
import threading

from audit_lib import Client, kpb
import escrow_pb2 as epb

LIMIT = 8  # open recoveries per key (escrow.proto)
failures = 0


def check(cond, what):
    global failures
    print(f"{'ok' if cond else 'not ok'} - {what}", flush=True)
    failures += 0 if cond else 1


def request_body(key_id, i):
    return epb.RequestRecoveryRequest(
        key_id=key_id, mode=epb.EXPORT_WRAPPED, recipient="bank-legal-eu",
        justification=epb.ACCIDENTAL_DELETION,
        justification_text=f"concurrency test request {i}",
        case_reference=f"RACE-{i}").SerializeToString()


def post(port, key, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("POST", "/twirp/custos.v1.EscrowService/RequestRecovery", body,
                  {"Content-Type": "application/protobuf", "Authorization": "Bearer " + key})
        r = c.getresponse()
        data = r.read()
        return r.status, (None if r.status == 200 else json.loads(data))
    finally:
        c.close()


def concurrent(port, key_id, officers, n, first=0):
    """n RequestRecovery released at once; [(status, error body)]."""
    out = [None] * n
    bodies = [request_body(key_id, first + i) for i in range(n)]
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        try:
            out[i] = post(port, officers[i % len(officers)], bodies[i])
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            out[i] = (0, {"code": repr(e)})

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def open_recoveries(admin, key_id):
    s, m, _ = admin.call("EscrowService", "ListRecoveries",
                         epb.ListRecoveriesRequest(key_id=key_id, open_only=True),
                         epb.ListRecoveriesResponse)
    assert s == 200, (s, m)
    return len(m.recoveries)


def new_key(admin):
    s, m, _ = admin.call("KeyService", "CreateKey",
                         kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                              usage=kpb.ENCRYPT_DECRYPT),
                         kpb.CreateKeyResponse)
    assert s == 200, (s, m)
    return m.key.key_id


def exhausted(res):
    s, err = res
    return s == 429 and err.get("code") == "resource_exhausted" and \
        f"at most {LIMIT}" in err.get("msg", "")


def main():
    d, port, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    admin = Client(port, f"{d}/credentials/bank-admin.key")
    officers = [open(f"{d}/credentials/bank-officer-{i}.key").read().strip() for i in (1, 2, 3)]
    if cmd == "race":
        rounds, n = int(sys.argv[4]), int(sys.argv[5])
        for r in range(rounds):
            key_id = new_key(admin)
            res = concurrent(port, key_id, officers, n)
            ok = sum(1 for s, _ in res if s == 200)
            refused = sum(1 for x in res if exhausted(x))
            other = sorted({(s, (e or {}).get("code")) for s, e in res
                            if s != 200 and not exhausted((s, e))})
            check(ok == LIMIT and refused == n - LIMIT,
                  f"round {r + 1}: {n} concurrent RequestRecovery on one key: exactly {LIMIT} "
                  f"succeed, {n - LIMIT} get 429 resource_exhausted "
                  f"(got {ok} ok, {refused} refused, other {other})")
            got = open_recoveries(admin, key_id)
            check(got == LIMIT, f"round {r + 1}: ListRecoveries shows exactly {LIMIT} open "
                  f"({got})")
    elif cmd == "pair":
        for t in range(int(sys.argv[4])):
            key_id = new_key(admin)
            for i in range(LIMIT - 1):
                s, err = post(port, officers[i % 3], request_body(key_id, i))
                assert s == 200, (s, err)
            res = concurrent(port, key_id, officers, 2, LIMIT - 1)
            ok = sum(1 for s, _ in res if s == 200)
            check(ok == 1 and sum(1 for x in res if exhausted(x)) == 1,
                  f"pair {t + 1}: {LIMIT - 1} open, then 2 at once: one succeeds, one is "
                  f"refused ({res})")
            got = open_recoveries(admin, key_id)
            check(got == LIMIT, f"pair {t + 1}: then exactly {LIMIT} are open ({got})")
    return 1 if failures else 0


sys.exit(main())

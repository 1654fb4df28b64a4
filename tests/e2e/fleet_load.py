#!/usr/bin/python3
"""Load on a fleet, every answer recorded (tests/e2e/test_fleet_*.sh).

    fleet_load.py ADDR BROKER_KEY ADMIN_KEY KEY_ID OUT STOPFILE [options]

Workers send Twirp JSON requests to ADDR (the balancer) until STOPFILE
exists: Encrypt with the broker's key under KEY_ID, and now and then a
CreateKey with the admin's key (every --create-every-th request of a
worker). --keepalive workers keep one HTTP/1.1 connection (opened again
after an error); --fresh workers open a new connection per request. Each
answer is one JSON line in OUT, written as it arrives:

    {"w": worker, "t": ms since the epoch (sent), "dt": ms taken,
     "op": "Encrypt"|"CreateKey", "status": HTTP status (0: no answer),
     "code": Twirp code or "", "rid": X-Request-Id or "",
     "pt": plaintext (base64, Encrypt), "ct": ciphertext (200 Encrypt),
     "key": key id (200 CreateKey)}

A request without an answer (status 0) was perhaps acted on; it is never
an acknowledged operation. Credentials are read from files, never argv.
"""
import argparse
import base64
import http.client
import json
import os
import threading
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("broker_key")
    ap.add_argument("admin_key")
    ap.add_argument("key_id")
    ap.add_argument("out")
    ap.add_argument("stopfile")
    ap.add_argument("--keepalive", type=int, default=2)
    ap.add_argument("--fresh", type=int, default=2)
    ap.add_argument("--create-every", type=int, default=25)
    ap.add_argument("--pause-ms", type=float, default=10)
    ap.add_argument("--region", default="eu-west")
    a = ap.parse_args()
    host, port = a.addr.split("//", 1)[1].rsplit(":", 1)
    port = int(port)
    broker = open(a.broker_key).read().strip()
    admin = open(a.admin_key).read().strip()
    out = open(a.out, "a", buffering=1)
    lock = threading.Lock()

    def record(rec):
        with lock:
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def worker(w, keep):
        conn = None
        i = 0
        while not os.path.exists(a.stopfile):
            i += 1
            if a.create_every and i % a.create_every == 0:
                op, tok = "CreateKey", admin
                body = {"region": a.region, "spec": "AES_256", "usage": "ENCRYPT_DECRYPT"}
                pt = ""
            else:
                op, tok = "Encrypt", broker
                pt = base64.b64encode(f"fleet {w} {i} {time.time_ns()}".encode()).decode()
                body = {"keyId": a.key_id, "plaintext": pt,
                        "encryptionContext": {"fleet": str(w)}}
            data = json.dumps(body).encode()
            hdrs = {"Authorization": "Bearer " + tok, "Content-Type": "application/json"}
            if not keep:
                hdrs["Connection"] = "close"
            rec = {"w": w, "t": int(time.time() * 1000), "op": op, "status": 0,
                   "code": "", "rid": "", "pt": pt}
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=15)
                conn.request("POST", "/twirp/custos.v1.KeyService/" + op, data, hdrs)
                r = conn.getresponse()
                payload = r.read()
                rec["status"] = r.status
                rec["rid"] = r.getheader("X-Request-Id") or ""
                try:
                    j = json.loads(payload)
                except ValueError:
                    j = {}
                if r.status == 200 and op == "Encrypt":
                    rec["ct"] = j.get("ciphertext", "")
                elif r.status == 200:
                    k = j.get("key", {})
                    rec["key"] = k.get("keyId", k.get("key_id", ""))
                else:
                    rec["code"] = j.get("code", "")
                if not keep or r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                rec["code"] = "transport: " + type(e).__name__
                if conn is not None:
                    conn.close()
                conn = None
            rec["dt"] = round((time.monotonic() - t0) * 1000, 1)
            record(rec)
            if a.pause_ms:
                time.sleep(a.pause_ms / 1000)
        if conn is not None:
            conn.close()

    ts = [threading.Thread(target=worker, args=(w, w < a.keepalive), daemon=True)
          for w in range(a.keepalive + a.fresh)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    main()

"""Key creation, rotation and encryption under way while test_restore.sh
takes `kmsctl backup`, and the check after the restore.

restore_load.py load DIR PORT    create and rotate keys and encrypt under
                                 them from 3 threads until DIR/stop exists;
                                 append each acknowledged ciphertext with its
                                 plaintext and the acknowledgement time to
                                 DIR/acked.jsonl
restore_load.py check DIR PORT T every ciphertext acknowledged before unix
                                 time T (the backup's start) decrypts; print
                                 how many acknowledged after T decrypt too
"""
import http.client
import json
import os
import sys
import threading
import time

import key_pb2 as pb

MODE, DIR, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
KEYS = {w: open(f"{DIR}/credentials/{w}.key").read().strip() for w in ("demo-admin", "demo-broker")}
ACKED = f"{DIR}/acked.jsonl"


def call(method, req, resp_cls, who):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    c.request("POST", f"/twirp/custos.v1.KeyService/{method}", req.SerializeToString(),
              {"Content-Type": "application/protobuf", "Authorization": "Bearer " + KEYS[who]})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        return r.status, json.loads(data)
    return 200, resp_cls.FromString(data)


if MODE == "load":
    lock = threading.Lock()
    out = open(ACKED, "a")

    def worker(n):
        i = 0
        while not os.path.exists(f"{DIR}/stop"):
            i += 1
            s, m = call("CreateKey", pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256,
                                                         usage=pb.ENCRYPT_DECRYPT),
                        pb.CreateKeyResponse, "demo-admin")
            if s != 200:
                continue
            key = m.key.key_id
            for v in range(2):
                if v:
                    s, _ = call("RotateKey", pb.RotateKeyRequest(key_id=key),
                                pb.RotateKeyResponse, "demo-admin")
                    if s != 200:
                        break
                pt = f"{n}-{i}-{v}".encode()
                s, e = call("Encrypt", pb.EncryptRequest(key_id=key, plaintext=pt),
                            pb.EncryptResponse, "demo-broker")
                if s == 200:
                    with lock:
                        out.write(json.dumps({"t": time.time(), "ct": e.ciphertext.hex(),
                                              "pt": pt.decode()}) + "\n")
                        out.flush()

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    sys.exit(0)

T = float(sys.argv[4])
acked = [json.loads(line) for line in open(ACKED)]
bad, after_ok, after = [], 0, 0
for a in acked:
    s, d = call("Decrypt", pb.DecryptRequest(ciphertext=bytes.fromhex(a["ct"])),
                pb.DecryptResponse, "demo-broker")
    good = s == 200 and d.plaintext == a["pt"].encode()
    if a["t"] < T:
        if not good:
            bad.append((a["pt"], s))
    else:
        after += 1
        after_ok += good
before = len(acked) - after
print(f"{before} before the backup, {after} after it ({after_ok} of them decrypt: reattached)")
if bad or before == 0:
    print(f"not decrypting: {bad[:5]}", file=sys.stderr)
    sys.exit(1)

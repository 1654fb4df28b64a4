"""EncryptFields with 8 fields per call against 8 separate Encrypt calls, over
HTTP with wrk, against a kmsd started here, in one run.

Usage: bench_fields.py WORKDIR BUILD [--quick]      (run by bench_fields.sh)

A "message" is 8 metadata values of 16 bytes under a 2-pair context. Each
workload is one request body repeated by wrk -t2 -c32; messages/s is
requests/s for the FieldService calls and requests/s / 8 for KeyService's.
kmsd runs in production mode with the audit log on (one durable event per
request, as in service), then in dev mode with it off.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import http.client

WORK, BUILD = sys.argv[1], sys.argv[2]
QUICK = "--quick" in sys.argv
RUNS = 1 if QUICK else int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = 2 if QUICK else int(os.environ.get("BENCH_HTTP_SECONDS", "5"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
sys.path.insert(0, f"{WORK}/py")
import fields_pb2 as fpb  # noqa: E402
import key_pb2 as kpb  # noqa: E402

PORT = None
PROC = None
NAMES = ["to", "from", "rcs.session_id", "sent_at", "device", "thread", "subject", "x"]
CTX = {"tenant": "demo", "conversation": "c-1"}


def cred(p):
    return open(f"{WORK}/credentials/{p}.key").read().strip()


def write_config(name, mode, audit):
    c = json.load(open(f"{WORK}/kmsd.json"))
    c["listen"]["port"] = PORT
    c["mode"] = mode
    c["audit"] = {"enabled": audit, "dir": "audit", "head_every_events": 10000,
                  "head_every_ms": 1000}
    if mode == "production":
        c.pop("deletion", None)
    c.setdefault("limits", {})["max_connections"] = 1024
    # Every wrk connection comes from 127.0.0.1: BENCH_CONNECTIONS above the
    # per-address default (64) would be refused, not measured.
    c["limits"]["max_connections_per_ip"] = 0
    path = f"{WORK}/{name}.json"
    json.dump(c, open(path, "w"), indent=2)
    return path


def start(cfg):
    global PROC
    env = dict(os.environ, SOFTHSM2_CONF=f"{WORK}/hsm/softhsm2.conf", CUSTOS_LOG_LEVEL="warn")
    log = open(f"{WORK}/kmsd-bench-fields.log", "a")
    PROC = subprocess.Popen([f"{BUILD}/bin/kmsd", "--config", cfg], env=env, stdout=log,
                            stderr=log)
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=1)
            c.request("GET", "/")
            c.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("kmsd did not start; see kmsd-bench-fields.log")


def stop():
    global PROC
    if PROC:
        PROC.send_signal(signal.SIGTERM)
        PROC.wait(timeout=60)
        PROC = None


def call(service, method, req, resp_cls, who):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    c.request("POST", f"/twirp/custos.v1.{service}/{method}", req.SerializeToString(),
              {"Content-Type": "application/protobuf", "Authorization": "Bearer " + cred(who)})
    r = c.getresponse()
    data = r.read()
    assert r.status == 200, (method, r.status, data)
    return resp_cls.FromString(data)


def lua_for(name, body):
    path = f"{WORK}/{name}.bin"
    open(path, "wb").write(body)
    script = f"{WORK}/{name}.lua"
    with open(script, "w") as f:
        f.write(f'''local f = io.open("{path}", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/protobuf"
wrk.headers["Authorization"] = "Bearer {cred("demo-broker")}"
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, latency:percentile(50),
    latency:percentile(99), summary.duration))
end
''')
    return script


def wrk(path, script):
    out = subprocess.run(["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", "-s", script,
                          f"http://127.0.0.1:{PORT}{path}"], capture_output=True, text=True).stdout
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not m:
        raise RuntimeError(out)
    reqs, errs, p50, p99, dur = map(int, m.groups())
    return reqs / (dur / 1e6), errs, p50 / 1000, p99 / 1000


def measure(path, script):
    rs = sorted((wrk(path, script) for _ in range(RUNS)), key=lambda r: r[0])
    med = rs[len(rs) // 2]
    return med[0], rs[0][0], rs[-1][0], sum(r[1] for r in rs), med[2], med[3]


def workloads():
    aes = call("KeyService", "CreateKey",
               kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256, usage=kpb.ENCRYPT_DECRYPT),
               kpb.CreateKeyResponse, "demo-admin").key.key_id
    meta = call("KeyService", "CreateKey",
                kpb.CreateKeyRequest(region="eu-west", spec=kpb.METADATA_AES_HMAC,
                                     usage=kpb.METADATA_FIELDS),
                kpb.CreateKeyResponse, "demo-admin").key.key_id
    value = b"+1415555012" + b"3-abc"  # 16 bytes
    enc = call("KeyService", "Encrypt",
               kpb.EncryptRequest(key_id=aes, plaintext=value, encryption_context=CTX),
               kpb.EncryptResponse, "demo-broker")

    def fields(mode):
        return fpb.EncryptFieldsRequest(key_id=meta, encryption_context=CTX, fields=[
            fpb.PlaintextField(name=n, value=value, mode=mode) for n in NAMES])
    rnd = fields(fpb.FIELD_MODE_RANDOMIZED)
    ef = call("FieldService", "EncryptFields", rnd, fpb.EncryptFieldsResponse, "demo-broker")
    idx = fpb.EncryptFieldsRequest(key_id=meta, encryption_context=CTX, fields=[
        fpb.PlaintextField(name=n, value=value, mode=fpb.FIELD_MODE_RANDOMIZED,
                           index_length_bits=128 if i < 2 else 0) for i, n in enumerate(NAMES)])
    ks, fs = "/twirp/custos.v1.KeyService/", "/twirp/custos.v1.FieldService/"
    return [
        ("8 x Encrypt (16 B each)", ks + "Encrypt", 8,
         kpb.EncryptRequest(key_id=aes, plaintext=value, encryption_context=CTX)),
        ("EncryptFields 8 randomized", fs + "EncryptFields", 1, rnd),
        ("EncryptFields 8 deterministic", fs + "EncryptFields", 1,
         fields(fpb.FIELD_MODE_DETERMINISTIC)),
        ("EncryptFields 8 rnd + 2 indexes", fs + "EncryptFields", 1, idx),
        ("8 x Decrypt (16 B each)", ks + "Decrypt", 8,
         kpb.DecryptRequest(ciphertext=enc.ciphertext, encryption_context=CTX)),
        ("DecryptFields 8", fs + "DecryptFields", 1,
         fpb.DecryptFieldsRequest(key_id=meta, encryption_context=CTX, fields=ef.fields)),
    ]


def main():
    global PORT
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]
    s.close()
    tables, bad = [], 0
    for label, mode, audit in (("audit on, production", "production", True),
                               ("audit off, dev", "dev", False)):
        rows = []
        try:
            start(write_config(f"bench-fields-{mode}", mode, audit))
            for i, (name, path, calls, req) in enumerate(workloads()):
                rps, lo, hi, errs, p50, p99 = measure(path, lua_for(f"wl{i}", req.SerializeToString()))
                rows.append((name, rps, rps / calls, lo / calls, hi / calls, p50, p99, errs))
                bad += errs
        finally:
            stop()
        tables.append((label, rows))
    print(f"Metadata over HTTP/1.1 keep-alive, wrk -t2 -c{CONNS}, {RUNS} runs x {SECONDS} s; "
          "a message = 8 values of 16 B, 2-pair context")
    for label, rows in tables:
        base = {"enc": rows[0][2], "dec": rows[4][2]}
        print(f"\n{label}")
        print(f"{'workload':32} {'req/s':>8} {'msg/s':>8} {'msg/s min-max':>15} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'vs 8 calls':>10} {'errors':>6}")
        for name, rps, msgs, lo, hi, p50, p99, errs in rows:
            ref = base["dec"] if "Decrypt" in name else base["enc"]
            print(f"{name:32} {rps:8.0f} {msgs:8.0f} {f'{lo:.0f}-{hi:.0f}':>15} {p50:7.2f} "
                  f"{p99:7.2f} {msgs / ref:10.2f} {errs:6d}")
    print(f"\nerrors: {bad}")
    return 0 if bad == 0 else 1


sys.exit(main())

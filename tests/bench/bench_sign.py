"""Sign over HTTP (issue 16) against the raw C_Sign rate measured in the same
run by bench_sign_p11, with wrk against a kmsd started here (audit log on,
production mode, as bench_http.py's main rows).

Usage: bench_sign.py WORKDIR BUILD SIGN_P11_OUTPUT [--quick]

Each row: Sign of a 32-byte SHA-256 digest (message_type DIGEST, so the
row measures the service around the HSM call, not hashing) with an ECDSA
P-256 key and an RSA-3072 key (PSS), median req/s with min-max over the
runs, p50/p99 latency, and the ratio to the raw C_Sign rate at 2 threads
of the same key kind.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

WORK, BUILD, P11OUT = sys.argv[1], sys.argv[2], sys.argv[3]
QUICK = "--quick" in sys.argv
RUNS = 1 if QUICK else int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = 2 if QUICK else int(os.environ.get("BENCH_HTTP_SECONDS", "5"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
sys.path.insert(0, f"{WORK}/py")
import key_pb2 as kpb  # noqa: E402

PROC = None
PORT = None


def cred(p):
    return open(f"{WORK}/credentials/{p}.key").read().strip()


def raw_rates():
    """{(key, path, threads): median op/s} from bench_sign_p11's output."""
    out = {}
    for line in open(P11OUT):
        f = line.split()
        if len(f) >= 5 and f[0] == "sign":
            out[(f[1], f[2], int(f[3]))] = float(f[4])
    return out


def start():
    global PROC, PORT
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]
    s.close()
    c = json.load(open(f"{WORK}/kmsd.json"))
    c["listen"]["port"] = PORT
    c["mode"] = "production"
    c.pop("deletion", None)
    c["audit"] = {"enabled": True, "dir": "audit", "head_every_events": 10000,
                  "head_every_ms": 1000}
    c.setdefault("limits", {})["max_connections"] = 1024
    c["limits"]["max_connections_per_ip"] = 0
    cfg = f"{WORK}/bench-sign.json"
    json.dump(c, open(cfg, "w"), indent=2)
    env = dict(os.environ, SOFTHSM2_CONF=f"{WORK}/hsm/softhsm2.conf", CUSTOS_LOG_LEVEL="warn")
    log = open(f"{WORK}/kmsd-bench-sign.log", "a")
    PROC = subprocess.Popen([f"{BUILD}/bin/kmsd", "--config", cfg], env=env, stdout=log,
                            stderr=log)
    for _ in range(200):
        try:
            h = http.client.HTTPConnection("127.0.0.1", PORT, timeout=1)
            h.request("GET", "/")
            h.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("kmsd did not start; see kmsd-bench-sign.log")


def stop():
    global PROC
    if PROC:
        PROC.send_signal(signal.SIGTERM)
        PROC.wait(timeout=60)
        PROC = None


def call(method, req, resp_cls, who):
    h = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    h.request("POST", f"/twirp/custos.v1.KeyService/{method}", req.SerializeToString(),
              {"Content-Type": "application/protobuf", "Authorization": "Bearer " + cred(who)})
    r = h.getresponse()
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


def wrk(script):
    out = subprocess.run(["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", "-s", script,
                          f"http://127.0.0.1:{PORT}/twirp/custos.v1.KeyService/Sign"],
                         capture_output=True, text=True).stdout
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not m:
        raise RuntimeError(out)
    reqs, errs, p50, p99, dur = map(int, m.groups())
    return {"rps": reqs / (dur / 1e6), "errors": errs, "p50": p50 / 1000, "p99": p99 / 1000}


def main():
    raw = raw_rates()
    rows = []
    try:
        start()
        digest = bytes(range(32))
        for spec, alg, kind, label in (
                (kpb.EC_P256, kpb.ECDSA_SHA_256, "ecdsa-p256", "Sign ECDSA P-256 (audit on)"),
                (kpb.RSA_3072, kpb.RSASSA_PSS_SHA_256, "rsa3072-pss",
                 "Sign RSA-3072 PSS (audit on)")):
            key = call("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=spec,
                                                        usage=kpb.SIGN_VERIFY),
                       kpb.CreateKeyResponse, "demo-admin").key.key_id
            body = kpb.SignRequest(key_id=key, message=digest, message_type=kpb.DIGEST,
                                   algorithm=alg).SerializeToString()
            script = lua_for(f"sign-{kind}", body)
            rs = sorted((wrk(script) for _ in range(RUNS)), key=lambda r: r["rps"])
            med = rs[len(rs) // 2]
            base = raw.get((kind, "raw", 2), 0.0)
            rows.append((label, med["rps"], rs[0]["rps"], rs[-1]["rps"], med["p50"],
                         med["p99"], med["rps"] / base if base else 0.0,
                         sum(r["errors"] for r in rs), base))
    finally:
        stop()
    print(f"Sign over HTTP/1.1 keep-alive, wrk -t2 -c{CONNS}, {RUNS} runs x {SECONDS} s, "
          "32-byte DIGEST")
    print(f"{'operation':36} {'median req/s':>12} {'min-max':>17} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'raw C_Sign(2t)':>14} {'vs raw':>7} {'errors':>6}")
    bad = 0
    for name, rps, lo, hi, p50, p99, ratio, errs, base in rows:
        print(f"{name:36} {rps:12.0f} {f'{lo:.0f}-{hi:.0f}':>17} {p50:8.2f} {p99:8.2f} "
              f"{base:14.0f} {ratio:7.2f} {errs:6d}")
        bad += errs
    print(f"errors: {bad}")
    return 0 if bad == 0 else 1


sys.exit(main())

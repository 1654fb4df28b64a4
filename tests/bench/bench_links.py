"""MintLinkToken and RedeemLinkToken over HTTP (docs/link-tokens.md)
against the raw C_Sign(CKM_SHA256_HMAC) rate measured in the same run by
bench_links_p11, with wrk against a kmsd started here (audit log on,
production mode, as bench_sign.py).

Usage: bench_links.py WORKDIR BUILD LINKS_P11_OUTPUT [--quick]

Mint: the same request again and again (each mints a new token: two HSM
HMACs and one store insert). Redeem: tokens minted beforehand, one per
recipient (so that the per-recipient limit never refuses), each redeemed
once (two HSM HMACs and one compare-and-set transaction); wrk's two threads
take alternate tokens. A redemption answered other than 200 counts as an
error (it would mean the pre-minted tokens ran out or a token was taken
twice). Each row: median req/s with min-max, p50/p99, the raw HMAC rate
at 2 threads, and req/s x 2 HMACs over it.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

WORK, BUILD, P11OUT = sys.argv[1], sys.argv[2], sys.argv[3]
QUICK = "--quick" in sys.argv
RUNS = 1 if QUICK else int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = 1 if QUICK else int(os.environ.get("BENCH_HTTP_SECONDS", "5"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
sys.path.insert(0, f"{WORK}/py")
import key_pb2 as kpb  # noqa: E402
import links_pb2 as lpb  # noqa: E402

PROC = None
PORT = None


def cred(p):
    return open(f"{WORK}/credentials/{p}.key").read().strip()


def raw_rate():
    for line in open(P11OUT):
        f = line.split()
        if len(f) >= 4 and f[0] == "hmac" and f[1] == "raw" and f[2] == "2":
            return float(f[3])
    return 0.0


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
    c["link_tokens"] = {"max_ttl_s": 900, "recipient_limit": 100000}
    cfg = f"{WORK}/bench-links.json"
    json.dump(c, open(cfg, "w"), indent=2)
    env = dict(os.environ, SOFTHSM2_CONF=f"{WORK}/hsm/softhsm2.conf", CUSTOS_LOG_LEVEL="warn")
    log = open(f"{WORK}/kmsd-bench-links.log", "a")
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
    raise RuntimeError("kmsd did not start; see kmsd-bench-links.log")


def stop():
    global PROC
    if PROC:
        PROC.send_signal(signal.SIGTERM)
        PROC.wait(timeout=60)
        PROC = None


def call(h, service, method, req, resp_cls, who):
    h.request("POST", f"/twirp/custos.v1.{service}/{method}", req.SerializeToString(),
              {"Content-Type": "application/protobuf", "Authorization": "Bearer " + cred(who)})
    r = h.getresponse()
    data = r.read()
    assert r.status == 200, (method, r.status, data)
    return resp_cls.FromString(data)


def conn():
    return http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)


def premint(key, n):
    """n RedeemLinkToken bodies of fresh tokens, one recipient each."""
    bodies = [None] * n

    def work(lo, hi):
        h = conn()
        for i in range(lo, hi):
            ph = f"+4477{i:09d}"
            dev = f"bench-device-{i}".encode()
            t = call(h, "LinkService", "MintLinkToken",
                     lpb.MintLinkTokenRequest(key_id=key, phone=ph, device_value=dev,
                                              purpose="view-message", ttl_s=900),
                     lpb.MintLinkTokenResponse, "demo-broker").token
            bodies[i] = lpb.RedeemLinkTokenRequest(key_id=key, token=t, phone=ph,
                                                   device_value=dev,
                                                   purpose="view-message").SerializeToString()
    th = [threading.Thread(target=work, args=(k * n // 8, (k + 1) * n // 8)) for k in range(8)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return bodies


LUA_DONE = '''
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, latency:percentile(50),
    latency:percentile(99), summary.duration))
end
'''


def lua_fixed(name, body):
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
''' + LUA_DONE)
    return script


def lua_cycle(name, bodies):
    """Each wrk thread sends its own half of the bodies, each once."""
    path = f"{WORK}/{name}.hex"
    open(path, "w").write("\n".join(b.hex() for b in bodies) + "\n")
    script = f"{WORK}/{name}.lua"
    with open(script, "w") as f:
        f.write(f'''local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local bodies, i = {{}}, 0
function init(args)
  local n = 0
  for line in io.lines("{path}") do
    if n % 2 == tid then
      bodies[#bodies + 1] = (line:gsub("..", function(c) return string.char(tonumber(c, 16)) end))
    end
    n = n + 1
  end
end
function request()
  i = i + 1
  local b = bodies[((i - 1) % #bodies) + 1]
  return wrk.format("POST", nil, {{["Content-Type"] = "application/protobuf",
    ["Authorization"] = "Bearer {cred("demo-broker")}"}}, b)
end
''' + LUA_DONE)
    return script


def wrk(script, method):
    out = subprocess.run(["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", "-s", script,
                          f"http://127.0.0.1:{PORT}/twirp/custos.v1.LinkService/{method}"],
                         capture_output=True, text=True).stdout
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not m:
        raise RuntimeError(out)
    reqs, errs, p50, p99, dur = map(int, m.groups())
    return {"rps": reqs / (dur / 1e6), "errors": errs, "p50": p50 / 1000, "p99": p99 / 1000}


def main():
    base = raw_rate()
    rows = []
    try:
        start()
        h = conn()
        key = call(h, "KeyService", "CreateKey",
                   kpb.CreateKeyRequest(region="eu-west", spec=kpb.LINK_TOKEN_HMAC,
                                        usage=kpb.LINK_TOKEN),
                   kpb.CreateKeyResponse, "demo-admin").key.key_id
        body = lpb.MintLinkTokenRequest(key_id=key, phone="+447700900123",
                                        device_value=b"bench-device", purpose="view-message",
                                        message_ref="bench").SerializeToString()
        rs = sorted((wrk(lua_fixed("mint", body), "MintLinkToken") for _ in range(RUNS)),
                    key=lambda r: r["rps"])
        rows.append(("MintLinkToken (audit on)", rs))
        # Enough tokens for every run at the mint rate just measured (a
        # redemption costs about as much), with a margin.
        need = int(rs[-1]["rps"] * SECONDS * 1.5) + 500
        rr = []
        for _ in range(RUNS):
            bodies = premint(key, need)
            rr.append(wrk(lua_cycle("redeem", bodies), "RedeemLinkToken"))
        rows.append(("RedeemLinkToken (audit on)", sorted(rr, key=lambda r: r["rps"])))
    finally:
        stop()
    print(f"Link tokens over HTTP/1.1 keep-alive, wrk -t2 -c{CONNS}, {RUNS} runs x {SECONDS} s; "
          "each call is 2 HSM HMACs + 1 store transaction")
    print(f"{'operation':30} {'median req/s':>12} {'min-max':>17} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'raw HMAC(2t)':>12} {'2 x req/raw':>11} {'errors':>6}")
    bad = 0
    for name, rs in rows:
        med = rs[len(rs) // 2]
        errs = sum(r["errors"] for r in rs)
        ratio = 2 * med["rps"] / base if base else 0.0
        lohi = f"{rs[0]['rps']:.0f}-{rs[-1]['rps']:.0f}"
        print(f"{name:30} {med['rps']:12.0f} {lohi:>17} {med['p50']:8.2f} {med['p99']:8.2f} "
              f"{base:12.0f} {ratio:11.2f} {errs:6d}")
        bad += errs
    print(f"errors: {bad}")
    return 0 if bad == 0 else 1


sys.exit(main())

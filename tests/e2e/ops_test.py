"""Operating kmsd: sd_notify readiness and watchdog, /livez, /readyz with a
token removed through the fault shim, /metrics parsed strictly, SIGHUP
(policy reload, log file reopen), SIGTERM. Started by test_ops.sh, which
writes DIR/kmsd-ops.json (module: the fault shim, log.file, a short health
cache) and exports CUSTOS_P11FAULT_CONTROL=DIR/fault.ctl.

Usage: ops_test.py DIR PORT KMSD
"""
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import key_pb2 as pb
import promtext

DIR, PORT, KMSD = sys.argv[1], int(sys.argv[2]), sys.argv[3]
CTL = os.environ["CUSTOS_P11FAULT_CONTROL"]
LOG = f"{DIR}/kmsd-file.log"
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {count} - {what}", flush=True)
    failures += 0 if cond else 1


def cred(name):
    return open(f"{DIR}/credentials/{name}.key").read().strip()


def get(path, bearer=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    h = {"Authorization": "Bearer " + bearer} if bearer else {}
    try:
        conn.request(method, path, headers=h)
        r = conn.getresponse()
        return r.status, r.read().decode(), dict(r.getheaders())
    finally:
        conn.close()


def rpc(method, req, resp_cls, who):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    try:
        conn.request("POST", f"/twirp/custos.v1.KeyService/{method}", req.SerializeToString(),
                     {"Content-Type": "application/protobuf", "Authorization": "Bearer " + cred(who)})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            return r.status, json.loads(data)
        m = resp_cls()
        m.ParseFromString(data)
        return 200, m
    finally:
        conn.close()


def scrape():
    s, body, h = get("/metrics", cred("operator"))
    if s != 200:
        raise RuntimeError(f"/metrics: {s} {body}")
    return promtext.parse(body), body, h


def set_faults(text):
    # A new inode every time: the shim notices a change even within one
    # mtime tick.
    tmp = CTL + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, CTL)


def wait_for(pred, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


class Notify:
    """The socket systemd would listen on: an AF_UNIX datagram socket."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.msgs = []

    def wait(self, pred, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                m = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            self.msgs.append(m)
            if pred(m):
                return m
        return None


set_faults("")
notify = Notify(f"{DIR}/notify.sock")
env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")
stderr = open(f"{DIR}/kmsd-stderr.log", "w")
proc = subprocess.Popen([KMSD, "--config", f"{DIR}/kmsd-ops.json"], env=env, stderr=stderr)
try:
    ready = notify.wait(lambda m: "READY=1" in m.split("\n"), 60)
    check(ready is not None, "sd_notify: READY=1 arrives on the socket the test made")
    if ready is None:
        raise SystemExit(1)
    s, body, _ = get("/livez")
    check(s == 200, "kmsd answers once it has said READY=1")
    t0 = time.monotonic()
    pings = 0
    while time.monotonic() - t0 < 2.5:
        if notify.wait(lambda m: "WATCHDOG=1" in m.split("\n"), 2.5 - (time.monotonic() - t0)):
            pings += 1
    check(pings >= 3, f"WATCHDOG=1 pings arrive at half of WATCHDOG_USEC ({pings} in 2.5 s)")

    # ---- health ---------------------------------------------------------------
    s, body, h = get("/livez")
    check(s == 200 and body == "ok\n", "/livez: 200 without credentials")
    s, body, h = get("/readyz")
    check(s == 200 and body == "ready\n", "/readyz: 200 with every token, store and audit log")
    check(get("/readyz", method="HEAD")[0] == 200, "/readyz answers HEAD")
    s, body, h = get("/readyz", method="POST")
    check(s == 405 and h.get("Allow") == "GET, HEAD", "/readyz refuses POST with 405 and Allow")
    s, body, _ = get("/twirp/custos.v1.KeyService/Encrypt")
    check(s == 404 and json.loads(body).get("code") == "bad_route",
          "Twirp routes still refuse GET (bad_route)")

    # ---- metrics: credentials and format --------------------------------------
    s, body, h = get("/metrics")
    check(s == 401 and "custos_" not in body and h.get("WWW-Authenticate") == "Bearer",
          "/metrics without credentials: 401 with WWW-Authenticate, no figures")
    s, body, _ = get("/metrics", "not-a-key")
    check(s == 401, "/metrics with an unknown key: 401")
    s, body, _ = get("/metrics", cred("demo-broker"))
    check(s == 403 and "custos_" not in body, "/metrics for a broker: 403, no figures")
    fams, text, h = scrape()
    check(h.get("Content-Type", "").startswith("text/plain; version=0.0.4"),
          "/metrics for the operator: 200, text format 0.0.4")
    for fam in ("custos_requests_total", "custos_request_duration_seconds",
                "custos_hsm_call_duration_seconds", "custos_audit_batch_events",
                "custos_audit_fsync_duration_seconds", "custos_policy_reloads_total",
                "custos_token_available", "custos_hsm_sessions"):
        if fam not in fams or fams[fam]["type"] is None:
            check(False, f"family {fam} is declared")
    check(promtext.value(fams, "custos_token_available", region="eu-west") == 1 and
          promtext.value(fams, "custos_hsm_sessions", region="eu-west", state="cap") >= 1,
          "token availability and session pool gauges per region")

    # ---- counters move ---------------------------------------------------------
    s, created = rpc("CreateKey", pb.CreateKeyRequest(region="eu-west", spec=pb.AES_256,
                                                      usage=pb.ENCRYPT_DECRYPT),
                     pb.CreateKeyResponse, "demo-admin")
    key = created.key.key_id if s == 200 else ""
    f0, _, _ = scrape()
    oks = sum(rpc("Encrypt", pb.EncryptRequest(key_id=key, plaintext=b"m%d" % i),
                  pb.EncryptResponse, "demo-broker")[0] == 200 for i in range(7))
    bad = rpc("Encrypt", pb.EncryptRequest(key_id="no-such-key", plaintext=b"x"),
              pb.EncryptResponse, "demo-broker")
    f1, text1, _ = scrape()

    def delta(fam, sample=None, **l):
        return promtext.value(f1, fam, sample, **l) - promtext.value(f0, fam, sample, **l)

    check(oks == 7 and delta("custos_requests_total", op="Encrypt", outcome="ok") == 7,
          "7 Encrypts: custos_requests_total{op=Encrypt,outcome=ok} +7")
    bad_code = bad[1].get("code") if bad[0] != 200 else "ok"
    check(bad[0] != 200 and
          delta("custos_requests_total", op="Encrypt", outcome=bad_code) == 1,
          f"a refused Encrypt counts under outcome {bad_code}")
    check(delta("custos_request_duration_seconds", "custos_request_duration_seconds_count",
                op="Encrypt", outcome="ok") == 7, "the Encrypt latency histogram counts 7 more")
    check(delta("custos_hsm_call_duration_seconds", "custos_hsm_call_duration_seconds_count",
                region="eu-west", function="C_Encrypt", mechanism="CKM_AES_GCM") == 7,
          "HSM latency: C_Encrypt/CKM_AES_GCM in token eu-west +7")
    check(delta("custos_audit_batch_events", "custos_audit_batch_events_sum", region="eu-west") >= 8
          and delta("custos_audit_fsync_duration_seconds",
                    "custos_audit_fsync_duration_seconds_count", region="eu-west") >= 1,
          "audit batch sizes and fsync latency move with the audited requests")
    names = {k for fam in f1.values() for _, l, _ in fam["samples"] for k in l}
    # kind, reason: the GCM usage families (fixed values: rotate_at/limit,
    # usage/period).
    check(names <= {"op", "outcome", "region", "token", "function", "mechanism", "le", "state",
                    "result", "kind", "reason"} and key and key not in text1 and '"demo"' not in text1,
          f"no tenant, principal or key id in any label ({sorted(names)})")

    # ---- the fault shim: a slow call shows in the HSM histogram ------------------
    set_faults("C_Encrypt delay_ms=300 count=1\n")
    time.sleep(0.1)
    fa, _, _ = scrape()
    t = time.monotonic()
    s, _ = rpc("Encrypt", pb.EncryptRequest(key_id=key, plaintext=b"slow"), pb.EncryptResponse,
               "demo-broker")
    took = time.monotonic() - t
    fb, _, _ = scrape()

    def slow(f):
        return (promtext.value(f, "custos_hsm_call_duration_seconds",
                               "custos_hsm_call_duration_seconds_bucket", region="eu-west",
                               function="C_Encrypt", le="+Inf") -
                promtext.value(f, "custos_hsm_call_duration_seconds",
                               "custos_hsm_call_duration_seconds_bucket", region="eu-west",
                               function="C_Encrypt", le="0.25"))
    check(s == 200 and took >= 0.3 and slow(fb) - slow(fa) == 1,
          "a C_Encrypt delayed 300 ms by the shim lands above the 0.25 s bucket")
    set_faults("C_Encrypt CKR_DEVICE_ERROR count=1\n")
    time.sleep(0.1)
    s1, e1 = rpc("Encrypt", pb.EncryptRequest(key_id=key, plaintext=b"x"), pb.EncryptResponse,
                 "demo-broker")
    s2, _ = rpc("Encrypt", pb.EncryptRequest(key_id=key, plaintext=b"x"), pb.EncryptResponse,
                "demo-broker")
    check(s1 >= 500 and s2 == 200, f"one injected CKR_DEVICE_ERROR fails one request ({s1}), "
          "the next succeeds")
    check(get("/readyz")[0] == 200, "a single HSM error does not make kmsd unready")

    # ---- a removed token ---------------------------------------------------------
    set_faults("* CKR_TOKEN_NOT_PRESENT\n")
    unready = wait_for(lambda: get("/readyz")[0] == 503, 10)
    s, body, _ = get("/readyz")
    check(unready and body.startswith("not ready\n") and
          "region eu-west: its HSM token 'custos-eu-west' is unavailable" in body,
          f"/readyz: 503 'not ready', naming the region and its token, once the token is "
          f"removed ({body!r})")
    check(get("/livez")[0] == 200, "/livez stays 200 while the token is away")
    s, e = rpc("Encrypt", pb.EncryptRequest(key_id=key, plaintext=b"x"), pb.EncryptResponse,
               "demo-broker")
    check(s == 503, f"Encrypt answers 503 while the token is away ({s} {e})")
    fr, _, _ = scrape()
    check(promtext.value(fr, "custos_token_available", region="eu-west") == 0,
          "custos_token_available{region=eu-west} is 0")
    set_faults("")
    back = wait_for(lambda: get("/readyz")[0] == 200, 10)
    check(back, "/readyz: 200 again when the token returns")
    s, _ = rpc("Encrypt", pb.EncryptRequest(key_id=key, plaintext=b"x"), pb.EncryptResponse,
               "demo-broker")
    fr, _, _ = scrape()
    check(s == 200 and promtext.value(fr, "custos_token_available", region="eu-west") == 1,
          "Encrypt works again and the token is available")

    # ---- SIGHUP: policy reload and log reopen -------------------------------------
    r0 = scrape()[0]
    shutil.move(LOG, LOG + ".1")
    proc.send_signal(signal.SIGHUP)
    m = notify.wait(lambda m: "RELOADING=1" in m.split("\n"), 10)
    m2 = notify.wait(lambda m: "READY=1" in m.split("\n"), 10)
    check(m is not None and m2 is not None, "SIGHUP: RELOADING=1, then READY=1")
    check(wait_for(lambda: os.path.exists(LOG) and "SIGHUP" in open(LOG).read(), 5),
          "SIGHUP reopens log.file: a rotated file is let go, a new one is written")
    r1 = scrape()[0]
    check(promtext.value(r1, "custos_policy_reloads_total", result="ok") -
          promtext.value(r0, "custos_policy_reloads_total", result="ok") == 1,
          "custos_policy_reloads_total{result=ok} +1")
    pol = open(f"{DIR}/policy.json").read()
    open(f"{DIR}/policy.json", "w").write("{")
    proc.send_signal(signal.SIGHUP)
    notify.wait(lambda m: "READY=1" in m.split("\n"), 10)
    open(f"{DIR}/policy.json", "w").write(pol)
    r2 = scrape()[0]
    check(promtext.value(r2, "custos_policy_reloads_total", result="refused") -
          promtext.value(r1, "custos_policy_reloads_total", result="refused") == 1,
          "a broken policy counts as refused, and kmsd goes on serving")

    # ---- the operational log ------------------------------------------------------
    lines = (open(LOG + ".1").read() + open(LOG).read()).splitlines()
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            parsed.append(None)
    check(lines and all(p and set(p) == {"ts", "level", "component", "msg"} and
                        p["level"] in ("debug", "info", "warn", "error") for p in parsed),
          f"every log line is a JSON object with ts, level, component, msg ({len(lines)} lines)")
    pins = [open(f"{DIR}/hsm/pins/{r}.pin").read().strip() for r in ("eu-west", "us-east")]
    everything = "\n".join(lines) + open(f"{DIR}/kmsd-stderr.log").read()
    check(all(p not in everything for p in pins) and cred("operator") not in everything,
          "no PIN and no bearer key in the log")

    # ---- SIGTERM ----------------------------------------------------------------
    proc.send_signal(signal.SIGTERM)
    m = notify.wait(lambda m: "STOPPING=1" in m.split("\n"), 30)
    rc = proc.wait(60)
    check(m is not None and rc == 0, f"SIGTERM: STOPPING=1 and exit 0 (rc {rc})")
finally:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
sys.exit(1 if failures else 0)

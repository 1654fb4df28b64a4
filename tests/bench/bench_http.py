"""Custos over HTTP, measured with wrk against a kmsd started here.

Usage: bench_http.py WORKDIR BUILD RAW1 RAW2 [--quick] [--encrypt-only LABEL]

WORKDIR holds a dev installation made by deploy/dev-setup.sh (tokens,
credentials, policy). RAW1/RAW2 are the raw PKCS#11 AES-GCM ops/s at 1 and
2 threads measured in the same run by bench_p11. Prints the table on stdout.
--encrypt-only LABEL: only Encrypt with the audit log on, against the token
of WORKDIR (make bench's row for a second PKCS#11 implementation; LABEL
names it in the table).
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import http.client

WORK, BUILD, RAW1, RAW2 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
QUICK = "--quick" in sys.argv
ONLY = sys.argv[sys.argv.index("--encrypt-only") + 1] if "--encrypt-only" in sys.argv else None
RUNS = 1 if QUICK else int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = 2 if QUICK else int(os.environ.get("BENCH_HTTP_SECONDS", "5"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
sys.path.insert(0, f"{WORK}/py")
import fields_pb2 as fpb  # noqa: E402
import key_pb2 as kpb  # noqa: E402

PORT = None
PROC = None


def cred(p):
    return open(f"{WORK}/credentials/{p}.key").read().strip()


def write_config(name, mode, audit, thread_model):
    c = json.load(open(f"{WORK}/kmsd.json"))
    c["mode"] = mode
    c["audit"] = {"enabled": audit, "dir": "audit", "head_every_events": 10000,
                  "head_every_ms": 1000}
    if mode == "production":
        c.pop("deletion", None)
    c.setdefault("limits", {})["thread_model"] = thread_model
    c["limits"]["max_connections"] = 1024
    # Every wrk connection comes from 127.0.0.1: BENCH_CONNECTIONS above the
    # per-address default (64) would be refused, not measured.
    c["limits"]["max_connections_per_ip"] = 0
    path = f"{WORK}/{name}.json"
    json.dump(c, open(path, "w"), indent=2)
    return path


def start(cfg):
    global PROC
    env = dict(os.environ, SOFTHSM2_CONF=f"{WORK}/hsm/softhsm2.conf", CUSTOS_LOG_LEVEL="warn")
    log = open(f"{WORK}/kmsd-bench.log", "a")
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
    raise RuntimeError("kmsd did not start; see kmsd-bench.log")


def stop():
    global PROC
    if PROC:
        PROC.send_signal(signal.SIGTERM)
        PROC.wait(timeout=60)
        PROC = None


def path_of(method):
    """Twirp path of a method: KeyService's unless named as Service/Method."""
    return f"/twirp/custos.v1.{method if '/' in method else 'KeyService/' + method}"


def call(method, req, resp_cls, who):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    c.request("POST", path_of(method), req.SerializeToString(),
              {"Content-Type": "application/protobuf", "Authorization": "Bearer " + cred(who)})
    r = c.getresponse()
    data = r.read()
    assert r.status == 200, (method, r.status, data)
    m = resp_cls()
    m.ParseFromString(data)
    return m


def lua_for(method, body, who="demo-broker"):
    name = method.replace("/", "-")
    path = f"{WORK}/{name}.bin"
    open(path, "wb").write(body)
    script = f"{WORK}/{name}.lua"
    with open(script, "w") as f:
        f.write(f'''local f = io.open("{path}", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/protobuf"
wrk.headers["Authorization"] = "Bearer {cred(who)}"
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9), summary.duration))
end
''')
    return script


def wrk(method, script, seconds, conns):
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "-s", script,
                          f"http://127.0.0.1:{PORT}{path_of(method)}"],
                         capture_output=True, text=True).stdout
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not m:
        raise RuntimeError(out)
    reqs, errs, p50, p99, p999, dur = map(int, m.groups())
    return {"rps": reqs / (dur / 1e6), "errors": errs, "p50": p50 / 1000, "p99": p99 / 1000,
            "p999": p999 / 1000}


def fixed_rate(method, body, rate, seconds, conns=32):
    """tools/loadgen at a constant rate: p50/p99/p99.9 from each request's due time."""
    name = method.replace("/", "-")
    open(f"{WORK}/{name}.bin", "wb").write(body)
    keyfile = f"{WORK}/credentials/demo-broker.key"
    out = subprocess.run([f"{BUILD}/tools/loadgen", "--port", str(PORT), "--path",
                          path_of(method), "--body", f"{WORK}/{name}.bin", "--key-file", keyfile,
                          "-c", str(conns), "-d", str(seconds), "-R", f"{rate:.0f}",
                          "--label", f"{method} at half peak"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stdout + out.stderr)
    r = json.loads(out.stdout)
    lat = r["latency_ms"]
    errs = r["transport_errors"]["total"] + sum(n for code, n in r["status"].items()
                                                if code != "200")
    return {"rate": rate, "rps": r["throughput"], "p50": lat["p50"], "p99": lat["p99"],
            "p999": lat["p999"], "max": lat["max"], "errors": errs, "conns": conns}


def measure_bare(script):
    """wrk against bench_bare on the same token, with kmsd's worker count."""
    global PORT
    saved, PORT = PORT, None
    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]
    s.close()
    p = subprocess.Popen([f"{BUILD}/bench/bench_bare", str(PORT), str(os.cpu_count() or 1)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("bench_bare did not start")
        return measure("Encrypt", script)
    finally:
        p.terminate()
        p.wait(timeout=30)
        PORT = saved


def measure(method, script, runs=RUNS):
    rs = [wrk(method, script, SECONDS, CONNS) for _ in range(runs)]
    rs.sort(key=lambda r: r["rps"])
    med = rs[len(rs) // 2]
    return med, rs[0]["rps"], rs[-1]["rps"], sum(r["errors"] for r in rs)


rows = []


def row(name, med, lo, hi, errs, ratio_to):
    rows.append((name, med["rps"], lo, hi, med["p50"], med["p99"], med["rps"] / ratio_to, errs))


FIELD_NAMES = ["to", "from", "rcs.session_id", "sent_at", "device", "thread", "subject", "x"]


def bodies(key_id, meta_id):
    ctx = {"conversation": "c-1"}
    value = b"+14155550123-abc"  # a 16-byte metadata value
    pt = b"m" * 256
    enc = call("Encrypt", kpb.EncryptRequest(key_id=key_id, plaintext=pt, encryption_context=ctx),
               kpb.EncryptResponse, "demo-broker")
    dk = call("GenerateDataKey", kpb.GenerateDataKeyRequest(key_id=key_id, encryption_context=ctx),
              kpb.GenerateDataKeyResponse, "demo-broker")
    return {
        "Encrypt": kpb.EncryptRequest(key_id=key_id, plaintext=pt,
                                      encryption_context=ctx).SerializeToString(),
        "Decrypt": kpb.DecryptRequest(ciphertext=enc.ciphertext,
                                      encryption_context=ctx).SerializeToString(),
        "GenerateDataKey": kpb.GenerateDataKeyRequest(key_id=key_id,
                                                      encryption_context=ctx).SerializeToString(),
        "DecryptDataKey": kpb.DecryptDataKeyRequest(ciphertext_blob=dk.ciphertext_blob,
                                                    encryption_context=ctx).SerializeToString(),
        # One message's metadata: 8 fields of 16 bytes in one call.
        "FieldService/EncryptFields": fpb.EncryptFieldsRequest(
            key_id=meta_id, encryption_context=ctx,
            fields=[fpb.PlaintextField(name=n, value=value, mode=fpb.FIELD_MODE_RANDOMIZED)
                    for n in FIELD_NAMES]).SerializeToString(),
        # One lookup: the index of one value.
        "FieldService/BlindIndex": fpb.BlindIndexRequest(
            key_id=meta_id, field="to", canonicalizer=fpb.CANONICALIZER_RAW,
            values=[value], length_bits=128).SerializeToString(),
    }


def main():
    global PORT
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]
    s.close()
    c = json.load(open(f"{WORK}/kmsd.json"))
    c["listen"]["port"] = PORT
    json.dump(c, open(f"{WORK}/kmsd.json", "w"))
    model = os.environ.get("BENCH_THREAD_MODEL", "pool")
    other = "per-connection" if model == "pool" else "pool"
    results = {}
    if ONLY:
        return encrypt_only(model)
    try:
        start(write_config("bench-audit", "production", True, model))
        key = call("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                    usage=kpb.ENCRYPT_DECRYPT),
                   kpb.CreateKeyResponse, "demo-admin").key.key_id
        meta = call("CreateKey", kpb.CreateKeyRequest(region="eu-west",
                                                     spec=kpb.METADATA_AES_HMAC,
                                                     usage=kpb.METADATA_FIELDS),
                    kpb.CreateKeyResponse, "demo-admin").key.key_id
        b = bodies(key, meta)
        for method, label in (("Encrypt", "Encrypt"), ("Decrypt", "Decrypt"),
                              ("GenerateDataKey", "GenerateDataKey"),
                              ("DecryptDataKey", "DecryptDataKey"),
                              ("FieldService/EncryptFields", "EncryptFields, 8 fields"),
                              ("FieldService/BlindIndex", "BlindIndex, 1 value")):
            med, lo, hi, errs = measure(method, lua_for(method, b[method]))
            row(f"{label} (audit on)", med, lo, hi, errs, RAW2)
            results[method] = med
        # Latency at half of the Encrypt peak, open loop (wrk2's constant
        # rate): each request is due at a fixed time and its latency runs
        # from then, so queueing behind a stall is counted.
        half = fixed_rate("Encrypt", b["Encrypt"], results["Encrypt"]["rps"] / 2, SECONDS * 2)
        # Key creation, one at a time: plain, and with escrow at birth (the
        # extra wrap, the blob's commit and the lock) for the bank tenant.
        for who, label in (("demo-admin", "plain"), ("bank-admin", "escrow")):
            times = []
            for _ in range(5 if QUICK else 30):
                t0 = time.perf_counter()
                call("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                       usage=kpb.ENCRYPT_DECRYPT),
                     kpb.CreateKeyResponse, who)
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            results[f"create-{label}"] = (times[len(times) // 2], times[0], times[-1])
        stop()
        start(write_config("bench-noaudit", "dev", False, model))
        med, lo, hi, errs = measure("Encrypt", lua_for("Encrypt", b["Encrypt"]))
        row("Encrypt (audit off)", med, lo, hi, errs, RAW2)
        results["noaudit"] = med
        stop()
        # The other thread model, for the record of why the default is what
        # it is (docs/configuration.md).
        start(write_config("bench-other", "production", True, other))
        med, lo, hi, errs = measure("Encrypt", lua_for("Encrypt", b["Encrypt"]))
        row(f"Encrypt (audit on, {other})", med, lo, hi, errs, RAW2)
        stop()
        # The ceiling: libmicrohttpd doing only the HSM call (bench_bare).
        med, lo, hi, errs = measure_bare(lua_for("Encrypt", b["Encrypt"]))
        row("bare HTTP + HSM call", med, lo, hi, errs, RAW2)
        results["bare"] = med
    finally:
        stop()

    print(f"Custos over HTTP/1.1 keep-alive, wrk -t2 -c{CONNS}, {RUNS} runs x {SECONDS} s, "
          f"256-byte plaintext, thread model {model}")
    print(f"raw PKCS#11 AES-GCM in the same run: {RAW1:.0f} op/s (1 thread), {RAW2:.0f} op/s "
          "(2 threads)")
    print(f"{'operation':36} {'median req/s':>12} {'min-max':>17} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'vs raw(2t)':>10} {'errors':>6}")
    for name, rps, lo, hi, p50, p99, ratio, errs in rows:
        print(f"{name:36} {rps:12.0f} {f'{lo:.0f}-{hi:.0f}':>17} {p50:8.2f} {p99:8.2f} "
              f"{ratio:10.2f} {errs:6d}")
    on, off = results["Encrypt"]["rps"], results["noaudit"]["rps"]
    print(f"audit on / audit off (Encrypt): {on / off:.2f}")
    print(f"Encrypt (audit on) / bare HTTP + HSM call: {on / results['bare']['rps']:.2f}")
    print(f"latency at half of peak, open loop ({half['rate']:.0f} req/s offered, "
          f"{half['rps']:.0f} served, {half['conns']} connections, loadgen -R): "
          f"p50 {half['p50']:.2f} ms, p99 {half['p99']:.2f} ms, p99.9 {half['p999']:.2f} ms, "
          f"max {half['max']:.2f} ms")
    (pm, plo, phi), (em, elo, ehi) = results["create-plain"], results["create-escrow"]
    print(f"CreateKey, sequential: plain {pm:.1f} ms ({plo:.1f}-{phi:.1f}), with escrow at birth "
          f"{em:.1f} ms ({elo:.1f}-{ehi:.1f}); escrow/plain {em / pm:.2f}")
    bad = sum(r[7] for r in rows) + half["errors"]
    print(f"errors: {bad}")
    return 0 if bad == 0 else 1


def encrypt_only(model):
    """Encrypt (audit on) beside the raw call of the same token, same run."""
    try:
        start(write_config("bench-only", "production", True, model))
        key = call("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                    usage=kpb.ENCRYPT_DECRYPT),
                   kpb.CreateKeyResponse, "demo-admin").key.key_id
        body = bodies(key, key)["Encrypt"]
        med, lo, hi, errs = measure("Encrypt", lua_for("Encrypt", body))
        row(f"Encrypt (audit on), {ONLY}", med, lo, hi, errs, RAW2)
    finally:
        stop()
    print(f"Custos over HTTP/1.1 keep-alive on {ONLY}, wrk -t2 -c{CONNS}, {RUNS} runs x "
          f"{SECONDS} s, 256-byte plaintext; raw PKCS#11 AES-GCM on the same token in the same "
          f"run: {RAW1:.0f} op/s (1 thread), {RAW2:.0f} op/s (2 threads)")
    for name, rps, lo, hi, p50, p99, ratio, errs in rows:
        print(f"{name:44} {rps:9.0f} req/s {f'{lo:.0f}-{hi:.0f}':>13} p50 {p50:6.2f} ms "
              f"p99 {p99:7.2f} ms  {ratio:.2f} of raw(2t)  errors {errs}")
    bad = sum(r[7] for r in rows)
    print(f"errors: {bad}")
    return 0 if bad == 0 else 1


sys.exit(main())

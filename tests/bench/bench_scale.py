"""Scale and memory runs for make bench-scale.

Usage: bench_scale.py BUILD CACHE_DIR KEYS... [--rss-seconds N] [--prepare-only]

For each key count, an installation with that many keys (made once with
bench_mkkeys and kept in CACHE_DIR/keys-N), kmsd with the audit log on,
and wrk posting Encrypt for a random key each request (SCALE_HIT, default
1000, keys sampled from the installation, or all when fewer). Then, on the largest
installation, RSS after 1 minute and after --rss-seconds (300) at peak.
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import http.client

BUILD = os.path.abspath(sys.argv[1])
CACHE = os.path.abspath(sys.argv[2])
args = sys.argv[3:]
RSS_SECONDS = 300
if "--rss-seconds" in args:
    i = args.index("--rss-seconds")
    RSS_SECONDS = int(args[i + 1])
    del args[i:i + 2]
# --prepare-only: build (or find) the cached installations and stop, so the
# long bulk creation can run ahead of a quiet measurement.
PREPARE_ONLY = "--prepare-only" in args
args = [a for a in args if a != "--prepare-only"]
COUNTS = [int(a) for a in args]
SECONDS = int(os.environ.get("BENCH_HTTP_SECONDS", "5"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
CHUNK = int(os.environ.get("SCALE_CHUNK", "1000"))
# Distinct keys the load picks from (at random, per request): separates
# "keys in the token" from "keys in use".
HIT = int(os.environ.get("SCALE_HIT", "1000"))


def sh(*a, **kw):
    return subprocess.run(a, check=True, **kw)


def prepare(n):
    d = f"{CACHE}/keys-{n}"
    ids = f"{d}/ids.txt"
    made = sum(1 for _ in open(ids)) if os.path.exists(ids) else 0
    if made >= n and not os.path.exists(f"{d}/chunk-base"):
        return d
    base = f"{d}/chunk-base"
    # An interrupted build resumes: the base copy and the rows and ids of
    # every finished key are kept, and the objects of the last chunk are
    # moved in below (a key is in ids.txt only once its object exists).
    resume = os.path.isdir(base) and made > 0
    if not resume:
        sh("rm", "-rf", d)
        sh("sh", "deploy/dev-setup.sh", d, "8700",
           env=dict(os.environ, BUILD=os.path.relpath(BUILD)), stdout=subprocess.DEVNULL)
    t = time.time()
    # SoftHSMv2's file store opens every object file of a token to create
    # one more (measured: ~265 ms per key at 10,000 objects), so n keys made
    # in one token cost O(n^2): ~14 min for 10,000, about a day for 100,000.
    # Instead each chunk is made by SoftHSMv2 itself (C_GenerateKey) in a
    # byte-identical copy of the region's token (same token key and PIN),
    # and its new object files are then moved into the real token. The
    # result is what bulk creation in that token would have made: every key
    # a genuine token object under the token's key, with its store row.
    conf = open(f"{d}/hsm/softhsm2.conf").read()
    tokdir = re.search(r"^directories.tokendir = (.*?)/?$", conf, re.M).group(1)
    label_dir = None
    for u in os.listdir(tokdir):
        if b"custos-eu-west" in open(f"{tokdir}/{u}/token.object", "rb").read():
            label_dir = u
    if not resume:
        shutil.copytree(f"{tokdir}/{label_dir}", base)
    before = set(os.listdir(base))
    cdir = f"{d}/chunk"

    def move_new_objects():
        if os.path.isdir(f"{cdir}/tokens/{label_dir}"):
            for f in set(os.listdir(f"{cdir}/tokens/{label_dir}")) - before:
                os.rename(f"{cdir}/tokens/{label_dir}/{f}", f"{tokdir}/{label_dir}/{f}")

    move_new_objects()
    done = sum(1 for _ in open(ids)) if os.path.exists(ids) else 0
    while done < n:
        k = min(CHUNK, n - done)
        shutil.rmtree(cdir, ignore_errors=True)
        os.makedirs(f"{cdir}/tokens")
        shutil.copytree(base, f"{cdir}/tokens/{label_dir}")
        open(f"{cdir}/softhsm2.conf", "w").write(
            re.sub(r"^directories.tokendir = .*$", f"directories.tokendir = {cdir}/tokens/",
                   conf, flags=re.M))
        env = dict(os.environ, SOFTHSM2_CONF=f"{cdir}/softhsm2.conf", CUSTOS_LOG_LEVEL="warn")
        rc = subprocess.run([f"{BUILD}/bench/bench_mkkeys", f"{d}/kmsd.db",
                             f"file:{d}/hsm/pins/eu-west.pin", "custos-eu-west", str(k), "2",
                             ids], env=env).returncode
        # Whatever was made is kept, failed or not; a failed chunk's
        # shortfall is made by the next one.
        move_new_objects()
        was, done = done, sum(1 for _ in open(ids))
        if rc != 0 and done == was:
            raise RuntimeError(f"bench_mkkeys made no key (exit {rc}); see above")
        print(f"# {done}/{n} keys, {time.time() - t:.0f} s", flush=True)
    shutil.rmtree(f"{d}/chunk", ignore_errors=True)
    shutil.rmtree(base)
    print(f"# prepared {n} keys in {time.time() - t:.0f} s (cached in {d})", flush=True)
    return d


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(d):
    port = free_port()
    c = json.load(open(f"{d}/kmsd.json"))
    c["listen"]["port"] = port
    c["mode"] = "production"
    c.pop("deletion", None)
    c["audit"] = {"enabled": True, "dir": "audit", "head_every_events": 10000,
                  "head_every_ms": 1000}
    json.dump(c, open(f"{d}/bench.json", "w"))
    env = dict(os.environ, SOFTHSM2_CONF=f"{d}/hsm/softhsm2.conf", CUSTOS_LOG_LEVEL="warn")
    t = time.time()
    p = subprocess.Popen([f"{BUILD}/bin/kmsd", "--config", f"{d}/bench.json"], env=env,
                         stdout=open(f"{d}/kmsd.log", "a"), stderr=subprocess.STDOUT)
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/")
            c.getresponse().read()
            break
        except OSError:
            if p.poll() is not None:
                raise RuntimeError(f"kmsd exited; see {d}/kmsd.log")
            time.sleep(0.1)
    return p, port, time.time() - t


def bodies(d):
    sys.path.insert(0, f"{d}/py")
    os.makedirs(f"{d}/py", exist_ok=True)
    sh("protoc", f"--python_out={d}/py", "-Iproto", "proto/key.proto")
    import importlib
    kpb = importlib.import_module("key_pb2")
    ids = [l.strip() for l in open(f"{d}/ids.txt") if l.strip()]
    sample = random.sample(ids, min(HIT, len(ids)))
    blobs = [kpb.EncryptRequest(key_id=k, plaintext=b"m" * 256,
                                encryption_context={"conversation": "c-1"}).SerializeToString()
             for k in sample]
    size = len(blobs[0])
    assert all(len(b) == size for b in blobs)
    open(f"{d}/bodies.bin", "wb").write(b"".join(blobs))
    key = open(f"{d}/credentials/demo-broker.key").read().strip()
    with open(f"{d}/random.lua", "w") as f:
        f.write(f'''local f = io.open("{d}/bodies.bin", "rb")
local all = f:read("*all")
f:close()
local size, n = {size}, {len(blobs)}
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/protobuf"
wrk.headers["Authorization"] = "Bearer {key}"
request = function()
  local i = math.random(0, n - 1)
  return wrk.format(nil, nil, nil, all:sub(i * size + 1, (i + 1) * size))
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d\\n", summary.requests, summary.errors.status +
    summary.errors.connect + summary.errors.read + summary.errors.timeout,
    latency:percentile(99), summary.duration))
end
''')
    return len(blobs)


def wrk(port, d, seconds):
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", f"{d}/random.lua",
                          f"http://127.0.0.1:{port}/twirp/custos.v1.KeyService/Encrypt"],
                         capture_output=True, text=True).stdout
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+)", out)
    reqs, errs, p99, dur = map(int, m.groups())
    return reqs / (dur / 1e6), errs, p99 / 1000


def raw_p11(d):
    """bench_p11's raw 2-thread AES-GCM op/s on this installation's token:
    what the HSM call itself does at this object count."""
    env = dict(os.environ, SOFTHSM2_CONF=f"{d}/hsm/softhsm2.conf", CUSTOS_BENCH_HSM_DIR=f"{d}/hsm",
               CUSTOS_LOG_LEVEL="warn")
    out = subprocess.run([f"{BUILD}/bench/bench_p11", "2", str(RUNS)], env=env,
                         capture_output=True, text=True).stdout
    m = re.search(r"^raw +2 +(\d+)", out, re.M)
    if not m:
        raise RuntimeError("bench_p11 failed: " + out)
    return int(m.group(1))


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


if PREPARE_ONLY:
    for n in COUNTS:
        print(f"keys-{n}: {prepare(n)}")
    sys.exit(0)

results = []
for n in COUNTS:
    d = prepare(n)
    sampled = bodies(d)
    raw2 = raw_p11(d)
    p, port, start_s = start(d)
    try:
        wrk(port, d, 2)  # warm the store cache and the HSM
        runs = sorted(wrk(port, d, SECONDS) for _ in range(RUNS))
        med = runs[len(runs) // 2]
        results.append((n, sampled, med[0], runs[0][0], runs[-1][0], med[2],
                        sum(r[1] for r in runs), start_s, raw2))
        if n == COUNTS[-1] and RSS_SECONDS > 0:
            proc = subprocess.Popen(["wrk", "-t2", "-c32", f"-d{RSS_SECONDS}s", "-s",
                                     f"{d}/random.lua",
                                     f"http://127.0.0.1:{port}/twirp/custos.v1.KeyService/Encrypt"],
                                    stdout=subprocess.DEVNULL)
            r0 = rss_kb(p.pid)
            time.sleep(60)
            r1 = rss_kb(p.pid)
            time.sleep(max(0, RSS_SECONDS - 60))
            r5 = rss_kb(p.pid)
            proc.wait()
            rss = (r0, r1, r5)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait()

print(f"Encrypt on a random key per request, audit on, wrk -t2 -c32, {RUNS} runs x {SECONDS} s")
print(f"{'keys in token':>14} {'keys hit':>9} {'median req/s':>13} {'min-max':>15} {'p99 ms':>7} "
      f"{'kmsd start s':>12} {'errors':>6} {'raw 2t op/s':>11} {'vs raw':>6}")
for n, s, med, lo, hi, p99, errs, st, raw2 in results:
    print(f"{n:14d} {s:9d} {med:13.0f} {f'{lo:.0f}-{hi:.0f}':>15} {p99:7.2f} {st:12.1f} "
          f"{errs:6d} {raw2:11d} {med / raw2:6.2f}")
if len(results) > 1:
    # The raw figure is the HSM call alone on that token (bench_p11): on
    # SoftHSMv2 it falls with the token's object count too.
    print(f"throughput at {results[-1][0]} keys / at {results[0][0]} keys: "
          f"{results[-1][2] / results[0][2]:.2f} (raw PKCS#11, 2 threads: "
          f"{results[-1][8] / results[0][8]:.2f})")
if RSS_SECONDS > 0:
    print(f"kmsd RSS at {COUNTS[-1]} keys under load: start {rss[0] / 1024:.1f} MiB, "
          f"1 min {rss[1] / 1024:.1f} MiB, {RSS_SECONDS // 60} min {rss[2] / 1024:.1f} MiB")

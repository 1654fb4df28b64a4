"""TLS handshakes per second of kmsd with its TLS key in the HSM
(tls.key_uri) against kmsd with a key file (tls.key), in the same run.

Usage: bench_tls.py WORKDIR BUILD [--quick]

WORKDIR holds a dev installation made by deploy/dev-setup.sh. For EC P-256
and RSA-3072 each, a key pair is made in a token (deploy/tls-hsm-key.py)
and a key file with openssl, both with certificates from a throw-away CA;
kmsd is started with each and `openssl s_time -new` clients (TLS 1.3, full
handshakes, no resumption) run against it: 1 client, then 4 at once.
Handshakes/s = completed connections / wall-clock seconds of the clients.
Prints one row per key, place and concurrency: median over the runs and
min-max, and kmsd's CPU time per handshake (user + system of the whole
process, summed over the runs), which a busy machine distorts less than
the rate; runs alternate between the two places (see main).
"""
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

WORK, BUILD = sys.argv[1], sys.argv[2]
QUICK = "--quick" in sys.argv
RUNS = 1 if QUICK else int(os.environ.get("BENCH_RUNS", "5"))
SECONDS = 1 if QUICK else int(os.environ.get("BENCH_TLS_SECONDS", "2"))
PKI = f"{WORK}/pki-tls"
TOP = os.getcwd()


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def make_pki():
    os.makedirs(PKI, exist_ok=True)
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-days", "2", "-subj", "/CN=Bench CA", "-keyout", f"{PKI}/ca.key",
       "-out", f"{PKI}/ca.pem")
    with open(f"{PKI}/leaf.ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    uris = {}
    for kind, region, gen in (("ec-p256", "eu-west", ["-newkey", "ec", "-pkeyopt",
                                                      "ec_paramgen_curve:prime256v1"]),
                              ("rsa-3072", "us-east", ["-newkey", "rsa:3072"])):
        sh("openssl", "req", *gen, "-nodes", "-subj", "/CN=127.0.0.1",
           "-keyout", f"{PKI}/file-{kind}.key", "-out", f"{PKI}/file-{kind}.csr")
        sh("openssl", "x509", "-req", "-in", f"{PKI}/file-{kind}.csr", "-CA", f"{PKI}/ca.pem",
           "-CAkey", f"{PKI}/ca.key", "-CAcreateserial", "-days", "2",
           "-extfile", f"{PKI}/leaf.ext", "-out", f"{PKI}/file-{kind}.pem")
        uris[kind] = sh("/usr/bin/python3", f"{TOP}/deploy/tls-hsm-key.py",
                        "--token", f"custos-{region}",
                        "--pin-source", f"file:{WORK}/hsm/pins/{region}.pin",
                        "--label", f"kmsd-tls-bench-{kind}", "--type", kind,
                        "--pubout", f"{PKI}/hsm-{kind}.pub.pem", "--ca-cert", f"{PKI}/ca.pem",
                        "--ca-key", f"{PKI}/ca.key", "--cert-out", f"{PKI}/hsm-{kind}.pem",
                        "--cn", "127.0.0.1", "--san", "IP:127.0.0.1").strip()
    return uris


def config(name, port, tls):
    c = json.load(open(f"{WORK}/kmsd.json"))
    c["listen"]["port"] = port
    c["tls"] = tls
    c.setdefault("limits", {})["max_connections"] = 1024
    c["limits"]["max_connections_per_ip"] = 0
    path = f"{WORK}/kmsd-tls-{name}.json"
    json.dump(c, open(path, "w"), indent=2)
    return path


def start(cfg, port):
    env = dict(os.environ, SOFTHSM2_CONF=f"{WORK}/hsm/softhsm2.conf", CUSTOS_LOG_LEVEL="warn")
    log = open(f"{WORK}/kmsd-tls-bench.log", "a")
    proc = subprocess.Popen([f"{BUILD}/bin/kmsd", "--config", cfg], env=env, stdout=log,
                            stderr=log)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"kmsd did not start ({cfg}); see {WORK}/kmsd-tls-bench.log")
            time.sleep(0.1)
    sys.exit("kmsd did not listen")


def stop(proc):
    proc.terminate()
    proc.wait(timeout=60)


def cpu_seconds(pid):
    """User + system CPU time of the whole process (every thread) so far."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def measure(proc, port, clients):
    """(handshakes/s, handshakes, kmsd CPU seconds) of `clients` concurrent
    s_time loops."""
    c0 = cpu_seconds(proc.pid)
    t0 = time.monotonic()
    ps = [subprocess.Popen(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
                            "-tls1_3", "-time", str(SECONDS)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
          for _ in range(clients)]
    total = 0
    for p in ps:
        out, _ = p.communicate(timeout=SECONDS + 60)
        m = re.search(r"(\d+) connections in [\d.]+s", out)
        total += int(m.group(1)) if m else 0
    wall = time.monotonic() - t0
    return total / wall, total, cpu_seconds(proc.pid) - c0


def main():
    uris = make_pki()
    rates = {}
    # Runs alternate between the key file and the HSM key (kmsd restarted
    # each time), so a change in the machine's load during the benchmark
    # lands on both sides rather than on one.
    for run in range(RUNS):
        for kind in ("ec-p256", "rsa-3072"):
            for where, tls in (("key file", {"cert": f"{PKI}/file-{kind}.pem",
                                             "key": f"{PKI}/file-{kind}.key"}),
                               ("HSM key", {"cert": f"{PKI}/hsm-{kind}.pem",
                                            "key_uri": uris[kind]})):
                port = free_port()
                proc = start(config(f"{kind}-{where[0]}", port, tls), port)
                try:
                    for clients in (1, 4):
                        rates.setdefault((kind, where, clients), []).append(
                            measure(proc, port, clients))
                finally:
                    stop(proc)
    rows = []
    for k, v in rates.items():
        r = [x[0] for x in v]
        hs, cpu = sum(x[1] for x in v), sum(x[2] for x in v)
        rows.append((*k, statistics.median(r), min(r), max(r), 1e6 * cpu / hs if hs else 0))
    print(f"kmsd TLS 1.3 full handshakes (openssl s_time -new), {RUNS} runs x {SECONDS} s, "
          f"median (min-max); kmsd CPU per handshake over all runs (HSM included: SoftHSMv2 "
          f"runs in kmsd's process)")
    print(f"{'key':10} {'where':9} {'clients':>7} {'handshakes/s':>13} {'min-max':>13} "
          f"{'kmsd CPU us/handshake':>22}")
    med, cpu = {}, {}
    for kind, where, clients, m, lo, hi, us in rows:
        med[(kind, where, clients)] = m
        cpu[(kind, where, clients)] = us
        print(f"{kind:10} {where:9} {clients:7} {m:13.0f} {f'{lo:.0f}-{hi:.0f}':>13} {us:22.0f}")
    for kind in ("ec-p256", "rsa-3072"):
        for clients in (1, 4):
            f, h = med[(kind, "key file", clients)], med[(kind, "HSM key", clients)]
            cf, ch = cpu[(kind, "key file", clients)], cpu[(kind, "HSM key", clients)]
            if f > 0 and cf > 0:
                print(f"{kind} HSM key / key file, {clients} client(s): handshakes/s "
                      f"{h / f:.2f}, kmsd CPU per handshake {ch / cf:.2f}")


if __name__ == "__main__":
    main()

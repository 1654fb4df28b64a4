"""Key rotation end to end against a real kmsd (started by test_rotate.sh
through the fault-injecting PKCS#11 shim in front of SoftHSMv2).

Usage: rotate_test.py PHASE DIR PORT
  concurrent  16 concurrent RotateKey on one key, several rounds: each
              caller is told the version it made (all distinct, exactly the
              new ones), every reply is a dense snapshot ending with the
              caller's version, the key stays dense, ciphertexts decrypt;
              then one C_GenerateKey failing with CKR_GENERAL_ERROR (once,
              and twice inside a concurrent round) is retried: success,
              numbers dense.
Each phase prints TAP lines `ok N - ...` numbered from its own base.
"""
import http.client
import json
import os
import sys
import threading
import time

import key_pb2 as kpb

PHASE, DIR, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
CTL = os.environ.get("CUSTOS_P11FAULT_CONTROL", "")
STATS = os.environ.get("CUSTOS_P11FAULT_STATS", "")
BASE = {"concurrent": 0, "usage": 100, "hardlimit": 200, "period": 300, "dump": 400}[PHASE]
count = failures = 0


def check(cond, what):
    global count, failures
    count += 1
    print(f"{'ok' if cond else 'not ok'} {BASE + count} - {what}", flush=True)
    failures += 0 if cond else 1
    return cond


def cred(name):
    return open(f"{DIR}/credentials/{name}.key").read().strip()


def rpc(method, req, resp_cls, who="demo-admin", service="KeyService"):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    try:
        conn.request("POST", f"/twirp/custos.v1.{service}/{method}", req.SerializeToString(),
                     {"Content-Type": "application/protobuf",
                      "Authorization": "Bearer " + cred(who)})
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    if r.status == 200:
        return 200, resp_cls.FromString(body)
    try:
        return r.status, json.loads(body)
    except ValueError:
        return r.status, body


def create(spec=kpb.AES_256, **kw):
    usage = kpb.ENCRYPT_DECRYPT if spec == kpb.AES_256 else kpb.METADATA_FIELDS
    s, m = rpc("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=spec, usage=usage, **kw),
               kpb.CreateKeyResponse)
    if s != 200:
        raise RuntimeError(f"CreateKey: {s} {m}")
    return m.key


def describe(key_id):
    s, m = rpc("DescribeKey", kpb.DescribeKeyRequest(key_id=key_id), kpb.DescribeKeyResponse)
    if s != 200:
        raise RuntimeError(f"DescribeKey: {s} {m}")
    return m.key


def rotate(key_id):
    return rpc("RotateKey", kpb.RotateKeyRequest(key_id=key_id), kpb.RotateKeyResponse)


def encrypt(key_id, pt):
    return rpc("Encrypt", kpb.EncryptRequest(key_id=key_id, plaintext=pt), kpb.EncryptResponse,
               who="demo-broker")


def decrypt(ct):
    return rpc("Decrypt", kpb.DecryptRequest(ciphertext=ct), kpb.DecryptResponse,
               who="demo-broker")


def set_faults(text):
    with open(CTL + ".tmp", "w") as f:
        f.write(text)
    os.replace(CTL + ".tmp", CTL)
    time.sleep(0.05)


def stats():
    def read():
        try:
            return dict((k, int(v)) for k, v in
                        (line.split() for line in open(STATS) if line.strip()))
        except (OSError, ValueError):
            return None
    prev = read()
    for _ in range(100):
        time.sleep(0.06)
        cur = read()
        if cur is not None and cur == prev:
            return cur
        prev = cur
    raise RuntimeError("the shim's stats file does not settle")


def dense(key):
    return [v.version for v in key.versions] == list(range(1, key.current_version + 1))


def concurrent_round(key_id, n, what):
    """n RotateKey at once (a barrier releases them together); each thread
    then encrypts once. Returns the list of (status, reply, ciphertext)."""
    barrier = threading.Barrier(n)
    out = [None] * n

    def worker(i):
        barrier.wait()
        s, m = rotate(key_id)
        ct = None
        if s == 200:
            es, em = encrypt(key_id, f"{what} {i}".encode())
            ct = (em.key_version, em.ciphertext, f"{what} {i}".encode()) if es == 200 else es
        out[i] = (s, m, ct)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def check_round(key_id, before, out, what):
    n = len(out)
    statuses = [s for s, _, _ in out]
    if not check(all(s == 200 for s in statuses),
                 f"{what}: all {n} concurrent RotateKey succeed ({statuses})"):
        return before
    told = [m.new_version for _, m, _ in out]
    check(sorted(told) == list(range(before + 1, before + n + 1)),
          f"{what}: the versions told to callers are exactly {before + 1}..{before + n}, "
          f"all distinct (told {sorted(told)})")
    bad = [(m.new_version, m.key.current_version, [v.version for v in m.key.versions])
           for _, m, _ in out
           if not (dense(m.key) and m.key.current_version == m.new_version)]
    check(not bad, f"{what}: every reply is a dense snapshot 1..current whose current "
          f"version is the caller's own ({bad[:3]})")
    key = describe(key_id)
    check(key.current_version == before + n and dense(key),
          f"{what}: DescribeKey afterwards: current {key.current_version}, versions dense "
          f"1..{before + n}")
    cts = [ct for _, _, ct in out]
    ok = all(isinstance(c, tuple) for c in cts)
    wrong = []
    for c in cts:
        if not isinstance(c, tuple):
            continue
        s, m = decrypt(c[1])
        if s != 200 or m.plaintext != c[2] or m.key_version != c[0]:
            wrong.append((c[0], s))
    check(ok and not wrong, f"{what}: every ciphertext made right after a rotation decrypts "
          f"with the version it names (versions {sorted(set(c[0] for c in cts if isinstance(c, tuple)))}; "
          f"bad {wrong[:3]})")
    return before + n


def phase_concurrent():
    key = create(description="rotation race")
    ct1 = encrypt(key.key_id, b"made with v1")
    cur = 1
    for r in range(3):
        out = concurrent_round(key.key_id, 16, f"round {r + 1}")
        cur = check_round(key.key_id, cur, out, f"round {r + 1}")
    # Every version decrypts what it made: v1's ciphertext from the start,
    # the rest above; and after the rounds the newest still encrypts.
    s, m = decrypt(ct1[1].ciphertext)
    check(s == 200 and m.plaintext == b"made with v1" and m.key_version == 1,
          "a ciphertext of version 1 still decrypts after 48 rotations")

    # A metadata key (two HSM objects per version) under the same race.
    mkey = create(spec=kpb.METADATA_AES_HMAC, description="metadata race")
    out = concurrent_round(mkey.key_id, 16, "metadata key")
    statuses = [s for s, _, _ in out]
    told = sorted(m.new_version for s, m, _ in out if s == 200)
    check(all(s == 200 for s in statuses) and told == list(range(2, 18)) and
          dense(describe(mkey.key_id)),
          f"metadata key: 16 concurrent rotations, versions 2..17 told once each, dense "
          f"({statuses}, {told})")

    # ---- a transient token failure on object creation is retried ----------
    s0 = stats()
    set_faults("C_GenerateKey CKR_GENERAL_ERROR count=1\n")
    s, m = rotate(key.key_id)
    set_faults("")
    s1 = stats()
    check(s == 200 and m.new_version == cur + 1 and dense(m.key),
          f"C_GenerateKey failing once with CKR_GENERAL_ERROR: RotateKey succeeds with "
          f"version {cur + 1}, dense ({s}, {m if s != 200 else m.new_version})")
    check(s1.get("C_GenerateKey", 0) - s0.get("C_GenerateKey", 0) == 2,
          "the failed C_GenerateKey was retried once (2 calls)")
    cur += 1
    set_faults("C_GenerateKey CKR_GENERAL_ERROR count=1\n")
    s, m = rpc("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                 usage=kpb.ENCRYPT_DECRYPT),
               kpb.CreateKeyResponse)
    set_faults("")
    check(s == 200 and m.key.current_version == 1,
          f"CreateKey with one CKR_GENERAL_ERROR on C_GenerateKey: retried, succeeds ({s})")

    # Failures in the middle of a concurrent round: the 5th and 6th
    # creations fail; every caller still succeeds and the numbers stay dense.
    set_faults("C_GenerateKey CKR_GENERAL_ERROR after=4 count=2\n")
    out = concurrent_round(key.key_id, 16, "round with 2 injected CKR_GENERAL_ERROR")
    set_faults("")
    cur = check_round(key.key_id, cur, out, "round with 2 injected CKR_GENERAL_ERROR")

    # A token that keeps failing: the caller gets an error after the
    # retries, and the spent number is the only gap (docs/state.md).
    set_faults("C_GenerateKey CKR_GENERAL_ERROR\n")
    s, m = rotate(key.key_id)
    set_faults("")
    check(s == 500 and isinstance(m, dict) and m.get("code") == "internal",
          f"a token failing every creation: 500 internal after the retries ({s} {m})")
    s, m = rotate(key.key_id)
    k = describe(key.key_id)
    vs = [v.version for v in k.versions]
    check(s == 200 and m.new_version == cur + 2 and vs == list(range(1, cur + 1)) + [cur + 2],
          f"the next rotation gets the next number; the failed one's number stays spent "
          f"({vs[-3:]})")


def phase_dump():
    """kmsd is not dumpable and has no core limit (kmsd_main.c): started
    here with RLIMIT_CORE unlimited and cwd DIR (core_pattern "core" writes
    there), the soft and hard limits are raised again from outside
    (prlimit, as root), then SIGABRT. A kmsd that did not turn dumping off
    leaves a core; the dev-mode switch CUSTOS_DEV_DUMPABLE=1 is the control
    that this machine writes cores at all."""
    import glob
    import resource
    import signal
    import subprocess
    kmsd, config = sys.argv[4], sys.argv[5]

    def run(extra_env):
        for f in glob.glob(f"{DIR}/core*"):
            os.unlink(f)
        env = dict(os.environ)
        env.pop("CUSTOS_DEV_DUMPABLE", None)
        env.update(extra_env)
        log = open(f"{DIR}/kmsd-dump.log", "a")
        p = subprocess.Popen([kmsd, "--config", config], cwd=DIR, env=env, stdout=log,
                             stderr=log, preexec_fn=lambda: resource.setrlimit(
                                 resource.RLIMIT_CORE, (resource.RLIM_INFINITY,
                                                        resource.RLIM_INFINITY)))
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
                c.request("GET", "/livez")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                c.close()
            if p.poll() is not None:
                raise RuntimeError("kmsd exited at start")
            time.sleep(0.1)
        limits = open(f"/proc/{p.pid}/limits").read()
        core_line = [l for l in limits.splitlines() if l.startswith("Max core file size")]
        # The flag itself, asked inside kmsd by gdb as root (the debugging
        # route docs/hardening.md gives): PR_GET_DUMPABLE is 3.
        flag = None
        try:
            g = subprocess.run(["gdb", "-p", str(p.pid), "-batch", "-nx", "-ex",
                                "print (int)prctl(3, 0L, 0L, 0L, 0L)"],
                               capture_output=True, text=True, timeout=120)
            for line in g.stdout.splitlines():
                if line.startswith("$1 = "):
                    flag = int(line[5:])
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        p.send_signal(signal.SIGABRT)
        _, status = os.waitpid(p.pid, 0)
        p.returncode = 0
        cores = glob.glob(f"{DIR}/core*")
        for f in cores:
            os.unlink(f)
        return core_line[0].split() if core_line else [], os.WCOREDUMP(status), cores, flag

    limit, dumped, cores, flag = run({})
    check(limit[4:6] == ["0", "0"],
          f"kmsd runs with RLIMIT_CORE 0 (soft and hard) though started with unlimited "
          f"({' '.join(limit)})")
    if flag is None:
        check(True, "PR_GET_DUMPABLE inside kmsd # SKIP gdb cannot attach here")
    else:
        check(flag == 0, f"kmsd is not dumpable: PR_GET_DUMPABLE inside it is {flag}, "
              f"asked by gdb as root, after start-up")
    c_limit, c_dumped, c_cores, c_flag = run({"CUSTOS_DEV_DUMPABLE": "1"})
    if c_dumped or c_cores:
        check(not dumped and not cores,
              f"SIGABRT with cwd writable and core_pattern writing files: no core file, no "
              f"core-dumped status ({dumped}, {cores})")
        check(c_flag in (None, 1), f"control: with CUSTOS_DEV_DUMPABLE=1 in dev mode kmsd is "
              f"dumpable ({c_flag}) and the same SIGABRT writes a core")
    else:
        check(not dumped and not cores, "SIGABRT: no core # SKIP this machine writes no core "
              "files even for a dumpable kmsd (core_pattern)")
        check(True, "control # SKIP no core from a dumpable kmsd either")


{"concurrent": phase_concurrent, "dump": phase_dump}[PHASE]()
sys.exit(1 if failures else 0)

"""Key rotation end to end against a real kmsd (started by test_rotate.sh
through the fault-injecting PKCS#11 shim in front of SoftHSMv2).

Usage: rotate_test.py PHASE DIR PORT
  usage       tiny rotation.usage_rotate_at: the encryption reaching it rotates the
              key (audited as the system's), every GCM encryption counts, /metrics
  usage_restart  the counts survive a clean restart exactly
  hardlimit   rotation impossible: refused past rotation.usage_limit; the sweeper
              rotates once the token is back
  period      rotation periods: CreateKey, UpdateKeyRotation (kmsctl), the sweeper
  dump        no core dumps (kills kmsd with SIGABRT)
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
BASE = {"concurrent": 0, "usage": 100, "usage_restart": 150, "hardlimit": 200, "period": 300,
        "dump": 400}[PHASE]
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


def forge_blobs(key_id, versions, region="eu-west"):
    """(version, blob, plaintext) for each version: AES-256-GCM in the token
    under the object labelled custos:key:<id>:v<N>, AAD = header || 00 00
    (empty context)."""
    import struct
    import PyKCS11 as P
    lib = P.PyKCS11Lib()
    lib.load("/usr/lib/softhsm/libsofthsm2.so")
    pin = open(f"{DIR}/hsm/pins/{region}.pin").read().strip()
    slot = [sl for sl in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(sl).label.strip() == f"custos-{region}"][0]
    sess = lib.openSession(slot)
    sess.login(pin)
    out = []
    try:
        for v in versions:
            objs = sess.findObjects([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                                     (P.CKA_KEY_TYPE, P.CKK_AES),
                                     (P.CKA_LABEL, f"custos:key:{key_id}:v{v}")])
            if len(objs) != 1:
                out.append((v, b"", b"no object"))
                continue
            iv = os.urandom(12)
            header = (bytes([0xC5, 0x01, len(region)]) + region.encode() +
                      bytes.fromhex(key_id) + struct.pack(">I", v) + iv)
            pt = f"made by version {v}".encode()
            ct = bytes(sess.encrypt(objs[0], pt, P.AES_GCM_Mechanism(iv, header + b"\x00\x00",
                                                                    128)))
            out.append((v, header + ct, pt))
    finally:
        sess.logout()
        sess.closeSession()
    return out


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

    # Every version decrypts a ciphertext made with it: the test makes one
    # per version itself, with that version's HSM object (found by its
    # label, through PyKCS11 on the real module) and the documented blob
    # format (docs/ciphertext-format.md), and kmsd must decrypt each.
    bad = []
    for v, blob, pt in forge_blobs(key.key_id, range(1, cur + 1)):
        s, m = decrypt(blob)
        if s != 200 or m.plaintext != pt or m.key_version != v:
            bad.append((v, s))
    check(not bad, f"each of versions 1..{cur} decrypts a ciphertext made with its own HSM "
          f"object ({bad[:5]})")

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


def metrics():
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": "Bearer " + cred("operator")})
        r = conn.getresponse()
        text = r.read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def audit_events():
    import audit_pb2  # noqa: F401
    from audit_lib import Client, export_all
    _, events, _ = export_all(Client(PORT, f"{DIR}/credentials/auditor.key"), "eu-west")
    return events


def system_rotations(key_id):
    return [e for e in audit_events() if e.operation == "RotateKey" and e.key_id == key_id and
            e.principal == "custos:system"]


def versions_of(key):
    return {v.version: v for v in key.versions}


def wait_for(pred, seconds=30):
    """Poll pred until it is true or seconds pass (the sweeper runs every
    second in these configurations); returns pred's last value."""
    end = time.monotonic() + seconds
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(0.2)


def phase_usage():
    """rotation.usage_rotate_at 10, usage_limit 20, usage_reserve_block 4,
    deletion.sweep_interval_s 1 (test_rotate.sh)."""
    import fields_pb2 as fpb
    m0 = metrics()
    key = create(description="usage threshold")
    for i in range(9):
        s, m = encrypt(key.key_id, b"count me %d" % i)
        assert s == 200, (s, m)
    k = describe(key.key_id)
    check(k.current_version == 1 and versions_of(k)[1].encryptions == 9,
          f"9 Encrypts: DescribeKey counts 9 encryptions under version 1 "
          f"({versions_of(k)[1].encryptions})")
    s, m = encrypt(key.key_id, b"the tenth")
    tenth = m
    check(s == 200 and m.key_version == 1,
          f"the 10th Encrypt (reaching usage_rotate_at) is still made with version 1 ({s})")
    k = describe(key.key_id)
    check(k.current_version == 2 and dense(k) and versions_of(k)[1].encryptions == 10 and
          versions_of(k)[2].encryptions == 0,
          f"and the key has rotated to version 2 by itself (current {k.current_version}, "
          f"v1 {versions_of(k)[1].encryptions}, "
          f"v2 {versions_of(k)[2].encryptions if 2 in versions_of(k) else None})")
    s, m = encrypt(key.key_id, b"after")
    check(s == 200 and m.key_version == 2, "the next Encrypt uses version 2")
    s, d = decrypt(tenth.ciphertext)
    check(s == 200 and d.plaintext == b"the tenth", "version 1's ciphertexts still decrypt")
    # The export reaches the last signed head (every 5 s here): wait for it.
    ev = wait_for(lambda: system_rotations(key.key_id))
    check(len(ev) == 1 and ev[0].role == "system" and ev[0].outcome == "ok" and
          ev[0].key_version == 2 and "automatic rotation" in ev[0].detail and
          "reached 10 encryptions" in ev[0].detail,
          f"the rotation is audited: RotateKey by custos:system, role system, version 2, "
          f"detail {[e.detail for e in ev]}")

    # Every GCM encryption counts: GenerateDataKey, ReEncrypt, EncryptFields.
    for _ in range(2):
        s, m = rpc("GenerateDataKey", kpb.GenerateDataKeyRequest(key_id=key.key_id),
                   kpb.GenerateDataKeyResponse, who="demo-broker")
        assert s == 200, (s, m)
    s, m = rpc("ReEncrypt", kpb.ReEncryptRequest(ciphertext=tenth.ciphertext,
                                                 destination_key_id=key.key_id),
               kpb.ReEncryptResponse, who="demo-broker")
    check(s == 200 and m.key_version == 2, f"ReEncrypt into the key ({s})")
    k = describe(key.key_id)
    check(versions_of(k)[2].encryptions == 4,
          f"Encrypt + 2 GenerateDataKey + ReEncrypt: version 2 counts 4 "
          f"({versions_of(k)[2].encryptions})")
    mkey = create(spec=kpb.METADATA_AES_HMAC, description="fields usage")
    req = fpb.EncryptFieldsRequest(key_id=mkey.key_id, fields=[
        fpb.PlaintextField(name="sender", value=b"+33600000001",
                           mode=fpb.FIELD_MODE_RANDOMIZED),
        fpb.PlaintextField(name="recipient", value=b"+33600000002",
                           mode=fpb.FIELD_MODE_DETERMINISTIC),
        fpb.PlaintextField(name="ts", value=b"1700000000", mode=fpb.FIELD_MODE_RANDOMIZED)])
    s, m = rpc("EncryptFields", req, fpb.EncryptFieldsResponse, who="demo-broker",
               service="FieldService")
    k = describe(mkey.key_id)
    check(s == 200 and versions_of(k)[1].encryptions == 3,
          f"EncryptFields with 3 fields counts 3 under the metadata key "
          f"({s}, {versions_of(k)[1].encryptions})")
    m1 = metrics()
    check(m1.get("custos_gcm_encryptions_total", 0) - m0.get("custos_gcm_encryptions_total", 0)
          == 17 and m1.get('custos_key_rotations_automatic_total{reason="usage"}') == 1 and
          m1.get('custos_key_version_encryptions_limit{kind="rotate_at"}') == 10 and
          m1.get('custos_key_version_encryptions_limit{kind="limit"}') == 20 and
          m1.get("custos_key_version_encryptions_max", 0) >= 10,
          f"/metrics: 17 GCM encryptions counted (10 + 4 + 3), one automatic rotation (usage), the "
          f"configured threshold and limit, the highest count "
          f"({ {k: v for k, v in m1.items() if 'gcm' in k or 'encryptions' in k or 'automatic' in k} })")
    return key.key_id


def phase_usage_restart():
    """After a clean restart (SIGTERM): unused reservations given back, the
    counts exact."""
    key_id = open(f"{DIR}/usage-key").read().strip()
    k = describe(key_id)
    check(versions_of(k)[1].encryptions == 10 and versions_of(k)[2].encryptions == 4,
          f"after a clean restart DescribeKey still says 10 and 4 (reservations of 4 given "
          f"back): {[(v.version, v.encryptions) for v in k.versions]}")


def phase_hardlimit():
    """Automatic rotation failing (every C_GenerateKey refused by the token):
    encryptions go on under the old version up to usage_limit (20), then
    are refused; once the token recovers, the sweeper rotates and
    encryption resumes."""
    key = create(description="hard limit")
    set_faults("C_GenerateKey CKR_DEVICE_ERROR\n")
    statuses = []
    for i in range(20):
        s, m = encrypt(key.key_id, b"under v1 %d" % i)
        statuses.append(s if s != 200 else m.key_version)
    check(statuses == [1] * 20,
          f"with rotation impossible, 20 Encrypts succeed under version 1 ({statuses})")
    s, m = encrypt(key.key_id, b"one too many")
    check(s == 412 and isinstance(m, dict) and m.get("code") == "failed_precondition" and
          "limit of 20" in m.get("msg", "") and "RotateKey" in m.get("msg", ""),
          f"the 21st is refused: 412 failed_precondition naming the limit ({s} {m})")
    s, m = rpc("GenerateDataKey", kpb.GenerateDataKeyRequest(key_id=key.key_id),
               kpb.GenerateDataKeyResponse, who="demo-broker")
    check(s == 412, f"and so is GenerateDataKey ({s})")
    k = describe(key.key_id)
    check(k.current_version == 1 and versions_of(k)[1].encryptions == 20,
          f"the count stops at the limit: {versions_of(k)[1].encryptions}")
    ev = wait_for(lambda: [e for e in audit_events() if e.key_id == key.key_id and
                           e.operation == "Encrypt" and e.outcome == "failed_precondition"] and
                  [e for e in audit_events() if e.key_id == key.key_id])
    failed_auto = [e for e in ev if e.principal == "custos:system" and e.outcome != "ok"]
    refused = [e for e in ev if e.operation == "Encrypt" and e.outcome == "failed_precondition"]
    check(failed_auto and refused,
          f"failed automatic rotations ({len(failed_auto)}) and the refusal ({len(refused)}) "
          f"are audited")
    set_faults("")
    k = wait_for(lambda: (lambda k: k if k.current_version > 1 else None)(describe(key.key_id)))
    vs = [v.version for v in k.versions] if k else []
    check(bool(k) and vs == [1, k.current_version],
          f"the token back, the sweeper rotates the key (versions {vs})")
    s, m = encrypt(key.key_id, b"fresh")
    check(s == 200 and k and m.key_version == k.current_version,
          f"and Encrypt works again, with the new version ({s})")
    # Each failed try spent its number (docs/state.md): the audit log names
    # every one, and none of them is a version of the key.
    ev = wait_for(lambda: (lambda ev: ev if any(e.outcome == "ok" for e in ev) else None)(
        system_rotations(key.key_id))) or []
    spent = sorted(e.key_version for e in ev if e.outcome != "ok" and e.key_version)
    check(k and spent and set(spent) == set(range(2, k.current_version)),
          f"the failed automatic rotations are audited with the numbers they spent "
          f"({spent}, new version {k.current_version if k else '?'})")


def phase_period():
    """rotation.min_period_s 2 (dev mode), deletion.sweep_interval_s 1."""
    import subprocess
    kmsctl = sys.argv[4]
    s, m = rpc("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                 usage=kpb.ENCRYPT_DECRYPT,
                                                 rotation_period_s=1),
               kpb.CreateKeyResponse)
    check(s == 400 and m.get("code") == "invalid_argument" and "2.." in m.get("msg", ""),
          f"a period below rotation.min_period_s is refused ({s} {m})")
    s, m = rpc("CreateKey", kpb.CreateKeyRequest(region="eu-west", spec=kpb.AES_256,
                                                 usage=kpb.ENCRYPT_DECRYPT,
                                                 origin=kpb.EXTERNAL, rotation_period_s=60),
               kpb.CreateKeyResponse)
    check(s == 400 and m.get("code") == "invalid_argument",
          f"an EXTERNAL (BYOK) key cannot carry a period ({s} {m})")
    key = create(description="periodic", rotation_period_s=2)
    check(key.rotation_period_s == 2 and key.next_rotation_at == key.versions[0].created_at + 2,
          f"CreateKey with a period: DescribeKey-style reply shows it and the next rotation "
          f"({key.rotation_period_s}, {key.next_rotation_at})")
    k = wait_for(lambda: (lambda k: k if k.current_version >= 3 else None)(describe(key.key_id)))
    check(bool(k) and dense(k), f"the sweeper rotates it every period (now at version "
          f"{k.current_version if k else '?'}), versions dense")
    ev = wait_for(lambda: (lambda ev: ev if len(ev) >= 2 else None)(system_rotations(key.key_id)))
    ev = ev or []
    check(len(ev) >= 2 and all(e.outcome == "ok" and e.role == "system" and
                               "rotation period elapsed" in e.detail for e in ev),
          f"each is audited as RotateKey by custos:system ({[e.detail for e in ev][:3]})")

    # kmsctl: set and clear a period on an existing key; describe shows it.
    env = dict(os.environ, CUSTOS_ADDR=f"http://127.0.0.1:{PORT}",
               CUSTOS_API_KEY_FILE=f"{DIR}/credentials/demo-admin.key")
    other = create(description="set later")
    r = subprocess.run([kmsctl, "key", "set-rotation", other.key_id, "--rotation-period", "2s"],
                       env=env, capture_output=True, text=True)
    check(r.returncode == 0 and "rotation_period: 2 s" in r.stdout and
          "next_rotation:" in r.stdout,
          f"kmsctl key set-rotation --rotation-period 2s ({r.returncode} {r.stderr.strip()})")
    k = wait_for(lambda: (lambda k: k if k.current_version >= 2 else None)(describe(other.key_id)))
    check(bool(k), "the period set afterwards takes effect")
    r = subprocess.run([kmsctl, "key", "set-rotation", other.key_id, "--rotation-period", "0"],
                       env=env, capture_output=True, text=True)
    check(r.returncode == 0 and "rotation_period" not in r.stdout,
          f"kmsctl key set-rotation --rotation-period 0 clears it ({r.returncode})")
    before = describe(other.key_id).current_version
    time.sleep(4)  # four sweeps
    after = describe(other.key_id)
    check(after.current_version == before and after.rotation_period_s == 0 and
          after.next_rotation_at == 0,
          f"cleared: no more automatic rotations ({before} -> {after.current_version})")
    r = subprocess.run([kmsctl, "key", "describe", key.key_id, "--json"], env=env,
                       capture_output=True, text=True)
    j = json.loads(r.stdout) if r.returncode == 0 else {}
    check(j.get("rotation_period_s") == 2 and all("encryptions" in v for v in j.get("versions", [])),
          "kmsctl key describe --json shows rotation_period_s and each version's encryptions")
    # Another tenant's admin, and a broker, may not set it.
    s, m = rpc("UpdateKeyRotation", kpb.UpdateKeyRotationRequest(key_id=key.key_id,
                                                                 rotation_period_s=0),
               kpb.UpdateKeyRotationResponse, who="other-admin")
    s2, _ = rpc("UpdateKeyRotation", kpb.UpdateKeyRotationRequest(key_id=key.key_id,
                                                                  rotation_period_s=0),
                kpb.UpdateKeyRotationResponse, who="demo-broker")
    check(s == 404 and s2 == 403, f"UpdateKeyRotation by another tenant's admin: 404; by a "
          f"broker: 403 ({s}, {s2})")
    s, m = rpc("UpdateKeyRotation", kpb.UpdateKeyRotationRequest(key_id=key.key_id,
                                                                 rotation_period_s=10 ** 10),
               kpb.UpdateKeyRotationResponse)
    check(s == 400, f"a period over 10 years is refused ({s})")


PHASES = {"concurrent": phase_concurrent, "dump": phase_dump, "usage": phase_usage,
          "usage_restart": phase_usage_restart, "hardlimit": phase_hardlimit,
          "period": phase_period}
result = PHASES[PHASE]()
if PHASE == "usage":
    open(f"{DIR}/usage-key", "w").write(result)
sys.exit(1 if failures else 0)

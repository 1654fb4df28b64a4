#!/usr/bin/python3
"""xks_restart_replay.py - one signed Decrypt kept across a kmsd restart.

  xks_restart_replay.py sign|send|fresh PORT ACCESS_KEY SECRET_FILE KEY_ID REQ_FILE

sign:  encrypt, sign a Decrypt of it, keep its bytes in REQ_FILE (0600), send it.
send:  send the kept request again, byte for byte.
fresh: encrypt and decrypt with a new signature.
Prints "STATUS ERRORNAME PLAINTEXT_OK". Secrets never go to argv or output.
"""
import base64
import json
import os
import sys
import urllib.error
import urllib.request

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

mode, port, ak, skf, key, reqf = sys.argv[1:]
sk = open(skf).read().strip()
base = "http://127.0.0.1:%s/demo-xks/kms/xks/v1/keys/%s/" % (port, key)
PT = b"restart"


def md(op, rid):
    return {"awsPrincipalArn": "arn:aws:iam::123456789012:user/Bob",
            "kmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/r", "kmsOperation": op,
            "kmsRequestId": rid}


def signed(op, body):
    r = AWSRequest(method="POST", url=base + op, data=json.dumps(body).encode(),
                   headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ak, sk), "kms-xks-proxy", "eu-west-1").add_auth(r)
    p = r.prepare()
    return {"url": p.url, "headers": dict(p.headers), "body": p.body.decode()}


def send(p):
    req = urllib.request.Request(p["url"], data=p["body"].encode(), headers=p["headers"])
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


if mode == "send":
    p = json.load(open(reqf))
else:
    st, enc = send(signed("encrypt", {"requestMetadata": md("Encrypt", "restart-enc-" + mode),
                                      "plaintext": base64.b64encode(PT).decode(),
                                      "encryptionAlgorithm": "AES_GCM"}))
    dec = {"requestMetadata": md("Decrypt", "restart-dec-" + mode),
           "encryptionAlgorithm": "AES_GCM"}
    for k in ("ciphertext", "ciphertextMetadata", "initializationVector", "authenticationTag"):
        dec[k] = enc.get(k)
    p = signed("decrypt", dec)
    if mode == "sign":
        fd = os.open(reqf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, json.dumps(p).encode())
        os.close(fd)
st, res = send(p)
print(st, res.get("errorName", "-"), base64.b64decode(res.get("plaintext", "")) == PT)

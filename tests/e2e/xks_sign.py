#!/usr/bin/python3
"""xks_sign.py - requests signed by independent SigV4 signers, for the XKS tests.

  xks_sign.py botocore ACCESS SECRET REGION URL BODY
      sign a POST of BODY (application/json) to URL with botocore's SigV4Auth
      (service kms-xks-proxy) and print the raw HTTP/1.1 request.
  xks_sign.py curl ACCESS SECRET REGION PATH BODY
      listen on 127.0.0.1 (ephemeral port), run curl --aws-sigv4 against it,
      capture the raw request curl sends and print it.

The C unit test (tests/unit/test_xks_sigv4.c) parses the printed request and
verifies it with kmsd's verifier, so a canonicalisation that differs from
AWS's own signer (botocore) or from curl's fails there.
"""
import socket
import subprocess
import sys
import threading


def botocore_request(access, secret, region, url, body):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from urllib.parse import urlsplit

    req = AWSRequest(method="POST", url=url, data=body.encode(),
                     headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(access, secret), "kms-xks-proxy", region).add_auth(req)
    u = urlsplit(url)
    target = u.path + ("?" + u.query if u.query else "")
    out = ["POST %s HTTP/1.1" % target, "Host: %s" % u.netloc]
    for k, v in req.headers.items():
        out.append("%s: %s" % (k, v))
    out.append("Content-Length: %d" % len(body.encode()))
    return ("\r\n".join(out) + "\r\n\r\n").encode() + body.encode()


def curl_request(access, secret, region, path, body):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = bytearray()

    def serve():
        conn, _ = srv.accept()
        conn.settimeout(10)
        while b"\r\n\r\n" not in got:
            got.extend(conn.recv(65536))
        head, _, rest = bytes(got).partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            rest += chunk
            got.extend(chunk)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    # The secret reaches curl through a config file on stdin, not argv.
    cfg = 'user = "%s:%s"\n' % (access, secret)
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-K", "-",
                    "--aws-sigv4", "aws:amz:%s:kms-xks-proxy" % region,
                    "-H", "Content-Type: application/json", "--data-binary", body,
                    "http://127.0.0.1:%d%s" % (port, path)],
                   input=cfg.encode(), check=True)
    t.join()
    srv.close()
    return bytes(got)


def main():
    mode, access, secret, region, where, body = sys.argv[1:7]
    if mode == "botocore":
        raw = botocore_request(access, secret, region, where, body)
    elif mode == "curl":
        raw = curl_request(access, secret, region, where, body)
    else:
        sys.exit("unknown mode " + mode)
    sys.stdout.buffer.write(raw)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Make kmsd's TLS key pair inside a token, for tls.key_uri
(docs/configuration.md, "TLS key in the HSM").

  deploy/tls-hsm-key.py --token custos-eu-west --pin-source file:hsm/pins/eu-west.pin \\
      --label kmsd-tls [--type ec-p256|rsa-2048|rsa-3072|rsa-4096] [--id HEX] \\
      --pubout kmsd-tls.pub.pem \\
      [--ca-cert ca.pem --ca-key ca.key --cert-out server.pem --cn NAME --san IP:1.2.3.4 ...]

The pair is generated in the token with a defensive template: the private
half is a token object, private, sensitive, never extractable, and may only
sign; the public half may only verify. The public key is written as PEM
(SubjectPublicKeyInfo) for the certificate request; with --ca-cert and
--ca-key a server certificate for it is issued at once, signed by that CA
key file (a development or test CA; a production CA signs the public key
by its own procedure). Prints the pkcs11: URI to put in tls.key_uri.

The PIN is read from the pin source (file:PATH or env:NAME), never from
the command line. Module: $CUSTOS_PKCS11_MODULE, else SoftHSMv2's.
Refuses to run when the token already holds a private key with the label.
Needs python3-pykcs11 and python3-cryptography.
"""
import argparse
import datetime
import ipaddress
import os
import secrets
import sys
import urllib.parse

import PyKCS11 as P
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")


def read_pin(source):
    if source.startswith("file:"):
        with open(source[5:]) as f:
            return f.read().strip()
    if source.startswith("env:"):
        v = os.environ.get(source[4:])
        if v is None:
            sys.exit(f"tls-hsm-key: environment variable {source[4:]} is not set")
        return v.strip()
    sys.exit("tls-hsm-key: --pin-source must be file:PATH or env:NAME")


def open_token(lib, label):
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() == label:
            return slot
    sys.exit(f"tls-hsm-key: no token labelled {label}")


def generate(session, kind, label, key_id):
    common_pub = [(P.CKA_TOKEN, True), (P.CKA_PRIVATE, False), (P.CKA_VERIFY, True),
                  (P.CKA_ENCRYPT, False), (P.CKA_WRAP, False), (P.CKA_DERIVE, False),
                  (P.CKA_LABEL, label), (P.CKA_ID, key_id)]
    common_priv = [(P.CKA_TOKEN, True), (P.CKA_PRIVATE, True), (P.CKA_SENSITIVE, True),
                   (P.CKA_EXTRACTABLE, False), (P.CKA_SIGN, True), (P.CKA_DECRYPT, False),
                   (P.CKA_UNWRAP, False), (P.CKA_DERIVE, False), (P.CKA_MODIFIABLE, False),
                   (P.CKA_LABEL, label), (P.CKA_ID, key_id)]
    if kind == "ec-p256":
        pub = [(P.CKA_CLASS, P.CKO_PUBLIC_KEY), (P.CKA_KEY_TYPE, P.CKK_EC),
               (P.CKA_EC_PARAMS, P256_PARAMS)] + common_pub
        priv = [(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_KEY_TYPE, P.CKK_EC)] + common_priv
        mech = P.Mechanism(P.CKM_EC_KEY_PAIR_GEN, None)
    else:
        bits = int(kind.split("-")[1])
        pub = [(P.CKA_CLASS, P.CKO_PUBLIC_KEY), (P.CKA_KEY_TYPE, P.CKK_RSA),
               (P.CKA_MODULUS_BITS, bits), (P.CKA_PUBLIC_EXPONENT, (0x01, 0x00, 0x01))] + common_pub
        priv = [(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_KEY_TYPE, P.CKK_RSA)] + common_priv
        mech = P.Mechanism(P.CKM_RSA_PKCS_KEY_PAIR_GEN, None)
    return session.generateKeyPair(pub, priv, mecha=mech)


def public_key(session, pub_handle, kind):
    if kind == "ec-p256":
        (point,) = session.getAttributeValue(pub_handle, [P.CKA_EC_POINT])
        point = bytes(point)
        # CKA_EC_POINT is the DER OCTET STRING of the point (PKCS#11 2.40).
        if point[0] == 0x04 and point[1] == len(point) - 2:
            point = point[2:]
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    n, e = session.getAttributeValue(pub_handle, [P.CKA_MODULUS, P.CKA_PUBLIC_EXPONENT])
    return rsa.RSAPublicNumbers(int.from_bytes(bytes(e), "big"),
                                int.from_bytes(bytes(n), "big")).public_key()


def issue(pub, args):
    ca_cert = x509.load_pem_x509_certificate(open(args.ca_cert, "rb").read())
    ca_key = serialization.load_pem_private_key(open(args.ca_key, "rb").read(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = []
    for s in args.san:
        kind, _, value = s.partition(":")
        if kind == "IP":
            sans.append(x509.IPAddress(ipaddress.ip_address(value)))
        elif kind == "DNS":
            sans.append(x509.DNSName(value))
        else:
            sys.exit(f"tls-hsm-key: --san {s}: use IP:ADDRESS or DNS:NAME")
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, args.cn)]))
         .issuer_name(ca_cert.subject).public_key(pub)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=args.days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), False)
    cert = b.sign(ca_key, hashes.SHA256())
    with open(args.cert_out, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--token", required=True, help="token label")
    ap.add_argument("--pin-source", required=True, help="file:PATH or env:NAME")
    ap.add_argument("--label", required=True, help="CKA_LABEL of the pair (URI object=)")
    ap.add_argument("--id", help="CKA_ID in hex (default: 16 random bytes)")
    ap.add_argument("--type", default="ec-p256",
                    choices=["ec-p256", "rsa-2048", "rsa-3072", "rsa-4096"])
    ap.add_argument("--pubout", required=True, help="where the public key PEM goes")
    ap.add_argument("--ca-cert")
    ap.add_argument("--ca-key")
    ap.add_argument("--cert-out")
    ap.add_argument("--cn", default="kmsd")
    ap.add_argument("--san", action="append", default=[])
    ap.add_argument("--days", type=int, default=365)
    args = ap.parse_args()
    if bool(args.ca_cert) != bool(args.ca_key) or bool(args.ca_cert) != bool(args.cert_out):
        sys.exit("tls-hsm-key: --ca-cert, --ca-key and --cert-out go together")

    lib = P.PyKCS11Lib()
    lib.load(os.environ.get("CUSTOS_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
    slot = open_token(lib, args.token)
    session = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
    session.login(read_pin(args.pin_source))
    try:
        if session.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_LABEL, args.label)]):
            sys.exit(f"tls-hsm-key: token {args.token} already holds a private key "
                     f"labelled {args.label}")
        key_id = bytes.fromhex(args.id) if args.id else secrets.token_bytes(16)
        pub_h, _ = generate(session, args.type, args.label, key_id)
        pub = public_key(session, pub_h, args.type)
    finally:
        session.logout()
        session.closeSession()
    with open(args.pubout, "wb") as f:
        f.write(pub.public_bytes(serialization.Encoding.PEM,
                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    if args.ca_cert:
        issue(pub, args)
    q = lambda s: urllib.parse.quote(s, safe="")
    print(f"pkcs11:token={q(args.token)};object={q(args.label)};type=private")


if __name__ == "__main__":
    main()

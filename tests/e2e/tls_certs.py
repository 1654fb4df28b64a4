"""Hostile client certificates for test_tls.sh that the openssl command
line cannot make directly: an expired leaf signed by the real CA, and a
leaf under two intermediates that certify each other (a cyclic chain).

Usage: tls_certs.py PKI_DIR   (ca.pem/ca.key must exist)
Writes expired.{pem,key} and cyclic.{pem,key} (cyclic.pem holds the leaf
followed by both intermediates, the chain the client sends).
"""
import datetime
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PKI = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Custos Dev"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def cert(subject, pub, issuer, issuer_key, start, end, ca=False):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
         .serial_number(x509.random_serial_number()).not_valid_before(start)
         .not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    return b.sign(issuer_key, hashes.SHA256())


def save(stem, key, *certs):
    with open(f"{PKI}/{stem}.key", "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(f"{PKI}/{stem}.pem", "wb") as f:
        for c in certs:
            f.write(c.public_bytes(serialization.Encoding.PEM))


ca_cert = x509.load_pem_x509_certificate(open(f"{PKI}/ca.pem", "rb").read())
ca_key = serialization.load_pem_private_key(open(f"{PKI}/ca.key", "rb").read(), None)

k = ec.generate_private_key(ec.SECP256R1())
save("expired", k, cert(name("demo-broker"), k.public_key(), ca_cert.subject, ca_key,
                        now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)))

ka, kb, kl = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
na, nb = name("Cycle A"), name("Cycle B")
a = cert(na, ka.public_key(), nb, kb, now - datetime.timedelta(days=1),
         now + datetime.timedelta(days=2), ca=True)
b = cert(nb, kb.public_key(), na, ka, now - datetime.timedelta(days=1),
         now + datetime.timedelta(days=2), ca=True)
leaf = cert(name("demo-broker"), kl.public_key(), na, ka, now - datetime.timedelta(days=1),
            now + datetime.timedelta(days=2))
save("cyclic", kl, leaf, a, b)

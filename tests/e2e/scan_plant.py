"""Plant objects that break the key templates, one per rule, in a token made
for the purpose, so that test_template_scan.sh can show that the scanner
catches each (a scanner that finds nothing proves nothing by itself).

Usage: scan_plant.py HSM_DIR REGION [MODULE]
"""
import os
import sys

import PyKCS11 as P

HSM_DIR, REGION = sys.argv[1], sys.argv[2]
MODULE = sys.argv[3] if len(sys.argv) > 3 else os.environ.get(
    "CUSTOS_TEST_MODULE", "/usr/lib/softhsm/libsofthsm2.so")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p11_module  # noqa: E402

lib = p11_module.pykcs11(MODULE)
slot = next(s for s in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(s).label.strip() == f"custos-{REGION}")
with open(f"{HSM_DIR}/pins/{REGION}.pin") as f:
    pin = f.read().strip()
s = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
s.login(pin)


def aes(label, over):
    a = {P.CKA_CLASS: P.CKO_SECRET_KEY, P.CKA_KEY_TYPE: P.CKK_AES, P.CKA_VALUE_LEN: 32,
         P.CKA_TOKEN: True, P.CKA_PRIVATE: True, P.CKA_SENSITIVE: True,
         P.CKA_EXTRACTABLE: False, P.CKA_ENCRYPT: False, P.CKA_DECRYPT: False,
         P.CKA_WRAP: False, P.CKA_UNWRAP: False, P.CKA_SIGN: False, P.CKA_VERIFY: False,
         P.CKA_DERIVE: False, P.CKA_LABEL: label, P.CKA_ID: tuple(os.urandom(16))}
    a.update(over)
    s.generateKey(list(a.items()), P.Mechanism(P.CKM_AES_KEY_GEN))


aes("plant:wrap-and-decrypt", {P.CKA_WRAP: True, P.CKA_DECRYPT: True})
aes("plant:extractable", {P.CKA_ENCRYPT: True, P.CKA_DECRYPT: True, P.CKA_EXTRACTABLE: True})
aes("plant:not-sensitive", {P.CKA_ENCRYPT: True, P.CKA_DECRYPT: True, P.CKA_SENSITIVE: False})
aes("plant:unwrap-no-template", {P.CKA_WRAP: True, P.CKA_UNWRAP: True})
# The escrow key's template (unwrap forces only CKA_SENSITIVE) is allowed for
# the one key labelled custos:escrow:REGION, and for nothing else.
escrow_like = {P.CKA_WRAP: True, P.CKA_UNWRAP: True,
               P.CKA_UNWRAP_TEMPLATE: [(P.CKA_SENSITIVE, True)]}
aes("plant:escrow-like", escrow_like)
aes(f"custos:escrow:{REGION}", escrow_like)  # a second one: the dev setup made the first
n = 6
if "softhsm" in MODULE:
    # A key with neither id nor label but with key material is a key, and
    # one that is not sensitive: the husk rule must not excuse it.
    s.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
                   (P.CKA_VALUE_LEN, 32), (P.CKA_TOKEN, True), (P.CKA_PRIVATE, True),
                   (P.CKA_SENSITIVE, False), (P.CKA_ENCRYPT, True), (P.CKA_WRAP, False),
                   (P.CKA_UNWRAP, False)], P.Mechanism(P.CKM_AES_KEY_GEN))
    # A husk, made the way SoftHSMv2 makes them: a creation refused at the
    # template step (CKA_LOCAL is read-only) after the object's file was
    # written with default attributes. The call fails; the husk stays.
    try:
        s.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
                       (P.CKA_VALUE_LEN, 32), (P.CKA_TOKEN, True), (P.CKA_LOCAL, True),
                       (P.CKA_LABEL, "plant:husk"), (P.CKA_ID, (1, 2, 3))],
                      P.Mechanism(P.CKM_AES_KEY_GEN))
        sys.exit("scan_plant: SoftHSMv2 accepted a read-only CKA_LOCAL")
    except P.PyKCS11Error as e:
        assert e.value == P.CKR_ATTRIBUTE_READ_ONLY, e
    n += 2
s.logout()
s.closeSession()
print(f"planted {n} objects")

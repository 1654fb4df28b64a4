"""Change a token behind kmsd's back, with PyKCS11 (never kmsd's own code),
for test_missing_objects.sh.

token_objects.py delete DIR REGION KEY_ID   destroy every object labelled
                                            custos:key:KEY_ID... in the
                                            region's token; print how many
"""
import os
import sys

import PyKCS11

MODE, DIR, REGION, KEY_ID = sys.argv[1:5]
assert MODE == "delete"
lib = PyKCS11.PyKCS11Lib()
lib.load(os.environ.get("CUSTOS_TEST_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
n = 0
for slot in lib.getSlotList(tokenPresent=True):
    if lib.getTokenInfo(slot).label.strip() != f"custos-{REGION}":
        continue
    s = lib.openSession(slot, PyKCS11.CKF_RW_SESSION | PyKCS11.CKF_SERIAL_SESSION)
    # The PIN is read from its file, never from argv.
    s.login(open(f"{DIR}/hsm/pins/{REGION}.pin").read().strip())
    for o in s.findObjects([(PyKCS11.CKA_TOKEN, True)]):
        lab = s.getAttributeValue(o, [PyKCS11.CKA_LABEL])[0]
        lab = lab if isinstance(lab, str) else bytes(lab).decode(errors="replace")
        if lab.startswith(f"custos:key:{KEY_ID}"):
            s.destroyObject(o)
            n += 1
    s.logout()
    s.closeSession()
print(n)

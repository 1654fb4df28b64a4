"""Key-template scan: every object of every token of an installation against
DESIGN.md's key templates ("Keys in the HSM"), read independently of
pkcs11/ through PyKCS11 (and ctypes for CKA_UNWRAP_TEMPLATE, which PyKCS11
cannot read).

Usage: scan_templates.py HSM_DIR [MODULE]      (e2e_scan_tokens in lib.sh)

HSM_DIR is what deploy/dev-hsm.sh made: tokens labelled custos-REGION, user
PINs in HSM_DIR/pins/REGION.pin (read here, never passed on a command line).

A secret or private key violates the templates when it
  - is not CKA_TOKEN+CKA_PRIVATE+CKA_SENSITIVE, or can derive;
  - is CKA_EXTRACTABLE, unless escrow is pending for it: its CKA_ID (hex)
    is listed in the file named by $CUSTOS_SCAN_ESCROW_PENDING (escrow
    fills this in; without it no key may be extractable);
  - can wrap or unwrap and also encrypt, decrypt or sign (key separation);
  - can unwrap without a CKA_UNWRAP_TEMPLATE forcing CKA_SENSITIVE=true and
    CKA_EXTRACTABLE=false on what it unwraps. One exception: the region's
    escrow key (label custos:escrow:REGION, at most one per token) forces
    only CKA_SENSITIVE=true, because an EXPORT_WRAPPED recovery needs one
    extractable session copy of a recovered key (docs/escrow-recovery.md).
A public key violates them when it can both wrap and encrypt.

A key object that reads CKA_TOKEN false, with no CKA_ID, no label and no
key material (a secret key whose CKA_VALUE_LEN is 0; a private or public
key with neither a modulus nor EC parameters or point) is a husk, not a
key. This scanner is a process of its own, so it sees no session object of
anyone's: an object it finds is a file in the token directory, and one
that says CKA_TOKEN false never received the template it was made with
(every real token object, a nameless one included, reads CKA_TOKEN true;
an unwrapped key also reads CKA_VALUE_LEN 0 on SoftHSMv2, so the CKA_TOKEN
test is what keeps such a key checked). SoftHSMv2 leaves a husk on
the token when a creation fails after it wrote the new object's file with
default attributes (C_GenerateKey, C_UnwrapKey and C_CreateObject refused
at the template step, or a retried transient failure; docs/pkcs11.md,
"Husks"). It holds nothing to protect, so it is listed as "# husk: ..."
and does not fail the scan; kmsd's reconcile destroys husks at start.

Prints "ok - ..." when every object conforms, else "not ok - ..." with one
line per violation, and exits 1.
"""
import ctypes
import glob
import os
import sys
import time

import PyKCS11 as P

HSM_DIR = sys.argv[1]
MODULE = sys.argv[2] if len(sys.argv) > 2 else "/usr/lib/softhsm/libsofthsm2.so"


class Attr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_ulong), ("pValue", ctypes.c_void_p),
                ("ulValueLen", ctypes.c_ulong)]


# The same loaded module as PyKCS11's (dlopen returns the same handle), so
# its session handles are valid here.
# Through the function list: NSS's softoken exports no C_ symbol but
# C_GetFunctionList (p11_module.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p11_module  # noqa: E402

get_attribute_value = p11_module.function_list(MODULE).fn(
    p11_module.C_GET_ATTRIBUTE_VALUE, ctypes.c_ulong, ctypes.c_ulong, ctypes.POINTER(Attr),
    ctypes.c_ulong)


def unwrap_template(session, obj):
    """{CKA_x: bytes} of the object's CKA_UNWRAP_TEMPLATE, or None if absent."""
    sh, oh = session.session.value(), obj.value()
    a = Attr(P.CKA_UNWRAP_TEMPLATE, None, 0)
    if get_attribute_value(sh, oh, ctypes.byref(a), 1) != 0 or a.ulValueLen == 0:
        return None
    n = a.ulValueLen // ctypes.sizeof(Attr)
    inner = (Attr * n)()
    a.pValue, a.ulValueLen = ctypes.cast(inner, ctypes.c_void_p), n * ctypes.sizeof(Attr)
    if get_attribute_value(sh, oh, ctypes.byref(a), 1) != 0:  # types and lengths
        return None
    bufs = []
    for x in inner:
        b = ctypes.create_string_buffer(max(1, x.ulValueLen))
        bufs.append(b)
        x.pValue = ctypes.cast(b, ctypes.c_void_p)
    if get_attribute_value(sh, oh, ctypes.byref(a), 1) != 0:
        return None
    return {x.type: bufs[i].raw[:x.ulValueLen] for i, x in enumerate(inner)}


BOOLS = [P.CKA_TOKEN, P.CKA_PRIVATE, P.CKA_SENSITIVE, P.CKA_EXTRACTABLE, P.CKA_DERIVE,
         P.CKA_ENCRYPT, P.CKA_DECRYPT, P.CKA_WRAP, P.CKA_UNWRAP, P.CKA_SIGN]


def attrs(session, obj, types):
    """Attribute values, None for those the object's class does not have."""
    out = {}
    for t in types:
        try:
            out[t] = session.getAttributeValue(obj, [t])[0]
        except P.PyKCS11Error:
            out[t] = None
    return out


def holds_nothing(session, obj, cls):
    """True when the key object carries no key material at all (a husk)."""
    if cls == P.CKO_SECRET_KEY:
        n = attrs(session, obj, [P.CKA_VALUE_LEN])[P.CKA_VALUE_LEN]
        return n == 0
    parts = attrs(session, obj, [P.CKA_MODULUS, P.CKA_EC_PARAMS, P.CKA_EC_POINT])
    return all(not v for v in parts.values())


pending = set()
if os.environ.get("CUSTOS_SCAN_ESCROW_PENDING"):
    with open(os.environ["CUSTOS_SCAN_ESCROW_PENDING"]) as f:
        pending = {line.strip().lower() for line in f if line.strip()}

lib = p11_module.pykcs11(MODULE)


def scan():
    """One pass over every custos-* token: (violations, husks, objects, tokens)."""
    violations, husks, nobj, ntok = [], [], 0, 0
    for slot in lib.getSlotList(tokenPresent=True):
        label = lib.getTokenInfo(slot).label.strip()
        region = label[len("custos-"):] if label.startswith("custos-") else None
        pin_file = f"{HSM_DIR}/pins/{region}.pin" if region else None
        if not pin_file or not os.path.exists(pin_file):
            continue
        with open(pin_file) as f:
            pin = f.read().strip()
        s = lib.openSession(slot)
        s.login(pin)
        ntok += 1
        escrow_keys = 0
        for o in s.findObjects():
            nobj += 1
            try:
                cls = s.getAttributeValue(o, [P.CKA_CLASS])[0]
            except P.PyKCS11Error as e:
                # Every object has a class; reconcile destroys these husks.
                violations.append(f"{label}: object {o.value()} has no readable CKA_CLASS ({e}): "
                                  f"an incomplete object left by a crash")
                continue
            if cls not in (P.CKO_SECRET_KEY, P.CKO_PRIVATE_KEY, P.CKO_PUBLIC_KEY):
                continue
            a = attrs(s, o, BOOLS + [P.CKA_ID, P.CKA_LABEL])
            ident = bytes(a[P.CKA_ID] or b"").hex()
            lbl = a[P.CKA_LABEL] or ""
            if not isinstance(lbl, str):
                lbl = bytes(lbl).decode(errors="replace")
            name = f"{label}: {P.CKO[cls]} id={ident} label={lbl!r}"
            if a[P.CKA_TOKEN] is False and not ident and not lbl and holds_nothing(s, o, cls):
                husks.append(f"{name}: no CKA_ID, no label, no key material")
                continue
            bad = []
            t = lambda k: a.get(k) is True
            if cls == P.CKO_PUBLIC_KEY:
                if t(P.CKA_WRAP) and t(P.CKA_ENCRYPT):
                    bad.append("public key can both wrap and encrypt")
            else:
                for k in (P.CKA_TOKEN, P.CKA_PRIVATE, P.CKA_SENSITIVE):
                    if not t(k):
                        bad.append(f"{P.CKA[k]} is not true")
                if t(P.CKA_DERIVE):
                    bad.append("CKA_DERIVE is true")
                if t(P.CKA_EXTRACTABLE) and ident not in pending:
                    bad.append("CKA_EXTRACTABLE is true and no escrow is pending for it")
                if (t(P.CKA_WRAP) or t(P.CKA_UNWRAP)) and \
                        (t(P.CKA_ENCRYPT) or t(P.CKA_DECRYPT) or t(P.CKA_SIGN)):
                    bad.append("wraps/unwraps and also encrypts/decrypts/signs (no key separation)")
                escrow_key = region is not None and lbl == f"custos:escrow:{region}"
                if escrow_key:
                    escrow_keys += 1
                    if escrow_keys > 1:
                        bad.append("a second escrow key for the region")
                if t(P.CKA_UNWRAP):
                    tm = unwrap_template(s, o)
                    if tm is None:
                        bad.append("can unwrap but has no CKA_UNWRAP_TEMPLATE")
                    elif os.environ.get("CUSTOS_TEST_TOKEN") == "nss":
                        # NSS keeps the template as opaque bytes: present, but
                        # neither read back as an attribute array nor enforced
                        # (docs/pkcs11.md, difference 12). Custos's own unwrap
                        # templates and read-back checks are what hold there.
                        pass
                    else:
                        if tm.get(P.CKA_SENSITIVE) != b"\x01":
                            bad.append("CKA_UNWRAP_TEMPLATE does not force CKA_SENSITIVE=true")
                        if tm.get(P.CKA_EXTRACTABLE) != b"\x00" and not escrow_key:
                            bad.append("CKA_UNWRAP_TEMPLATE does not force CKA_EXTRACTABLE=false")
            violations += [f"{name}: {b}" for b in bad]
        s.logout()
        s.closeSession()
    return violations, husks, nobj, ntok


# SoftHSMv2 shows another process an object it is creating before all of
# its attributes are written: a key kmsd is making at this instant can read
# as a bare private key (no CKA_TOKEN, no label, the defaults). What the
# templates govern is keys at rest, so a violation counts only when it is
# still there in each of five more scans, half a second apart (a planted or
# real bad key always is; a key being written is complete by then).
violations, husks, nobj, ntok = scan()
for _ in range(5):
    if not violations:
        break
    time.sleep(0.5)
    again, husks, nobj, ntok = scan()
    violations = [v for v in violations if v in again]

for h in husks:
    print(f"# husk: {h}")


if ntok == 0:
    print(f"not ok - template scan: no custos-* token with a pin file under {HSM_DIR}")
    sys.exit(1)
if violations:
    print(f"not ok - template scan: {len(violations)} violation(s) in {nobj} objects, "
          f"{ntok} tokens")
    for v in violations:
        print(f"#   {v}")
    sys.exit(1)
print(f"ok - template scan: {nobj} objects in {ntok} tokens follow the key templates")

"""Load the PKCS#11 module under test for the python helpers, with its
initialisation string when it needs one (NSS's softoken: the
$CUSTOS_PKCS11_MODULE_ARGS that tests/run-tests.sh exports from
deploy/dev-nss.sh). PyKCS11 1.5 always calls C_Initialize(NULL), which NSS
refuses; so the module is initialised first, through its function list
(NSS exports no C_ symbols but C_GetFunctionList), and PyKCS11's own call
then meets CKR_CRYPTOKI_ALREADY_INITIALIZED on the same loaded library.

    fl = p11_module.function_list(MODULE)   # ctypes access by index
    lib = p11_module.pykcs11(MODULE)        # a loaded PyKCS11Lib
"""
import ctypes
import os

import PyKCS11

# Indexes in CK_FUNCTION_LIST (PKCS#11 2.40), after the CK_VERSION.
C_INITIALIZE = 0
C_GET_ATTRIBUTE_VALUE = 24

CK_RV = ctypes.c_ulong


class InitArgs(ctypes.Structure):
    _fields_ = [("CreateMutex", ctypes.c_void_p), ("DestroyMutex", ctypes.c_void_p),
                ("LockMutex", ctypes.c_void_p), ("UnlockMutex", ctypes.c_void_p),
                ("flags", ctypes.c_ulong), ("pReserved", ctypes.c_char_p)]


class FunctionList:
    def __init__(self, module):
        self.lib = ctypes.CDLL(module)
        get = self.lib.C_GetFunctionList
        get.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        get.restype = CK_RV
        p = ctypes.c_void_p()
        rv = get(ctypes.byref(p))
        if rv != 0 or not p.value:
            raise RuntimeError(f"C_GetFunctionList of {module}: 0x{rv:x}")
        # CK_VERSION (2 bytes) is padded to the pointers' alignment.
        self.table = ctypes.cast(p.value + ctypes.sizeof(ctypes.c_void_p),
                                 ctypes.POINTER(ctypes.c_void_p))

    def fn(self, index, *argtypes):
        return ctypes.CFUNCTYPE(CK_RV, *argtypes)(self.table[index])


def function_list(module):
    return FunctionList(module)


def initialize(module):
    """C_Initialize with $CUSTOS_PKCS11_MODULE_ARGS, if set (never a PIN)."""
    args = os.environ.get("CUSTOS_PKCS11_MODULE_ARGS", "")
    if not args:
        return
    fl = FunctionList(module)
    init = fl.fn(C_INITIALIZE, ctypes.POINTER(InitArgs))
    ia = InitArgs(None, None, None, None, 2, args.encode())  # CKF_OS_LOCKING_OK
    rv = init(ctypes.byref(ia))
    if rv not in (0, 0x191):  # CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED
        raise RuntimeError(f"C_Initialize of {module} with its arguments: 0x{rv:x}")


def pykcs11(module):
    initialize(module)
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    return lib

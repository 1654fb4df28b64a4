/*
 * p11_spy.c - a PKCS#11 module for tests that forwards every call to the
 * real module ($CUSTOS_P11SPY_MODULE, default SoftHSMv2) and watches the
 * calls through which key material could leave a token:
 *
 *   - C_GetAttributeValue asking for CKA_VALUE or any RSA private component
 *     is refused (CKR_ATTRIBUTE_SENSITIVE) and logged as "VIOLATION";
 *   - C_WrapKey is refused (CKR_FUNCTION_FAILED) and logged as "VIOLATION"
 *     (escrow would wrap legitimately; the BYOK test runs without escrow);
 *   - C_UnwrapKey is logged with its mechanism, so the test can tell the
 *     spy really was in the path.
 *
 * Log: one line per event appended to $CUSTOS_P11SPY_LOG.
 * Build: cc -shared -fPIC -o p11_spy.so p11_spy.c $(pkg-config --cflags p11-kit-1) -ldl
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST spy;
static CK_FUNCTION_LIST_PTR real;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

static void record(const char *fmt, unsigned long a)
{
    const char *path = getenv("CUSTOS_P11SPY_LOG");
    char line[160];
    int n = snprintf(line, sizeof(line), fmt, a);
    if (path == NULL || n <= 0)
        return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    /* One write per line: lines from several threads do not interleave. */
    if (write(fd, line, (size_t)n) != n) {
    }
    close(fd);
}

static int secret_attribute(CK_ATTRIBUTE_TYPE t)
{
    return t == CKA_VALUE || t == CKA_PRIVATE_EXPONENT || t == CKA_PRIME_1 || t == CKA_PRIME_2 ||
           t == CKA_EXPONENT_1 || t == CKA_EXPONENT_2 || t == CKA_COEFFICIENT;
}

static CK_RV spy_get_attribute_value(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t,
                                     CK_ULONG n)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (secret_attribute(t[i].type)) {
            record("VIOLATION C_GetAttributeValue attribute 0x%lx\n", (unsigned long)t[i].type);
            return CKR_ATTRIBUTE_SENSITIVE;
        }
    return real->C_GetAttributeValue(s, o, t, n);
}

static CK_RV spy_wrap_key(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wrapping,
                          CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    (void)s, (void)wrapping, (void)key, (void)out, (void)out_len;
    record("VIOLATION C_WrapKey mechanism 0x%lx\n", m ? (unsigned long)m->mechanism : 0ul);
    return CKR_FUNCTION_FAILED;
}

static CK_RV spy_unwrap_key(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE unwrapping,
                            CK_BYTE_PTR wrapped, CK_ULONG wrapped_len, CK_ATTRIBUTE_PTR t,
                            CK_ULONG n, CK_OBJECT_HANDLE_PTR out)
{
    record("C_UnwrapKey mechanism 0x%lx\n", m ? (unsigned long)m->mechanism : 0ul);
    return real->C_UnwrapKey(s, m, unwrapping, wrapped, wrapped_len, t, n, out);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    CK_RV rv = CKR_OK;
    pthread_mutex_lock(&init_lock);
    if (real == NULL) {
        const char *path = getenv("CUSTOS_P11SPY_MODULE");
        /* Else the module under test (NSS's softoken in the NSS pass). */
        if (path == NULL || *path == '\0')
            path = getenv("CUSTOS_TEST_MODULE");
        if (path != NULL && *path == '\0')
            path = NULL;
        void *h = dlopen(path ? path : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
        CK_C_GetFunctionList get = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
        if (get == NULL || get(&real) != CKR_OK || real == NULL) {
            real = NULL;
            rv = CKR_GENERAL_ERROR;
        } else {
            spy = *real;
            spy.C_GetFunctionList = C_GetFunctionList;
            spy.C_GetAttributeValue = spy_get_attribute_value;
            spy.C_WrapKey = spy_wrap_key;
            spy.C_UnwrapKey = spy_unwrap_key;
        }
    }
    pthread_mutex_unlock(&init_lock);
    if (rv == CKR_OK)
        *out = &spy;
    return rv;
}

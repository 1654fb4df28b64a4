/*
 * audit_keyset.h - the audit public keys an auditor trusts, and the key
 * file format that carries them.
 *
 * A key file is what `kmsctl audit keys` writes: per key, four header lines
 * and a PEM SubjectPublicKeyInfo,
 *   Custos-Audit-Region: eu-west
 *   Custos-Audit-Key-Id: 1a66b3bbb58a190a4d501ccbf1ca9ef9
 *   Custos-Audit-Not-Before-Ms: 1795694989183
 *   Custos-Audit-Not-After-Ms: 0            (0: the current key)
 *   -----BEGIN PUBLIC KEY-----
 *   ...
 *   -----END PUBLIC KEY-----
 * OpenSSL skips the header lines, so `openssl dgst -verify` reads such a
 * file as it is. A public key without its four header lines is refused:
 * nothing would say which region and which period it speaks for.
 *
 * The set is the verifier's root of trust: a head is good only if a key of
 * its region, named by the head and valid at its time, signed it. Keys are
 * ECDSA P-256. Not thread-safe; read-only once loaded.
 */
#ifndef AUDIT_KEYSET_H
#define AUDIT_KEYSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "audit_verify_util.h"
#include "kms_error.h"
#include "proto/audit.pb-c.h"

/* One key of a set; owned by the set, valid until audit_keyset_free. */
struct audit_key {
    char region[AUDIT_REGION_MAX + 1];
    char key_id[AUDIT_KEY_ID_MAX + 1];
    int64_t not_before_ms, not_after_ms; /* not_after_ms 0: current */
    EVP_PKEY *pk;
    char *source; /* the file it came from, for messages */
};

struct audit_keyset;

kms_err audit_keyset_new(struct audit_keyset **out);
void audit_keyset_free(struct audit_keyset *ks); /* NULL ok */

/* Add k (region, key_id, validity, pk, source; source is copied). k->pk is
 * taken in every case. The same key again keeps the earlier entry, with
 * the end of its validity filled in from the newer copy; another key under
 * the same region and id is refused (KMS_ERR_INVALID_ARGUMENT), as is a
 * key that is not ECDSA P-256. */
kms_err audit_keyset_add(struct audit_keyset *ks, const struct audit_key *k);

/* Add every key of one key file's text (len bytes, no NUL needed); source
 * names it in messages. At least one key must be there. */
kms_err audit_keyset_parse(struct audit_keyset *ks, const char *source, const char *text,
                           size_t len);

/* Add the keys of a key file, or of every *.pem file of a directory (in
 * name order; at least one). */
kms_err audit_keyset_load(struct audit_keyset *ks, const char *path);

/* The key of region with id key_id, or NULL. */
const struct audit_key *audit_keyset_find(const struct audit_keyset *ks, const char *region,
                                          const char *key_id);

/* Does sig (DER ECDSA) verify over SHA-256 of msg under k? */
bool audit_key_verify(const struct audit_key *k, const uint8_t *msg, size_t len,
                      const uint8_t *sig, size_t sig_len);

/* A PEM public key and nothing else: the BEGIN line, base64 lines, the END
 * line. (Anything more could smuggle header lines into a key file.) */
bool audit_key_pem_ok(const char *pem);

/* k as a key file (header lines, then its PEM), malloc'ed; NULL when out of
 * memory. k's region and key_id must be well formed and its PEM pass
 * audit_key_pem_ok. */
char *audit_key_file_text(const Custos__V1__AuditKey *k);

#endif

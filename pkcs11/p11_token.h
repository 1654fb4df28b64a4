/*
 * p11_token.h - one configured token: its region, capabilities and sessions.
 *
 * A token is named in configuration by its label or by an RFC 7512 URI
 * ("pkcs11:token=custos-eu-west;serial=..."), and tagged with exactly one
 * region. Slot ids are resolved at open time and never persisted: modules
 * renumber slots when tokens are initialised.
 *
 * Ownership: the caller owns each p11_token and frees it before the module.
 * All functions are thread-safe once the token is open.
 */
#ifndef P11_TOKEN_H
#define P11_TOKEN_H

#include <stdbool.h>
#include <stddef.h>

#include "kms_error.h"
#include "p11_module.h"

#define P11_REGION_MAX 63

struct p11_token;

struct p11_token_config {
    const char *region;     /* e.g. "eu-west"; [a-z0-9-], 1..63 bytes */
    const char *selector;   /* token label, or "pkcs11:" URI */
    const char *pin_source; /* "file:/path" (mode 0600) or "env:NAME" */
    size_t max_sessions;    /* 0: default (2 x cores + 2), capped by the token */
};

/* Open every configured token: resolve selectors, refuse missing, ambiguous
 * (a selector matching more than one token) and duplicated tokens (two
 * selectors matching the same one), read capabilities, log in once.
 * out_tokens[i] corresponds to cfg[i]. On failure nothing stays open. */
kms_err p11_tokens_open(struct p11_module *mod, const struct p11_token_config *cfg, size_t n,
                        struct p11_token **out_tokens);

/* Close the pooled sessions (which logs out) and free. NULL is a no-op. */
void p11_token_free(struct p11_token *tok);

const char *p11_token_region(const struct p11_token *tok);
const char *p11_token_label(const struct p11_token *tok);
const char *p11_token_serial(const struct p11_token *tok);

/* False after the token reported removal; p11_token_probe() re-checks. */
bool p11_token_available(const struct p11_token *tok);

/* How many key lookups by CKA_ID found no object since the token was opened
 * (a request needed an object the token does not hold). Monotonic. */
unsigned long p11_token_lookups_missed(const struct p11_token *tok);

/* Ask the module whether the token is present and usable again (for health
 * checks); clears the unavailable mark when it is. */
kms_err p11_token_probe(struct p11_token *tok);

/* The readiness check: the token answers (p11_token_probe) and an idle
 * pooled session is still logged in (a session found logged out is
 * replaced). Never waits for a busy pool: every session in use counts as
 * proof of life. */
kms_err p11_token_check(struct p11_token *tok);

/* Mechanism-level capabilities, read once at open. */
enum p11_cap {
    P11_CAP_GEN_AES_256 = 0,  /* CKM_AES_KEY_GEN with 32-byte keys */
    P11_CAP_GEN_SECRET_256,   /* CKM_GENERIC_SECRET_KEY_GEN with 32 bytes */
    P11_CAP_GEN_EC_P256,      /* CKM_EC_KEY_PAIR_GEN, 256-bit */
    P11_CAP_GEN_RSA_3072,     /* CKM_RSA_PKCS_KEY_PAIR_GEN, 3072-bit */
    P11_CAP_AES_GCM,          /* CKM_AES_GCM encrypt + decrypt */
    P11_CAP_AES_KWP,          /* CKM_AES_KEY_WRAP_PAD wrap + unwrap */
    P11_CAP_RSA_OAEP_UNWRAP,  /* CKM_RSA_PKCS_OAEP unwrap */
    P11_CAP_RSA_AES_KEY_WRAP, /* CKM_RSA_AES_KEY_WRAP unwrap (single step) */
    P11_CAP_HMAC_SHA256,      /* CKM_SHA256_HMAC sign + verify */
    P11_CAP_ECDSA,            /* CKM_ECDSA sign */
    P11_CAP_RSA_PSS,          /* CKM_RSA_PKCS_PSS sign + verify (signing keys, TLS) */
    P11_CAP_COUNT
};

bool p11_token_has(const struct p11_token *tok, enum p11_cap cap);

/* Name of a capability for messages ("CKM_AES_GCM encrypt/decrypt"). */
const char *p11_cap_name(enum p11_cap cap);

/* The capability matrix row of a token (docs/pkcs11.md, "Capabilities"):
 * every mechanism capability above, then what the probes found (the RFC 5649
 * mechanism, OAEP with SHA-256, how a failed tag is reported, CKA_COPYABLE
 * and two secret keys per CKA_ID on token objects, C_WrapKey refusing a
 * non-extractable key). Runs the probes not run yet: throw-away session
 * keys, and token keys that are destroyed at once. For kmsctl hsm check. */
struct p11_cap_report {
    const char *name;
    char value[48];
    bool ok; /* false: Custos refuses or works around something here */
};
#define P11_REPORT_MAX 24
kms_err p11_token_report(struct p11_token *tok, struct p11_cap_report *out, size_t max,
                         size_t *out_n);

/* The first capability every region needs (AES-256 generation, AES-GCM)
 * that the token lacks, or NULL: such a token cannot serve Encrypt. */
const char *p11_token_missing_core(const struct p11_token *tok);

/* Session pool statistics, for metrics and tests. */
struct p11_pool_stats {
    size_t cap;
    size_t open;
    size_t idle;
    unsigned long replaced; /* sessions found broken and replaced */
};
void p11_token_pool_stats(struct p11_token *tok, struct p11_pool_stats *out);

/* Random bytes from the token's RNG. */
kms_err p11_random(struct p11_token *tok, uint8_t *buf, size_t len);

#endif

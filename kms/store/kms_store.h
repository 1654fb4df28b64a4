/*
 * kms_store.h - the metadata store: keys, their versions and their states.
 *
 * Key material never enters the store. What it holds is what the service must
 * remember across restarts: which keys exist, for which tenant, in which
 * region and token, in which state, and which HSM object (by CKA_ID) carries
 * each version. docs/state.md is the operator's view of the same contract.
 *
 * Backends: one SQLite database file (kms_store_open: WAL, synchronous=FULL,
 * foreign keys on, schema versioned by PRAGMA user_version), or a PostgreSQL
 * database shared by several kmsd (kms_store_open_pg; docs/fleet.md), or
 * one PostgreSQL database per region (kms_store_open_pg_regions: each call
 * routed to the database of its region or key, kms_store_route.c). All
 * implement everything below unchanged: no backend type or rowid appears
 * here, every multi-row change is one transaction, and every
 * read-modify-write is a compare-and-set or a serializable transaction.
 *
 * Crash-safety protocol (the caller's side; see docs/state.md):
 *   create a key or a version:
 *     1. kms_store_key_insert / kms_store_version_add: row in CREATING with the
 *        hsm_id the HSM object will carry; durable when the call returns;
 *     2. create the HSM object(s) with CKA_ID = hsm_id;
 *     3. kms_store_version_activate: row ACTIVE (key ENABLED) in one commit.
 *   destroy a key (sweeper):
 *     1. kms_store_key_mark_destroyed: the key and all versions DESTROYED in
 *        one commit; returns the hsm_ids to destroy;
 *     2. destroy those HSM objects (a missing object is not an error).
 *   reconcile at start, before serving:
 *     1. kms_store_creating_list: for each row, either destroy the HSM object
 *        with that hsm_id and call kms_store_creating_discard, or, if the
 *        object is complete, call kms_store_version_activate;
 *     2. per token: enumerate the CKA_IDs of key objects in the HSM FIRST,
 *        then call kms_store_hsm_ids_for_token; an HSM object whose CKA_ID
 *        is not in that set is an orphan. (In that order, an object created
 *        concurrently is always covered: its CREATING row precedes it.)
 *
 * Errors: KMS_ERR_INVALID_ARGUMENT for input that breaks a documented bound
 * (nothing is written); KMS_ERR_NOT_FOUND for a missing key or version, and
 * for one still CREATING where the function says so; KMS_ERR_ALREADY_EXISTS
 * for a duplicate key_id or hsm_id; KMS_ERR_FAILED_PRECONDITION when the row
 * is not in the state the call requires; KMS_ERR_NOSPC when the disk is full;
 * KMS_ERR_IO for I/O errors, a corrupt file, or a database locked by another
 * process past the busy timeout (PostgreSQL: the server unreachable, a
 * statement or lock wait past its timeout, a conflict retried to the end); KMS_ERR_CONFIG at open for a database that is
 * not a Custos store, was written by a newer Custos, or is in use by another
 * process. Every error sets a detail naming the operation (kms_err_detail);
 * details never contain hsm_ids.
 *
 * Thread-safety: every function may be called from any thread on the same
 * store concurrently, except kms_store_free, which must not race any other
 * call. Writes are serialised on one connection behind a mutex (its prepared
 * statements are cached); reads use a small pool of read-only connections,
 * each behind its own mutex, so reads do not wait for a write in progress
 * (WAL). A read sees every write that returned before the read began. The
 * SQLite store takes an exclusive lock on the database file: one process per
 * store. The PostgreSQL store takes none: each process (node) has its own
 * writer and readers, and SERIALIZABLE write transactions, retried when the
 * server aborts one for another's sake, order them across nodes.
 *
 * Ownership: records are plain values copied out to the caller. Arrays
 * returned through out-parameters are allocated by the store and released by
 * the caller with free(3); on error they are NULL with a count of 0.
 */
#ifndef KMS_STORE_H
#define KMS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"

/* Highest schema version this code knows; see kms_store_schema.c. */
#define KMS_STORE_SCHEMA_VERSION 6

/* Key ids are 16 random bytes in 32 lowercase hex chars, made by the caller. */
#define KMS_KEY_ID_LEN 32
#define KMS_KEY_ID_SIZE (KMS_KEY_ID_LEN + 1)
/* CKA_ID of a version's HSM object(s), 16 random bytes made by the caller. */
#define KMS_HSM_ID_LEN 16

/* Bounds in bytes, excluding the terminating NUL. Tenant and region are
 * printable ASCII without spaces; a token label is printable ASCII with no
 * leading or trailing space (PKCS#11 blank-pads labels to 32 bytes, so those
 * would be ambiguous); a description is UTF-8 without control characters. */
#define KMS_TENANT_MAX 64
#define KMS_REGION_MAX 64
#define KMS_TOKEN_LABEL_MAX 32
#define KMS_DESCRIPTION_MAX 256

/* Longest next-page token, NUL included. */
#define KMS_PAGE_TOKEN_SIZE 64
#define KMS_PAGE_SIZE_MAX 1000

/* Numeric values are stored in the database: never renumber, only append. */
enum kms_key_spec {
    KMS_KEY_SPEC_AES_256 = 1,
    KMS_KEY_SPEC_HMAC_256 = 2,
    KMS_KEY_SPEC_EC_P256 = 3,
    KMS_KEY_SPEC_METADATA = 4,
    /* Signing key pairs (usage SIGN_VERIFY; EC_P256 above is the fourth). */
    KMS_KEY_SPEC_RSA_2048 = 5,
    KMS_KEY_SPEC_RSA_3072 = 6,
    KMS_KEY_SPEC_RSA_4096 = 7,
};
#define KMS_KEY_SPEC_LAST KMS_KEY_SPEC_RSA_4096

/* A key pair (EC_P256, RSA_*): each version is one private and one public
 * object under one CKA_ID. */
static inline bool kms_key_spec_is_pair(enum kms_key_spec s)
{
    return s == KMS_KEY_SPEC_EC_P256 || (s >= KMS_KEY_SPEC_RSA_2048 && s <= KMS_KEY_SPEC_RSA_4096);
}

enum kms_key_usage {
    KMS_KEY_USAGE_ENCRYPT_DECRYPT = 1,
    KMS_KEY_USAGE_SIGN_VERIFY = 2,
    KMS_KEY_USAGE_METADATA = 3,
    /* Link tokens (spec HMAC_256, kms_store_links.h). */
    KMS_KEY_USAGE_LINK_TOKEN = 4,
};
#define KMS_KEY_USAGE_LAST KMS_KEY_USAGE_LINK_TOKEN

enum kms_key_origin {
    KMS_KEY_ORIGIN_HSM = 1,
    KMS_KEY_ORIGIN_EXTERNAL = 2,
};

/* Invariants the store enforces: ENABLED and DISABLED keys have a
 * current_version; PENDING_IMPORT keys have none; deletion_at is non-zero
 * exactly in PENDING_DELETION and DESTROYED (where it records when). */
enum kms_key_state {
    KMS_KEY_CREATING = 0, /* intent row; HSM object may not exist; invisible */
    KMS_KEY_ENABLED = 1,
    KMS_KEY_DISABLED = 2,
    KMS_KEY_PENDING_IMPORT = 3, /* EXTERNAL key waiting for its material */
    KMS_KEY_PENDING_DELETION = 4,
    KMS_KEY_DESTROYED = 5, /* tombstone: the row stays, the id is never reused */
};

enum kms_version_state {
    KMS_VERSION_CREATING = 0,
    KMS_VERSION_ACTIVE = 1,
    KMS_VERSION_DESTROYED = 2,
};

struct kms_key_record {
    char key_id[KMS_KEY_ID_SIZE];
    char tenant[KMS_TENANT_MAX + 1];
    char region[KMS_REGION_MAX + 1];
    char token[KMS_TOKEN_LABEL_MAX + 1];
    enum kms_key_spec spec;
    enum kms_key_usage usage;
    enum kms_key_origin origin;
    enum kms_key_state state;
    char description[KMS_DESCRIPTION_MAX + 1];
    int64_t created_at;      /* unix seconds, > 0 */
    int64_t deletion_at;     /* unix seconds; 0 if not scheduled */
    uint32_t current_version; /* the version that encrypts; 0 if none yet */
    bool escrow_required;
};

struct kms_version_record {
    char key_id[KMS_KEY_ID_SIZE];
    uint32_t version; /* 1, 2, ...; never reused within a key */
    uint8_t hsm_id[KMS_HSM_ID_LEN];
    enum kms_version_state state;
    int64_t created_at;
};

/* One CREATING version found by reconcile. */
struct kms_store_creating {
    char key_id[KMS_KEY_ID_SIZE];
    char token[KMS_TOKEN_LABEL_MAX + 1];
    uint32_t version;
    uint8_t hsm_id[KMS_HSM_ID_LEN];
    bool key_creating; /* the key itself is CREATING: discarding removes it */
};

struct kms_hsm_id {
    uint8_t bytes[KMS_HSM_ID_LEN];
};

/* Settings actually in force, for health checks and tests. */
struct kms_store_info {
    int schema_version;   /* PRAGMA user_version */
    char journal_mode[16]; /* "wal" */
    int synchronous;      /* 2 = FULL */
    int foreign_keys;     /* 1 */
    int busy_timeout_ms;
    char store_id[33]; /* random id made when the database was created */
};

struct kms_store;

/*
 * Open (creating if absent, mode 0600) the database at path, apply pending
 * migrations in one transaction, and lock the file against other processes.
 * The directory must exist. On error *out is NULL.
 */
kms_err kms_store_open(const char *path, struct kms_store **out);

/*
 * Open the store in a PostgreSQL database (docs/fleet.md): conninfo is a
 * libpq connection string or URL without a password, password_source
 * "file:/path" (or NULL). Applies pending migrations in one transaction
 * under an advisory lock, so nodes that start together migrate once. No
 * process lock: several kmsd share the database. Write transactions are
 * SERIALIZABLE and run again (a bounded number of times) when PostgreSQL
 * fails one for a concurrent one; a broken connection is replaced on its
 * next use; while the server is away calls fail with KMS_ERR_IO after at
 * most the connect timeout or STORE statement timeout (never hang).
 * KMS_ERR_CONFIG for a bad target or a database that is not a Custos store
 * or is newer than this build; KMS_ERR_IO when the server is unreachable.
 */
kms_err kms_store_open_pg(const char *conninfo, const char *password_source,
                          struct kms_store **out);

/* Most regions one store spans, each in its own database. */
#define KMS_STORE_REGIONS_MAX 16

/* One region's PostgreSQL database (kms_store_open_pg_regions). */
struct kms_store_pg_region {
    const char *region;          /* as the keys' region column holds it */
    const char *conninfo;        /* as for kms_store_open_pg */
    const char *password_source; /* may be NULL */
};

/*
 * Open a store that keeps each region's rows in that region's own
 * PostgreSQL database (residency: docs/configuration.md, "store"). Each
 * database is opened as kms_store_open_pg opens one. regions has 1..
 * KMS_STORE_REGIONS_MAX entries with distinct region names and distinct
 * databases (host, port and dbname as libpq parses them), else
 * KMS_ERR_CONFIG.
 *
 * Routing, inside the store: a call that names a region (a new key's
 * record, the audit and encryption marks) runs on that region's database;
 * a call that names a key id runs where the key is (an in-memory map, else
 * each database asked in turn); a call by another id (import token,
 * recovery, hsm_id, link) asks each database until one has it; store-wide
 * calls (lists, sweeps, reconcile, health) run on every database and merge
 * (ListKeys pages across the databases in one (created_at, key_id) order).
 * A region whose database is unreachable fails only the calls that need
 * it, with KMS_ERR_IO; a database unreachable at open is connected and
 * migrated on first use. Key ids must be unique across regions: they are
 * 16 random bytes, and kms_store_key_insert refuses one another reachable
 * region already holds (KMS_ERR_ALREADY_EXISTS).
 */
kms_err kms_store_open_pg_regions(const struct kms_store_pg_region *regions, size_t n,
                                  struct kms_store **out);

/* True when store is on PostgreSQL (shared by several processes). */
bool kms_store_is_pg(const struct kms_store *store);

/* Close every connection and release the lock. NULL is a no-op. */
void kms_store_free(struct kms_store *store);

kms_err kms_store_info(struct kms_store *store, struct kms_store_info *out);

/*
 * Insert a new key, and its version 1 when v1 is not NULL, in one commit.
 *   key->state CREATING requires v1 (version 1, state CREATING, key_id "" or
 *     equal to key->key_id): step 1 of the create protocol;
 *   key->state PENDING_IMPORT requires origin EXTERNAL and v1 NULL (no HSM
 *     object exists until ImportKeyMaterial adds a version).
 * key->current_version and key->deletion_at must be 0. Duplicate key_id or
 * hsm_id: KMS_ERR_ALREADY_EXISTS.
 */
kms_err kms_store_key_insert(struct kms_store *store, const struct kms_key_record *key,
                             const struct kms_version_record *v1);

/* The key, in any state but CREATING (KMS_ERR_NOT_FOUND). Tenant checks are
 * the caller's: compare out->tenant and answer NOT_FOUND on mismatch. */
kms_err kms_store_key_get(struct kms_store *store, const char *key_id,
                          struct kms_key_record *out);

/* A version of a visible key; CREATING versions are KMS_ERR_NOT_FOUND, so a
 * version whose HSM object may be incomplete can never be used. */
kms_err kms_store_version_get(struct kms_store *store, const char *key_id, uint32_t version,
                              struct kms_version_record *out);

/* The ACTIVE and DESTROYED versions of a visible key, by ascending version.
 * A key with none (PENDING_IMPORT) gives KMS_OK, NULL, 0. */
kms_err kms_store_versions_list(struct kms_store *store, const char *key_id,
                                struct kms_version_record **out, size_t *out_n);

/* kms_store_key_get and kms_store_versions_list from one snapshot (one read
 * transaction): for replies that must be consistent under concurrent
 * rotations. */
kms_err kms_store_key_snapshot(struct kms_store *store, const char *key_id,
                               struct kms_key_record *out_key, struct kms_version_record **out,
                               size_t *out_n);

/*
 * Allocate the key's next version number (one above any ever allocated,
 * even discarded ones) and insert it in CREATING with hsm_id: step 1 of the
 * create protocol for RotateKey and ImportKeyMaterial. The key must be
 * ENABLED, DISABLED or PENDING_IMPORT (else FAILED_PRECONDITION).
 */
kms_err kms_store_version_add(struct kms_store *store, const char *key_id,
                              const uint8_t hsm_id[KMS_HSM_ID_LEN], int64_t created_at,
                              uint32_t *out_version);

/*
 * Step 3 of the create protocol, one commit: the version becomes ACTIVE, the
 * key's current_version becomes the highest activated version (so two racing
 * rotations settle on the newer), and a CREATING or PENDING_IMPORT key
 * becomes ENABLED. An already ACTIVE version is KMS_OK (idempotent for
 * reconcile). A DESTROYED version or key: KMS_ERR_FAILED_PRECONDITION.
 */
kms_err kms_store_version_activate(struct kms_store *store, const char *key_id,
                                   uint32_t version);

/*
 * Compare-and-set the state of a visible key: succeeds only if the state is
 * still `expected`, else KMS_ERR_FAILED_PRECONDITION (the detail names the
 * actual state). new_state is ENABLED, DISABLED, PENDING_IMPORT or
 * PENDING_DELETION; CREATING and DESTROYED are reached only through
 * kms_store_version_activate and kms_store_key_mark_destroyed (KMS_ERR_USAGE).
 * deletion_at must be > 0 for PENDING_DELETION and 0 otherwise (a cancel
 * clears it). ENABLED/DISABLED need a current version and PENDING_IMPORT
 * needs none (FAILED_PRECONDITION otherwise).
 */
kms_err kms_store_key_set_state(struct kms_store *store, const char *key_id,
                                enum kms_key_state expected, enum kms_key_state new_state,
                                int64_t deletion_at);

/*
 * One page of a tenant's keys (every state but CREATING), ordered by
 * (created_at, key_id), which never changes for a key: paging visits every
 * key that exists throughout, once. page_token is NULL or "" for the first
 * page, else a next_token from a previous call; anything else is
 * KMS_ERR_INVALID_ARGUMENT. page_size is 1..KMS_PAGE_SIZE_MAX. next_token
 * (KMS_PAGE_TOKEN_SIZE bytes) receives "" after the last page.
 */
kms_err kms_store_keys_list(struct kms_store *store, const char *tenant,
                            const char *page_token, size_t page_size,
                            struct kms_key_record **out, size_t *out_n,
                            char next_token[KMS_PAGE_TOKEN_SIZE]);

/* Up to limit (1..KMS_PAGE_SIZE_MAX) PENDING_DELETION keys whose deletion_at
 * <= now, oldest due first. */
kms_err kms_store_keys_due_for_deletion(struct kms_store *store, int64_t now, size_t limit,
                                        struct kms_key_record **out, size_t *out_n);

/*
 * Step 1 of destruction, one commit: a PENDING_DELETION key whose
 * deletion_at <= now becomes DESTROYED with all its versions (CREATING ones
 * included). Anything else, e.g. a deletion cancelled meanwhile, is
 * KMS_ERR_FAILED_PRECONDITION and changes nothing. out_ids (may be NULL)
 * receives the hsm_ids of every version, for the caller to destroy.
 */
kms_err kms_store_key_mark_destroyed(struct kms_store *store, const char *key_id, int64_t now,
                                     struct kms_hsm_id **out_ids, size_t *out_n);

/* Reconcile: every CREATING version in the store, by key_id then version. A
 * CREATING key always has its CREATING version 1 in this list. */
/* On PostgreSQL (several nodes), only rows created five minutes or more
 * ago: a younger one may be a create another node is running. */
kms_err kms_store_creating_list(struct kms_store *store, struct kms_store_creating **out,
                                size_t *out_n);

/* Reconcile: delete a CREATING version row (after its HSM object, if any, was
 * destroyed), and the key row too if the key is CREATING and has no version
 * left. A version not in CREATING: KMS_ERR_FAILED_PRECONDITION. */
kms_err kms_store_creating_discard(struct kms_store *store, const char *key_id,
                                   uint32_t version);

/* Orphan detection: the hsm_ids of every CREATING or ACTIVE version of keys in
 * token, i.e. the HSM key objects that must be kept; sorted ascending by
 * memcmp so the caller can bsearch. */
kms_err kms_store_hsm_ids_for_token(struct kms_store *store, const char *token,
                                    struct kms_hsm_id **out, size_t *out_n);

/* ---- BYOK: import tokens and key check values (kms_store_import.c) -------
 *
 * An import token is a random secret handed to a tenant together with an
 * RSA wrapping key (GetImportParameters). The store never sees the secret:
 * it keeps its SHA-256 (token_id), the key it was issued for, the PKCS#11
 * token and CKA_ID (hsm_id) of the wrapping key pair, and its lifecycle:
 *
 *   CREATING -issue-> ISSUED -claim-> CLAIMED -commit-> SPENT -close-> CLOSED
 *      |                ^               |               ^
 *      |                +----release----+ (a refused    |
 *      |                                  attempt)      |
 *      +--------------- retire (expired, burnt, abandoned)
 *
 * Crash safety mirrors key creation: the CREATING row with its hsm_id is
 * durable before the wrapping key exists, and a row is SPENT (unusable)
 * before its wrapping key is destroyed, so a crash at any instant leaves a
 * row that kms_store_import_tokens_due() hands to the sweeper, never a
 * wrapping key nothing knows about. CLOSED rows (wrapping key gone) stay
 * until purged, so a reused or expired token gets a precise refusal.
 *
 * A key check value (KCV) is a digest of a constant computed with a key
 * version inside the HSM: it tells whether two imports carried the same
 * material without the material ever leaving the token. One per version of
 * an EXTERNAL key, written in the commit that activates the version.
 */
#define KMS_IMPORT_TOKEN_ID_LEN 32
#define KMS_KCV_LEN 32

enum kms_import_state {
    KMS_IMPORT_CREATING = 0, /* intent row; the wrapping key may not exist */
    KMS_IMPORT_ISSUED = 1,   /* handed out; usable until expires_at */
    KMS_IMPORT_CLAIMED = 2,  /* an ImportKeyMaterial is using it right now */
    KMS_IMPORT_SPENT = 3,    /* unusable; its wrapping key is to be destroyed */
    KMS_IMPORT_CLOSED = 4,   /* wrapping key destroyed; kept for clear errors */
};

/* Why a token stopped being usable. */
enum kms_import_end {
    KMS_IMPORT_END_NONE = 0,
    KMS_IMPORT_END_USED = 1,      /* material imported with it */
    KMS_IMPORT_END_EXPIRED = 2,   /* expires_at passed */
    KMS_IMPORT_END_FAILURES = 3,  /* too many refused attempts */
    KMS_IMPORT_END_ABANDONED = 4, /* creation interrupted (crash) */
};

struct kms_import_token_record {
    uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN]; /* SHA-256 of the secret */
    char key_id[KMS_KEY_ID_SIZE];
    char token[KMS_TOKEN_LABEL_MAX + 1]; /* PKCS#11 token of the wrapping key */
    uint8_t hsm_id[KMS_HSM_ID_LEN];      /* CKA_ID of the wrapping key pair */
    enum kms_import_state state;
    enum kms_import_end end;
    uint32_t failures; /* refused attempts so far */
    int64_t created_at;
    int64_t expires_at;
};

struct kms_kcv_record {
    uint32_t version;
    uint8_t kcv[KMS_KCV_LEN];
};

/*
 * Step 1 of issuing: insert t (state CREATING, end NONE, failures 0,
 * expires_at > created_at > 0) in one commit. The key must be visible,
 * origin EXTERNAL and PENDING_IMPORT, ENABLED or DISABLED
 * (FAILED_PRECONDITION), and hold fewer than max_live tokens that are
 * CREATING, ISSUED or CLAIMED and not expired at `now`
 * (KMS_ERR_RESOURCE_EXHAUSTED): every token costs an RSA key pair in the
 * HSM. Duplicate token_id or hsm_id: KMS_ERR_ALREADY_EXISTS.
 */
kms_err kms_store_import_token_insert(struct kms_store *store,
                                      const struct kms_import_token_record *t, size_t max_live,
                                      int64_t now);

/* Step 3 of issuing: CREATING -> ISSUED (FAILED_PRECONDITION otherwise). */
kms_err kms_store_import_token_issue(struct kms_store *store,
                                     const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN]);

/* Issuing failed before the token was handed out: delete its CREATING row
 * (after the wrapping key, if any, was destroyed). */
kms_err kms_store_import_token_discard(struct kms_store *store,
                                       const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN]);

/* The token in any state, or KMS_ERR_NOT_FOUND. */
kms_err kms_store_import_token_get(struct kms_store *store,
                                   const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN],
                                   struct kms_import_token_record *out);

/* Compare-and-set ISSUED -> CLAIMED for an import into key_id, provided it
 * was issued for key_id and expires_at > now. Absent: NOT_FOUND; anything
 * else: FAILED_PRECONDITION and nothing changes. Exactly one of several
 * concurrent claims succeeds. */
kms_err kms_store_import_token_claim(struct kms_store *store,
                                     const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN],
                                     const char *key_id, int64_t now);

/* An import that claimed the token did not happen: CLAIMED -> ISSUED. If
 * `failed` (the tenant's material was refused) the attempt is counted, and
 * the max_failures-th one makes the token SPENT (end FAILURES) instead;
 * *out_burnt (may be NULL) says so. */
kms_err kms_store_import_token_release(struct kms_store *store,
                                       const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN],
                                       bool failed, uint32_t max_failures, bool *out_burnt);

/*
 * Step 3 of an import, one commit:
 *   - the token, CLAIMED for key_id, becomes SPENT (end USED);
 *   - the version, CREATING, becomes ACTIVE and the key ENABLED with the
 *     highest active version current (as kms_store_version_activate); an
 *     ACTIVE version (re-import of material the key has) is left as is;
 *   - the version's KCV is recorded, or must equal the one recorded.
 * Refused with FAILED_PRECONDITION, changing nothing, when another version
 * of the key already has this KCV (the same material twice), and, with
 * `first`, when the key has any other active version (two first imports
 * raced). A DESTROYED or PENDING_DELETION key or version: FAILED_PRECONDITION.
 */
kms_err kms_store_import_commit(struct kms_store *store,
                                const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN],
                                const char *key_id, uint32_t version,
                                const uint8_t kcv[KMS_KCV_LEN], bool first);

/* The KCVs of a visible key's ACTIVE versions, by version (KMS_OK, NULL, 0
 * if none). */
kms_err kms_store_key_check_values(struct kms_store *store, const char *key_id,
                                   struct kms_kcv_record **out, size_t *out_n);

/* Tokens the sweeper must act on, at most limit (1..KMS_PAGE_SIZE_MAX):
 * SPENT ones (wrapping key still to destroy), ISSUED ones expired at now,
 * and CLAIMED or CREATING ones older than grace_s past their expiry or
 * creation (an import or issue interrupted by a crash; in-flight ones are
 * younger). */
kms_err kms_store_import_tokens_due(struct kms_store *store, int64_t now, int64_t grace_s,
                                    size_t limit, struct kms_import_token_record **out,
                                    size_t *out_n);

/* Sweeper step 1: compare-and-set `expected` (CREATING, ISSUED or CLAIMED)
 * -> SPENT with `end`. FAILED_PRECONDITION if the state moved meanwhile. */
kms_err kms_store_import_token_retire(struct kms_store *store,
                                      const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN],
                                      enum kms_import_state expected, enum kms_import_end end);

/* After the wrapping key was destroyed: SPENT -> CLOSED. */
kms_err kms_store_import_token_close(struct kms_store *store,
                                     const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN]);

/* Delete CLOSED tokens that expired before `before`; *out_n (may be NULL)
 * gets how many. */
kms_err kms_store_import_tokens_purge(struct kms_store *store, int64_t before, size_t *out_n);

/* Orphan detection for wrapping keys: the hsm_ids of every token in
 * `token` that is not CLOSED, sorted ascending by memcmp. Call it after
 * listing the HSM's wrapping keys (the order of kms_store_hsm_ids_for_token). */
kms_err kms_store_import_hsm_ids_for_token(struct kms_store *store, const char *token,
                                           struct kms_hsm_id **out, size_t *out_n);

const char *kms_import_state_name(enum kms_import_state state);

/* ---- escrow blobs and recoveries (kms_store_escrow.c) --------------------
 *
 * Escrow at birth writes one blob per HSM object of a version while the
 * version is still CREATING (kms_store_escrow_put), then the caller locks
 * the object and activates the version: a crash before activation leaves a
 * CREATING version that reconcile discards, blob included (cascade). Blobs
 * stay when the key is destroyed.
 *
 * A recovery moves PENDING_APPROVAL -> APPROVED (quorum) -> EXECUTED, or to
 * CANCELLED or EXPIRED from either open state. Each transition is a
 * compare-and-set; an approval and the quorum it completes are one commit,
 * as are a RESTORE's execution and the key's return.
 */
#define KMS_ESCROW_BLOB_MAX 64
#define KMS_RECOVERY_ID_LEN 32
#define KMS_RECOVERY_MAX_VERSIONS 64
#define KMS_RECOVERY_TEXT_MAX 512
#define KMS_RECOVERY_CASE_MAX 128
#define KMS_RECOVERY_NAME_MAX 64
#define KMS_RECOVERY_LIST_MAX 100
#define KMS_RECOVERY_SIG_MAX 80
/* Escrow blobs listed for one key: up to 2 per version (AES, HMAC). A key
 * with more escrowed versions than this half of it is refused a listing
 * (and so a recovery) with RESOURCE_EXHAUSTED rather than read unbounded. */
#define KMS_ESCROW_LIST_MAX 8192

struct kms_escrow_record {
    char key_id[KMS_KEY_ID_SIZE];
    uint32_t version;
    int part; /* 0: the AES key; 1: the HMAC key of a METADATA version */
    char token[KMS_TOKEN_LABEL_MAX + 1];
    uint8_t escrow_hsm_id[KMS_HSM_ID_LEN];
    uint8_t blob[KMS_ESCROW_BLOB_MAX];
    size_t blob_len;
    int64_t created_at;
};

/* Values match custos.v1.RecoveryState: never renumber. */
enum kms_recovery_state {
    KMS_RECOVERY_PENDING = 1,
    KMS_RECOVERY_APPROVED = 2,
    KMS_RECOVERY_EXECUTED = 3,
    KMS_RECOVERY_CANCELLED = 4,
    KMS_RECOVERY_EXPIRED = 5,
};

struct kms_recovery_record {
    char recovery_id[KMS_RECOVERY_ID_LEN + 1];
    char tenant[KMS_TENANT_MAX + 1];
    char key_id[KMS_KEY_ID_SIZE];
    char region[KMS_REGION_MAX + 1];
    uint32_t versions[KMS_RECOVERY_MAX_VERSIONS]; /* ascending, distinct */
    size_t n_versions;
    int mode;          /* custos.v1.RecoveryMode */
    int justification; /* custos.v1.Justification */
    char justification_text[KMS_RECOVERY_TEXT_MAX + 1];
    char case_reference[KMS_RECOVERY_CASE_MAX + 1];
    int restore_state; /* custos.v1.RestoreState */
    char recipient[KMS_RECOVERY_NAME_MAX + 1];
    char recipient_sha256[65];
    char requester[KMS_RECOVERY_NAME_MAX + 1];
    enum kms_recovery_state state;
    uint32_t approvals_required;
    uint32_t time_lock_s;
    int64_t created_at, expires_at, quorum_at, executable_at, executed_at;
    char cancelled_by[KMS_RECOVERY_NAME_MAX + 1];
    char cancel_reason[KMS_RECOVERY_TEXT_MAX + 1];
};

struct kms_recovery_approval {
    char officer[KMS_RECOVERY_NAME_MAX + 1];
    int64_t approved_at;
};

/* Store a blob for a version that is CREATING (FAILED_PRECONDITION
 * otherwise). */
kms_err kms_store_escrow_put(struct kms_store *store, const struct kms_escrow_record *r);

/* Every blob of a key, by version then part (KMS_OK, NULL, 0 if none). */
kms_err kms_store_escrow_list(struct kms_store *store, const char *key_id,
                              struct kms_escrow_record **out, size_t *out_n);

/* ---- escrow of signing key pairs (kms_store_escrow_pair.c, schema 5) ----
 *
 * The same protocol as escrow_blobs (put while the version is CREATING,
 * then lock, then activate), one row per version: the wrapped private key
 * and the version's public key (SPKI), which a RESTORE needs to make the
 * public half again. */
#define KMS_ESCROW_PAIR_BLOB_MAX 4096
#define KMS_ESCROW_PAIR_SPKI_MAX 1024
/* kms_escrow_record.part of the entries kms_store_escrow_pair_list makes:
 * never stored in escrow_blobs. */
#define KMS_ESCROW_PART_PAIR 2

struct kms_escrow_pair_record {
    char key_id[KMS_KEY_ID_SIZE];
    uint32_t version;
    char token[KMS_TOKEN_LABEL_MAX + 1];
    uint8_t escrow_hsm_id[KMS_HSM_ID_LEN];
    uint8_t blob[KMS_ESCROW_PAIR_BLOB_MAX];
    size_t blob_len;
    uint8_t public_key[KMS_ESCROW_PAIR_SPKI_MAX];
    size_t public_key_len;
    int64_t created_at;
};

/* Store a pair's blob for a version that is CREATING (FAILED_PRECONDITION
 * otherwise). */
kms_err kms_store_escrow_pair_put(struct kms_store *store, const struct kms_escrow_pair_record *r);

/* One version's row; KMS_ERR_NOT_FOUND when it has none. */
kms_err kms_store_escrow_pair_get(struct kms_store *store, const char *key_id, uint32_t version,
                                  struct kms_escrow_pair_record *out);

/* Every escrowed version of a pair key, in the shape kms_store_escrow_list
 * gives (by version; part KMS_ESCROW_PART_PAIR, blob_len 0: the blob itself
 * is read with kms_store_escrow_pair_get), so recovery and reconcile treat
 * both kinds alike. */
kms_err kms_store_escrow_pair_list(struct kms_store *store, const char *key_id,
                                   struct kms_escrow_record **out, size_t *out_n);

/* Insert a new recovery (state PENDING_APPROVAL, no approvals), unless its
 * key already has max_open (>= 1) open ones: PENDING_APPROVAL or APPROVED
 * and not expired at r->created_at. Then RESOURCE_EXHAUSTED and nothing is
 * written. The count and the insert are one write transaction (BEGIN
 * IMMEDIATE), so the limit holds for concurrent requests, and for several
 * kmsd on one database as long as the backend's transaction orders them.
 * *out_open: the open recoveries counted before this one. */
kms_err kms_store_recovery_insert(struct kms_store *store, const struct kms_recovery_record *r,
                                  size_t max_open, size_t *out_open);

/* A recovery and the officers who approved it (oldest first; *out_appr may
 * be NULL when the caller does not want them). NOT_FOUND if absent. */
kms_err kms_store_recovery_get(struct kms_store *store, const char *recovery_id,
                               struct kms_recovery_record *out,
                               struct kms_recovery_approval **out_appr, size_t *out_n_appr);

/* Newest first, at most KMS_RECOVERY_LIST_MAX, of a tenant; key_id (NULL:
 * any) and open_only (PENDING_APPROVAL or APPROVED) filter. */
kms_err kms_store_recovery_list(struct kms_store *store, const char *tenant, const char *key_id,
                                bool open_only, struct kms_recovery_record **out, size_t *out_n);

/* One commit: record officer's approval (signature kept as evidence) of a
 * PENDING_APPROVAL recovery with expires_at > now; count the approvals; at
 * approvals_required, the recovery becomes APPROVED with quorum_at = now and
 * executable_at = now + time_lock_s. An officer who already approved is not
 * counted again (*out_counted false). Not PENDING_APPROVAL, or expired:
 * FAILED_PRECONDITION. */
kms_err kms_store_recovery_approve(struct kms_store *store, const char *recovery_id,
                                   const char *officer, const uint8_t *sig, size_t sig_len,
                                   int64_t now, bool *out_counted);

/* Compare-and-set the state from `expected` to CANCELLED (with by and
 * reason), EXPIRED, or EXECUTED (an EXPORT_WRAPPED one; executed_at = now). */
kms_err kms_store_recovery_finish(struct kms_store *store, const char *recovery_id,
                                  enum kms_recovery_state expected,
                                  enum kms_recovery_state new_state, int64_t now, const char *by,
                                  const char *reason);

/* RESTORE's commit: the APPROVED recovery becomes EXECUTED (executed_at =
 * now); its DESTROYED key becomes `key_state` (ENABLED or DISABLED) with
 * deletion_at 0; its listed versions, DESTROYED, become ACTIVE; the key's
 * current version is the highest of them. Anything not in those states:
 * FAILED_PRECONDITION and nothing changes. */
kms_err kms_store_recovery_restore(struct kms_store *store, const char *recovery_id, int64_t now,
                                   enum kms_key_state key_state);

const char *kms_recovery_state_name(enum kms_recovery_state state);

/* Names of enum values for logs and errors ("ENABLED"); never NULL. */
const char *kms_key_state_name(enum kms_key_state state);
const char *kms_version_state_name(enum kms_version_state state);

/* ---- GCM usage counts and rotation periods (kms_store_usage.c) ---------- */

/*
 * Add n to the encryption count reserved for an ACTIVE version of a visible
 * key, durably (one commit), and return the new total. A DESTROYED or
 * CREATING version, or a missing one: KMS_ERR_NOT_FOUND. The count is a
 * reservation: kmsd reserves before it encrypts, so it never falls below the
 * encryptions made.
 */
kms_err kms_store_usage_reserve(struct kms_store *store, const char *key_id, uint32_t version,
                                uint64_t n, uint64_t *out_total);

/* Give back n reserved but unused encryptions (a clean shutdown): the count
 * goes down by n, never below 0. A missing version is KMS_OK. */
kms_err kms_store_usage_release(struct kms_store *store, const char *key_id, uint32_t version,
                                uint64_t n);

/* The reserved count of a version (any state; 0 for CREATING ones). */
kms_err kms_store_usage_get(struct kms_store *store, const char *key_id, uint32_t version,
                            uint64_t *out);

struct kms_store_usage_row {
    char key_id[KMS_KEY_ID_SIZE];
    uint32_t version;
    uint64_t encryptions;
};

/* Up to max current versions of ENABLED keys of origin HSM whose reserved
 * count is >= at: the sweeper's backstop for automatic rotation. */
kms_err kms_store_usage_over(struct kms_store *store, uint64_t at, size_t max,
                             struct kms_store_usage_row **out, size_t *out_n);

/* Set a key's rotation period in seconds (0: none). Any state but DESTROYED
 * (CREATING included, so CreateKey sets it before the key becomes visible). */
kms_err kms_store_rotation_period_set(struct kms_store *store, const char *key_id,
                                      uint64_t period_s);

/* A visible key's rotation period (0: none). */
kms_err kms_store_rotation_period_get(struct kms_store *store, const char *key_id,
                                      uint64_t *out);

/* Up to max ENABLED keys of origin HSM with a period whose current version
 * was created at or before now - period: key_id and current version in the
 * rows (encryptions unused). */
kms_err kms_store_rotation_due(struct kms_store *store, int64_t now, size_t max,
                               struct kms_store_usage_row **out, size_t *out_n);

/* ---- Leases shared by the nodes of one store (kms_store_lease.c) -------- */

/*
 * A named lease: at most one holder at a time until it expires (ttl_s after
 * now). Several kmsd on one PostgreSQL store use it so that one node, not
 * each, does a piece of background work (a sweep of a region) or touches a
 * key's HSM objects outside a request's own compare-and-set (a RESTORE, a
 * deletion's destroys, an automatic rotation): docs/state.md "Several
 * nodes". Taking is one write transaction: *out_won true when the lease was
 * free, expired or already this holder's (then renewed); false when another
 * holder has it. Works on SQLite too (one process: always won). name: 1..89
 * characters; holder: 1..KMS_STORE_LEASE_HOLDER_MAX, no space. Release
 * removes the lease only while holder still has it.
 */
#define KMS_STORE_LEASE_HOLDER_MAX 64
#define KMS_STORE_LEASE_TTL_MAX 86400
kms_err kms_store_lease_take(struct kms_store *store, const char *name, const char *holder,
                             int64_t now, int64_t ttl_s, bool *out_won);
kms_err kms_store_lease_release(struct kms_store *store, const char *name, const char *holder);

#endif

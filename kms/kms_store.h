/*
 * kms_store.h - the metadata store: keys, their versions and their states.
 *
 * Key material never enters the store. What it holds is what the service must
 * remember across restarts: which keys exist, for which tenant, in which
 * region and token, in which state, and which HSM object (by CKA_ID) carries
 * each version. docs/state.md is the operator's view of the same contract.
 *
 * Backend: one SQLite database file (WAL, synchronous=FULL, foreign keys on),
 * schema versioned by PRAGMA user_version and migrated at open. The interface
 * is written so that a PostgreSQL backend can implement it unchanged: no
 * SQLite type or rowid appears here, every multi-row change is one
 * transaction, and every read-modify-write is a compare-and-set.
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
 * process past the busy timeout; KMS_ERR_CONFIG at open for a database that is
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
 * store takes an exclusive lock on the database file: one process per store.
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
#define KMS_STORE_SCHEMA_VERSION 1

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
};

enum kms_key_usage {
    KMS_KEY_USAGE_ENCRYPT_DECRYPT = 1,
    KMS_KEY_USAGE_SIGN_VERIFY = 2,
    KMS_KEY_USAGE_METADATA = 3,
};

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

/* Names of enum values for logs and errors ("ENABLED"); never NULL. */
const char *kms_key_state_name(enum kms_key_state state);
const char *kms_version_state_name(enum kms_version_state state);

#endif

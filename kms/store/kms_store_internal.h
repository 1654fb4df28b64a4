/*
 * kms_store_internal.h - what the kms_store*.c files share. Nothing else
 * includes this: the store's interface is kms_store.h.
 *
 *   kms_store.c          open/free, validation, key operations
 *   kms_store_versions.c version operations and reconcile
 *   kms_store_import.c   BYOK import tokens and key check values
 *   kms_store_sql.c      connections, cached statements, transactions, rows
 *   kms_store_schema.c   connection settings, migrations, SQLite errors
 */
#ifndef KMS_STORE_INTERNAL_H
#define KMS_STORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "kms_error.h"
#include "kms_store.h"

/* How long a connection waits for a lock held by another connection (a
 * checkpoint, or an operator's sqlite3 .backup) before KMS_ERR_IO. */
#define STORE_BUSY_TIMEOUT_MS 5000

/* Read connections. More buys nothing on a few cores: a read by primary key
 * is microseconds of CPU, and WAL readers do not block one another. */
#define STORE_READERS 4

/* Every statement the store runs; SQL text in kms_store_sql.c. Statements
 * are prepared once per connection, on first use. */
enum store_stmt_id {
    ST_BEGIN,
    ST_BEGIN_IMMEDIATE,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_KEY_INSERT,
    ST_KEY_STATE,
    ST_KEY_GET,
    ST_KEY_SET_STATE,
    ST_KEY_SET_LAST_VERSION,
    ST_KEY_ACTIVATE,
    ST_KEY_SET_DESTROYED,
    ST_KEY_DELETE_CREATING,
    ST_KEYS_LIST,
    ST_KEYS_DUE,
    ST_VERSION_INSERT,
    ST_VERSION_STATE,
    ST_VERSION_GET,
    ST_VERSION_SET_ACTIVE,
    ST_VERSION_DELETE_CREATING,
    ST_VERSIONS_LIST,
    ST_VERSIONS_SET_DESTROYED,
    ST_KEY_HSM_IDS,
    ST_CREATING_LIST,
    ST_HSM_IDS_FOR_TOKEN,
    ST_COUNT
};

/* A connection and its cached statements; mu guards all of it. */
struct store_conn {
    pthread_mutex_t mu;
    bool mu_ready;
    sqlite3 *db;
    sqlite3_stmt *stmt[ST_COUNT];
};

struct kms_store {
    char *path;
    int lock_fd; /* holds the flock that keeps other processes out */
    struct store_conn writer;
    struct store_conn readers[STORE_READERS];
    atomic_uint next_reader;
};

/* ---- kms_store_schema.c ---- */

/* Map a SQLite result code to a kms_err, set the detail "store: <op>: ..."
 * and log failures that are not the caller's. db may be NULL. */
kms_err store_sql_err(sqlite3 *db, int rc, const char *op);

/*
 * Open one connection to path. The writer (writable) also checks that the
 * file is a Custos store this build can use, puts it in WAL mode and applies
 * pending migrations in one transaction; open it before any reader. On
 * error *out is NULL.
 */
kms_err store_conn_open(const char *path, bool writable, sqlite3 **out);

/* Settings in force on db; the caller holds the connection's mutex. */
kms_err store_schema_info(sqlite3 *db, struct kms_store_info *out);

/* ---- kms_store_sql.c ---- */

/* Lease a connection (locking its mutex); give it back when done. */
struct store_conn *store_writer_take(struct kms_store *s);
struct store_conn *store_reader_take(struct kms_store *s);
void store_conn_give(struct store_conn *c);
void store_conn_close(struct store_conn *c);

/* A statement being bound and run. Binding failures accumulate in rc so a
 * statement is bound by a row of calls and checked once, by store_run,
 * store_step or store_collect. Text and blobs are bound without copying:
 * they must outlive the statement's use. */
struct store_bind {
    struct store_conn *c;
    sqlite3_stmt *st;
    int rc;
};

kms_err store_stmt(struct store_conn *c, enum store_stmt_id id, const char *op,
                   struct store_bind *out);
void store_bind_text(struct store_bind *b, int i, const char *v);
void store_bind_int(struct store_bind *b, int i, int64_t v);
void store_bind_hsm_id(struct store_bind *b, int i, const uint8_t v[KMS_HSM_ID_LEN]);

/* Run to completion and reset. */
kms_err store_run(struct store_bind *b, const char *op);

/* One step: *out_row tells whether a row is there. Unless this fails, the
 * caller reads the row and then calls store_done. */
kms_err store_step(struct store_bind *b, const char *op, bool *out_row);

/* Reset a statement and drop its bindings. A statement left mid-result
 * would hold its read snapshot open, hiding later commits and blocking
 * checkpoints, so every use ends here. */
void store_done(struct store_bind *b);

/* Decode the current row of st into elem. */
typedef kms_err (*store_row_reader)(sqlite3_stmt *st, void *elem, const char *op);

/* Up to max rows into a new array (NULL if none); resets the statement. */
kms_err store_collect(struct store_bind *b, size_t elem, size_t max, store_row_reader read,
                      void **out, size_t *out_n, const char *op);

kms_err store_col_text(sqlite3_stmt *st, int col, char *dst, size_t size, const char *op);
kms_err store_col_hsm_id(sqlite3_stmt *st, int col, uint8_t dst[KMS_HSM_ID_LEN],
                         const char *op);
kms_err store_col_u32(sqlite3_stmt *st, int col, uint32_t *out, const char *op);
kms_err store_col_enum(sqlite3_stmt *st, int col, int lo, int hi, int *out, const char *op);

/* Row readers for the column lists of ST_KEY_GET and ST_VERSION_GET. */
kms_err store_read_key(sqlite3_stmt *st, void *elem, const char *op);
kms_err store_read_version(sqlite3_stmt *st, void *elem, const char *op);
kms_err store_read_hsm_id(sqlite3_stmt *st, void *elem, const char *op);

/* A key row as a transaction sees it, CREATING included. */
struct store_key_row {
    enum kms_key_state state;
    uint32_t current_version;
    uint32_t last_version;
    int64_t deletion_at;
};

/* KMS_ERR_NOT_FOUND if absent, or if CREATING and !creating_ok. */
kms_err store_key_row_get(struct store_conn *c, const char *key_id, bool creating_ok,
                          struct store_key_row *out, const char *op);

/* ---- kms_store.c ---- */

kms_err store_check_key_id(const char *key_id, const char *op);
/* The record of a visible key (ST_KEY_GET), or KMS_ERR_NOT_FOUND. */
kms_err store_key_get_row(struct store_conn *c, const char *key_id, struct kms_key_record *out,
                          const char *op);
/* The state of one version, CREATING included, or KMS_ERR_NOT_FOUND. */
kms_err store_version_state_get(struct store_conn *c, const char *key_id, uint32_t version,
                                enum kms_version_state *out, const char *op);
kms_err store_check_token(const char *token, size_t size, const char *op);

/* ---- kms_store_versions.c ---- */

/* Make a version ACTIVE and the key's current version (the create
 * protocol's last step), inside the caller's write transaction. */
kms_err store_version_make_active(struct store_conn *c, const char *key_id, uint32_t version,
                                  const char *op);

/* Statements prepared per call, for rare operations (imports, escrow,
 * recoveries) whose HSM work dwarfs a prepare. store_fin finalizes. */
typedef void (*store_binder)(struct store_bind *b, const void *arg);
kms_err store_prep(struct store_conn *c, const char *sql, const char *op, struct store_bind *out);
void store_fin(struct store_bind *b);
void store_bind_blob(struct store_bind *b, int i, const uint8_t *v, int len);
/* A store_binder for statements whose one parameter ?1 is the text arg. */
void store_bind_text1(struct store_bind *b, const void *arg);
/* A store_binder for ?1 text and ?2 integer: arg is a store_text_int. */
struct store_text_int {
    const char *text;
    int64_t i;
};
void store_bind_text_int(struct store_bind *b, const void *arg);
/* Prepare, bind through `bind`, run to completion; *out_changes (may be
 * NULL) gets the rows changed. */
kms_err store_exec_one(struct store_conn *c, const char *sql, const char *op, store_binder bind,
                       const void *arg, int *out_changes);
/* A one-row, one-integer query; *out_row false when there is no row. */
kms_err store_query_int(struct store_conn *c, const char *sql, const char *op, store_binder bind,
                        const void *arg, int64_t *out, bool *out_row);

/* Run body in one transaction on a leased connection: the writer with BEGIN
 * IMMEDIATE when write (the write lock is taken before anything is read, so
 * what a transaction checks is still true when it writes), else a reader.
 * Commits if body returns KMS_OK, else (or if the commit fails) rolls back;
 * with synchronous=FULL a KMS_OK commit is on disk. Returns the outcome.
 * Every store transaction goes through here. Results the body leaves in
 * arg are valid only if this returns KMS_OK. */
typedef kms_err (*store_tx_body)(struct store_conn *c, void *arg, const char *op);
kms_err store_tx_run(struct kms_store *s, bool write, store_tx_body body, void *arg,
                     const char *op);

/* Prepare sql, bind through `bind` (may be NULL), and store_collect up to
 * max rows into a new array (NULL if none); store_list_query does it on a
 * reader of its own. */
kms_err store_prep_collect(struct store_conn *c, const char *sql, const char *op, store_binder bind,
                           const void *arg, size_t elem, size_t max, store_row_reader read,
                           void **out, size_t *out_n);
/* At most one row of a per-call query on a reader of its own, decoded by
 * read into elem; *out_found false (and KMS_OK) when there is none. */
kms_err store_query_row(struct kms_store *s, const char *sql, const char *op, store_binder bind,
                        const void *arg, store_row_reader read, void *elem, bool *out_found);
kms_err store_list_query(struct kms_store *s, const char *sql, const char *op, store_binder bind,
                         const void *arg, size_t elem, size_t max, store_row_reader read,
                         void **out, size_t *out_n);

/* Import tokens, shared by kms_store_import.c and kms_store_import_sweep.c:
 * the columns store_import_read_token reads (a store_collect reader), and
 * one compare-and-set of a token's state in its own write transaction. */
#define STORE_IMPORT_TOKEN_COLS                                                                \
    "token_id, key_id, token, hsm_id, state, end_reason, failures, created_at, expires_at"
kms_err store_import_read_token(sqlite3_stmt *st, void *elem, const char *op);
kms_err store_import_cas_tx(struct kms_store *store, const uint8_t *token_id,
                            enum kms_import_state from, enum kms_import_state to,
                            enum kms_import_end end_reason, bool keep_end, const char *op);

/* Escrow rows (escrow_blobs, escrow_pairs) are written only while their key
 * version is CREATING: check that and run the insert sql, bound through
 * `bind` from row, in one write transaction. In kms_store_escrow.c. */
kms_err store_escrow_insert(struct kms_store *store, const char *key_id, uint32_t version,
                            const char *sql, store_binder bind, const void *row, const char *op);

#endif

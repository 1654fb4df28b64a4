/*
 * kms_store_internal.h - what the kms_store*.c files share. Nothing else
 * includes this: the store's interface is kms_store.h.
 *
 *   kms_store.c          validation, key operations
 *   kms_store_open.c     open/free (SQLite file and lock, PostgreSQL)
 *   kms_store_route.c    which database a call runs on (one per region)
 *   kms_store_versions.c version operations and reconcile
 *   kms_store_import.c   BYOK import tokens and key check values
 *   kms_store_sql.c      running one statement on either backend (SQLite,
 *                        PostgreSQL): connections, binding, stepping, columns
 *   kms_store_stmts.c    the cached statements' SQL and their row readers
 *   kms_store_tx.c       transactions and the one-call queries
 *   kms_store_schema.c   SQLite connection settings, migrations, SQLite errors
 *   kms_store_pg.c       PostgreSQL connections, migrations, errors
 *
 * The SQL the store files write is SQLite's numbered-parameter dialect kept
 * to what PostgreSQL also accepts (?N becomes $N there); the few statements
 * that differ (transaction begin, schema) are per backend. Row readers see
 * an opaque struct store_row and read it through store_col_*.
 */
#ifndef KMS_STORE_INTERNAL_H
#define KMS_STORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "kms_error.h"
#include "kms_pgconn.h"
#include "kms_store.h"

/* How long a connection waits for a lock held by another connection (a
 * checkpoint, or an operator's sqlite3 .backup) before KMS_ERR_IO. */
#define STORE_BUSY_TIMEOUT_MS 5000

/* Read connections. More buys nothing on a few cores: a read by primary key
 * is microseconds of CPU, and WAL readers do not block one another. */
#define STORE_READERS 4

/* Every statement the store runs; SQL text in kms_store_stmts.c. Statements
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

/* Most parameters one statement takes (a recovery row has 23). */
#define STORE_MAX_PARAMS 24

/* PostgreSQL: a write transaction that failed on a serialization failure
 * or a deadlock (another node touched the same rows) is run again, up to
 * this many times in all, with a randomised pause between tries (1..2^n ms,
 * at most 128): 16 nodes racing on one key's count all get through (the
 * recovery cap race in test_kms_store loses one at 8 tries). */
#define STORE_PG_TX_ATTEMPTS 16

/* PostgreSQL: no statement (nor a wait for a row lock or the migration
 * lock) runs longer than this; past it the call fails with KMS_ERR_IO, so a
 * stuck database never hangs a request. */
#define STORE_PG_STATEMENT_TIMEOUT_MS 10000

/* PostgreSQL: reconcile takes a CREATING row for a crash's leftover only
 * once it is this old (seconds by its created_at): younger ones may be a
 * create another node is running (a create takes milliseconds to seconds). */
#define STORE_PG_CREATING_GRACE_S 300

/* A connection and its cached statements; mu guards all of it. */
struct store_conn {
    pthread_mutex_t mu;
    bool mu_ready;
    struct store_db *owner;
    bool writable;
    /* SQLite */
    sqlite3 *db;
    sqlite3_stmt *stmt[ST_COUNT];
    /* PostgreSQL: NULL until first use and after a break (reconnected on
     * the next use); statement texts converted once ($N), per id. */
    PGconn *pg;
    char *pgsql[ST_COUNT];
    int pgn[ST_COUNT];
    bool pg_in_tx;      /* between BEGIN and COMMIT/ROLLBACK */
    bool pg_retryable;  /* a statement failed with 40001/40P01 */
    int64_t pg_changes; /* rows changed by the last statement */
};

/* One database: the SQLite file, or one PostgreSQL database (of a region,
 * or of every region when the store has one database). */
struct store_db {
    bool pg;          /* backend: PostgreSQL, else SQLite */
    char *path;       /* SQLite file */
    int lock_fd;      /* SQLite: holds the flock that keeps other processes out */
    char *conninfo;   /* PostgreSQL target (no password) */
    char *password;   /* PostgreSQL password source ("file:..."), may be NULL */
    char region[KMS_REGION_MAX + 1]; /* the region it holds; "" for all */
    /* PostgreSQL regions: false until the writer has connected and checked
     * (migrated) the database; a region unreachable at open is opened on
     * its first use (store_db_ready). Guarded by the writer's mutex. */
    atomic_bool ready;
    struct store_conn writer;
    struct store_conn readers[STORE_READERS];
    atomic_uint next_reader;
};

/* Most databases one store spans (one per region; kms_store.h). */
#define STORE_DB_MAX KMS_STORE_REGIONS_MAX

/* Slots of the key id -> database cache of a store with several databases
 * (a power of two). A slot holds one key id; a collision only costs the
 * next lookup of the evicted key a probe of each database. */
#define STORE_KEYMAP_SLOTS 4096

struct store_keymap_slot {
    char key_id[KMS_KEY_ID_SIZE];
    unsigned db;
};

/*
 * The store: one database (SQLite, or PostgreSQL for every region), or one
 * PostgreSQL database per region. Each region's rows live in its database
 * and only there (residency); a public function picks its database through
 * kms_store_route.c: by region when the call names one, by key id (the
 * cache below, else a probe of each database) when it names a key, and
 * every database for store-wide work (sweeps, reconcile, health).
 */
struct kms_store {
    bool pg;
    size_t n;                       /* databases, 1..STORE_DB_MAX */
    struct store_db *db[STORE_DB_MAX];
    pthread_mutex_t map_mu;         /* guards map (n > 1 only) */
    struct store_keymap_slot *map;  /* NULL when n == 1 */
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

/* ---- kms_store_pg.c ---- */

/* A failed PostgreSQL result (res may be NULL) as a kms_err with the
 * detail "store: <op>: ..."; remembers on c whether it is retryable. */
kms_err store_pg_err(struct store_conn *c, const PGresult *res, const char *op);

/* Make c usable: connect when it has no connection or the one it had
 * broke (the server restarted). KMS_ERR_IO when the server is away. */
kms_err store_pg_ensure(struct store_conn *c, const char *op);

/* Run sql (no parameters, may hold several statements) on c. */
kms_err store_pg_exec(struct store_conn *c, const char *sql, const char *op);

/* Connect the writer, check the database is a Custos store this build can
 * use and apply pending migrations in one transaction under an advisory
 * lock, so that nodes starting together migrate once. */
kms_err store_pg_open_writer(struct store_conn *c);

kms_err store_pg_schema_info(struct store_conn *c, struct kms_store_info *out);

/* ?N -> $N (outside quotes); *out_nparams the highest N. Caller frees. */
char *store_pg_sql(const char *sql, int *out_nparams);

/* Which backend c talks to. */
static inline bool store_conn_is_pg(const struct store_conn *c)
{
    return c->owner != NULL && c->owner->pg;
}

/* ---- kms_store_sql.c ---- */

/* Lease a connection (locking its mutex); give it back when done. */
struct store_conn *store_writer_take(struct store_db *s);
struct store_conn *store_reader_take(struct store_db *s);
void store_conn_give(struct store_conn *c);
void store_conn_close(struct store_conn *c);

/* A statement being bound and run. Binding failures accumulate in rc so a
 * statement is bound by a row of calls and checked once, by store_run,
 * store_step or store_collect. Text and blobs are bound without copying
 * (store_bind_text_copy excepted): they must outlive the statement's use. */
struct store_bind {
    struct store_conn *c;
    int rc; /* 0, else the first binding failure */
    /* SQLite */
    sqlite3_stmt *st;
    /* PostgreSQL: parameters in text (numbers, text) or binary (bytea)
     * format; results are read in binary. */
    char *sql;
    bool own_sql;
    int nparams;
    const char *vals[STORE_MAX_PARAMS];
    int lens[STORE_MAX_PARAMS];
    int fmts[STORE_MAX_PARAMS];
    Oid types[STORE_MAX_PARAMS];
    char nums[STORE_MAX_PARAMS][24];
    char *copies[STORE_MAX_PARAMS];
    PGresult *res;
    int row, nrows;
};

/* The current row of a statement, for row readers. */
struct store_row;
static inline const struct store_row *store_row_of(const struct store_bind *b)
{
    return (const struct store_row *)b;
}

kms_err store_stmt(struct store_conn *c, enum store_stmt_id id, const char *op,
                   struct store_bind *out);
void store_bind_text(struct store_bind *b, int i, const char *v);
void store_bind_int(struct store_bind *b, int i, int64_t v);
void store_bind_hsm_id(struct store_bind *b, int i, const uint8_t v[KMS_HSM_ID_LEN]);
/* Text that need not outlive the call: copied. */
void store_bind_text_copy(struct store_bind *b, int i, const char *v);
/* Parameters the statement's text names (the highest ?N). */
int store_param_count(const struct store_bind *b);
/* Rows changed by the last statement run on c. */
int64_t store_changes(const struct store_conn *c);

/* Run to completion and reset. */
kms_err store_run(struct store_bind *b, const char *op);

/* One step: *out_row tells whether a row is there. Unless this fails, the
 * caller reads the row and then calls store_done. */
kms_err store_step(struct store_bind *b, const char *op, bool *out_row);

/* Reset a statement and drop its bindings. A statement left mid-result
 * would hold its read snapshot open, hiding later commits and blocking
 * checkpoints, so every use ends here. */
void store_done(struct store_bind *b);

/* Decode the current row into elem. */
typedef kms_err (*store_row_reader)(const struct store_row *r, void *elem, const char *op);

/* Up to max rows into a new array (NULL if none); resets the statement. */
kms_err store_collect(struct store_bind *b, size_t elem, size_t max, store_row_reader read,
                      void **out, size_t *out_n, const char *op);

kms_err store_col_text(const struct store_row *r, int col, char *dst, size_t size,
                       const char *op);
kms_err store_col_hsm_id(const struct store_row *r, int col, uint8_t dst[KMS_HSM_ID_LEN],
                         const char *op);
kms_err store_col_u32(const struct store_row *r, int col, uint32_t *out, const char *op);
kms_err store_col_enum(const struct store_row *r, int col, int lo, int hi, int *out,
                       const char *op);
/* An integer column (0 for NULL). */
int64_t store_col_int64(const struct store_row *r, int col);
/* A blob column: *out points into the row (valid until the next step),
 * NULL for NULL. */
void store_col_blob(const struct store_row *r, int col, const uint8_t **out, size_t *out_len);

/* Statements prepared per call, for rare operations (imports, escrow,
 * recoveries) whose HSM work dwarfs a prepare. store_fin finalizes. */
kms_err store_prep(struct store_conn *c, const char *sql, const char *op, struct store_bind *out);
void store_fin(struct store_bind *b);
void store_bind_blob(struct store_bind *b, int i, const uint8_t *v, int len);

/* ---- kms_store_stmts.c ---- */

/* The SQL text of a cached statement. */
const char *store_stmt_text(enum store_stmt_id id);

/* Row readers for the column lists of ST_KEY_GET and ST_VERSION_GET. */
kms_err store_read_key(const struct store_row *r, void *elem, const char *op);
kms_err store_read_version(const struct store_row *r, void *elem, const char *op);
kms_err store_read_hsm_id(const struct store_row *r, void *elem, const char *op);

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

/* ---- kms_store_tx.c ---- */

/* Binds a per-call statement's parameters from arg. */
typedef void (*store_binder)(struct store_bind *b, const void *arg);
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
 * arg are valid only if this returns KMS_OK. On PostgreSQL the body may
 * run several times (SERIALIZABLE, STORE_PG_TX_ATTEMPTS): it must start
 * from what arg held on entry and free what an earlier run left there. */
typedef kms_err (*store_tx_body)(struct store_conn *c, void *arg, const char *op);
kms_err store_tx_run(struct store_db *s, bool write, store_tx_body body, void *arg,
                     const char *op);

/* Prepare sql, bind through `bind` (may be NULL), and store_collect up to
 * max rows into a new array (NULL if none); store_list_query does it on a
 * reader of its own. */
kms_err store_prep_collect(struct store_conn *c, const char *sql, const char *op, store_binder bind,
                           const void *arg, size_t elem, size_t max, store_row_reader read,
                           void **out, size_t *out_n);
/* At most one row of a per-call query on a reader of its own, decoded by
 * read into elem; *out_found false (and KMS_OK) when there is none. */
kms_err store_query_row(struct store_db *s, const char *sql, const char *op, store_binder bind,
                        const void *arg, store_row_reader read, void *elem, bool *out_found);
kms_err store_list_query(struct store_db *s, const char *sql, const char *op, store_binder bind,
                         const void *arg, size_t elem, size_t max, store_row_reader read,
                         void **out, size_t *out_n);

/* ---- kms_store_import.c, kms_store_escrow.c ---- */

/* Import tokens, shared by kms_store_import.c and kms_store_import_sweep.c:
 * the columns store_import_read_token reads (a store_collect reader), and
 * one compare-and-set of a token's state in its own write transaction. */
#define STORE_IMPORT_TOKEN_COLS                                                                \
    "token_id, key_id, token, hsm_id, state, end_reason, failures, created_at, expires_at"
kms_err store_import_read_token(const struct store_row *r, void *elem, const char *op);
/* The database holding the import token (KMS_ERR_NOT_FOUND: none). */
kms_err store_import_route(struct kms_store *store, const uint8_t *token_id,
                           struct store_db **out, const char *op);
kms_err store_import_cas_tx(struct store_db *store, const uint8_t *token_id,
                            enum kms_import_state from, enum kms_import_state to,
                            enum kms_import_end end_reason, bool keep_end, const char *op);

/* Escrow rows (escrow_blobs, escrow_pairs) are written only while their key
 * version is CREATING: check that and run the insert sql, bound through
 * `bind` from row, in one write transaction. In kms_store_escrow.c. */
kms_err store_escrow_insert(struct kms_store *store, const char *key_id, uint32_t version,
                            const char *sql, store_binder bind, const void *row, const char *op);

/* ---- kms_store_open.c ---- */

/* Connect a PostgreSQL database's writer, check and migrate the schema,
 * and mark it ready; the caller holds the writer's mutex (or is alone). */
kms_err store_db_pg_open(struct store_db *s);

/* ---- kms_store_epoch.c (meta rows) ---- */

/* SELECT value FROM meta WHERE name = ?: *found false when absent. */
kms_err store_meta_get(struct store_db *store, const char *name, char *out, size_t size,
                       bool *found);

/* One write statement with up to two text parameters (?1, ?2; t2 may be
 * NULL) and one integer (?3), in its own transaction. */
kms_err store_write_one(struct store_db *store, const char *sql, const char *t1, const char *t2,
                        int64_t i3, const char *op);

/* ---- kms_store_route.c ---- */

/* The database of region. With one database, that one (whatever region);
 * else KMS_ERR_FAILED_PRECONDITION when no database holds the region, and
 * KMS_ERR_IO when the region's database is unreachable (store_db_ready).
 * This is how a statement is run on one region's database: route, then
 * store_tx_run / store_query_row / store_list_query on the result. */
kms_err store_route_region(struct kms_store *s, const char *region, struct store_db **out,
                           const char *op);

/* The database that holds key_id (checked by the caller), CREATING rows
 * included: the cache, else each database asked in turn. KMS_ERR_NOT_FOUND
 * when none has it; KMS_ERR_IO when none has it and one could not be asked. */
kms_err store_route_key(struct kms_store *s, const char *key_id, struct store_db **out,
                        const char *op);

/* As store_route_key, but a key no database holds gets a reachable
 * database (any), which then answers as for a missing key: for calls whose
 * answer on a missing key is not an error (a verdict, found = false). */
kms_err store_route_key_any(struct kms_store *s, const char *key_id, struct store_db **out,
                            const char *op);

/* KMS_ERR_ALREADY_EXISTS when a database other than db holds key_id (ids
 * are unique across regions). A database that cannot be asked is skipped
 * (logged): ids are random, and one region's outage must not stop the
 * others creating keys. */
kms_err store_route_key_unique(struct kms_store *s, const char *key_id,
                               const struct store_db *db, const char *op);

/* Remember that key_id lives in db (after an insert there). */
void store_route_remember(struct kms_store *s, const char *key_id, const struct store_db *db);

/* A PostgreSQL region's database opened (connected, migrated) if it was
 * not yet: KMS_ERR_IO while it is unreachable. KMS_OK at once otherwise. */
kms_err store_db_ready(struct store_db *db, const char *op);

/* Run fn on each database until one answers other than KMS_ERR_NOT_FOUND
 * or KMS_ERR_IO (the row is there): that answer is returned. When none
 * does, the first KMS_ERR_IO (a database that could not be asked may hold
 * the row), else KMS_ERR_NOT_FOUND. For rows found by an id that is not a
 * key id (import token, recovery, hsm_id); ids are unique across regions. */
typedef kms_err (*store_db_fn)(struct store_db *db, void *arg, const char *op);
kms_err store_each_find(struct kms_store *s, store_db_fn fn, void *arg, const char *op);

/* Run fn on every database (store-wide work). all: stop at the first
 * failure and return it (results must be complete: orphan detection);
 * else a database that fails is logged and skipped, and the call fails
 * only if every database did (sweeps: the rest still get their work). */
kms_err store_each_db(struct kms_store *s, bool all, store_db_fn fn, void *arg, const char *op);

/* The database holding the row sql finds: sql is a one-row query
 * ("SELECT 1 FROM t WHERE id = ?1") bound through bind from arg. Errors as
 * store_each_find's. With one database, that one without a query. */
kms_err store_route_row(struct kms_store *s, const char *sql, store_binder bind, const void *arg,
                        struct store_db **out, const char *op);

/* store_list_query on every database (all: as for store_each_db), each
 * database's rows (up to max each) appended in database order; the caller
 * sorts and truncates what must be. */
kms_err store_list_all(struct kms_store *s, bool all, const char *sql, const char *op,
                       store_binder bind, const void *arg, size_t elem, size_t max,
                       store_row_reader read, void **out, size_t *out_n);

/* Append n elements of size elem from part to *acc (*acc_n of them);
 * frees part. For merging what each database returned. */
kms_err store_concat(void **acc, size_t *acc_n, void *part, size_t n, size_t elem,
                     const char *op);

#endif

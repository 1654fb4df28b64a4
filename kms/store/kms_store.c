/*
 * kms_store.c - the metadata store's key operations and the checks on what
 * goes in. Opening and closing are in kms_store_open.c; versions and
 * reconcile in kms_store_versions.c.
 *
 * Every write runs on the one writer connection, holding its mutex, inside
 * BEGIN IMMEDIATE ... COMMIT: the mutex orders this process's writers, the
 * IMMEDIATE lock orders us against anything else on the file (an operator's
 * sqlite3 shell, a backup), and whatever a write checks first is still true
 * when it writes. Reads run on read-only connections. On PostgreSQL the
 * same holds per node, and SERIALIZABLE (kms_store_tx.c) gives it across
 * nodes.
 */
#include "kms_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_store_internal.h"
#include "kms_text.h"

/* Page tokens: "k1" + created_at in 16 hex digits + key_id of the last key
 * returned. Opaque to clients; the prefix lets the format change later. */
#define PAGE_TOKEN_PREFIX "k1"
#define PAGE_TOKEN_PREFIX_LEN (sizeof(PAGE_TOKEN_PREFIX) - 1)
#define PAGE_TOKEN_LEN (PAGE_TOKEN_PREFIX_LEN + 16 + KMS_KEY_ID_LEN)
_Static_assert(PAGE_TOKEN_LEN < KMS_PAGE_TOKEN_SIZE, "page token must fit");

const char *kms_key_state_name(enum kms_key_state state)
{
    switch (state) {
    case KMS_KEY_CREATING:
        return "CREATING";
    case KMS_KEY_ENABLED:
        return "ENABLED";
    case KMS_KEY_DISABLED:
        return "DISABLED";
    case KMS_KEY_PENDING_IMPORT:
        return "PENDING_IMPORT";
    case KMS_KEY_PENDING_DELETION:
        return "PENDING_DELETION";
    case KMS_KEY_DESTROYED:
        return "DESTROYED";
    }
    return "UNKNOWN";
}

const char *kms_version_state_name(enum kms_version_state state)
{
    switch (state) {
    case KMS_VERSION_CREATING:
        return "CREATING";
    case KMS_VERSION_ACTIVE:
        return "ACTIVE";
    case KMS_VERSION_DESTROYED:
        return "DESTROYED";
    }
    return "UNKNOWN";
}

/* ---- validation --------------------------------------------------------- */

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

kms_err store_check_key_id(const char *key_id, const char *op)
{
    KMS_ENSURE(key_id != NULL, KMS_ERR_USAGE, "store: %s: key id is NULL", op);
    /* Not echoed: it is caller input of unknown shape and length. */
    KMS_ENSURE(strnlen(key_id, KMS_KEY_ID_LEN + 1) == KMS_KEY_ID_LEN &&
                   is_lower_hex(key_id, KMS_KEY_ID_LEN),
               KMS_ERR_INVALID_ARGUMENT, "store: %s: key id must be %d lowercase hex characters",
               op, KMS_KEY_ID_LEN);
    return KMS_OK;
}

/* A NUL-terminated string within size bytes, of 1..max bytes (0..max if
 * allow_empty), each in lo..0x7e. */
static kms_err check_ascii(const char *s, size_t size, size_t max, char lo, bool allow_empty,
                           const char *op, const char *what)
{
    KMS_ENSURE(s != NULL, KMS_ERR_USAGE, "store: %s: %s is NULL", op, what);
    size_t n = strnlen(s, size < max + 1 ? size : max + 1);
    KMS_ENSURE(n <= max && n < size, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: %s longer than %zu bytes", op, what, max);
    KMS_ENSURE(n > 0 || allow_empty, KMS_ERR_INVALID_ARGUMENT, "store: %s: %s is empty", op,
               what);
    for (size_t i = 0; i < n; i++)
        KMS_ENSURE(s[i] >= lo && s[i] <= 0x7e, KMS_ERR_INVALID_ARGUMENT,
                   "store: %s: %s has a character outside printable ASCII", op, what);
    return KMS_OK;
}

static kms_err check_tenant(const char *tenant, size_t size, const char *op)
{
    return check_ascii(tenant, size, KMS_TENANT_MAX, 0x21, false, op, "tenant");
}

kms_err store_check_token(const char *token, size_t size, const char *op)
{
    KMS_GUARD(check_ascii(token, size, KMS_TOKEN_LABEL_MAX, 0x20, false, op, "token label"));
    size_t n = strlen(token);
    KMS_ENSURE(token[0] != ' ' && token[n - 1] != ' ', KMS_ERR_INVALID_ARGUMENT,
               "store: %s: token label starts or ends with a space", op);
    return KMS_OK;
}

static kms_err check_new_key(const struct kms_key_record *key,
                             const struct kms_version_record *v1, const char *op)
{
    KMS_GUARD(store_check_key_id(key->key_id, op));
    KMS_GUARD(check_tenant(key->tenant, sizeof(key->tenant), op));
    KMS_GUARD(check_ascii(key->region, sizeof(key->region), KMS_REGION_MAX, 0x21, false, op,
                          "region"));
    KMS_GUARD(store_check_token(key->token, sizeof(key->token), op));
    size_t dlen = strnlen(key->description, sizeof(key->description));
    KMS_ENSURE(dlen <= KMS_DESCRIPTION_MAX, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: description longer than %d bytes", op, KMS_DESCRIPTION_MAX);
    /* Descriptions reach terminals and log viewers: kms_text.h's rule. */
    KMS_ENSURE(kms_text_ok(key->description, dlen),
               KMS_ERR_INVALID_ARGUMENT,
               "store: %s: description is not UTF-8 text without control characters", op);

    KMS_ENSURE(key->spec >= KMS_KEY_SPEC_AES_256 && key->spec <= KMS_KEY_SPEC_LAST,
               KMS_ERR_INVALID_ARGUMENT, "store: %s: unknown key spec %d", op, (int)key->spec);
    KMS_ENSURE(key->usage >= KMS_KEY_USAGE_ENCRYPT_DECRYPT &&
                   key->usage <= KMS_KEY_USAGE_LAST,
               KMS_ERR_INVALID_ARGUMENT, "store: %s: unknown key usage %d", op, (int)key->usage);
    KMS_ENSURE(key->origin == KMS_KEY_ORIGIN_HSM || key->origin == KMS_KEY_ORIGIN_EXTERNAL,
               KMS_ERR_INVALID_ARGUMENT, "store: %s: unknown key origin %d", op,
               (int)key->origin);
    KMS_ENSURE(key->created_at > 0, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: created_at must be positive", op);
    KMS_ENSURE(key->deletion_at == 0 && key->current_version == 0, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: a new key has no deletion date and no current version", op);

    switch (key->state) {
    case KMS_KEY_CREATING:
        KMS_ENSURE(v1 != NULL, KMS_ERR_INVALID_ARGUMENT,
                   "store: %s: a CREATING key needs its version 1", op);
        KMS_ENSURE(v1->key_id[0] == '\0' ||
                       strncmp(v1->key_id, key->key_id, sizeof(v1->key_id)) == 0,
                   KMS_ERR_INVALID_ARGUMENT, "store: %s: version 1 belongs to another key", op);
        KMS_ENSURE(v1->version == 1 && v1->state == KMS_VERSION_CREATING,
                   KMS_ERR_INVALID_ARGUMENT,
                   "store: %s: the first version must be version 1 in CREATING", op);
        KMS_ENSURE(v1->created_at > 0, KMS_ERR_INVALID_ARGUMENT,
                   "store: %s: version created_at must be positive", op);
        return KMS_OK;
    case KMS_KEY_PENDING_IMPORT:
        KMS_ENSURE(key->origin == KMS_KEY_ORIGIN_EXTERNAL && v1 == NULL,
                   KMS_ERR_INVALID_ARGUMENT,
                   "store: %s: a PENDING_IMPORT key is EXTERNAL and has no version yet", op);
        return KMS_OK;
    default:
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                           "store: %s: a new key is CREATING or PENDING_IMPORT, not %s", op,
                           kms_key_state_name(key->state));
    }
}

/* ---- keys --------------------------------------------------------------- */

struct key_insert_arg {
    const struct kms_key_record *key;
    const struct kms_version_record *v1;
};

static kms_err key_insert_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct key_insert_arg *a = varg;
    const struct kms_key_record *key = a->key;
    const struct kms_version_record *v1 = a->v1;
    struct store_bind b;

    KMS_GUARD(store_stmt(c, ST_KEY_INSERT, op, &b));
    store_bind_text(&b, 1, key->key_id);
    store_bind_text(&b, 2, key->tenant);
    store_bind_text(&b, 3, key->region);
    store_bind_text(&b, 4, key->token);
    store_bind_int(&b, 5, key->spec);
    store_bind_int(&b, 6, key->usage);
    store_bind_int(&b, 7, key->origin);
    store_bind_int(&b, 8, key->state);
    store_bind_text(&b, 9, key->description);
    store_bind_int(&b, 10, key->created_at);
    store_bind_int(&b, 11, v1 != NULL ? 1 : 0); /* last_version */
    store_bind_int(&b, 12, key->escrow_required ? 1 : 0);
    KMS_GUARD(store_run(&b, op));
    if (v1 == NULL)
        return KMS_OK;
    KMS_GUARD(store_stmt(c, ST_VERSION_INSERT, op, &b));
    store_bind_text(&b, 1, key->key_id);
    store_bind_int(&b, 2, 1);
    store_bind_hsm_id(&b, 3, v1->hsm_id);
    store_bind_int(&b, 4, v1->created_at);
    return store_run(&b, op);
}

kms_err kms_store_key_insert(struct kms_store *store, const struct kms_key_record *key,
                             const struct kms_version_record *v1)
{
    static const char op[] = "insert key";

    KMS_ENSURE(store != NULL && key != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(check_new_key(key, v1, op));

    struct store_db *db = NULL;
    KMS_GUARD(store_route_region(store, key->region, &db, op));
    /* A key id names one key across every region's database. */
    KMS_GUARD(store_route_key_unique(store, key->key_id, db, op));
    struct key_insert_arg a = {key, v1};
    KMS_GUARD(store_tx_run(db, true, key_insert_tx, &a, op));
    store_route_remember(store, key->key_id, db);
    return KMS_OK;
}

kms_err store_key_get_row(struct store_conn *c, const char *key_id, struct kms_key_record *out,
                          const char *op)
{
    struct store_bind b;
    bool row = false;

    KMS_GUARD(store_stmt(c, ST_KEY_GET, op, &b));
    store_bind_text(&b, 1, key_id);
    KMS_GUARD(store_step(&b, op, &row));
    kms_err rc = row ? store_read_key(store_row_of(&b), out, op)
                     : kms_err_set(KMS_ERR_NOT_FOUND, "store: %s: key %s not found", op, key_id);
    store_done(&b);
    return rc;
}

kms_err kms_store_key_get(struct kms_store *store, const char *key_id,
                          struct kms_key_record *out)
{
    static const char op[] = "get key";

    KMS_ENSURE(store != NULL && out != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, key_id, &db, op));

    struct store_conn *c = store_reader_take(db);
    kms_err rc = store_key_get_row(c, key_id, out, op);
    store_conn_give(c);
    return rc;
}

static bool settable_state(enum kms_key_state s)
{
    return s == KMS_KEY_ENABLED || s == KMS_KEY_DISABLED || s == KMS_KEY_PENDING_IMPORT ||
           s == KMS_KEY_PENDING_DELETION;
}

struct set_state_arg {
    const char *key_id;
    enum kms_key_state expected, new_state;
    int64_t deletion_at;
};

static kms_err set_state_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct set_state_arg *a = varg;
    const char *key_id = a->key_id;
    struct store_key_row row = {0};
    struct store_bind b;

    KMS_GUARD(store_key_row_get(c, key_id, false, &row, op));
    KMS_ENSURE(row.state == a->expected, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: key %s is %s, not %s", op, key_id, kms_key_state_name(row.state),
               kms_key_state_name(a->expected));
    if (a->new_state == KMS_KEY_ENABLED || a->new_state == KMS_KEY_DISABLED)
        KMS_ENSURE(row.current_version > 0, KMS_ERR_FAILED_PRECONDITION,
                   "store: %s: key %s has no key material yet", op, key_id);
    if (a->new_state == KMS_KEY_PENDING_IMPORT)
        KMS_ENSURE(row.current_version == 0, KMS_ERR_FAILED_PRECONDITION,
                   "store: %s: key %s already has key material", op, key_id);

    KMS_GUARD(store_stmt(c, ST_KEY_SET_STATE, op, &b));
    store_bind_text(&b, 1, key_id);
    store_bind_int(&b, 2, a->new_state);
    store_bind_int(&b, 3, a->deletion_at);
    store_bind_int(&b, 4, a->expected);
    KMS_GUARD(store_run(&b, op));
    /* The state was checked above in this transaction; a miss is a bug. */
    KMS_ENSURE(store_changes(c) == 1, KMS_ERR_INTERNAL,
               "store: %s: compare-and-set matched no row", op);
    return KMS_OK;
}

kms_err kms_store_key_set_state(struct kms_store *store, const char *key_id,
                                enum kms_key_state expected, enum kms_key_state new_state,
                                int64_t deletion_at)
{
    static const char op[] = "set key state";

    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    /* CREATING and DESTROYED are entered and left only through their own
     * transitions, which carry their own preconditions. */
    KMS_ENSURE(settable_state(expected) && settable_state(new_state), KMS_ERR_USAGE,
               "store: %s: %s -> %s is not a state change this call makes", op,
               kms_key_state_name(expected), kms_key_state_name(new_state));
    if (new_state == KMS_KEY_PENDING_DELETION)
        KMS_ENSURE(deletion_at > 0, KMS_ERR_INVALID_ARGUMENT,
                   "store: %s: PENDING_DELETION needs a deletion date", op);
    else
        KMS_ENSURE(deletion_at == 0, KMS_ERR_INVALID_ARGUMENT,
                   "store: %s: only PENDING_DELETION has a deletion date", op);

    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, key_id, &db, op));
    struct set_state_arg a = {key_id, expected, new_state, deletion_at};
    return store_tx_run(db, true, set_state_tx, &a, op);
}

/* The (created_at, key_id) of the last key a page token points past. */
static kms_err page_token_parse(const char *tok, int64_t *created_at,
                                char key_id[KMS_KEY_ID_SIZE], const char *op)
{
    uint64_t v = 0;

    const char *hex = tok + PAGE_TOKEN_PREFIX_LEN;
    KMS_ENSURE(strnlen(tok, PAGE_TOKEN_LEN + 1) == PAGE_TOKEN_LEN &&
                   memcmp(tok, PAGE_TOKEN_PREFIX, PAGE_TOKEN_PREFIX_LEN) == 0 &&
                   is_lower_hex(hex, PAGE_TOKEN_LEN - PAGE_TOKEN_PREFIX_LEN),
               KMS_ERR_INVALID_ARGUMENT, "store: %s: malformed page token", op);
    for (size_t i = 0; i < 16; i++)
        v = (v << 4) | (uint64_t)(hex[i] <= '9' ? hex[i] - '0' : hex[i] - 'a' + 10);
    KMS_ENSURE(v > 0 && v <= INT64_MAX, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: malformed page token", op);
    *created_at = (int64_t)v;
    memcpy(key_id, hex + 16, KMS_KEY_ID_LEN);
    key_id[KMS_KEY_ID_LEN] = '\0';
    return KMS_OK;
}

/* Order of ListKeys pages: (created_at, key_id), the same in every database. */
static int key_page_cmp(const void *pa, const void *pb)
{
    const struct kms_key_record *a = pa, *b = pb;
    if (a->created_at != b->created_at)
        return a->created_at < b->created_at ? -1 : 1;
    return strcmp(a->key_id, b->key_id);
}

/* Sweeper order: (deletion_at, key_id). */
static int key_due_cmp(const void *pa, const void *pb)
{
    const struct kms_key_record *a = pa, *b = pb;
    if (a->deletion_at != b->deletion_at)
        return a->deletion_at < b->deletion_at ? -1 : 1;
    return strcmp(a->key_id, b->key_id);
}

struct keys_list_arg {
    const char *tenant;
    int64_t after_created;
    const char *after_id;
    size_t limit;
    void *arr; /* merged rows of every database so far */
    size_t n;
};

/* Up to limit of one database's keys past the cursor, added to a->arr. */
static kms_err keys_list_db(struct store_db *db, void *varg, const char *op)
{
    struct keys_list_arg *a = varg;
    struct store_bind b;
    void *part = NULL;
    size_t n = 0;

    struct store_conn *c = store_reader_take(db);
    kms_err rc = store_stmt(c, ST_KEYS_LIST, op, &b);
    if (rc == KMS_OK) {
        store_bind_text(&b, 1, a->tenant);
        store_bind_int(&b, 2, a->after_created);
        store_bind_text(&b, 3, a->after_id);
        store_bind_int(&b, 4, (int64_t)a->limit);
        rc = store_collect(&b, sizeof(struct kms_key_record), a->limit, store_read_key, &part,
                           &n, op);
    }
    store_conn_give(c);
    if (rc == KMS_OK)
        rc = store_concat(&a->arr, &a->n, part, n, sizeof(struct kms_key_record), op);
    return rc;
}

/*
 * With one database per region, each is asked for the page_size + 1 keys
 * past the cursor and the answers are merged in (created_at, key_id)
 * order, which is total (key ids are unique across regions): the first
 * page_size of the merge are exactly the next page_size keys of all
 * regions, and the cursor of the last names the same position in every
 * database, so paging neither skips nor repeats a key. Every database must
 * answer: a page that left a region out would skip its keys for good.
 */
kms_err kms_store_keys_list(struct kms_store *store, const char *tenant,
                            const char *page_token, size_t page_size,
                            struct kms_key_record **out, size_t *out_n,
                            char next_token[KMS_PAGE_TOKEN_SIZE])
{
    static const char op[] = "list keys";
    int64_t after_created = 0; /* every created_at is > 0: (0, "") precedes all */
    char after_id[KMS_KEY_ID_SIZE] = "";

    KMS_ENSURE(store != NULL && out != NULL && out_n != NULL && next_token != NULL,
               KMS_ERR_USAGE, "store: %s: NULL argument", op);
    *out = NULL;
    *out_n = 0;
    next_token[0] = '\0';
    KMS_GUARD(check_tenant(tenant, KMS_TENANT_MAX + 1, op));
    KMS_ENSURE(page_size >= 1 && page_size <= KMS_PAGE_SIZE_MAX, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: page size must be 1..%d", op, KMS_PAGE_SIZE_MAX);
    if (page_token != NULL && page_token[0] != '\0')
        KMS_GUARD(page_token_parse(page_token, &after_created, after_id, op));

    /* One row more than asked tells whether another page follows. */
    struct keys_list_arg a = {tenant, after_created, after_id, page_size + 1, NULL, 0};
    kms_err rc = store_each_db(store, true, keys_list_db, &a, op);
    if (rc != KMS_OK) {
        free(a.arr);
        return rc;
    }
    if (store->n > 1 && a.n > 1)
        qsort(a.arr, a.n, sizeof(struct kms_key_record), key_page_cmp);
    size_t n = a.n;
    if (n > page_size) {
        const struct kms_key_record *last = (struct kms_key_record *)a.arr + page_size - 1;
        snprintf(next_token, KMS_PAGE_TOKEN_SIZE, PAGE_TOKEN_PREFIX "%016" PRIx64 "%s",
                 (uint64_t)last->created_at, last->key_id);
        n = page_size;
    }
    *out = a.arr;
    *out_n = n;
    return KMS_OK;
}

struct keys_due_arg {
    int64_t now;
    size_t limit;
    void *arr;
    size_t n;
};

static kms_err keys_due_db(struct store_db *db, void *varg, const char *op)
{
    struct keys_due_arg *a = varg;
    struct store_bind b;
    void *part = NULL;
    size_t n = 0;

    struct store_conn *c = store_reader_take(db);
    kms_err rc = store_stmt(c, ST_KEYS_DUE, op, &b);
    if (rc == KMS_OK) {
        store_bind_int(&b, 1, a->now);
        store_bind_int(&b, 2, (int64_t)a->limit);
        rc = store_collect(&b, sizeof(struct kms_key_record), a->limit, store_read_key, &part,
                           &n, op);
    }
    store_conn_give(c);
    if (rc == KMS_OK)
        rc = store_concat(&a->arr, &a->n, part, n, sizeof(struct kms_key_record), op);
    return rc;
}

/* A region whose database is away is skipped: the others' due keys are
 * still destroyed on time. */
kms_err kms_store_keys_due_for_deletion(struct kms_store *store, int64_t now, size_t limit,
                                        struct kms_key_record **out, size_t *out_n)
{
    static const char op[] = "list keys due for deletion";

    KMS_ENSURE(store != NULL && out != NULL && out_n != NULL, KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    *out = NULL;
    *out_n = 0;
    KMS_ENSURE(limit >= 1 && limit <= KMS_PAGE_SIZE_MAX, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: limit must be 1..%d", op, KMS_PAGE_SIZE_MAX);

    struct keys_due_arg a = {now, limit, NULL, 0};
    kms_err rc = store_each_db(store, false, keys_due_db, &a, op);
    if (rc != KMS_OK) {
        free(a.arr);
        return rc;
    }
    if (store->n > 1 && a.n > 1)
        qsort(a.arr, a.n, sizeof(struct kms_key_record), key_due_cmp);
    *out = a.arr;
    *out_n = a.n < limit ? a.n : limit;
    return KMS_OK;
}

struct mark_destroyed_arg {
    const char *key_id;
    int64_t now;
    bool want_ids;
    void *ids;
    size_t n;
};

static kms_err mark_destroyed_tx(struct store_conn *c, void *varg, const char *op)
{
    struct mark_destroyed_arg *a = varg;
    const char *key_id = a->key_id;
    struct store_key_row row = {0};
    struct store_bind b;

    /* A run PostgreSQL aborted may have collected ids already. */
    free(a->ids);
    a->ids = NULL;
    a->n = 0;

    KMS_GUARD(store_key_row_get(c, key_id, false, &row, op));
    KMS_ENSURE(row.state == KMS_KEY_PENDING_DELETION, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: key %s is %s, not PENDING_DELETION", op, key_id,
               kms_key_state_name(row.state));
    KMS_ENSURE(row.deletion_at <= a->now, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: key %s is not due for deletion yet", op, key_id);

    KMS_GUARD(store_stmt(c, ST_KEY_SET_DESTROYED, op, &b));
    store_bind_text(&b, 1, key_id);
    store_bind_int(&b, 2, a->now);
    KMS_GUARD(store_run(&b, op));
    KMS_ENSURE(store_changes(c) == 1, KMS_ERR_INTERNAL,
               "store: %s: compare-and-set matched no row", op);

    KMS_GUARD(store_stmt(c, ST_VERSIONS_SET_DESTROYED, op, &b));
    store_bind_text(&b, 1, key_id);
    KMS_GUARD(store_run(&b, op));

    if (!a->want_ids)
        return KMS_OK;
    KMS_GUARD(store_stmt(c, ST_KEY_HSM_IDS, op, &b));
    store_bind_text(&b, 1, key_id);
    return store_collect(&b, sizeof(struct kms_hsm_id), SIZE_MAX, store_read_hsm_id, &a->ids,
                         &a->n, op);
}

kms_err kms_store_key_mark_destroyed(struct kms_store *store, const char *key_id, int64_t now,
                                     struct kms_hsm_id **out_ids, size_t *out_n)
{
    static const char op[] = "mark key destroyed";

    KMS_ENSURE(store != NULL && (out_ids == NULL || out_n != NULL), KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    if (out_ids != NULL) {
        *out_ids = NULL;
        *out_n = 0;
    }
    KMS_GUARD(store_check_key_id(key_id, op));

    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, key_id, &db, op));
    struct mark_destroyed_arg a = {key_id, now, out_ids != NULL, NULL, 0};
    kms_err rc = store_tx_run(db, true, mark_destroyed_tx, &a, op);
    /* The ids go out only once the commit is durable: destroying the HSM
     * objects of a key the store still calls alive would lose the key. */
    if (rc == KMS_OK && out_ids != NULL) {
        *out_ids = a.ids;
        *out_n = a.n;
    } else {
        free(a.ids);
    }
    return rc;
}

/*
 * kms_store_lease.c - leases shared by the kmsd nodes of one store
 * (kms_store.h, "Leases").
 *
 * A lease is one row of the meta table: name "lease:<name>", value
 * "<expiry, 20 decimal digits> <holder>". It is read and written in one
 * write transaction (BEGIN IMMEDIATE on SQLite; SERIALIZABLE with retries
 * on PostgreSQL), so of several nodes asking at once exactly one finds it
 * free and takes it; the others see it held. No migration: meta exists in
 * every schema version, and a lease left by a crashed holder simply
 * expires.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_store_internal.h"

/* "lease:" + name, and value: 20 digits, a space, the holder. */
#define LEASE_NAME_MAX 96
#define LEASE_VALUE_MAX (21 + KMS_STORE_LEASE_HOLDER_MAX + 1)

struct lease_arg {
    const char *row;    /* "lease:<name>" */
    const char *holder;
    int64_t now, expires;
    bool take;          /* else release */
    bool won;
};

struct lease_text {
    char v[LEASE_VALUE_MAX];
};

static kms_err read_value(const struct store_row *r, void *elem, const char *op)
{
    struct lease_text *t = elem;
    return store_col_text(r, 0, t->v, sizeof(t->v), op);
}

/* Split a stored value; a value that does not parse counts as expired (it
 * can only be a lease written by another version, or damaged by hand). */
static void parse_value(const char *v, int64_t *out_expires, const char **out_holder)
{
    char *end = NULL;
    long long e = strtoll(v, &end, 10);
    *out_expires = end != v && *end == ' ' ? (int64_t)e : 0;
    *out_holder = end != v && *end == ' ' ? end + 1 : "";
}

static kms_err lease_tx(struct store_conn *c, void *varg, const char *op)
{
    struct lease_arg *a = varg;
    struct store_bind b;
    struct lease_text cur = {{0}};
    void *rows = NULL;
    size_t n = 0;
    a->won = false;
    KMS_GUARD(store_prep_collect(c, "SELECT value FROM meta WHERE name = ?1", op,
                                 store_bind_text1, a->row, sizeof(cur), 1, read_value, &rows,
                                 &n));
    if (n == 1)
        cur = *(struct lease_text *)rows;
    free(rows);
    int64_t expires = 0;
    const char *holder = "";
    if (n == 1)
        parse_value(cur.v, &expires, &holder);
    bool mine = n == 1 && strcmp(holder, a->holder) == 0;
    kms_err rc = KMS_OK;
    if (!a->take) {
        /* Only the holder's own lease goes; one taken over meanwhile stays. */
        if (mine) {
            rc = store_prep(c, "DELETE FROM meta WHERE name = ?1", op, &b);
            if (rc == KMS_OK) {
                store_bind_text(&b, 1, a->row);
                rc = store_run(&b, op);
                store_fin(&b);
            }
        }
        return rc;
    }
    if (n == 1 && !mine && expires > a->now)
        return KMS_OK; /* held by another */
    char value[LEASE_VALUE_MAX];
    snprintf(value, sizeof(value), "%020" PRId64 " %s", a->expires, a->holder);
    rc = store_prep(c,
                    "INSERT INTO meta (name, value) VALUES (?1, ?2) "
                    "ON CONFLICT (name) DO UPDATE SET value = ?2",
                    op, &b);
    if (rc == KMS_OK) {
        store_bind_text(&b, 1, a->row);
        store_bind_text(&b, 2, value);
        rc = store_run(&b, op);
        store_fin(&b);
    }
    a->won = rc == KMS_OK;
    return rc;
}

static kms_err lease_args(const char *name, const char *holder, char row[LEASE_NAME_MAX],
                          const char *op)
{
    KMS_ENSURE(name != NULL && holder != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    size_t nl = strlen(name), hl = strlen(holder);
    KMS_ENSURE(nl > 0 && nl + 7 <= LEASE_NAME_MAX, KMS_ERR_USAGE, "store: %s: bad lease name",
               op);
    KMS_ENSURE(hl > 0 && hl <= KMS_STORE_LEASE_HOLDER_MAX && strchr(holder, ' ') == NULL,
               KMS_ERR_USAGE, "store: %s: bad lease holder", op);
    snprintf(row, LEASE_NAME_MAX, "lease:%s", name);
    return KMS_OK;
}

/* A key's lease ("key:<id>") lives in the database that holds the key (on a
 * store with one database per region, the key's region): true, with *db
 * that database, or NULL with the error set when it cannot be routed. */
static bool lease_of_key(struct kms_store *store, const char *name, struct store_db **db,
                         kms_err *rc, const char *op)
{
    if (strncmp(name, "key:", 4) != 0)
        return false;
    *rc = store_route_key_any(store, name + 4, db, op);
    return true;
}

/* Release the store-wide lease row in the first n databases (a take that
 * lost one of them); failures only logged: the rows expire. */
static void give_back(struct kms_store *store, const char *row, const char *holder, size_t n)
{
    struct lease_arg a = {row, holder, 0, 0, false, false};
    for (size_t i = 0; i < n; i++)
        if (store_tx_run(store->db[i], true, lease_tx, &a, "release lease") != KMS_OK)
            kms_err_clear();
}

kms_err kms_store_lease_take(struct kms_store *store, const char *name, const char *holder,
                             int64_t now, int64_t ttl_s, bool *out_won)
{
    static const char op[] = "take lease";
    char row[LEASE_NAME_MAX];
    KMS_ENSURE(store != NULL && out_won != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    *out_won = false;
    KMS_GUARD(lease_args(name, holder, row, op));
    KMS_ENSURE(now >= 0 && ttl_s > 0 && ttl_s <= KMS_STORE_LEASE_TTL_MAX, KMS_ERR_USAGE,
               "store: %s: bad time or duration", op);
    struct lease_arg a = {row, holder, now, now + ttl_s, true, false};
    struct store_db *db = NULL;
    kms_err rc = KMS_OK;
    if (lease_of_key(store, name, &db, &rc, op)) {
        KMS_GUARD(rc);
        KMS_GUARD(store_tx_run(db, true, lease_tx, &a, op));
        *out_won = a.won;
        return KMS_OK;
    }
    /* A store-wide lease is held in every region's database, taken in the
     * same order by every node: a node wins it only by winning each one,
     * and a node that loses one gives back what it took. */
    size_t got = 0;
    for (; got < store->n; got++) {
        a.won = false;
        rc = store_db_ready(store->db[got], op);
        if (rc == KMS_OK)
            rc = store_tx_run(store->db[got], true, lease_tx, &a, op);
        if (rc != KMS_OK || !a.won)
            break;
    }
    if (got < store->n)
        give_back(store, row, holder, got);
    KMS_GUARD(rc);
    *out_won = got == store->n;
    return KMS_OK;
}

kms_err kms_store_lease_release(struct kms_store *store, const char *name, const char *holder)
{
    static const char op[] = "release lease";
    char row[LEASE_NAME_MAX];
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(lease_args(name, holder, row, op));
    struct lease_arg a = {row, holder, 0, 0, false, false};
    struct store_db *db = NULL;
    kms_err rc = KMS_OK;
    if (lease_of_key(store, name, &db, &rc, op))
        return rc != KMS_OK ? rc : store_tx_run(db, true, lease_tx, &a, op);
    for (size_t i = 0; i < store->n; i++) {
        kms_err r = store_db_ready(store->db[i], op);
        if (r == KMS_OK)
            r = store_tx_run(store->db[i], true, lease_tx, &a, op);
        if (r != KMS_OK && rc == KMS_OK)
            rc = r;
    }
    return rc;
}

/*
 * kms_store_links.c - link tokens in the store (kms_store_links.h).
 * Statements are prepared per call, like the other rare-table files: a
 * redemption costs two HSM calls, which dwarf a prepare.
 */
#include "kms_store_links.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kms_store_internal.h"

#define LINK_COLS                                                                                  \
    "key_id, token_id, version, region, tenant, expires_at, created_at, state, attempts, "         \
    "max_attempts, recipient, token_hash, purpose, message_ref"

const char *kms_link_verdict_name(enum kms_link_verdict v)
{
    switch (v) {
    case KMS_LINK_ACCEPTED:
        return "accepted";
    case KMS_LINK_RATE_LIMITED:
        return "rate_limited";
    case KMS_LINK_UNKNOWN:
        return "unknown";
    case KMS_LINK_ALREADY_USED:
        return "used";
    case KMS_LINK_WAS_REVOKED:
        return "revoked";
    case KMS_LINK_EXHAUSTED:
        return "attempts_exhausted";
    case KMS_LINK_FORGED:
        return "forged";
    case KMS_LINK_EXPIRED:
        return "expired";
    case KMS_LINK_WRONG_RECIPIENT:
        return "wrong_phone";
    case KMS_LINK_WRONG_PURPOSE:
        return "wrong_purpose";
    case KMS_LINK_WRONG_DEVICE:
        return "wrong_device";
    }
    return "unknown";
}

static bool printable_ascii(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return false;
    return true;
}

static kms_err check_record(const struct kms_link_record *r, const char *op)
{
    KMS_GUARD(store_check_key_id(r->key_id, op));
    KMS_ENSURE(r->version >= 1 && r->max_attempts >= 1 && r->expires_at > r->created_at &&
                   r->created_at > 0,
               KMS_ERR_INVALID_ARGUMENT, "store: %s: bad version, attempts or times", op);
    KMS_ENSURE(r->region[0] && printable_ascii(r->region, KMS_REGION_MAX) && r->tenant[0] &&
                   printable_ascii(r->tenant, KMS_TENANT_MAX),
               KMS_ERR_INVALID_ARGUMENT, "store: %s: bad region or tenant", op);
    KMS_ENSURE(r->purpose[0] && printable_ascii(r->purpose, KMS_LINK_PURPOSE_MAX) &&
                   (r->message_ref[0] == '\0' || printable_ascii(r->message_ref, KMS_LINK_REF_MAX)),
               KMS_ERR_INVALID_ARGUMENT, "store: %s: bad purpose or message reference", op);
    return KMS_OK;
}

static void bind_insert(struct store_bind *b, const void *arg)
{
    const struct kms_link_record *r = arg;
    store_bind_text(b, 1, r->key_id);
    store_bind_blob(b, 2, r->token_id, KMS_LINK_ID_LEN);
    store_bind_int(b, 3, r->version);
    store_bind_text(b, 4, r->region);
    store_bind_text(b, 5, r->tenant);
    store_bind_int(b, 6, r->expires_at);
    store_bind_int(b, 7, r->created_at);
    store_bind_int(b, 8, r->max_attempts);
    store_bind_blob(b, 9, r->recipient, KMS_LINK_RECIPIENT_LEN);
    store_bind_blob(b, 10, r->token_hash, KMS_LINK_HASH_LEN);
    store_bind_text(b, 11, r->purpose);
    store_bind_text(b, 12, r->message_ref);
}

static kms_err insert_tx(struct store_conn *c, void *arg, const char *op)
{
    const struct kms_link_record *r = arg;
    struct kms_key_record k;
    /* Only a visible key mints: the row names it. */
    KMS_GUARD(store_key_get_row(c, r->key_id, &k, op));
    return store_exec_one(c,
                          "INSERT INTO link_tokens (key_id, token_id, version, region, tenant, "
                          "expires_at, created_at, state, attempts, max_attempts, recipient, "
                          "token_hash, purpose, message_ref) "
                          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, ?8, ?9, ?10, ?11, ?12)",
                          op, bind_insert, r, NULL);
}

kms_err kms_store_link_insert(struct kms_store *store, const struct kms_link_record *r)
{
    static const char op[] = "insert link token";
    KMS_ENSURE(store != NULL && r != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(check_record(r, op));
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key_any(store, r->key_id, &db, op));
    return store_tx_run(db, true, insert_tx, (void *)r, op);
}

static kms_err blob_col(const struct store_row *r, int col, uint8_t *dst, size_t len,
                        const char *op)
{
    const uint8_t *p = NULL;
    size_t n = 0;
    store_col_blob(r, col, &p, &n);
    KMS_ENSURE(p != NULL && n == len, KMS_ERR_IO, "store: %s: column %d is not %zu bytes", op,
               col, len);
    memcpy(dst, p, len);
    return KMS_OK;
}

static kms_err read_link(const struct store_row *st, void *elem, const char *op)
{
    struct kms_link_record *r = elem;
    int state = 0;
    memset(r, 0, sizeof(*r));
    KMS_GUARD(store_col_text(st, 0, r->key_id, sizeof(r->key_id), op));
    KMS_GUARD(blob_col(st, 1, r->token_id, KMS_LINK_ID_LEN, op));
    KMS_GUARD(store_col_u32(st, 2, &r->version, op));
    KMS_GUARD(store_col_text(st, 3, r->region, sizeof(r->region), op));
    KMS_GUARD(store_col_text(st, 4, r->tenant, sizeof(r->tenant), op));
    r->expires_at = store_col_int64(st, 5);
    r->created_at = store_col_int64(st, 6);
    KMS_GUARD(store_col_enum(st, 7, KMS_LINK_LIVE, KMS_LINK_VOID, &state, op));
    r->state = (enum kms_link_state)state;
    KMS_GUARD(store_col_u32(st, 8, &r->attempts, op));
    KMS_GUARD(store_col_u32(st, 9, &r->max_attempts, op));
    KMS_GUARD(blob_col(st, 10, r->recipient, KMS_LINK_RECIPIENT_LEN, op));
    KMS_GUARD(blob_col(st, 11, r->token_hash, KMS_LINK_HASH_LEN, op));
    KMS_GUARD(store_col_text(st, 12, r->purpose, sizeof(r->purpose), op));
    KMS_GUARD(store_col_text(st, 13, r->message_ref, sizeof(r->message_ref), op));
    return KMS_OK;
}

struct key_tok {
    const char *key_id;
    const uint8_t *token_id;
};

static void bind_key_tok(struct store_bind *b, const void *arg)
{
    const struct key_tok *a = arg;
    store_bind_text(b, 1, a->key_id);
    store_bind_blob(b, 2, a->token_id, KMS_LINK_ID_LEN);
}

/* The row of (key_id, token_id) on c, inside the caller's transaction. */
static kms_err row_get(struct store_conn *c, const struct key_tok *kt, struct kms_link_record *out,
                       bool *out_found, const char *op)
{
    struct store_bind b;
    *out_found = false;
    KMS_GUARD(store_prep(c,
                         "SELECT " LINK_COLS " FROM link_tokens "
                         "WHERE key_id = ?1 AND token_id = ?2",
                         op, &b));
    bind_key_tok(&b, kt);
    bool row = false;
    kms_err rc = store_step(&b, op, &row);
    if (rc == KMS_OK && row) {
        rc = read_link(store_row_of(&b), out, op);
        *out_found = rc == KMS_OK;
    }
    store_fin(&b);
    return rc;
}

/* ---- redemption -------------------------------------------------------------- */

struct redeem_arg {
    const struct kms_link_attempt *a;
    enum kms_link_verdict verdict;
    struct kms_link_record row;
};

struct rate_arg {
    const char *key_id;
    const uint8_t *recipient;
    int64_t window_start;
    int64_t attempts;
};

static void bind_rate(struct store_bind *b, const void *arg)
{
    const struct rate_arg *r = arg;
    store_bind_text(b, 1, r->key_id);
    store_bind_blob(b, 2, r->recipient, KMS_LINK_RECIPIENT_LEN);
    store_bind_int(b, 3, r->window_start);
    store_bind_int(b, 4, r->attempts);
}

/* Advance the recipient's counter; *out_over when this attempt is past the
 * limit of its window. */
static kms_err rate_step(struct store_conn *c, const struct kms_link_attempt *a, bool *out_over,
                         const char *op)
{
    struct rate_arg r = {a->key_id, a->recipient, a->now, 1};
    struct store_bind b;
    KMS_GUARD(store_prep(c,
                         "SELECT window_start, attempts FROM link_recipients "
                         "WHERE key_id = ?1 AND recipient = ?2",
                         op, &b));
    store_bind_text(&b, 1, r.key_id);
    store_bind_blob(&b, 2, r.recipient, KMS_LINK_RECIPIENT_LEN);
    bool row = false;
    kms_err rc = store_step(&b, op, &row);
    if (rc == KMS_OK && row) {
        int64_t start = store_col_int64(store_row_of(&b), 0);
        int64_t n = store_col_int64(store_row_of(&b), 1);
        /* A window that is over starts again at this attempt. */
        if (start > a->now - (int64_t)a->rate_window_s && n >= 0) {
            r.window_start = start;
            r.attempts = n < INT32_MAX ? n + 1 : n;
        }
    }
    store_fin(&b);
    KMS_GUARD(rc);
    KMS_GUARD(store_exec_one(c,
                             "INSERT INTO link_recipients (key_id, recipient, window_start, "
                             "attempts) VALUES (?1, ?2, ?3, ?4) "
                             "ON CONFLICT (key_id, recipient) DO UPDATE SET "
                             "window_start = excluded.window_start, attempts = excluded.attempts",
                             op, bind_rate, &r, NULL));
    *out_over = r.attempts > (int64_t)a->rate_limit;
    return KMS_OK;
}

/* The first reason, in a fixed order, why a live row refuses this attempt;
 * ACCEPTED if none. Comparisons of what came from the caller are constant
 * time. */
static enum kms_link_verdict judge(const struct kms_link_attempt *a,
                                   const struct kms_link_record *row)
{
    if (row->version != a->version || row->expires_at != a->expires_at ||
        CRYPTO_memcmp(row->token_hash, a->token_hash, KMS_LINK_HASH_LEN) != 0)
        return KMS_LINK_FORGED;
    if (a->now > row->expires_at + (int64_t)a->skew_s)
        return KMS_LINK_EXPIRED;
    if (CRYPTO_memcmp(row->recipient, a->recipient, KMS_LINK_RECIPIENT_LEN) != 0)
        return KMS_LINK_WRONG_RECIPIENT;
    if (strcmp(row->purpose, a->purpose) != 0)
        return KMS_LINK_WRONG_PURPOSE;
    if (!a->mac_ok)
        return KMS_LINK_WRONG_DEVICE;
    return KMS_LINK_ACCEPTED;
}

struct cas_arg {
    const char *key_id;
    const uint8_t *token_id;
    int64_t new_state;
    int64_t seen_attempts;
};

static void bind_cas(struct store_bind *b, const void *arg)
{
    const struct cas_arg *x = arg;
    store_bind_text(b, 1, x->key_id);
    store_bind_blob(b, 2, x->token_id, KMS_LINK_ID_LEN);
    store_bind_int(b, 3, x->new_state);
    store_bind_int(b, 4, x->seen_attempts);
}

static kms_err redeem_tx(struct store_conn *c, void *varg, const char *op)
{
    struct redeem_arg *ra = varg;
    const struct kms_link_attempt *a = ra->a;
    memset(&ra->row, 0, sizeof(ra->row));
    bool over = false;
    KMS_GUARD(rate_step(c, a, &over, op));
    if (over) {
        ra->verdict = KMS_LINK_RATE_LIMITED;
        return KMS_OK;
    }
    struct key_tok kt = {a->key_id, a->token_id};
    bool found = false;
    KMS_GUARD(row_get(c, &kt, &ra->row, &found, op));
    if (!found) {
        ra->verdict = KMS_LINK_UNKNOWN;
        return KMS_OK;
    }
    switch (ra->row.state) {
    case KMS_LINK_USED:
        ra->verdict = KMS_LINK_ALREADY_USED;
        return KMS_OK;
    case KMS_LINK_REVOKED:
        ra->verdict = KMS_LINK_WAS_REVOKED;
        return KMS_OK;
    case KMS_LINK_VOID:
        ra->verdict = KMS_LINK_EXHAUSTED;
        return KMS_OK;
    case KMS_LINK_LIVE:
        break;
    }
    enum kms_link_verdict v = judge(a, &ra->row);
    enum kms_link_state next = v == KMS_LINK_ACCEPTED                         ? KMS_LINK_USED
                               : ra->row.attempts + 1 >= ra->row.max_attempts ? KMS_LINK_VOID
                                                                              : KMS_LINK_LIVE;
    /* The compare-and-set: the row must still be live with the attempts
     * this transaction read. SQLite's BEGIN IMMEDIATE already orders
     * writers; the WHERE keeps it true on a store whose transactions are
     * not serialised that way (a fleet sharing one database). */
    struct cas_arg x = {a->key_id, a->token_id, next, ra->row.attempts};
    int changes = 0;
    KMS_GUARD(store_exec_one(c,
                             "UPDATE link_tokens SET state = ?3, attempts = attempts + 1 "
                             "WHERE key_id = ?1 AND token_id = ?2 AND state = 0 "
                             "AND attempts = ?4",
                             op, bind_cas, &x, &changes));
    ra->verdict = changes == 1 ? v : KMS_LINK_ALREADY_USED;
    return KMS_OK;
}

kms_err kms_store_link_redeem(struct kms_store *store, const struct kms_link_attempt *a,
                              enum kms_link_verdict *out_verdict, struct kms_link_record *out_row)
{
    static const char op[] = "redeem link token";
    KMS_ENSURE(store && a && out_verdict && a->token_id && a->token_hash && a->recipient &&
                   a->purpose,
               KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(a->key_id, op));
    KMS_ENSURE(a->rate_limit >= 1 && a->rate_window_s >= 1, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: bad rate limit", op);
    struct redeem_arg ra;
    memset(&ra, 0, sizeof(ra));
    ra.a = a;
    ra.verdict = KMS_LINK_UNKNOWN;
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key_any(store, a->key_id, &db, op));
    kms_err rc = store_tx_run(db, true, redeem_tx, &ra, op);
    if (rc == KMS_OK) {
        *out_verdict = ra.verdict;
        if (out_row)
            *out_row = ra.row;
    }
    return rc;
}

/* ---- revocation, sweep, lookup ---------------------------------------------------- */

struct revoke_arg {
    const char *key_id;
    const uint8_t (*ids)[KMS_LINK_ID_LEN];
    size_t n;
    const char *ref;
    uint32_t revoked;
};

static void bind_ref(struct store_bind *b, const void *arg)
{
    const struct revoke_arg *r = arg;
    store_bind_text(b, 1, r->key_id);
    store_bind_text(b, 2, r->ref);
}

static kms_err revoke_tx(struct store_conn *c, void *varg, const char *op)
{
    struct revoke_arg *r = varg;
    r->revoked = 0;
    int changes = 0;
    if (r->ids == NULL) {
        KMS_GUARD(store_exec_one(c,
                                 "UPDATE link_tokens SET state = 2 WHERE key_id = ?1 "
                                 "AND message_ref = ?2 AND state = 0",
                                 op, bind_ref, r, &changes));
        r->revoked = changes > 0 ? (uint32_t)changes : 0;
        return KMS_OK;
    }
    for (size_t i = 0; i < r->n; i++) {
        struct key_tok kt = {r->key_id, r->ids[i]};
        KMS_GUARD(store_exec_one(c,
                                 "UPDATE link_tokens SET state = 2 WHERE key_id = ?1 "
                                 "AND token_id = ?2 AND state = 0",
                                 op, bind_key_tok, &kt, &changes));
        r->revoked += changes > 0 ? (uint32_t)changes : 0;
    }
    return KMS_OK;
}

kms_err kms_store_link_revoke(struct kms_store *store, const char *key_id,
                              const uint8_t (*ids)[KMS_LINK_ID_LEN], size_t n,
                              const char *message_ref, uint32_t *out_revoked)
{
    static const char op[] = "revoke link tokens";
    KMS_ENSURE(store != NULL && out_revoked != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    KMS_ENSURE(ids != NULL ? n >= 1 && n <= 1000
                           : message_ref && message_ref[0] &&
                                 printable_ascii(message_ref, KMS_LINK_REF_MAX),
               KMS_ERR_INVALID_ARGUMENT, "store: %s: bad ids or message reference", op);
    struct revoke_arg r = {key_id, ids, n, message_ref, 0};
    struct store_db *db = NULL;
    kms_err rc = store_route_key_any(store, key_id, &db, op);
    if (rc == KMS_OK)
        rc = store_tx_run(db, true, revoke_tx, &r, op);
    *out_revoked = rc == KMS_OK ? r.revoked : 0;
    return rc;
}

static void bind_sweep(struct store_bind *b, const void *arg)
{
    const int64_t *a = arg;
    store_bind_int(b, 1, a[0]);
    store_bind_int(b, 2, a[1]);
}

static kms_err sweep_tx(struct store_conn *c, void *varg, const char *op)
{
    int64_t *a = varg;
    int changes = 0;
    KMS_GUARD(store_exec_one(c,
                             "DELETE FROM link_tokens WHERE (key_id, token_id) IN "
                             "(SELECT key_id, token_id FROM link_tokens WHERE expires_at < ?1 "
                             "LIMIT ?2)",
                             op, bind_sweep, a, &changes));
    a[2] = changes;
    return store_exec_one(c, "DELETE FROM link_recipients WHERE window_start < ?1 AND ?2 > 0", op,
                          bind_sweep, a, NULL);
}

static kms_err sweep_db(struct store_db *db, void *varg, const char *op)
{
    int64_t *total = varg;
    int64_t a[3] = {total[0], total[1], 0};
    KMS_GUARD(store_tx_run(db, true, sweep_tx, a, op));
    total[2] += a[2];
    return KMS_OK;
}

/* Each region's database is swept (up to max rows each); one that is away
 * is skipped. */
kms_err kms_store_link_sweep(struct kms_store *store, int64_t before, size_t max, size_t *out_n)
{
    static const char op[] = "sweep link tokens";
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_ENSURE(max >= 1 && max <= 100000, KMS_ERR_INVALID_ARGUMENT, "store: %s: bad limit", op);
    int64_t a[3] = {before, (int64_t)max, 0};
    kms_err rc = store_each_db(store, false, sweep_db, a, op);
    if (out_n)
        *out_n = rc == KMS_OK ? (size_t)a[2] : 0;
    return rc;
}

kms_err kms_store_link_get(struct kms_store *store, const char *key_id,
                           const uint8_t token_id[KMS_LINK_ID_LEN], struct kms_link_record *out,
                           bool *out_found)
{
    static const char op[] = "read link token";
    KMS_ENSURE(store && token_id && out && out_found, KMS_ERR_USAGE, "store: %s: NULL argument",
               op);
    KMS_GUARD(store_check_key_id(key_id, op));
    struct key_tok kt = {key_id, token_id};
    struct store_db *db = NULL;
    *out_found = false;
    KMS_GUARD(store_route_key_any(store, key_id, &db, op));
    return store_query_row(db,
                           "SELECT " LINK_COLS " FROM link_tokens "
                           "WHERE key_id = ?1 AND token_id = ?2",
                           op, bind_key_tok, &kt, read_link, out, out_found);
}

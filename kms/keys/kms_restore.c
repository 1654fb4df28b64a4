/*
 * kms_restore.c - restore detection: the report, and the store against the
 * audit logs (kms_restore.h); the tokens' side is kms_restore_token.c.
 */
#include "kms_restore.h"
#include "kms_restore_internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit_log.h"
#include "audit_merkle.h"
#include "kms_fieldblob.h"
#include "kms_log.h"
#include "kms_service.h"
#include "kms_store_epoch.h"
#include "p11_token.h"
#include "proto/audit.pb-c.h"

void kms_restore_report_release(struct kms_restore_report *r)
{
    free(r->fixes);
    r->fixes = NULL;
    r->n_fixes = 0;
    free(r->births);
    r->births = NULL;
    r->n_births = 0;
    free(r->vtimes);
    r->vtimes = NULL;
    r->n_vtimes = 0;
    free(r->enc);
    r->enc = NULL;
    r->n_enc = r->cap_enc = 0;
}

/* ---- encryption counts ---------------------------------------------------- */

uint64_t kms_restore_event_encryptions(const char *operation)
{
    /* Every site that counts a GCM encryption (kms_usage_encrypt): seal()
     * for Encrypt, GenerateDataKey and ReEncrypt (one each, under the
     * version the event names), EncryptFields (one per field, at most
     * KMS_FIELDS_MAX). */
    if (strcmp(operation, "Encrypt") == 0 || strcmp(operation, "GenerateDataKey") == 0 ||
        strcmp(operation, "ReEncrypt") == 0)
        return 1;
    if (strcmp(operation, "EncryptFields") == 0)
        return KMS_FIELDS_MAX;
    return 0;
}

static uint64_t enc_hash(const char *key_id, uint32_t version)
{
    uint64_t h = 1469598103934665603ull ^ version; /* FNV-1a */
    for (const char *p = key_id; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return h;
}

static struct kms_restore_enc *enc_slot(struct kms_restore_enc *t, size_t cap, const char *key_id,
                                        uint32_t version)
{
    for (size_t i = enc_hash(key_id, version) & (cap - 1);; i = (i + 1) & (cap - 1))
        if (t[i].key_id[0] == '\0' ||
            (t[i].version == version && strcmp(t[i].key_id, key_id) == 0))
            return &t[i];
}

const struct kms_restore_enc *kms_restore_enc_find(const struct kms_restore_report *r,
                                                   const char *key_id, uint32_t version)
{
    if (r->cap_enc == 0)
        return NULL;
    const struct kms_restore_enc *e = enc_slot(r->enc, r->cap_enc, key_id, version);
    return e->key_id[0] ? e : NULL;
}

/* Count n encryptions under (key_id, version); *out_full when the table
 * already holds KMS_RESTORE_TRACK_MAX other versions: the caller reports it
 * as a finding (an uncounted version must not pass for a counted one). */
static kms_err enc_add(struct kms_restore_report *r, const char *key_id, uint32_t version,
                       uint64_t n, bool counted, bool *out_full)
{
    *out_full = false;
    if (r->cap_enc == 0 || (r->n_enc + 1) * 2 > r->cap_enc) {
        size_t nc = r->cap_enc ? r->cap_enc * 2 : 1024;
        if (r->n_enc >= KMS_RESTORE_TRACK_MAX) {
            if (!kms_restore_enc_find(r, key_id, version)) {
                *out_full = true;
                return KMS_OK;
            }
        } else {
            struct kms_restore_enc *t = calloc(nc, sizeof(*t));
            KMS_ENSURE(t != NULL, KMS_ERR_NOMEM, "out of memory");
            for (size_t i = 0; i < r->cap_enc; i++)
                if (r->enc[i].key_id[0])
                    *enc_slot(t, nc, r->enc[i].key_id, r->enc[i].version) = r->enc[i];
            free(r->enc);
            r->enc = t;
            r->cap_enc = nc;
        }
    }
    struct kms_restore_enc *e = enc_slot(r->enc, r->cap_enc, key_id, version);
    if (e->key_id[0] == '\0') {
        snprintf(e->key_id, sizeof(e->key_id), "%s", key_id);
        e->version = version;
        r->n_enc++;
    }
    e->since_mark += n;
    if (!counted)
        e->since_count += n;
    return KMS_OK;
}

size_t kms_restore_findings(const struct kms_restore_report *r)
{
    return r->store_behind + r->token_behind + r->unknown + r->audit_behind;
}

void kms_restore_note(struct kms_restore_report *r, const char *fmt, ...)
{
    if (r->n_lines >= KMS_RESTORE_LINES_MAX)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->lines[r->n_lines++], sizeof(r->lines[0]), fmt, ap);
    va_end(ap);
}

kms_err kms_restore_add_fix(struct kms_restore_report *r, const struct kms_restore_fix *f)
{
    if (r->n_fixes >= KMS_RESTORE_FIXES_MAX) {
        r->fixes_dropped++;
        return KMS_OK;
    }
    if (r->fixes == NULL) {
        r->fixes = calloc(KMS_RESTORE_FIXES_MAX, sizeof(*r->fixes));
        KMS_ENSURE(r->fixes != NULL, KMS_ERR_NOMEM, "out of memory");
    }
    r->fixes[r->n_fixes++] = *f;
    return KMS_OK;
}

/* ---- the audit log ---------------------------------------------------------- */

/* The state the last acknowledged event of its kind leaves a key in. */
struct state_event {
    char key_id[KMS_KEY_ID_SIZE];
    uint64_t seq;
    const char *op;
    enum kms_key_state want; /* ENABLED, DISABLED or PENDING_DELETION */
};

static int cmp_state_event(const void *a, const void *b)
{
    const struct state_event *x = a, *y = b;
    int c = strcmp(x->key_id, y->key_id);
    if (c != 0)
        return c;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static bool state_of_op(const Custos__V1__AuditEvent *ev, enum kms_key_state *out)
{
    const char *op = ev->operation;
    if (strcmp(op, "EnableKey") == 0)
        *out = KMS_KEY_ENABLED;
    else if (strcmp(op, "DisableKey") == 0 || strcmp(op, "CancelKeyDeletion") == 0)
        *out = KMS_KEY_DISABLED; /* a cancel leaves the key disabled */
    else if (strcmp(op, "ScheduleKeyDeletion") == 0)
        *out = KMS_KEY_PENDING_DELETION;
    else if (strcmp(op, "ExecuteRecovery") == 0 && ev->detail && strstr(ev->detail, "(RESTORE)"))
        *out = KMS_KEY_DISABLED; /* at least not DESTROYED; see below */
    else
        return false;
    return true;
}

static bool is_version_op(const char *op)
{
    return strcmp(op, "CreateKey") == 0 || strcmp(op, "RotateKey") == 0 ||
           strcmp(op, "ImportKeyMaterial") == 0;
}

/* Does the store's state reflect the last acknowledged state event? */
static bool state_matches(const struct state_event *e, enum kms_key_state have)
{
    if (strcmp(e->op, "ExecuteRecovery") == 0)
        return have == KMS_KEY_ENABLED || have == KMS_KEY_DISABLED;
    if (e->want == KMS_KEY_PENDING_DELETION) /* the sweeper may have finished it */
        return have == KMS_KEY_PENDING_DELETION || have == KMS_KEY_DESTROYED;
    return have == e->want;
}

/* When a version the store lacks was made, for its reattachment. */
static kms_err note_vtime(struct kms_restore_report *r, const Custos__V1__AuditEvent *ev)
{
    if (ev->key_version == 0 || r->n_vtimes >= KMS_RESTORE_FIXES_MAX)
        return KMS_OK;
    if (r->vtimes == NULL) {
        r->vtimes = calloc(KMS_RESTORE_FIXES_MAX, sizeof(*r->vtimes));
        KMS_ENSURE(r->vtimes != NULL, KMS_ERR_NOMEM, "out of memory");
    }
    struct kms_restore_vtime *t = &r->vtimes[r->n_vtimes++];
    snprintf(t->key_id, sizeof(t->key_id), "%s", ev->key_id);
    t->version = ev->key_version;
    t->created_at = ev->time_ms / 1000 > 0 ? ev->time_ms / 1000 : 1;
    return KMS_OK;
}

static kms_err check_version_event(struct kms_store *store, const Custos__V1__AuditEvent *ev,
                                   struct kms_restore_report *r)
{
    struct kms_store_key_raw k;
    bool found = false;
    KMS_GUARD(kms_store_key_state_any(store, ev->key_id, &k, &found));
    if (!found) {
        r->store_behind++;
        kms_restore_note(r, "audit seq %" PRIu64 ": %s of key %s v%" PRIu32 " was acknowledged; the store "
             "has no such key", ev->seq, ev->operation, ev->key_id, ev->key_version);
        if (strcmp(ev->operation, "CreateKey") == 0 && r->n_births < KMS_RESTORE_FIXES_MAX) {
            if (r->births == NULL) {
                r->births = calloc(KMS_RESTORE_FIXES_MAX, sizeof(*r->births));
                KMS_ENSURE(r->births != NULL, KMS_ERR_NOMEM, "out of memory");
            }
            struct kms_restore_birth *b = &r->births[r->n_births++];
            snprintf(b->key_id, sizeof(b->key_id), "%s", ev->key_id);
            snprintf(b->tenant, sizeof(b->tenant), "%s", ev->tenant);
            snprintf(b->region, sizeof(b->region), "%s", ev->region);
            snprintf(b->token, sizeof(b->token), "%s", ev->token);
            /* An EXTERNAL key is created empty (version 0 in its event). */
            b->origin = ev->key_version == 0 ? KMS_KEY_ORIGIN_EXTERNAL : KMS_KEY_ORIGIN_HSM;
            b->created_at = ev->time_ms / 1000 > 0 ? ev->time_ms / 1000 : 1;
            b->state = KMS_KEY_ENABLED; /* until a later state event says otherwise */
        }
        return note_vtime(r, ev);
    }
    if (ev->key_version == 0)
        return KMS_OK; /* an EXTERNAL key created empty: the key row is enough */
    enum kms_version_state vs;
    KMS_GUARD(kms_store_version_state_any(store, ev->key_id, ev->key_version, &vs, &found));
    if (!found) {
        r->store_behind++;
        kms_restore_note(r, "audit seq %" PRIu64 ": %s of key %s v%" PRIu32 " was acknowledged; the store "
             "has no such version", ev->seq, ev->operation, ev->key_id, ev->key_version);
        /* Whether or not a token still has its object, the number is taken. */
        struct kms_restore_fix f = {.kind = KMS_FIX_FLOOR, .version = ev->key_version};
        snprintf(f.key_id, sizeof(f.key_id), "%s", ev->key_id);
        KMS_GUARD(kms_restore_add_fix(r, &f));
        KMS_GUARD(note_vtime(r, ev));
    } else if (vs == KMS_VERSION_CREATING && k.origin == KMS_KEY_ORIGIN_EXTERNAL) {
        /* An import's check value is written at activation: reconcile
         * cannot finish it alone. */
        r->store_behind++;
        kms_restore_note(r, "audit seq %" PRIu64 ": import of key %s v%" PRIu32 " was acknowledged; the "
             "store still has it CREATING", ev->seq, ev->key_id, ev->key_version);
    }
    /* An HSM-made version still CREATING is finished by reconcile when its
     * object is complete; one whose object is missing is the token's
     * finding (kms_restore_token_scan). */
    return KMS_OK;
}

/* State events since the store's watermark, at most KMS_RESTORE_TRACK_MAX
 * (truncated: more were seen). */
struct state_track {
    struct state_event *evs;
    size_t n, cap;
    bool truncated;
};

static kms_err track_state(struct state_track *st, const Custos__V1__AuditEvent *ev,
                           uint64_t seq, enum kms_key_state want)
{
    if (st->n == st->cap && st->cap < KMS_RESTORE_TRACK_MAX) {
        size_t nc = st->cap ? st->cap * 2 : 256;
        nc = nc > KMS_RESTORE_TRACK_MAX ? KMS_RESTORE_TRACK_MAX : nc;
        struct state_event *ne = realloc(st->evs, nc * sizeof(*ne));
        KMS_ENSURE(ne != NULL, KMS_ERR_NOMEM, "out of memory");
        st->evs = ne;
        st->cap = nc;
    }
    if (st->n >= st->cap) {
        st->truncated = true;
        return KMS_OK;
    }
    struct state_event *e = &st->evs[st->n++];
    snprintf(e->key_id, sizeof(e->key_id), "%s", ev->key_id);
    e->seq = seq;
    e->want = want;
    /* Static names: the event is freed by the caller. */
    e->op = strcmp(ev->operation, "ExecuteRecovery") == 0 ? "ExecuteRecovery"
            : strcmp(ev->operation, "EnableKey") == 0     ? "EnableKey"
            : strcmp(ev->operation, "DisableKey") == 0    ? "DisableKey"
            : strcmp(ev->operation, "CancelKeyDeletion") == 0
                ? "CancelKeyDeletion"
                : "ScheduleKeyDeletion";
    return KMS_OK;
}

/* The last acknowledged state event of each key against the store's
 * state: a store that is behind gets a KMS_FIX_STATE; a key the store does
 * not know only adjusts the state its reattachment will have. */
static kms_err compare_states(struct kms_store *store, struct kms_restore_report *r,
                              struct state_event *evs, size_t n)
{
    kms_err rc = KMS_OK;
    qsort(evs, n, sizeof(*evs), cmp_state_event);
    for (size_t i = 0; i < n && rc == KMS_OK; i++) {
        if (i + 1 < n && strcmp(evs[i].key_id, evs[i + 1].key_id) == 0)
            continue; /* only the last event of each key counts */
        struct kms_store_key_raw k;
        bool found = false;
        rc = kms_store_key_state_any(store, evs[i].key_id, &k, &found);
        if (rc == KMS_OK && !found) {
            /* An unknown key was already reported by its creation; its
             * reattachment must not undo a later disable or deletion
             * (rebuilt as DISABLED, as for a known key). */
            for (size_t b = 0; b < r->n_births; b++)
                if (strcmp(r->births[b].key_id, evs[i].key_id) == 0)
                    r->births[b].state = evs[i].want == KMS_KEY_ENABLED &&
                                                 strcmp(evs[i].op, "ExecuteRecovery") != 0
                                             ? KMS_KEY_ENABLED
                                             : KMS_KEY_DISABLED;
            continue;
        }
        if (rc != KMS_OK)
            continue;
        if (state_matches(&evs[i], k.state))
            continue;
        r->store_behind++;
        enum kms_key_state want = evs[i].want;
        /* A recovered key comes back DISABLED, and a deletion is never
         * re-scheduled by a rebuild (its date is not in the event):
         * a human enables, or schedules again, on purpose. */
        if (strcmp(evs[i].op, "ExecuteRecovery") == 0 || want == KMS_KEY_PENDING_DELETION)
            want = KMS_KEY_DISABLED;
        kms_restore_note(r, "key %s is %s in the store, but the audit log acknowledged %s (seq %" PRIu64
             ") after that: the store is older", evs[i].key_id, kms_key_state_name(k.state),
             evs[i].op, evs[i].seq);
        struct kms_restore_fix f = {.kind = KMS_FIX_STATE, .state = want};
        snprintf(f.key_id, sizeof(f.key_id), "%s", evs[i].key_id);
        rc = kms_restore_add_fix(r, &f);
    }
    return rc;
}

/* How long a node starting on a shared store waits for its copy of a
 * region's log to reach the store's watermark: 100 polls of 50 ms, many
 * times audit.sequencer_poll_ms. */
#define RESTORE_AUDIT_CATCHUP_POLLS 100
#define RESTORE_AUDIT_CATCHUP_MS 50

kms_err kms_restore_audit_scan(struct kms_store *store, struct audit_log *log,
                               struct kms_restore_report *r, uint64_t enc_from,
                               uint64_t *out_size)
{
    const char *region = audit_log_region(log);
    uint64_t from = 0, size = audit_tree_size(audit_log_tree(log));
    bool marked = false;
    KMS_GUARD(kms_store_audit_mark_get(store, region, &from, &marked));
    /* Several nodes on one store (and one log per region in PostgreSQL):
     * the watermark may have been set by a node whose copy of the log is a
     * poll ahead of this one's; this node's copy follows the database by
     * itself. Wait (bounded) for it before calling the log older. */
    for (int i = 0; kms_store_is_pg(store) && from > size && i < RESTORE_AUDIT_CATCHUP_POLLS;
         i++) {
        struct timespec ts = {0, RESTORE_AUDIT_CATCHUP_MS * 1000000L};
        nanosleep(&ts, NULL);
        size = audit_tree_size(audit_log_tree(log));
    }
    *out_size = size;
    if (from > size) {
        /* The store has seen more of the log than exists: the audit log is
         * the one that went back (or belongs elsewhere). */
        r->audit_behind++;
        kms_restore_note(r, "region %s: the store has checked the audit log to %" PRIu64 " events, but the "
             "log holds %" PRIu64 ": the audit log is older than the store", region, from, size);
        return KMS_OK;
    }
    struct state_track st = {0};
    kms_err rc = KMS_OK;
    bool enc_full = false;
    for (uint64_t seq = from; seq < size && rc == KMS_OK; seq++) {
        uint8_t *buf = NULL;
        size_t len = 0;
        rc = audit_log_read(log, seq, &buf, &len);
        if (rc != KMS_OK)
            break;
        Custos__V1__AuditEvent *ev = custos__v1__audit_event__unpack(NULL, len, buf);
        free(buf);
        if (ev == NULL) {
            rc = kms_err_set(KMS_ERR_IO, "region %s: audit event %" PRIu64 " does not decode",
                             region, seq);
            break;
        }
        enum kms_key_state want;
        uint64_t spent = kms_restore_event_encryptions(ev->operation);
        /* Any outcome: a request refused after its reservation may have
         * encrypted; counting too many is allowed, too few is not. */
        if (spent > 0 && ev->key_version > 0 && strlen(ev->key_id) == KMS_KEY_ID_LEN) {
            bool full = false;
            rc = enc_add(r, ev->key_id, ev->key_version, spent, seq < enc_from, &full);
            enc_full |= full;
        }
        if (rc != KMS_OK) {
            /* out of memory: reported below */
        } else if (strcmp(ev->outcome, "ok") != 0 || strlen(ev->key_id) != KMS_KEY_ID_LEN) {
            /* refused or keyless: no promise to check */
        } else if (is_version_op(ev->operation)) {
            rc = check_version_event(store, ev, r);
        } else if (state_of_op(ev, &want)) {
            rc = track_state(&st, ev, seq, want);
        }
        custos__v1__audit_event__free_unpacked(ev, NULL);
    }
    if (rc == KMS_OK && enc_full) {
        r->store_behind++;
        kms_restore_note(r, "region %s: encryptions under more than %d key versions since the store's "
             "watermark; not all were counted", region, KMS_RESTORE_TRACK_MAX);
    }
    if (rc == KMS_OK && st.truncated) {
        r->store_behind++;
        kms_restore_note(r, "region %s: more than %d key state events since the store's watermark; not "
             "all were compared", region, KMS_RESTORE_TRACK_MAX);
    }
    if (rc == KMS_OK && st.n > 0)
        rc = compare_states(store, r, st.evs, st.n);
    free(st.evs);
    if (rc == KMS_OK && !marked && size > 0)
        kms_log_info("restore", "region %s: the store had no audit watermark; checked all %" PRIu64
                     " events", region, size);
    return rc;
}

void kms_restore_print(const struct kms_restore_report *r, FILE *f)
{
    fprintf(f, "findings: %zu acknowledged change(s) missing from the store, %zu live "
               "version(s) missing from the tokens, %zu HSM object(s) unknown to the store, "
               "%zu audit log(s) older than the store\n",
            r->store_behind, r->token_behind, r->unknown, r->audit_behind);
    for (size_t i = 0; i < r->n_lines; i++)
        fprintf(f, "  finding: %s\n", r->lines[i]);
    if (r->n_lines == KMS_RESTORE_LINES_MAX)
        fprintf(f, "  ... (first %d findings shown)\n", KMS_RESTORE_LINES_MAX);
    fprintf(f, "plan (applied only with --confirm; nothing is ever destroyed):\n");
    if (r->n_fixes == 0)
        fprintf(f, "  nothing to change in the store\n");
    for (size_t i = 0; i < r->n_fixes; i++) {
        const struct kms_restore_fix *x = &r->fixes[i];
        switch (x->kind) {
        case KMS_FIX_STATE:
            fprintf(f, "  rebuild: key %s -> %s (the audit log's last acknowledged state)\n",
                    x->key_id, kms_key_state_name(x->state));
            break;
        case KMS_FIX_REATTACH:
            fprintf(f, "  reattach: key %s version %" PRIu32 " from token '%s' (ACTIVE; the "
                       "version number is never reissued)\n",
                    x->key_id, x->version, x->token);
            break;
        case KMS_FIX_LOST:
            fprintf(f, "  lost: key %s version %" PRIu32 " has no object in token '%s'; "
                       "confirming accepts it as lost (do so only when no newer token "
                       "backup holds it; its ciphertexts will not decrypt)\n",
                    x->key_id, x->version, x->token);
            break;
        case KMS_FIX_FLOOR:
            fprintf(f, "  floor: key %s never reissues version %" PRIu32 " (acknowledged in the "
                       "audit log)\n",
                    x->key_id, x->version);
            break;
        case KMS_FIX_REATTACH_KEY:
            fprintf(f, "  reattach: key %s (tenant %s, region %s) with version 1 from token "
                       "'%s', %s%s; its escrow copy, if any, is not in this store\n",
                    x->key_id, x->tenant, x->region, x->token, kms_key_state_name(x->state),
                    x->state == KMS_KEY_ENABLED ? ""
                                                : " (the audit log's last acknowledged state "
                                                  "event disabled it or scheduled its deletion)");
            break;
        case KMS_FIX_UNKNOWN:
            fprintf(f, "  keep: object of key %s version %" PRIu32 " in token '%s' stays in "
                       "place, unattached (the store has no row for its key)\n",
                    x->key_id[0] ? x->key_id : "(unlabelled)", x->version, x->token);
            break;
        }
    }
    if (r->fixes_dropped)
        fprintf(f, "  ... %zu more not listed (run again after applying)\n", r->fixes_dropped);
    if (r->token_behind)
        fprintf(f, "  a token older than the store: restore it from a newer backup and start "
                   "again rather than confirming; nothing is deleted from the store either "
                   "way\n");
}

/* ---- safe mode --------------------------------------------------------------------- */

bool kms_restore_refused_op(const char *method)
{
    /* An allowlist, so that a method added later is refused in safe mode
     * until someone decides it only reads: these change no key state and
     * spend no encryption under a key version. */
    static const char *const served[] = {
        "Decrypt",         "DecryptDataKey",    "DecryptFields",  "BlindIndex",
        "DescribeKey",     "ListKeys",          "GetRecovery",    "ListRecoveries",
        "GetSignedTreeHead", "ExportAuditLog",  "GetAuditKeys",
        /* Not Sign: a signature is a new statement made with the key,
         * like an encryption, under a store that may be stale. */
        "GetPublicKey",    "Verify",
    };
    for (size_t i = 0; method && i < sizeof(served) / sizeof(served[0]); i++)
        if (strcmp(method, served[i]) == 0)
            return false;
    return true;
}

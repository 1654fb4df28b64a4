/*
 * audit_state.c - the verify state: kept heads and verified ranges, and
 * their file (see the header for the format).
 */
#include "audit_state.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define STATE_MAGIC "custos-audit-state 1"

struct verified {
    char region[AUDIT_REGION_MAX + 1];
    uint64_t to; /* entries [0, to) have been verified */
};

struct audit_state {
    char *name;
    struct audit_head *heads;
    size_t n_heads, cap_heads;
    struct verified *ver;
    size_t n_ver, cap_ver;
};

kms_err audit_state_new(const char *name, struct audit_state **out)
{
    struct audit_state *st = calloc(1, sizeof(*st));
    if (st == NULL || (st->name = strdup(name)) == NULL) {
        free(st);
        *out = NULL;
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    *out = st;
    return KMS_OK;
}

void audit_state_free(struct audit_state *st)
{
    if (st == NULL)
        return;
    free(st->heads);
    free(st->ver);
    free(st->name);
    free(st);
}

const char *audit_state_name(const struct audit_state *st)
{
    return st->name;
}

size_t audit_state_n_heads(const struct audit_state *st)
{
    return st->n_heads;
}

const struct audit_head *audit_state_head(const struct audit_state *st, size_t i)
{
    return i < st->n_heads ? &st->heads[i] : NULL;
}

kms_err audit_state_add_head(struct audit_state *st, const struct audit_head *h)
{
    for (size_t i = 0; i < st->n_heads; i++)
        if (strcmp(st->heads[i].region, h->region) == 0 && st->heads[i].size == h->size &&
            st->heads[i].ts == h->ts && memcmp(st->heads[i].root, h->root, AUDIT_HASH_LEN) == 0)
            return KMS_OK; /* kept already */
    struct audit_head *grown =
        audit_grow(st->heads, &st->cap_heads, st->n_heads, sizeof(*grown), 16);
    if (grown == NULL)
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    st->heads = grown;
    st->heads[st->n_heads] = *h;
    st->heads[st->n_heads].src = st->name;
    st->n_heads++;
    return KMS_OK;
}

static size_t verified_index(const struct audit_state *st, const char *region)
{
    size_t i = 0;
    while (i < st->n_ver && strcmp(st->ver[i].region, region) != 0)
        i++;
    return i;
}

/* The record of region, made (from 0) if there is none; NULL when out of
 * memory. */
static struct verified *get_verified(struct audit_state *st, const char *region)
{
    size_t i = verified_index(st, region);
    if (i < st->n_ver)
        return &st->ver[i];
    struct verified *grown = audit_grow(st->ver, &st->cap_ver, st->n_ver, sizeof(*grown), 8);
    if (grown == NULL)
        return NULL;
    st->ver = grown;
    struct verified *v = &st->ver[st->n_ver++];
    snprintf(v->region, sizeof(v->region), "%s", region);
    v->to = 0;
    return v;
}

bool audit_state_verified(const struct audit_state *st, const char *region, uint64_t *out_to)
{
    size_t i = verified_index(st, region);
    *out_to = i < st->n_ver ? st->ver[i].to : 0;
    return i < st->n_ver;
}

kms_err audit_state_raise_verified(struct audit_state *st, const char *region, uint64_t to)
{
    struct verified *v = get_verified(st, region);
    if (v == NULL)
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    if (to > v->to)
        v->to = to;
    return KMS_OK;
}

const struct audit_head *audit_state_latest(const struct audit_state *st, const char *region)
{
    const struct audit_head *best = NULL;
    for (size_t i = 0; i < st->n_heads; i++) {
        const struct audit_head *h = &st->heads[i];
        if (strcmp(h->region, region) != 0)
            continue;
        if (best == NULL || h->size > best->size || (h->size == best->size && h->ts > best->ts))
            best = h;
    }
    return best;
}

/* A "head" record's fields, tok[1..6]. */
static bool parse_head(char **tok, struct audit_head *h)
{
    memset(h, 0, sizeof(*h));
    long sl = 0;
    if (!audit_region_ok(tok[1]) || !audit_parse_u64(tok[2], UINT64_MAX, &h->size) ||
        !audit_parse_i64(tok[3], &h->ts) || audit_unhex(tok[4], h->root, AUDIT_HASH_LEN) != 32 ||
        !audit_key_id_ok(tok[5]) || (sl = audit_unhex(tok[6], h->sig, AUDIT_SIG_MAX)) <= 0)
        return false;
    snprintf(h->region, sizeof(h->region), "%s", tok[1]);
    snprintf(h->key_id, sizeof(h->key_id), "%s", tok[5]);
    h->sig_len = (size_t)sl;
    return true;
}

kms_err audit_state_parse(struct audit_state *st, const char *text, size_t len)
{
    const char *path = st->name;
    if (memchr(text, '\0', len) != NULL)
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s: not a verify state file", path);
    /* strtok_r wants a string it may cut up. */
    char *buf = malloc(len + 1);
    if (buf == NULL)
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    memcpy(buf, text, len);
    buf[len] = '\0';
    kms_err rc = KMS_OK;
    char *save = NULL, *line;
    int lineno = 0, magic = 0;
    for (line = strtok_r(buf, "\n", &save); line && rc == KMS_OK;
         line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char *tok[8], *ts = NULL;
        int n = 0;
        for (char *t = strtok_r(line, " \t\r", &ts); t && n < 8; t = strtok_r(NULL, " \t\r", &ts))
            tok[n++] = t;
        if (!magic) {
            if (n != 2 || strcmp(tok[0], "custos-audit-state") != 0 || strcmp(tok[1], "1") != 0)
                rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                                 "%s: not a verify state file (want \"%s\" first)", path,
                                 STATE_MAGIC);
            magic = 1;
            continue;
        }
        struct audit_head h;
        struct verified *v;
        uint64_t to = 0;
        if (n == 7 && strcmp(tok[0], "head") == 0) {
            if (!parse_head(tok, &h))
                rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s: line %d: malformed head record",
                                 path, lineno);
            else
                rc = audit_state_add_head(st, &h);
        } else if (n == 3 && strcmp(tok[0], "verified") == 0) {
            if (!audit_region_ok(tok[1]) || !audit_parse_u64(tok[2], UINT64_MAX, &to))
                rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                                 "%s: line %d: malformed verified record", path, lineno);
            else if ((v = get_verified(st, tok[1])) == NULL)
                rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
            else
                v->to = to; /* the file says where a region stands */
        } else {
            rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s: line %d: unknown record", path,
                             lineno);
        }
    }
    if (rc == KMS_OK && !magic && len > 0)
        rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s: not a verify state file", path);
    free(buf);
    return rc;
}

kms_err audit_state_load(const char *path, struct audit_state **out)
{
    struct audit_state *st = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    struct stat sb;
    *out = NULL;
    KMS_GUARD(audit_state_new(path, &st));
    kms_err rc = KMS_OK;
    if (stat(path, &sb) != 0 && errno == ENOENT)
        goto done; /* a missing file is an empty state */
    if ((rc = audit_file_read(path, AUDIT_TEXT_FILE_MAX, &buf, &len)) != KMS_OK)
        goto done;
    rc = audit_state_parse(st, (const char *)buf, len);
done:
    free(buf);
    if (rc != KMS_OK) {
        audit_state_free(st);
        st = NULL;
    }
    *out = st;
    return rc;
}

kms_err audit_state_format(const struct audit_state *st, char **out, size_t *out_len)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    *out_len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    fprintf(f, "# kmsctl audit verify state: signed tree heads verified so far, per region\n"
               "# (see docs/audit.md). Edit only to forget a region.\n" STATE_MAGIC "\n");
    for (size_t i = 0; i < st->n_heads; i++) {
        const struct audit_head *h = &st->heads[i];
        char root[2 * AUDIT_HASH_LEN + 1], sig[2 * AUDIT_SIG_MAX + 1];
        audit_hex(h->root, AUDIT_HASH_LEN, root);
        audit_hex(h->sig, h->sig_len, sig);
        fprintf(f, "head %s %" PRIu64 " %" PRId64 " %s %s %s\n", h->region, h->size, h->ts, root,
                h->key_id, sig);
    }
    for (size_t i = 0; i < st->n_ver; i++)
        fprintf(f, "verified %s %" PRIu64 "\n", st->ver[i].region, st->ver[i].to);
    if (fclose(f) != 0) {
        free(text);
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    *out = text;
    *out_len = len;
    return KMS_OK;
}

kms_err audit_state_save(const struct audit_state *st, const char *path)
{
    char *text = NULL;
    size_t len = 0;
    KMS_GUARD(audit_state_format(st, &text, &len));
    kms_err rc = audit_file_write(path, text, len, 0600);
    free(text);
    return rc;
}

/*
 * test_audit_start.c - the start-up scan of a region's audit log trusts
 * nothing it has not checked: the head the log resumes from must verify
 * under a key of .keys (a head edited on disk, even re-framed so that its
 * check bytes match, refuses the log), a damaged last head that is a whole
 * head of this log was edited, not torn (refused, not cut off), a head cut
 * short is still a torn tail (cut off, the log opens), and .keys' newest
 * key must be the public half of the token's signing key. A refused log
 * leaves its files as they were. Real token, real files.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "audit_log.h"
#include "kms_error.h"
#include "testenv.h"

#define MAX_RECS 4096

static struct testenv env;
static char dir[512];

static void setup(void)
{
    testenv_open(&env);
    snprintf(dir, sizeof(dir), "%s/audit-start-%ld", testenv_work_dir(), (long)getpid());
    mkdir(dir, 0700);
}

static void teardown(void)
{
    testenv_close(&env);
}

static kms_err open_log(struct audit_log **out)
{
    struct audit_log_config cfg = {1000, 10000, 0, 0};
    return audit_log_open(dir, "eu-west", env.eu, &cfg, out);
}

/* A log of a few events and heads, closed (the close makes the last head). */
static void make_log(void)
{
    struct audit_log *log = NULL;
    ck_assert_msg(open_log(&log) == KMS_OK, "open: %s", kms_err_detail());
    for (int i = 0; i < 5; i++) {
        Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
        ev.operation = (char *)"Encrypt";
        ev.outcome = (char *)"ok";
        ck_assert_int_eq(audit_log_append(log, &ev), KMS_OK);
    }
    audit_log_close(log);
}

static char *path_of(const char *ext)
{
    static char p[600];
    snprintf(p, sizeof(p), "%s/eu-west.%s", dir, ext);
    return p;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void spit(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* The offset of the last framed record of a file's bytes. */
static size_t last_record(const uint8_t *b, size_t n)
{
    size_t off = 0, last = 0;
    while (off + 12 <= n) {
        size_t len = (size_t)b[off] << 24 | (size_t)b[off + 1] << 16 | (size_t)b[off + 2] << 8 |
                     b[off + 3];
        last = off;
        off += 12 + len;
    }
    ck_assert_uint_eq(off, n);
    return last;
}

/* Replace the record at off (to the end) by payload, framed afresh. */
static void reframe_last(const char *path, const uint8_t *b, size_t off, const uint8_t *payload,
                         size_t len)
{
    uint8_t *out = malloc(off + 12 + len);
    ck_assert_ptr_nonnull(out);
    memcpy(out, b, off);
    uint8_t *h = out + off;
    h[0] = (uint8_t)(len >> 24);
    h[1] = (uint8_t)(len >> 16);
    h[2] = (uint8_t)(len >> 8);
    h[3] = (uint8_t)len;
    uint8_t pre[1 + 65536], dg[32];
    pre[0] = 0;
    memcpy(pre + 1, payload, len);
    SHA256(pre, len + 1, dg);
    memcpy(h + 4, dg, 8);
    memcpy(h + 12, payload, len);
    spit(path, out, off + 12 + len);
    free(out);
}

enum edit { EDIT_SIG, EDIT_ROOT };

/* Change the newest head and frame it again: an edit with matching check
 * bytes, which only the signature or the events can tell. */
static void edit_newest_head(enum edit what)
{
    size_t n;
    uint8_t *b = slurp(path_of("heads"), &n);
    size_t off = last_record(b, n);
    Custos__V1__SignedTreeHead *h =
        custos__v1__signed_tree_head__unpack(NULL, n - off - 12, b + off + 12);
    ck_assert_ptr_nonnull(h);
    if (what == EDIT_SIG)
        h->signature.data[h->signature.len - 1] ^= 0x01; /* inside s: still DER */
    else
        h->root_hash.data[0] ^= 0x80;
    size_t len = custos__v1__signed_tree_head__get_packed_size(h);
    uint8_t *p = malloc(len);
    ck_assert_ptr_nonnull(p);
    custos__v1__signed_tree_head__pack(h, p);
    reframe_last(path_of("heads"), b, off, p, len);
    custos__v1__signed_tree_head__free_unpacked(h, NULL);
    free(p);
    free(b);
}

/* Open must fail with KMS_ERR_IO saying want, and leave the files alone. */
static void assert_refused(const char *want)
{
    size_t n1, n2, n3;
    uint8_t *h = slurp(path_of("heads"), &n1);
    uint8_t *e = slurp(path_of("events"), &n2);
    uint8_t *k = slurp(path_of("keys"), &n3);
    struct audit_log *log = NULL;
    kms_err rc = open_log(&log);
    ck_assert_ptr_null(log);
    ck_assert_int_eq(rc, KMS_ERR_IO);
    ck_assert_msg(strstr(kms_err_detail(), want) != NULL, "detail \"%s\" lacks \"%s\"",
                  kms_err_detail(), want);
    ck_assert_msg(strstr(kms_err_detail(), "eu-west.") != NULL, "no file named: %s",
                  kms_err_detail());
    size_t m1, m2, m3;
    uint8_t *h2 = slurp(path_of("heads"), &m1);
    uint8_t *e2 = slurp(path_of("events"), &m2);
    uint8_t *k2 = slurp(path_of("keys"), &m3);
    ck_assert(m1 == n1 && memcmp(h, h2, n1) == 0);
    ck_assert(m2 == n2 && memcmp(e, e2, n2) == 0);
    ck_assert(m3 == n3 && memcmp(k, k2, n3) == 0);
    free(h);
    free(e);
    free(k);
    free(h2);
    free(e2);
    free(k2);
}

START_TEST(honest_log_reopens)
{
    make_log();
    struct audit_log *log = NULL;
    ck_assert_msg(open_log(&log) == KMS_OK, "reopen: %s", kms_err_detail());
    audit_log_close(log);
}
END_TEST

START_TEST(edited_head_signature_refused)
{
    make_log();
    edit_newest_head(EDIT_SIG);
    assert_refused("eu-west.heads: the newest signed head (record ");
    assert_refused("does not verify: its signature is invalid under audit key");
}
END_TEST

START_TEST(edited_head_root_refused)
{
    make_log();
    edit_newest_head(EDIT_ROOT);
    assert_refused("does not match the events: the log was altered");
}
END_TEST

START_TEST(signature_flipped_in_place_is_not_a_torn_tail)
{
    make_log();
    size_t n;
    uint8_t *b = slurp(path_of("heads"), &n);
    /* A signature byte flipped in the file, the frame left alone: the
     * check bytes no longer match, as after a torn write, but the record is
     * still a whole head of this log. */
    size_t off = last_record(b, n);
    Custos__V1__SignedTreeHead *h =
        custos__v1__signed_tree_head__unpack(NULL, n - off - 12, b + off + 12);
    ck_assert_ptr_nonnull(h);
    uint8_t *sig = memmem(b + off + 12, n - off - 12, h->signature.data, h->signature.len);
    ck_assert_ptr_nonnull(sig);
    sig[h->signature.len - 1] ^= 0x01;
    custos__v1__signed_tree_head__free_unpacked(h, NULL);
    spit(path_of("heads"), b, n);
    free(b);
    assert_refused("is a whole head of this log but its check bytes do not match: it was "
                   "edited, not torn");
}
END_TEST

START_TEST(head_cut_short_is_a_torn_tail)
{
    make_log();
    size_t n;
    uint8_t *b = slurp(path_of("heads"), &n);
    size_t off = last_record(b, n);
    spit(path_of("heads"), b, n - 7);
    free(b);
    struct audit_log *log = NULL;
    ck_assert_msg(open_log(&log) == KMS_OK, "open: %s", kms_err_detail());
    audit_log_close(log);
    /* Cut at the torn record, then the close made a new last head. */
    b = slurp(path_of("heads"), &n);
    ck_assert_uint_eq(last_record(b, n), off);
    free(b);
}
END_TEST

START_TEST(keys_file_not_the_tokens_key_refused)
{
    make_log();
    /* No head to check (an operator removed .heads), and .keys' key swapped
     * for another P-256 key under the same id: only the token can tell. */
    spit(path_of("heads"), (const uint8_t *)"", 0);
    size_t n;
    uint8_t *b = slurp(path_of("keys"), &n);
    size_t off = last_record(b, n);
    Custos__V1__AuditKey *k = custos__v1__audit_key__unpack(NULL, n - off - 12, b + off + 12);
    ck_assert_ptr_nonnull(k);
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    ck_assert_ptr_nonnull(pk);
    BIO *bio = BIO_new(BIO_s_mem());
    ck_assert_int_eq(PEM_write_bio_PUBKEY(bio, pk), 1);
    char *data = NULL;
    long dl = BIO_get_mem_data(bio, &data);
    char *pem = strndup(data, (size_t)dl);
    char *old = k->public_key_pem;
    k->public_key_pem = pem;
    size_t len = custos__v1__audit_key__get_packed_size(k);
    uint8_t *p = malloc(len);
    custos__v1__audit_key__pack(k, p);
    k->public_key_pem = old;
    reframe_last(path_of("keys"), b, off, p, len);
    custos__v1__audit_key__free_unpacked(k, NULL);
    free(p);
    free(pem);
    BIO_free(bio);
    EVP_PKEY_free(pk);
    free(b);
    assert_refused("is not the public half of the signing key in token");
}
END_TEST

/* kmsctl backup's check of its copy: the start-up scan, read-only. A copy
 * whose .heads names events its .events lacks (what copying .events before
 * .heads while kmsd appends made) is refused and left as it was; no file
 * is created for a region that has none. */
START_TEST(check_files_is_the_start_scan_read_only)
{
    make_log();
    uint64_t events = 0, signed_size = 0;
    ck_assert_msg(audit_log_check_files(dir, "eu-west", &events, &signed_size) == KMS_OK,
                  "check: %s", kms_err_detail());
    ck_assert_uint_ge(events, 5);
    ck_assert_uint_eq(signed_size, events);
    size_t n = 0;
    uint8_t *e = slurp(path_of("events"), &n);
    spit(path_of("events"), e, last_record(e, n)); /* the last event not copied */
    free(e);
    size_t n1 = 0, n2 = 0;
    uint8_t *before = slurp(path_of("events"), &n1);
    ck_assert_int_eq(audit_log_check_files(dir, "eu-west", &events, &signed_size), KMS_ERR_IO);
    uint8_t *after = slurp(path_of("events"), &n2);
    ck_assert(n1 == n2 && memcmp(before, after, n1) == 0);
    free(before);
    free(after);
    ck_assert_int_ne(audit_log_check_files(dir, "us-east", &events, &signed_size), KMS_OK);
    char p[600];
    snprintf(p, sizeof(p), "%s/us-east.events", dir);
    ck_assert_int_ne(access(p, F_OK), 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("audit_start");
    TCase *tc = tcase_create("scan");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, honest_log_reopens);
    tcase_add_test(tc, edited_head_signature_refused);
    tcase_add_test(tc, edited_head_root_refused);
    tcase_add_test(tc, signature_flipped_in_place_is_not_a_torn_tail);
    tcase_add_test(tc, head_cut_short_is_a_torn_tail);
    tcase_add_test(tc, keys_file_not_the_tokens_key_refused);
    tcase_add_test(tc, check_files_is_the_start_scan_read_only);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

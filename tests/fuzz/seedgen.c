/*
 * seedgen - writes the seed corpora of the fuzz targets (tests/fuzz/corpus/
 * <target>/) from the project's own encoders, so that seeds follow the
 * formats when they change. Run by make-seeds.sh (make fuzz-seeds).
 *
 *   seedgen OUTDIR
 *
 * Request messages are filled by reflection over their descriptors (every
 * field set, repeated fields twice, nested messages two levels deep), so a
 * field added to proto/ gets a seed without editing this file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "audit_log.h"
#include "audit_merkle.h"
#include "fuzz_audit_key.h"
#include "kms_blob.h"
#include "kms_fieldblob.h"
#include "kms_import.h"
#include "kms_linktoken.h"
#include "kms_pjson.h"
#include "kms_twirp.h"
#include "proto/audit.pb-c.h"

static const char *outdir;

static void die(const char *what)
{
    fprintf(stderr, "seedgen: %s\n", what);
    exit(1);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        die("out of memory");
    return p;
}

static void put(const char *target, const char *name, const void *a, size_t alen, const void *b,
                size_t blen)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", outdir, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        die("mkdir");
    snprintf(path, sizeof(path), "%s/%s/%s", outdir, target, name);
    FILE *f = fopen(path, "we");
    if (f == NULL || (alen && fwrite(a, 1, alen, f) != alen) ||
        (blen && fwrite(b, 1, blen, f) != blen) || fclose(f) != 0)
        die(path);
}

/* ---- request messages by reflection ---------------------------------------------------- */

static size_t elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4; /* 32-bit integers, float, enum */
    }
}

static ProtobufCMessage *filled(const ProtobufCMessageDescriptor *d, unsigned depth);

static const char *sample_string(const char *field)
{
    if (strstr(field, "key_id"))
        return "0123456789abcdef0123456789abcdef";
    if (strstr(field, "region"))
        return "eu-west";
    if (strcmp(field, "key") == 0)
        return "tenant";
    if (strcmp(field, "value") == 0)
        return "acme";
    if (strstr(field, "field") || strcmp(field, "name") == 0)
        return "msisdn";
    return "fuzz";
}

static void set_value(const ProtobufCFieldDescriptor *f, void *at, unsigned depth, unsigned i)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING:
        *(char **)at = strdup(sample_string(f->name));
        break;
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData *b = at;
        b->len = 16;
        b->data = xcalloc(1, 16);
        memset(b->data, 0x41 + (int)i, 16);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        *(ProtobufCMessage **)at = filled(f->descriptor, depth + 1);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *e = f->descriptor;
        *(int *)at = e->values[e->n_values > 1 ? 1 : 0].value;
        break;
    }
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)at = 1;
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        *(float *)at = 1;
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        *(double *)at = 1;
        break;
    default:
        if (elem_size(f->type) == 8)
            *(uint64_t *)at = 1 + i;
        else
            *(uint32_t *)at = 1 + i;
        break;
    }
}

static ProtobufCMessage *filled(const ProtobufCMessageDescriptor *d, unsigned depth)
{
    ProtobufCMessage *m = xcalloc(1, d->sizeof_message);
    protobuf_c_message_init(d, m);
    if (depth > 2)
        return m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        char *base = (char *)m;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t *which = (uint32_t *)(base + f->quantifier_offset);
            if (*which != 0)
                continue; /* one member per oneof */
            *which = f->id;
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = 2, es = elem_size(f->type);
            char *arr = xcalloc(n, es);
            for (unsigned k = 0; k < n; k++)
                set_value(f, arr + k * es, depth, k);
            *(size_t *)(base + f->quantifier_offset) = n;
            *(void **)(base + f->offset) = arr;
            continue;
        }
        if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE &&
            f->type != PROTOBUF_C_TYPE_STRING && !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
            *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
        set_value(f, base + f->offset, depth, 0);
    }
    return m;
}

static uint8_t *packed(const ProtobufCMessage *m, size_t *out_len)
{
    *out_len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = xcalloc(1, *out_len);
    protobuf_c_message_pack(m, buf);
    return buf;
}

/* fuzz_pjson: every request and response type, every field set, as
 * kms_pjson renders it, plus hand-written forms of the mapping. */
static void json_seeds(void)
{
    size_t nr = kms_twirp_n_routes();
    for (size_t i = 0; i < 2 * nr; i++) {
        const ProtobufCMessageDescriptor *d =
            i < nr ? kms_twirp_route_at(i, NULL, 0) : kms_twirp_route_response_at(i - nr);
        uint8_t sel = (uint8_t)i;
        char name[80];
        ProtobufCMessage *m = filled(d, 1);
        size_t n, jn;
        uint8_t *body = packed(m, &n);
        char *json;
        if (kms_pjson_from_wire(d, body, n, &json, &jn) != KMS_OK)
            die("kms_pjson_from_wire");
        snprintf(name, sizeof(name), "%s-full.json", d->short_name);
        put("fuzz_pjson", name, &sel, 1, json, jn);
        snprintf(name, sizeof(name), "%s-empty.json", d->short_name);
        put("fuzz_pjson", name, &sel, 1, "{}", 2);
        if (i < nr) {
            char path[128], head[512];
            kms_twirp_route_at(i, path, sizeof(path));
            int hl = snprintf(head, sizeof(head),
                              "POST %s HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\n"
                              "Content-Length: %zu\r\nAuthorization: Bearer ck_fuzz\r\n\r\n",
                              path, jn);
            snprintf(name, sizeof(name), "%s-json-ok", d->short_name);
            put("fuzz_http_request", name, head, (size_t)hl, json, jn);
        }
        free(json);
        free(body);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    static const struct {
        uint8_t sel; /* 8: Encrypt; 1: DescribeKey; table order of kms_twirp.c */
        const char *name, *json;
    } hand[] = {
        {8, "encrypt-camel.json",
         "{\"keyId\":\"0123456789abcdef0123456789abcdef\",\"plaintext\":\"aGk\",\"encryptionContext\":{\"a\":\"b\"}}"},
        {8, "encrypt-urlsafe-null.json", "{\"key_id\":null,\"plaintext\":\"-_-_AQ==\"}"},
        {8, "encrypt-nul.json", "{\"key_id\":\"a\\u0000b\\ud83d\\udd11\"}"},
        {1, "describe-dup.json", "{\"key_id\":\"a\",\"keyId\":\"b\"}"},
    };
    for (size_t i = 0; i < sizeof(hand) / sizeof(hand[0]); i++)
        put("fuzz_pjson", hand[i].name, &hand[i].sel, 1, hand[i].json, strlen(hand[i].json));
}

static void requests(void)
{
    for (size_t i = 0; i < kms_twirp_n_routes(); i++) {
        char path[128], name[64];
        const ProtobufCMessageDescriptor *d = kms_twirp_route_at(i, path, sizeof(path));
        uint8_t sel = (uint8_t)i;
        snprintf(name, sizeof(name), "%s-empty", d->short_name);
        put("fuzz_proto_requests", name, &sel, 1, NULL, 0);
        ProtobufCMessage *m = filled(d, 1);
        size_t n;
        uint8_t *body = packed(m, &n);
        snprintf(name, sizeof(name), "%s-full", d->short_name);
        put("fuzz_proto_requests", name, &sel, 1, body, n);

        char head[512];
        int hl = snprintf(head, sizeof(head),
                          "POST %s HTTP/1.1\r\nHost: kms\r\nContent-Type: application/protobuf\r\n"
                          "Content-Length: %zu\r\nAuthorization: Bearer ck_fuzz\r\n"
                          "X-Correlation-Id: corr-1\r\n\r\n",
                          path, n);
        snprintf(name, sizeof(name), "%s-ok", d->short_name);
        put("fuzz_http_request", name, head, (size_t)hl, body, n);
        free(body);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    static const char *const bad[] = {
        "GET /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/Nope HTTP/1.1\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/../Encrypt HTTP/1.1\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nContent-Type: text/plain\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nContent-Type: application/protobuf\r\n"
        "Content-Length: 10737418240\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nContent-Type: application/protobuf\r\n"
        "Content-Length: 5\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nContent-Type: application/protobuf\r\n"
        "X-Correlation-Id: \xff\xfe\r\nAuthorization: Basic eDp5\r\n\r\n",
        /* framing and header hygiene (kms_httpreq_check_framing) */
        "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nHost: kms\r\nContent-Type: "
        "application/protobuf\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        "GET /livez HTTP/1.1\r\nHost: kms\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nHost: kms\r\nContent-Type: "
        "application/protobuf\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nHost: kms\r\nContent-Type: "
        "application/protobuf\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nHost: kms\r\nContent-Type: "
        "application/protobuf\r\nAuthorization: Bearer ck_a\r\nAuthorization: Bearer ck_b\r\n"
        "Content-Length: 0\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nHost: kms\r\nX-Other: a\r\n "
        "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
        "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\nHost: kms\nContent-Type: "
        "application/protobuf\nTransfer-Encoding : chunked\nContent-Length: 0\n\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "bad-%zu", i);
        put("fuzz_http_request", name, bad[i], strlen(bad[i]), NULL, 0);
    }
}

/* ---- blobs and tokens ------------------------------------------------------------------- */

static void blobs(void)
{
    struct kms_blob_header h;
    memset(&h, 0, sizeof(h));
    h.format = KMS_BLOB_VERSION;
    h.kind = KMS_BLOB_KIND_DATA;
    snprintf(h.region, sizeof(h.region), "eu-west");
    memset(h.key_id, 0x11, sizeof(h.key_id));
    h.version = 3;
    memset(h.iv, 0x22, sizeof(h.iv));
    uint8_t hdr[KMS_BLOB_HEADER_MAX], body[KMS_BLOB_TAG_LEN + 5];
    size_t hl = 0;
    if (kms_blob_write_header(&h, hdr, &hl) != KMS_OK)
        die("kms_blob_write_header");
    memset(body, 0x33, sizeof(body));
    put("fuzz_blob", "eu-west-v3", hdr, hl, body, sizeof(body));
    put("fuzz_blob", "header-only", hdr, hl, NULL, 0);
    /* Format 1 (no kind byte), which Decrypt and ReEncrypt still read. */
    h.format = KMS_BLOB_VERSION_1;
    h.kind = KMS_BLOB_KIND_LEGACY;
    if (kms_blob_write_header(&h, hdr, &hl) != KMS_OK)
        die("kms_blob_write_header");
    put("fuzz_blob", "format1-eu-west-v3", hdr, hl, body, sizeof(body));
    put("fuzz_blob", "format1-header-only", hdr, hl, NULL, 0);

    uint8_t fh[KMS_FIELD_HEADER_LEN], iv[KMS_FIELD_IV_LEN];
    memset(iv, 0x44, sizeof(iv));
    kms_field_header_write(KMS_FIELD_RANDOMIZED, 2, iv, fh);
    put("fuzz_fieldblob", "randomized-v2", fh, sizeof(fh), body, sizeof(body));
    kms_field_header_write(KMS_FIELD_DETERMINISTIC, 1, iv, fh);
    put("fuzz_fieldblob", "deterministic-v1", fh, sizeof(fh), body, KMS_FIELD_TAG_LEN);

    uint8_t tok[KMS_IMPORT_TOKEN_LEN];
    memset(tok, 0x5a, sizeof(tok));
    tok[0] = 0x01;
    put("fuzz_import_token", "issued-shape", tok, sizeof(tok), NULL, 0);
    tok[0] = 0x02;
    put("fuzz_import_token", "wrong-format", tok, sizeof(tok), NULL, 0);
    put("fuzz_import_token", "short", tok, 10, NULL, 0);

    /* Link tokens: a valid one, and the same with a padding character. */
    struct kms_linktoken lt = {.key_version = 1, .expires_at = 1796000000};
    memset(lt.id, 0xa1, sizeof(lt.id));
    memset(lt.mac, 0x3c, sizeof(lt.mac));
    char text[KMS_LINKTOKEN_TEXT_LEN + 1];
    if (kms_linktoken_encode(&lt, text) != KMS_OK)
        die("kms_linktoken_encode");
    put("fuzz_linktoken", "valid", (const uint8_t *)text, KMS_LINKTOKEN_TEXT_LEN, NULL, 0);
    text[KMS_LINKTOKEN_TEXT_LEN - 1] = '=';
    put("fuzz_linktoken", "padding", (const uint8_t *)text, KMS_LINKTOKEN_TEXT_LEN, NULL, 0);
}

/* ---- audit bundles ---------------------------------------------------------------------- */

#define LOG_N 6

static void audit(void)
{
    BIO *bio = BIO_new_mem_buf(FUZZ_AUDIT_PRIVATE_PEM, -1);
    EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (pk == NULL)
        die("the fixed audit key does not load");
    struct audit_tree *tree = NULL;
    if (audit_tree_new(&tree) != KMS_OK)
        die("audit_tree_new");
    uint8_t ev[LOG_N][128];
    size_t ev_len[LOG_N];
    for (uint64_t i = 0; i < LOG_N; i++) {
        Custos__V1__AuditEvent e = CUSTOS__V1__AUDIT_EVENT__INIT;
        e.seq = i;
        e.time_ms = FUZZ_AUDIT_T0 + 1000 * (int64_t)i;
        e.region = (char *)FUZZ_AUDIT_REGION;
        e.operation = (char *)"Encrypt";
        e.outcome = (char *)"ok";
        ev_len[i] = custos__v1__audit_event__pack(&e, ev[i]);
        audit_hash h;
        audit_leaf_hash(ev[i], ev_len[i], h);
        if (audit_tree_append(tree, h) != KMS_OK)
            die("audit_tree_append");
    }
    /* flags byte (bit 0 partial), then a byte the target ignores unless
     * splitting, then the bundle. */
    struct {
        const char *name;
        uint8_t flags;
        uint64_t first, count;
        bool proofs;
    } cases[] = {
        {"whole", 0, 0, LOG_N, false},
        {"whole-proofs", 0, 0, LOG_N, true},
        {"range-partial", 1, 2, 3, true},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        audit_hash root;
        int64_t ts = FUZZ_AUDIT_T0 + 10000;
        uint8_t sb[13 + 1 + 255 + 48], sig[80];
        if (audit_tree_root(tree, LOG_N, root) != KMS_OK)
            die("audit_tree_root");
        size_t sbl = audit_head_signed_bytes(FUZZ_AUDIT_REGION, LOG_N, ts, root, sb);
        EVP_MD_CTX *mc = EVP_MD_CTX_new();
        size_t sl = sizeof(sig);
        if (mc == NULL || EVP_DigestSignInit(mc, NULL, EVP_sha256(), NULL, pk) != 1 ||
            EVP_DigestSign(mc, sig, &sl, sb, sbl) != 1)
            die("sign");
        EVP_MD_CTX_free(mc);
        Custos__V1__SignedTreeHead h = CUSTOS__V1__SIGNED_TREE_HEAD__INIT;
        h.region = (char *)FUZZ_AUDIT_REGION;
        h.tree_size = LOG_N;
        h.root_hash = (ProtobufCBinaryData){AUDIT_HASH_LEN, root};
        h.timestamp_ms = ts;
        h.signature = (ProtobufCBinaryData){sl, sig};
        h.key_id = (char *)FUZZ_AUDIT_KEY_ID;
        Custos__V1__ExportAuditLogResponse r = CUSTOS__V1__EXPORT_AUDIT_LOG_RESPONSE__INIT;
        r.head = &h;
        Custos__V1__AuditEntry e[LOG_N], *ep[LOG_N];
        audit_hash proof[LOG_N][AUDIT_PROOF_MAX];
        ProtobufCBinaryData pb[LOG_N][AUDIT_PROOF_MAX];
        for (uint64_t k = 0; k < cases[c].count; k++) {
            uint64_t seq = cases[c].first + k;
            custos__v1__audit_entry__init(&e[k]);
            e[k].seq = seq;
            e[k].event = (ProtobufCBinaryData){ev_len[seq], ev[seq]};
            if (cases[c].proofs) {
                size_t np = 0;
                if (audit_tree_inclusion(tree, seq, LOG_N, proof[k], &np) != KMS_OK)
                    die("audit_tree_inclusion");
                for (size_t j = 0; j < np; j++)
                    pb[k][j] = (ProtobufCBinaryData){AUDIT_HASH_LEN, proof[k][j]};
                e[k].inclusion_proof = pb[k];
                e[k].n_inclusion_proof = np;
            }
            ep[k] = &e[k];
        }
        r.entries = ep;
        r.n_entries = cases[c].count;
        size_t n;
        uint8_t *bundle = packed(&r.base, &n);
        uint8_t pre[2] = {cases[c].flags, 0};
        put("fuzz_audit_verify", cases[c].name, pre, 2, bundle, n);
        free(bundle);
    }
    audit_tree_free(tree);
    EVP_PKEY_free(pk);
}

/* Escrow statements: the fields a requester supplies, then a signature. */
static void escrow(void)
{
    static const uint8_t restore[] = "\x02" "deleted by mistake in CHG-1042\0INC-7731\0\0"
                                     "\x30\x44\x02\x20";
    static const uint8_t exported[] = "\x05" "court order 12/2026 \xc3\xbc\0COURT-7\0bank-legal-eu\0";
    static const uint8_t forged[] = "\x02" "a\nrecovery: forged\0C\0\0";
    put("fuzz_escrow_statement", "restore", restore, sizeof(restore) - 1, NULL, 0);
    put("fuzz_escrow_statement", "export", exported, sizeof(exported) - 1, NULL, 0);
    put("fuzz_escrow_statement", "forged-line", forged, sizeof(forged) - 1, NULL, 0);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: seedgen OUTDIR");
    outdir = argv[1];
    requests();
    json_seeds();
    blobs();
    audit();
    escrow();
    return 0;
}

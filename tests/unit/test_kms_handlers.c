/*
 * test_kms_handlers.c - the handler contract, exercised without HTTP: the
 * handlers are called directly with a real service (SoftHSMv2 tokens made by
 * tests/run-tests.sh, a fresh SQLite store, a policy file) and a kms_call
 * built here, the way the front builds one.
 *
 *   envelope: Encrypt then Decrypt gives the plaintext back, and only the
 *             Decrypt reply is marked secret; a changed ciphertext, a wrong
 *             context, a malformed key id, another tenant's key and a role
 *             without the grant are each refused with their own code.
 *   keyadmin: CreateKey by a broker is refused (PERMISSION_DENIED, the
 *             deciding rule in the audit facts) and creates nothing.
 *   keyuse:   a key whose region is now served by another token (the
 *             configuration changed) is refused the same way by KeyService
 *             and FieldService: the shared token check (kms_keyuse.c), where
 *             Encrypt used to go on to the other token.
 *   front:    a request decoded through its route row has every bytes and
 *             string field wiped by kms_pbuf_wipe (what kms_pbuf_free_wiped
 *             does before it frees), nested and repeated ones included; a
 *             body that does not decode is refused by the dispatch with the
 *             handlers' old code and message, and no handler runs.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "kms_call.h"
#include "kms_envelope.h"
#include "kms_fields.h"
#include "kms_keyadmin.h"
#include "kms_pbuf.h"
#include "kms_service.h"
#include "kms_twirp.h"
#include "pol_doc.h"
#include "proto/fields.pb-c.h"
#include "proto/key.pb-c.h"
#include "testenv.h"

/* ---- a service of our own ---------------------------------------------------- */

static char dir[512];

static void sha_hex(const char *s, char out[65])
{
    uint8_t d[32];
    SHA256((const uint8_t *)s, strlen(s), d);
    for (size_t i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void write_file(const char *name, const char *text)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* Policy: tenant demo (a broker, a key-admin) and tenant other (a broker),
 * both in eu-west. */
static void write_policy(void)
{
    char h[4][65];
    sha_hex("k-broker", h[0]);
    sha_hex("k-admin", h[1]);
    sha_hex("k-other", h[2]);
    sha_hex("k-other-admin", h[3]);
    char doc[4096];
    snprintf(doc, sizeof(doc),
             "{\"version\": 1, \"tenants\": ["
             "{\"id\": \"demo\", \"allowed_regions\": [\"eu-west\"], \"escrow_required\": false, \"principals\": ["
             "{\"id\": \"broker\", \"role\": \"broker\", \"home_region\": \"eu-west\", "
             "\"api_key_sha256\": \"%s\"},"
             "{\"id\": \"admin\", \"role\": \"key-admin\", \"home_region\": \"eu-west\", "
             "\"api_key_sha256\": \"%s\"}]},"
             "{\"id\": \"other\", \"allowed_regions\": [\"eu-west\"], \"escrow_required\": false, \"principals\": ["
             "{\"id\": \"other-broker\", \"role\": \"broker\", \"home_region\": \"eu-west\", "
             "\"api_key_sha256\": \"%s\"},"
             "{\"id\": \"other-admin\", \"role\": \"key-admin\", \"home_region\": \"eu-west\", "
             "\"api_key_sha256\": \"%s\"}]}]}",
             h[0], h[1], h[2], h[3]);
    write_file("policy.json", doc);
}

/* A dev configuration serving eu-west from the token labelled
 * custos-<token_region> (the tokens run-tests.sh makes), with its PIN. */
static void write_config(const char *token_region)
{
    char pin[600], doc[2048], token[64];
    testenv_pin_source(token_region, pin, sizeof(pin));
    snprintf(token, sizeof(token), "custos-%s", token_region);
    snprintf(doc, sizeof(doc),
             "{\"mode\": \"dev\", \"pkcs11\": {\"module\": \"%s\", \"tokens\": ["
             "{\"region\": \"eu-west\", \"token\": \"%s\", \"pin\": \"%s\"}]},"
             "\"policy\": \"policy.json\", \"store\": \"kmsd.db\", "
             "\"audit\": {\"enabled\": false}}",
             testenv_module_path(), token, pin);
    write_file("kmsd.json", doc);
}

struct env {
    struct kms_config *cfg;
    struct kms_service *svc;
};

static void env_start(struct env *e, const char *token_region, bool fresh)
{
    if (fresh) {
        snprintf(dir, sizeof(dir), "%s/handlers-XXXXXX", testenv_work_dir());
        ck_assert_ptr_nonnull(mkdtemp(dir));
        write_policy();
    }
    write_config(token_region);
    char path[600];
    snprintf(path, sizeof(path), "%s/kmsd.json", dir);
    ck_assert_int_eq(kms_config_load(path, &e->cfg), KMS_OK);
    kms_err rc = kms_service_start(e->cfg, &e->svc);
    ck_assert_msg(rc == KMS_OK, "service: %s", kms_err_detail());
}

static void env_stop(struct env *e)
{
    kms_service_free(e->svc);
    kms_config_free(e->cfg);
}

/* A call as the front makes one for principal id. */
static void call_as(struct env *e, struct kms_call *call, const char *id)
{
    memset(call, 0, sizeof(*call));
    call->svc = e->svc;
    call->policy = kms_service_policy(e->svc);
    call->who = pol_doc_principal(call->policy, id);
    ck_assert_ptr_nonnull(call->who);
    snprintf(call->request_id, sizeof(call->request_id), "%032x", 1u);
}

static void call_end(struct kms_call *call, struct kms_reply *reply)
{
    pol_doc_unref(call->policy);
    if (reply && reply->data) {
        OPENSSL_cleanse(reply->data, reply->len);
        free(reply->data);
    }
    if (reply)
        memset(reply, 0, sizeof(*reply));
}

static void create_key(struct env *e, Custos__V1__KeySpec spec, const char *admin, char out[33])
{
    struct kms_call call;
    struct kms_reply reply = {0};
    call_as(e, &call, admin);
    Custos__V1__CreateKeyRequest req = CUSTOS__V1__CREATE_KEY_REQUEST__INIT;
    req.region = (char *)"eu-west";
    req.spec = spec;
    req.usage = spec == CUSTOS__V1__KEY_SPEC__METADATA_AES_HMAC
                    ? CUSTOS__V1__KEY_USAGE__METADATA_FIELDS
                    : CUSTOS__V1__KEY_USAGE__ENCRYPT_DECRYPT;
    kms_err rc = kms_rpc_create_key(&call, &req.base, &reply);
    ck_assert_msg(rc == KMS_OK, "CreateKey: %s", kms_err_detail());
    Custos__V1__CreateKeyResponse *resp =
        custos__v1__create_key_response__unpack(NULL, reply.len, reply.data);
    ck_assert_ptr_nonnull(resp);
    ck_assert_str_eq(resp->key->region, "eu-west");
    snprintf(out, 33, "%s", resp->key->key_id);
    custos__v1__create_key_response__free_unpacked(resp, NULL);
    call_end(&call, &reply);
}

/* Encrypt pt under key_id as `who` with context {"conv": ctx_value}. */
static kms_err encrypt(struct env *e, const char *who, const char *key_id, const char *pt,
                       const char *ctx_value, struct kms_reply *reply, struct kms_call *call)
{
    call_as(e, call, who);
    Custos__V1__EncryptRequest req = CUSTOS__V1__ENCRYPT_REQUEST__INIT;
    Custos__V1__EncryptRequest__EncryptionContextEntry ent =
        CUSTOS__V1__ENCRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
    Custos__V1__EncryptRequest__EncryptionContextEntry *ents[1] = {&ent};
    ent.key = (char *)"conv";
    ent.value = (char *)ctx_value;
    req.key_id = (char *)key_id;
    req.plaintext.data = (uint8_t *)pt;
    req.plaintext.len = strlen(pt);
    req.n_encryption_context = 1;
    req.encryption_context = ents;
    return kms_rpc_encrypt(call, &req.base, reply);
}

static kms_err decrypt(struct env *e, const char *who, const uint8_t *ct, size_t ct_len,
                       const char *ctx_value, struct kms_reply *reply, struct kms_call *call)
{
    call_as(e, call, who);
    Custos__V1__DecryptRequest req = CUSTOS__V1__DECRYPT_REQUEST__INIT;
    Custos__V1__DecryptRequest__EncryptionContextEntry ent =
        CUSTOS__V1__DECRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
    Custos__V1__DecryptRequest__EncryptionContextEntry *ents[1] = {&ent};
    ent.key = (char *)"conv";
    ent.value = (char *)ctx_value;
    req.ciphertext.data = (uint8_t *)ct;
    req.ciphertext.len = ct_len;
    req.n_encryption_context = 1;
    req.encryption_context = ents;
    return kms_rpc_decrypt(call, &req.base, reply);
}

/* ---- envelope ------------------------------------------------------------------ */

START_TEST(test_encrypt_decrypt_round_trip)
{
    struct env e;
    env_start(&e, "eu-west", true);
    char key[33];
    create_key(&e, CUSTOS__V1__KEY_SPEC__AES_256, "admin", key);

    struct kms_call call;
    struct kms_reply reply = {0};
    ck_assert_int_eq(encrypt(&e, "broker", key, "+14155550123", "c-1", &reply, &call), KMS_OK);
    ck_assert(!reply.secret);
    ck_assert_str_eq(call.audit.key_id, key);
    ck_assert_str_eq(call.audit.region, "eu-west");
    ck_assert_uint_eq(call.audit.key_version, 1);
    Custos__V1__EncryptResponse *er =
        custos__v1__encrypt_response__unpack(NULL, reply.len, reply.data);
    ck_assert_ptr_nonnull(er);
    uint8_t ct[512];
    size_t ct_len = er->ciphertext.len;
    ck_assert_uint_le(ct_len, sizeof(ct));
    memcpy(ct, er->ciphertext.data, ct_len);
    custos__v1__encrypt_response__free_unpacked(er, NULL);
    call_end(&call, &reply);

    ck_assert_int_eq(decrypt(&e, "broker", ct, ct_len, "c-1", &reply, &call), KMS_OK);
    ck_assert(reply.secret); /* the front wipes it after sending */
    Custos__V1__DecryptResponse *dr =
        custos__v1__decrypt_response__unpack(NULL, reply.len, reply.data);
    ck_assert_ptr_nonnull(dr);
    ck_assert_uint_eq(dr->plaintext.len, strlen("+14155550123"));
    ck_assert_mem_eq(dr->plaintext.data, "+14155550123", dr->plaintext.len);
    ck_assert_str_eq(dr->key_id, key);
    custos__v1__decrypt_response__free_unpacked(dr, NULL);
    call_end(&call, &reply);

    /* Another context, a changed byte: one refusal for both. */
    ck_assert_int_eq(decrypt(&e, "broker", ct, ct_len, "c-2", &reply, &call),
                     KMS_ERR_BAD_CIPHERTEXT);
    ck_assert_str_eq(kms_err_detail(), "ciphertext or encryption context does not match");
    ck_assert_ptr_null(reply.data);
    call_end(&call, &reply);
    ct[ct_len - 1] ^= 1;
    ck_assert_int_eq(decrypt(&e, "broker", ct, ct_len, "c-1", &reply, &call),
                     KMS_ERR_BAD_CIPHERTEXT);
    call_end(&call, &reply);
    env_stop(&e);
}
END_TEST

START_TEST(test_encrypt_refusals)
{
    struct env e;
    env_start(&e, "eu-west", true);
    char key[33];
    create_key(&e, CUSTOS__V1__KEY_SPEC__AES_256, "admin", key);
    struct kms_call call;
    struct kms_reply reply = {0};

    ck_assert_int_eq(encrypt(&e, "broker", "not-a-key-id", "x", "c", &reply, &call),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_err_detail(), "key_id must be 32 lowercase hex characters");
    call_end(&call, &reply);

    /* Another tenant's key is not there, as far as its caller can tell;
     * the auditor still sees which key was probed. */
    ck_assert_int_eq(encrypt(&e, "other-broker", key, "x", "c", &reply, &call),
                     KMS_ERR_NOT_FOUND);
    ck_assert_str_eq(kms_err_detail(), "key not found");
    ck_assert_str_eq(call.audit.key_id, key);
    ck_assert_ptr_null(reply.data);
    call_end(&call, &reply);

    /* A key administrator manages keys; it does not use them. */
    ck_assert_int_eq(encrypt(&e, "admin", key, "x", "c", &reply, &call),
                     KMS_ERR_PERMISSION_DENIED);
    ck_assert_ptr_nonnull(call.audit.rule);
    ck_assert_ptr_null(reply.data);
    call_end(&call, &reply);
    env_stop(&e);
}
END_TEST

/* ---- keyadmin ------------------------------------------------------------------ */

static size_t count_keys(struct env *e, const char *admin)
{
    struct kms_call call;
    struct kms_reply reply = {0};
    call_as(e, &call, admin);
    Custos__V1__ListKeysRequest req = CUSTOS__V1__LIST_KEYS_REQUEST__INIT;
    ck_assert_int_eq(kms_rpc_list_keys(&call, &req.base, &reply), KMS_OK);
    Custos__V1__ListKeysResponse *r =
        custos__v1__list_keys_response__unpack(NULL, reply.len, reply.data);
    ck_assert_ptr_nonnull(r);
    size_t n = r->n_keys;
    custos__v1__list_keys_response__free_unpacked(r, NULL);
    call_end(&call, &reply);
    return n;
}

START_TEST(test_create_key_refused_to_broker)
{
    struct env e;
    env_start(&e, "eu-west", true);
    struct kms_call call;
    struct kms_reply reply = {0};
    call_as(&e, &call, "broker");
    Custos__V1__CreateKeyRequest req = CUSTOS__V1__CREATE_KEY_REQUEST__INIT;
    req.region = (char *)"eu-west";
    req.spec = CUSTOS__V1__KEY_SPEC__AES_256;
    req.usage = CUSTOS__V1__KEY_USAGE__ENCRYPT_DECRYPT;
    ck_assert_int_eq(kms_rpc_create_key(&call, &req.base, &reply), KMS_ERR_PERMISSION_DENIED);
    ck_assert_ptr_nonnull(call.audit.rule);
    ck_assert_str_eq(call.audit.region, "eu-west");
    ck_assert_str_eq(call.audit.key_id, "");
    ck_assert_ptr_null(reply.data);
    call_end(&call, &reply);
    ck_assert_uint_eq(count_keys(&e, "admin"), 0);
    /* The same request from the key administrator makes one. */
    char key[33];
    create_key(&e, CUSTOS__V1__KEY_SPEC__AES_256, "admin", key);
    ck_assert_uint_eq(count_keys(&e, "admin"), 1);
    env_stop(&e);
}
END_TEST

/* ---- the shared token check ------------------------------------------------------ */

START_TEST(test_key_in_another_token_refused_alike)
{
    struct env e;
    env_start(&e, "eu-west", true);
    char aes[33], meta[33];
    create_key(&e, CUSTOS__V1__KEY_SPEC__AES_256, "admin", aes);
    create_key(&e, CUSTOS__V1__KEY_SPEC__METADATA_AES_HMAC, "admin", meta);
    env_stop(&e);

    /* eu-west is now served by the token labelled custos-us-east: the keys'
     * rows still name custos-eu-west, whose objects that token lacks. */
    env_start(&e, "us-east", false);
    struct kms_call call;
    struct kms_reply reply = {0};
    ck_assert_int_eq(encrypt(&e, "broker", aes, "x", "c", &reply, &call),
                     KMS_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "but the key lives in token 'custos-eu-west'"));
    call_end(&call, &reply);

    call_as(&e, &call, "broker");
    Custos__V1__EncryptFieldsRequest fr = CUSTOS__V1__ENCRYPT_FIELDS_REQUEST__INIT;
    Custos__V1__PlaintextField f = CUSTOS__V1__PLAINTEXT_FIELD__INIT;
    Custos__V1__PlaintextField *fs[1] = {&f};
    f.name = (char *)"to";
    f.value.data = (uint8_t *)"x";
    f.value.len = 1;
    f.mode = CUSTOS__V1__FIELD_MODE__FIELD_MODE_RANDOMIZED;
    fr.key_id = meta;
    fr.n_fields = 1;
    fr.fields = fs;
    ck_assert_int_eq(kms_rpc_encrypt_fields(&call, &fr.base, &reply), KMS_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "but the key lives in token 'custos-eu-west'"));
    ck_assert_ptr_null(reply.data);
    call_end(&call, &reply);
    env_stop(&e);
}
END_TEST

/* ---- the front: decoding, wiping, refusing ------------------------------------------ */

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static const struct kms_route *route(const char *path)
{
    const char *method;
    const struct kms_route *r = kms_twirp_route(path, &method);
    ck_assert_ptr_nonnull(r);
    return r;
}

START_TEST(test_front_wipes_request)
{
    /* An EncryptRequest as a client sends it. */
    Custos__V1__EncryptRequest in = CUSTOS__V1__ENCRYPT_REQUEST__INIT;
    Custos__V1__EncryptRequest__EncryptionContextEntry ent =
        CUSTOS__V1__ENCRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
    Custos__V1__EncryptRequest__EncryptionContextEntry *ents[1] = {&ent};
    ent.key = (char *)"conversation";
    ent.value = (char *)"secret-conversation-id";
    in.key_id = (char *)"0123456789abcdef0123456789abcdef";
    in.plaintext.data = (uint8_t *)"the plaintext";
    in.plaintext.len = 13;
    in.n_encryption_context = 1;
    in.encryption_context = ents;
    uint8_t wire[512];
    size_t n = custos__v1__encrypt_request__pack(&in, wire);

    const struct kms_route *r = route("/twirp/custos.v1.KeyService/Encrypt");
    ck_assert_ptr_eq(r->handler, kms_rpc_encrypt);
    ProtobufCMessage *m = kms_pbuf_unpack(r->request, wire, n);
    ck_assert_ptr_nonnull(m);
    Custos__V1__EncryptRequest *req = (Custos__V1__EncryptRequest *)m;
    ck_assert_mem_eq(req->plaintext.data, "the plaintext", 13);
    uint8_t *pt = req->plaintext.data;
    char *kid = req->key_id, *ck = req->encryption_context[0]->key,
         *cv = req->encryption_context[0]->value;
    kms_pbuf_wipe(m);
    ck_assert(all_zero(pt, 13));
    ck_assert(all_zero((const uint8_t *)kid, 32));
    ck_assert(all_zero((const uint8_t *)ck, strlen("conversation")));
    ck_assert(all_zero((const uint8_t *)cv, strlen("secret-conversation-id")));
    ck_assert_uint_eq(req->plaintext.len, 13); /* still freeable */
    kms_pbuf_free_wiped(m);

    /* Repeated messages holding bytes (EncryptFields' values). */
    Custos__V1__EncryptFieldsRequest fin = CUSTOS__V1__ENCRYPT_FIELDS_REQUEST__INIT;
    Custos__V1__PlaintextField f[2] = {CUSTOS__V1__PLAINTEXT_FIELD__INIT,
                                       CUSTOS__V1__PLAINTEXT_FIELD__INIT};
    Custos__V1__PlaintextField *fs[2] = {&f[0], &f[1]};
    f[0].name = (char *)"to";
    f[0].value.data = (uint8_t *)"+14155550123";
    f[0].value.len = 12;
    f[1].name = (char *)"from";
    f[1].value.data = (uint8_t *)"alice@example.com";
    f[1].value.len = 17;
    fin.key_id = (char *)"0123456789abcdef0123456789abcdef";
    fin.n_fields = 2;
    fin.fields = fs;
    n = custos__v1__encrypt_fields_request__pack(&fin, wire);
    r = route("/twirp/custos.v1.FieldService/EncryptFields");
    m = kms_pbuf_unpack(r->request, wire, n);
    ck_assert_ptr_nonnull(m);
    Custos__V1__EncryptFieldsRequest *freq = (Custos__V1__EncryptFieldsRequest *)m;
    uint8_t *v0 = freq->fields[0]->value.data, *v1 = freq->fields[1]->value.data;
    kms_pbuf_wipe(m);
    ck_assert(all_zero(v0, 12));
    ck_assert(all_zero(v1, 17));
    kms_pbuf_free_wiped(m);
    kms_pbuf_free_wiped(NULL);
}
END_TEST

static int handler_calls;

static kms_err counting_handler(struct kms_call *call, const ProtobufCMessage *req,
                                struct kms_reply *reply)
{
    (void)call;
    (void)req;
    (void)reply;
    handler_calls++;
    return KMS_OK;
}

START_TEST(test_dispatch_refuses_malformed)
{
    const struct kms_route *enc = route("/twirp/custos.v1.KeyService/Encrypt");
    struct kms_route r = *enc;
    r.handler = counting_handler;
    struct kms_call call;
    memset(&call, 0, sizeof(call));
    struct kms_reply reply = {0};
    handler_calls = 0;
    /* A truncated length-delimited field. */
    static const uint8_t bad[] = {0x0a, 0x20, 'a'};
    ck_assert_int_eq(kms_twirp_dispatch(&r, &call, bad, sizeof(bad), &reply), KMS_ERR_MALFORMED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "the body is not a valid EncryptRequest message"));
    /* A key_id with a NUL byte: invalid_argument, naming the field. */
    static const uint8_t nul[] = {0x0a, 0x03, 'a', 0, 'b'};
    ck_assert_int_eq(kms_twirp_dispatch(&r, &call, nul, sizeof(nul), &reply),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(handler_calls, 0);
    /* An empty body is a valid (empty) message: the handler runs. */
    ck_assert_int_eq(kms_twirp_dispatch(&r, &call, NULL, 0, &reply), KMS_OK);
    ck_assert_int_eq(handler_calls, 1);
}
END_TEST

START_TEST(test_every_route_has_a_handler)
{
    for (size_t i = 0; i < kms_twirp_n_routes(); i++) {
        const struct kms_route *r = kms_twirp_route_row(i);
        ck_assert_ptr_nonnull(r);
        ck_assert_ptr_nonnull(r->handler);
        ck_assert_ptr_nonnull(r->request);
        ck_assert_ptr_nonnull(r->response);
        char path[160];
        ck_assert_ptr_eq(kms_twirp_route_at(i, path, sizeof(path)), r->request);
        ck_assert_ptr_eq(route(path), r);
        ck_assert_ptr_eq(kms_twirp_lookup(r->service, r->method), r);
    }
    ck_assert_ptr_null(kms_twirp_route_row(kms_twirp_n_routes()));
}
END_TEST

/* The statuses every error had when the table lived in the base: the move
 * into the front changed none. */
START_TEST(test_twirp_statuses_unchanged)
{
    static const struct {
        kms_err err;
        const char *code;
        int status;
    } want[] = {
        {KMS_OK, "ok", 200},
        {KMS_ERR_USAGE, "internal", 500},
        {KMS_ERR_INVALID_ARGUMENT, "invalid_argument", 400},
        {KMS_ERR_TOO_LARGE, "invalid_argument", 400},
        {KMS_ERR_NOT_FOUND, "not_found", 404},
        {KMS_ERR_ALREADY_EXISTS, "already_exists", 409},
        {KMS_ERR_FAILED_PRECONDITION, "failed_precondition", 412},
        {KMS_ERR_BAD_CIPHERTEXT, "invalid_argument", 400},
        {KMS_ERR_UNSUPPORTED, "failed_precondition", 412},
        {KMS_ERR_MALFORMED, "malformed", 400},
        {KMS_ERR_BAD_ROUTE, "bad_route", 404},
        {KMS_ERR_UNAUTHENTICATED, "unauthenticated", 401},
        {KMS_ERR_PERMISSION_DENIED, "permission_denied", 403},
        {KMS_ERR_RESOURCE_EXHAUSTED, "resource_exhausted", 429},
        {KMS_ERR_HSM, "internal", 500},
        {KMS_ERR_HSM_UNAVAILABLE, "unavailable", 503},
        {KMS_ERR_HSM_SESSION, "unavailable", 503},
        {KMS_ERR_HSM_PIN, "unavailable", 503},
        {KMS_ERR_IO, "unavailable", 503},
        {KMS_ERR_NOSPC, "unavailable", 503},
        {KMS_ERR_CONFIG, "internal", 500},
        {KMS_ERR_NOMEM, "resource_exhausted", 429},
        {KMS_ERR_INTERNAL, "internal", 500},
        {(kms_err)12345, "internal", 500},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        ck_assert_str_eq(kms_err_twirp_code(want[i].err), want[i].code);
        ck_assert_int_eq(kms_twirp_http_status(want[i].err), want[i].status);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kms_handlers");
    TCase *t = tcase_create("envelope");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_encrypt_decrypt_round_trip);
    tcase_add_test(t, test_encrypt_refusals);
    suite_add_tcase(s, t);
    t = tcase_create("keyadmin");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_create_key_refused_to_broker);
    suite_add_tcase(s, t);
    t = tcase_create("keyuse");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_key_in_another_token_refused_alike);
    suite_add_tcase(s, t);
    t = tcase_create("front");
    tcase_add_test(t, test_front_wipes_request);
    tcase_add_test(t, test_dispatch_refuses_malformed);
    tcase_add_test(t, test_every_route_has_a_handler);
    tcase_add_test(t, test_twirp_statuses_unchanged);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

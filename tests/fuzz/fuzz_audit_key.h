/*
 * fuzz_audit_key.h - a fixed ECDSA P-256 key for the audit verifier's fuzz
 * target and its seeds. TEST ONLY: it is public, signs nothing real, and
 * exists so that checked-in seed bundles verify and the fuzzer starts from
 * inputs that reach the deep checks (proofs, ordering, completeness).
 */
#ifndef FUZZ_AUDIT_KEY_H
#define FUZZ_AUDIT_KEY_H

#define FUZZ_AUDIT_REGION "eu-west"
#define FUZZ_AUDIT_KEY_ID "f022f022f022f022f022f022f022f022"
#define FUZZ_AUDIT_T0 1795694989000LL

#define FUZZ_AUDIT_PUBLIC_PEM                                                                      \
    "-----BEGIN PUBLIC KEY-----\n"                                                                 \
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEdxPflch5PHRrDpTjXXduagpYN2G7\n"                           \
    "oCGBRSzdB84mF3vTLbHj7MHC5po78rAyoZJ6KrJtUqAhRdW+I6RiyOSnbw==\n"                               \
    "-----END PUBLIC KEY-----\n"

#define FUZZ_AUDIT_PRIVATE_PEM                                                                     \
    "-----BEGIN PRIVATE KEY-----\n"                                                                \
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgqsF958ftyxaa0gGQ\n"                           \
    "Yxa/CULsa96LDhtdU5OKV74RC+2hRANCAAR3E9+VyHk8dGsOlONdd25qClg3Ybug\n"                           \
    "IYFFLN0HziYXe9MtsePswcLmmjvysDKhknoqsm1SoCFF1b4jpGLI5Kdv\n"                                   \
    "-----END PRIVATE KEY-----\n"

#endif
